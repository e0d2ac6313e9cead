"""The engine's in-memory records of sessions, files and project requests.

They mirror the journal; the engine changes them only with its lock held and
writes each change through to the journal in the same step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .spool import RunningDigest

# File states (semantics.md, "File states") plus three of fs360's own:
#   local        a scratch name that is never uploaded (dot-files, *.part, ...)
#   interrupted  the mount stopped while the file was open for writing: copy it again
#   lost         the server lost the session and the spool no longer holds the data
#   in tree     a whole file in a folder of the session: never queued on its own, it goes up
#                inside the session's archive once .create is accepted
#   closed       every writer closed it, and fs360 waits for their exits: the commit point
#                (a writer that exits 0 queues it at once; the write-back delay otherwise)
#   held         a writer exited non-zero or by a signal right after writing it: probably
#                incomplete, never uploaded until `fs360 release` or a successful rewrite
WRITING, PENDING, UPLOADING, COMPLETE, FAILED, REJECTED = "writing", "pending", "uploading", "complete", "failed", "rejected"
LOCAL, INTERRUPTED, LOST, IN_TREE = "local", "interrupted", "lost", "in tree"
CLOSED, HELD = "closed", "held"
QUEUED_STATES = (PENDING, FAILED)

# Why a file open for writing when the mount stopped is not whole (journaled at its first open).
STOPPED_WHILE_WRITING = "the mount stopped while this file was being written; copy it again"
# What a user can do about a held file (it ends every reason that holds one).
HELD_WAY_OUT = "copy it again, or run `fs360 release` on it if you know it is whole"
# A writing that changed parts of an unfinished file (rsync --inplace --no-whole-file sends
# only the blocks that differ): what now holds it. Kept held: its writer's exit 0 says nothing of
# the parts it did not write (a program that patches some bytes exits 0 too).
REWRITTEN_IN_PART = ("{who} changed parts of it in place after an earlier writing of it did not finish: the mount "
                     "cannot tell that it is whole now; {way_out} (`rsync -I --whole-file` copies it whole)")
# Why a file closed but not yet committed when the mount stopped is held (its writer's exit is unknown).
STOPPED_BEFORE_COMMIT = ("the mount stopped before the program that wrote it had finished: it may be incomplete; "
                         + HELD_WAY_OUT)
# Not whole, or not known to be: never uploaded as they are (their reason is `unfinished`).
UNFINISHED_STATES = (INTERRUPTED, HELD)
# FileRecord.written_from of a writing whose writes were not one run from its start (a touch
# with no write is not one either: it has none).
WRITES_SPOILED = -2

# Project request states.
P_WAITING, P_CREATED, P_READY, P_FAILED = "waiting", "created", "ready", "failed"


def unfinished_state_of(reason: str) -> str:
    """The state an unfinished file with this journaled reason rests in: held when the reason offers
    `fs360 release`, else interrupted. HELD_WAY_OUT is in no reason that interrupts a file, and in
    every one that holds it but a renamer's dying at its rename (Writers.joined_locked), which then
    reads back as interrupted: the safe side. For a scratch file, whose journal row says `local`,
    the reason is the only record of which it is."""
    return HELD if HELD_WAY_OUT in reason else INTERRUPTED


def rewritten_in_part(state: str, programs: dict | None) -> str:
    """REWRITTEN_IN_PART for a file resting in `state`, changed by `programs` ({tgid: name})."""
    who = " and ".join(sorted(set(programs.values()))) if programs else "a program"
    return REWRITTEN_IN_PART.format(who=who, way_out=HELD_WAY_OUT if state == HELD else "copy it again")


def in_scratch_folder(folder: str) -> bool:
    """Whether a folder path inside a session is (or lies in) a dot-folder: local scratch."""
    return any(part.startswith(".") for part in folder.split("/"))


def duration_text(seconds: float) -> str:
    """'45 s', '3 min', '2.0 h': how long a wait is, for status."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


@dataclass(eq=False, slots=True)
class FileRecord:
    id: int
    session_id: int
    name: str
    mode: int
    mtime_ns: int
    size: int = 0
    uid: int = 0
    gid: int = 0
    state: str = WRITING
    server_received: int = 0
    # The server session a PUT of this file went to: set, the server may hold bytes of it.
    upload_id: str | None = None
    last_error: str = ""
    attempts: int = 0
    next_attempt: float = 0.0
    completed_at: float = 0.0
    evicted: bool = False
    unlinked: bool = False
    # The exact name the server holds (or will hold) this file under; see fs/names.py.
    server_name: str | None = None
    # The content digest of what is handed to the upload (engine/content_digest.py: XXH3-128,
    # tagged; a journal of an earlier build holds a sha256): lets an identical re-copy be a
    # no-op, and the upload checks what it sent against it. An archive's is its sha256 (status).
    sha256: str | None = None
    # The session's tree as one .zip (engine/archive.py), made at .create: no spool file of
    # its own, never listed in the folder.
    archive: bool = False
    # Memory only.
    local_only: bool = False
    # A time was set on it (utimens) since a re-copy of it was opened: cp -a sets the source's
    # before its close, so the identical re-copy keeps that time, not the time of its release.
    times_given: bool = False
    open_writers: int = 0
    generation: int = 0
    # The generation of the attempt whose PUT was under way when the file was deleted from its folder
    # (-1: none, or that attempt is over; memory only: no attempt outlives the mount). That PUT may
    # still complete it, and an identical re-creation meanwhile undoes the deletion (its spool copy
    # is kept until the attempt is over: registry_files.remove_file_locked).
    deleted_generation: int = -1
    # How many times it was listed again after a deletion (relist_locked; memory only): a revival
    # handle decides the file only while its own re-creation is the last one.
    revivals: int = 0
    needs_resync: bool = False
    progress_journaled_at: float = 0.0  # monotonic time of the last journaled progress
    # The journal's `unfinished` says STOPPED_WHILE_WRITING while it is open (memory keeps the
    # truth): written once per opening, not at every open.
    stop_journaled: bool = False
    # Why the content is not whole (a failed write, a writer that died or failed): set, the
    # last close never queues the file as it is. Cleared by a rewrite from 0, or by a writer
    # that reopens it, finishes it and exits 0 (rsync --append, curl -C -).
    unfinished: str = ""
    # The state an unfinished file rests in (interrupted, or held when it may well be whole).
    unfinished_state: str = INTERRUPTED
    # The commit point: the processes that closed it written and whose exit is awaited, as
    # {tgid: start time} (journaled while closed, see engine/processes.py); whether a writer is
    # unknown (no pid, no watch: only the delay commits it); when the last close came
    # (monotonic); a failure of this writing, reported before that close.
    writers: dict | None = None  # made on first use (10,000 records)
    writer_unknown: bool = False
    closed_at: float = 0.0
    writer_failure: str = ""
    # Whether this writing, once closed, makes the file whole whatever came before: its writes ran
    # front to back, without a gap, from byte 0 or from the size at its first open (an append)
    # to the file's end (see registry_files.note_written_locked). Known at its last close.
    completing: bool = False
    # This writing's run of writes: from `written_from` (-1: none yet, WRITES_SPOILED: not one
    # run) to `written_to`; `opened_size`, the size at its first open.
    written_from: int = -1
    written_to: int = 0
    opened_size: int = 0
    # Every byte of it was written front to back, without a hole (by its writings so far;
    # journaled): only then can an append of the rest make it whole (a segmented downloader
    # killed mid-way leaves holes that `curl -C -` would not fill).
    prefix_whole: bool = True
    # The writers of an earlier writing whose exits were still awaited when this one began, as
    # `writers`; `earlier_failure`: why one of them failed. An earlier writer that fails leaves the
    # file `held` unless this writing makes it whole (a touch never does).
    earlier_writers: dict | None = None
    earlier_failure: str = ""
    # This writing's programs that changed it each through a handle of its own, {tgid: name}:
    # two at once leave a mix of both (registry_commits.changed_through_locked).
    writing_programs: dict | None = None
    # The content digest of the spool content while it was written front to back (spool.RunningDigest).
    digest: "RunningDigest | None" = None
    # Last change of metadata or content (chmod, chown, rename, write); not journaled.
    ctime_ns: int = 0

    def awaited_writer_starts(self) -> dict[int, int]:
        """The processes whose exits this file still waits for (its writers, earlier ones too),
        each with its start time: what the journal keeps of them."""
        return {**(self.earlier_writers or {}), **(self.writers or {})}

    def awaited_writers(self) -> frozenset[int]:
        return frozenset(self.awaited_writer_starts())

    def awaits(self, tgid: int) -> bool:
        """Whether the exit of process `tgid` is awaited for this file (a writer of this writing or
        of an earlier one)."""
        return bool(self.writers and tgid in self.writers or self.earlier_writers and tgid in self.earlier_writers)

    @property
    def in_tree(self) -> bool:
        """A file in a (non-dot) folder of the session: it goes up inside the archive."""
        return "/" in self.name and not self.local_only

    @property
    def may_be_on_server(self) -> bool:
        """True when the server may hold bytes of it: it can then never change.

        From the moment a PUT is sent (the worker journals `upload_id` just before it), not
        from the moment a worker picks the file: a file deleted while its session is being
        opened is simply gone."""
        return self.server_received > 0 or self.state == COMPLETE or self.upload_id is not None


@dataclass(slots=True)
class NameEntry:
    """One server name of a session: the file it is chosen for (None: not ours, the server holds
    another file's bytes under it), and whether the server may hold bytes under it."""
    record: FileRecord | None
    on_server: bool = False


@dataclass(eq=False)
class ProjectRequest:
    options: dict
    state: str = P_WAITING
    name: str | None = None
    status: int = 0
    record: dict = field(default_factory=dict)
    last_error: str = ""
    attempts: int = 0
    next_attempt: float = 0.0
    # The upload_id a POST /projects was sent for (journaled before sending): after a lost
    # answer or a restart, the engine asks whether the project exists before POSTing again.
    posted_upload_id: str | None = None
    # When that POST was sent (wall clock), and the names of the key's projects listed just
    # before it (None: not known): a project listed with this title since is the lost answer's.
    posted_at: float | None = None
    listed_before: list | None = None
    # `unlink .create` after the project exists: the project stays, the marker leaves the listing.
    marker_hidden: bool = False
    # The .create it was requested by, as accepted, and that file's mtime (its writer's, or its
    # utimens): read back as they were, so a re-run of the same copy finds nothing to do. None:
    # requested by an fs360 that did not keep them (its fields read back rendered).
    marker: bytes | None = None
    marker_mtime_ns: int | None = None


@dataclass(eq=False)
class SessionRecord:
    id: int
    name: str
    mode: int
    mtime_ns: int
    upload_id: str | None = None
    expires_at: float | None = None
    sealed: bool = False
    files: dict[str, FileRecord] = field(default_factory=dict)      # listed in the folder
    unlinked: list[FileRecord] = field(default_factory=list)         # gone from the folder, held by the server
    project: ProjectRequest | None = None
    # The tree's archive, planned when .create was accepted: from then on the tree is frozen.
    archive: FileRecord | None = None
    notice: str = ""   # what stops the project, for status
    # Memory only: the session's server names, lower-cased (the server compares them so), each
    # with the file it is chosen for and whether the server may hold bytes under it in
    # `upload_id` (registry_names.py keeps it; rebuilt from the journal's server_name column).
    names: dict[str, NameEntry] = field(default_factory=dict)
    # Whether the server's listing of `upload_id` was read (a session opened by this mount holds
    # nothing; one from the journal is asked once, before the first PUT of a file there).
    listing_known: bool = False
    # Memory only: why the last .create was refused (shown in status until a valid one).
    marker_refused: str = ""
    # Memory only: why a requested project was cancelled (its .create removed before the request
    # was sent), shown in status until a .create is accepted again.
    marker_cancelled: str = ""
    # Memory only: names a create or a rename into the folder was refused for, with the reason
    # (a server that refuses .exe files): a file manager shows only "operation not permitted".
    refused_names: dict[str, str] = field(default_factory=dict)
    ctime_ns: int = 0
    # Who made the folder (a shared mount, allow_other); None: the mount's owner.
    uid: int | None = None
    gid: int | None = None
    # Memory only: the sizes of its listed files that are not local scratch, kept as they change
    # (registry_base.resize_locked), so that a write checks the session cap without a sum.
    listed_bytes: int = 0

    @property
    def project_posted(self) -> bool:
        """A POST /projects for this server session was (or may have been) sent, with no answer
        yet or a lost one: the project may be made from what the session holds now."""
        project = self.project
        return (project is not None and project.state == P_WAITING and project.posted_upload_id is not None
                and project.posted_upload_id == self.upload_id)

    @property
    def tree_frozen(self) -> bool:
        """Once .create is accepted the tree is planned as one archive (or there is none to
        plan): it can no longer change, since the server cannot replace the archive."""
        return self.sealed or self.project is not None or self.archive is not None

    @property
    def archive_complete(self) -> bool:
        """The server holds the tree's whole archive: nothing more is read of the tree's files, which
        are then the server's as much as a top-level file it holds (deleted here, they are
        remembered: remove_file_locked). Before, a change would change the archive being sent."""
        return self.archive is not None and self.archive.state == COMPLETE

    def uploads(self) -> list[FileRecord]:
        """What goes to the server as files of their own: the listed top-level files that are
        not local scratch, and the tree's archive once planned."""
        listed = [f for f in self.files.values() if not f.local_only and not f.in_tree]
        return listed + ([self.archive] if self.archive is not None else [])

    def tree_files(self) -> list[FileRecord]:
        return [f for f in self.files.values() if f.in_tree]

    def archived_files(self) -> list[FileRecord]:
        """The tree's files its archive is made of: those listed, and those deleted here after
        .create whose spool copy it still reads (registry_files.remove_file_locked keeps it)."""
        return self.tree_files() + [f for f in self.unlinked if f.in_tree and not f.evicted]
