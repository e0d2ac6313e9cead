"""A small reference model of the mount's contract (shared/spec/semantics.md, doc/SEMANTICS.md).

The model-based random test (tests/unit/test_model_random.py) runs every operation on the real
`MountModel` + `Engine` and on this model, and compares what each says: the errno of the
operation, the listings, sizes and states, and the server's contents once uploads settle.

Time is explicit here: nothing is uploaded until `settle()` says "the writers exited 0, the
write-back delay has passed and every queued upload finished" (D "The commit point": a closed
file waits for its writer's exit, `closed`). So a file is on the server exactly when it went
through a settle while closed and whole: `held` is then the bytes the server has, and the file can
never change again (semantics.md: "open for write, truncate or rename onto a file the
server already holds bytes of ... EACCES").

Every rule below names the row of semantics.md (S) or doc/SEMANTICS.md (D) it follows.
"""

from __future__ import annotations

import errno
import fnmatch
from dataclasses import dataclass, field

# S "Names that are never uploaded": dot-files and these default patterns.
_ALNUM = "[A-Za-z0-9]"
LOCAL_PATTERNS = ("*.part", "*.crdownload", "*.tmp", "*~", "*.swp", "~$*", "*-journal", "*-wal", "*-shm",
                  "Thumbs.db", "desktop.ini")
# At a session's top level only: the temporary copies of sed -i, zip, perl -i, Python's tempfile, mktemp -p.
TOP_LEVEL_PATTERNS = ("sed" + _ALNUM * 6, "zi" + _ALNUM * 6, _ALNUM * 8, "tmp" + "[a-z0-9_]" * 8, "tmp." + _ALNUM * 10)
STATUS_NAMES = ("status", "status.json")

WRITING, PENDING, COMPLETE, LOCAL, INTERRUPTED = "writing", "pending", "complete", "local", "interrupted"
# D "Trees": a closed, whole file in a folder of the session goes up only inside its archive.
IN_TREE = "in tree"
CLOSED, HELD, LOST = "closed", "held", "lost"
CREATE_MARKER = ".create"
# A session's project (D "Decisions": .create): requested (waiting for its files), then created.
WAITING, CREATED = "waiting", "created"


def is_local_name(name: str) -> bool:
    """`name` is a path in the session: D "Trees": scratch names stay local in the tree too, and a
    dot-folder is scratch with everything below it."""
    if any(part.startswith(".") for part in name.split("/")):
        return True
    folder, _, base = name.rpartition("/")
    patterns = LOCAL_PATTERNS if folder else LOCAL_PATTERNS + TOP_LEVEL_PATTERNS
    return any(fnmatch.fnmatchcase(base, p) for p in patterns)


def folder_of(path: str) -> str:
    """The folder a path in the session lies in ("" for the session's top level)."""
    return path.rpartition("/")[0]


def is_below(path: str, folder: str) -> bool:
    return path.startswith(folder + "/")


@dataclass(eq=False)
class File:
    name: str
    local: bool
    # The spool file's bytes.
    data: bytearray = field(default_factory=bytearray)
    # The size the journal has (it is written at create, close and truncate, not at each write).
    journaled: int = 0
    # Set after a crash with the file open: the size the mount shows, the journal's (see
    # CRASHED_SIZE_IS_THE_JOURNALS); None: len(data).
    crashed_size: int | None = None
    # The bytes the server holds (None: nothing): from then on the file is immutable.
    held: bytes | None = None
    # The name the server holds it under, frozen when it was uploaded (D "Server names").
    server_name: str | None = None
    # Its spool copy was dropped (D "Uploads": complete files' copies go when the disk passes 90%
    # full or the project is created): it reads EACCES, a rewrite compares by digest only, and a
    # lost session makes it `lost`.
    evicted: bool = False
    lost: bool = False
    # Its data may be partial (D "Unfinished files"): never uploaded until rewritten from 0, or
    # appended to by writers that exit 0. It rests as `unfinished_state` (interrupted or held).
    unfinished: bool = False
    unfinished_state: str = INTERRUPTED
    # D "The commit point": closed, its writers' exits awaited (`closed`); `unknown_writer`: one of
    # them is unknown (a rename or a truncate by path), so only the delay commits it, and an
    # append does not make an unfinished file whole; `completing`: this writing, at its last
    # close, wrote the file to its end in one run from byte 0 or from the size at its first open
    # (`run`: that run as (from, to), None before its first write, False once it is not one run),
    # and no writer of it failed (`writing_failed`).
    awaiting: bool = False
    unknown_writer: bool = False
    # A handle of this writing that changed it was closed: its closer's exit is awaited at the
    # writing's last close (registry: record.writers), whatever the last handle did.
    closer_awaited: bool = False
    completing: bool = False
    run: object = None
    opened_size: int = 0
    writing_failed: bool = False
    # Every byte was written front to back by its writings so far: only then does an append finish it.
    prefix_whole: bool = True
    # The programs that closed a handle they wrote data through, in this writing (from its first
    # open): two of them wrote it at the same time, a mix (registry.changed_through_locked).
    programs: set = field(default_factory=set)
    # D "Trees": its content digest is known (a writer's last close hashes what the writes did not
    # say; a truncate by path to a new length leaves it unknown), so a frozen tree compares a re-copy.
    digest_known: bool = True
    handles: set = field(default_factory=set)
    # Unlinked while open: libfuse renamed it to this .fuse_hidden name (D "A file unlinked
    # while open"); the name goes at its last close.
    hidden: str | None = None
    # After a remount, `unfinished` lives only in the journal's `interrupted` state until an
    # open or truncate brings it back to memory (see SCRATCH_UNFINISHED_FORGOTTEN_AT_REMOUNT).
    unfinished_in_state_only: bool = False

    @property
    def size(self) -> int:
        return len(self.data) if self.crashed_size is None else self.crashed_size

    @property
    def unsure(self) -> bool:
        """Size and bytes disagree after a crash: only unlink, a truncate to 0 and, when the size
        is not 0, an open with O_TRUNC are modelled (the random test does nothing else to it)."""
        return self.crashed_size is not None

    @property
    def in_tree(self) -> bool:
        return "/" in self.name and not self.local

    def compared_bytes(self) -> bytes:
        """What a re-copy is compared with: the server's bytes, or a frozen tree file's own."""
        return self.held if self.held is not None else bytes(self.data)

    @property
    def revived(self) -> bool:
        """Deleted while the server held it, created again: its re-copy is compared until closed."""
        return any(h.check is not None and h.check.revival for h in self.handles)

    @property
    def writers(self) -> int:
        return sum(1 for h in self.handles if h.writable and h.check is None)

    @property
    def state(self) -> str:
        """S "File states", D "States of a file"; `uploading`/`failed` never show between
        settles, since nothing uploads meanwhile."""
        if self.local:
            return LOCAL
        if self.held is not None:
            return COMPLETE
        if self.lost:
            return LOST
        if self.writers:
            return WRITING
        if self.awaiting:
            return CLOSED
        if self.unfinished:
            return self.unfinished_state
        return IN_TREE if self.in_tree else PENDING  # D "Trees": never queued on its own

    def rest_or_await(self, unknown_writer: bool = False) -> None:
        """The last writer closed it (or it took its final name): it rests unfinished, or its
        commit is awaited (registry.close_writer_locked / await_commit_locked)."""
        self.closer_awaited = False
        if self.unfinished and not self.completing:
            self.rest()
        else:
            self.awaiting = True
            self.unknown_writer = self.unknown_writer or unknown_writer

    def rest(self) -> None:
        self.awaiting = self.unknown_writer = False

    def fail(self, state: str) -> None:
        """This writing failed (registry.writer_failed_locked)."""
        self.unfinished, self.unfinished_state, self.completing = True, state, False
        self.writing_failed = True

    def wrote(self, offset: int, end: int) -> None:
        """D "Unfinished files": the writing's run goes on while each write starts within it."""
        if self.run is False:
            return
        if self.run is None:
            self.run = (offset, end) if offset in (0, self.opened_size) else False
        elif self.run[0] <= offset <= self.run[1]:
            self.run = (self.run[0], max(self.run[1], end))
        else:
            self.run = False
        if self.run is False:
            self.prefix_whole = False

    def cut(self, length: int) -> None:
        """A truncate to `length` during a writing: the run still ends the file only if the cut falls in it."""
        if length == 0:
            self.run, self.prefix_whole = (0, 0), True
        elif self.writers and self.run is not False:
            self.run = (self.run[0], length) if self.run and self.run[0] <= length <= self.run[1] else False
            if self.run is False:
                self.prefix_whole = False

    def writes_make_it_whole(self) -> bool:
        """At the last close: one run to the end, from byte 0, or from the old end onto a clean part."""
        if not self.run or self.run[1] < len(self.data):
            return False
        if self.run[0] == 0:
            self.prefix_whole = True
            return True
        return self.prefix_whole


@dataclass(eq=False)
class Check:
    """D "Identical re-copies": a file the server holds, opened for writing, only compares."""
    rewriting: bool
    size: int
    differs: bool = False
    # What RunningDigest would say: the length written front to back, and whether it still is.
    digest_len: int = 0
    digest_valid: bool = True
    # D "Identical re-copies", re-runs that delete first: a deleted file the server holds,
    # created again, is listed again and compared by sha256 only (its spool copy is gone);
    # unless identical it is deleted again at the close.
    revival: bool = False
    # Without the spool copy (a revival of a file the server holds, or a file whose copy was
    # evicted when the handle opened) only the size is compared at each write, and the content by
    # its digest at close. (A frozen tree's file deleted before its archive is up keeps its copy.)
    no_spool: bool = False
    written: bytearray = field(default_factory=bytearray)
    # D "Identical re-copies": written or truncated through since opened; a close before that
    # (a shell's first descriptor) decides nothing but the last.
    touched: bool = False

    def matches(self, held: bytes) -> bool:
        if self.differs or self.size != len(held):
            return False
        if not self.rewriting:
            return True
        if self.no_spool:
            return self.digest_valid and bytes(self.written[:self.size]) == held
        return self.digest_valid and self.digest_len == self.size


@dataclass(eq=False)
class Handle:
    file: File
    writable: bool
    append: bool
    check: Check | None = None
    # Something of the content came through it (O_TRUNC, a write, a truncate, opened empty): its
    # closer's exit is awaited (open_files.flush); through an unchanged one, nobody's is.
    changed: bool = True
    # Data was written through it (handles.FileHandle.altered): its closer is one of the writing's
    # programs (see `programs`).
    altered: bool = False


@dataclass(eq=False)
class Archive:
    """D "Trees": the session's tree planned as one archive when .create was accepted; the tree
    is frozen from then on, so `members` ({path: bytes}, "folder/" for an empty folder) is what
    the archive on the server holds once `held`."""
    members: dict[str, bytes]
    held: bool = False
    # The server lost its session after a tree file was deleted here: never made again as planned.
    lost: bool = False
    # A tree folder was removed once the server held it (D "Trees"): the tree no longer makes it.
    folder_removed: bool = False


@dataclass(eq=False)
class Session:
    name: str
    # Keyed by the path in the session ("Scans/a.jpg" in the tree).
    files: dict[str, File] = field(default_factory=dict)
    # The folders of its tree, by path in the session.
    dirs: set[str] = field(default_factory=set)
    archive: Archive | None = None
    # S "unlink of a file the server holds bytes of": remembered; the name cannot be used again.
    gone: list[File] = field(default_factory=list)
    # D "Decisions": .create accepted (WAITING), then the project made (CREATED: sealed).
    project: str | None = None
    marker_hidden: bool = False
    # The last .create was refused (D "Trees": EINVAL, the reason in status, until one is
    # accepted; memory only, so a remount forgets it).
    marker_refused: bool = False
    # A request cancelled by unlinking .create (status: project `cancelled`, with what to do) until
    # a .create is accepted; memory only, so a remount forgets it.
    marker_cancelled: bool = False

    @property
    def sealed(self) -> bool:
        return self.project == CREATED

    @property
    def archive_complete(self) -> bool:
        """D "Trees": the server holds the whole archive (records.SessionRecord.archive_complete):
        a tree file may then be deleted, as any file the server holds, and an emptied folder too."""
        return self.archive is not None and self.archive.held

    @property
    def tree_frozen(self) -> bool:
        """D "Trees": from .create on (a project requested, or an archive planned) the tree
        cannot change (records.SessionRecord.tree_frozen)."""
        return self.sealed or self.project is not None or self.archive is not None

    def blocked(self) -> bool:
        """projects.blocking_reason_locked: what holds the project back (D "What holds a project
        back"): deleted files the server holds, no file, a file not complete (the archive too),
        a deleted file created again whose writer has not closed it (D "Identical re-copies")."""
        uploads = [f for f in self.files.values() if not f.local and not f.in_tree]
        archive_pending = self.archive is not None and not self.archive.held
        tree = [f for f in self.files.values() if f.in_tree]
        return bool(self.gone) or (not uploads and self.archive is None) or archive_pending or \
            any(f.state != COMPLETE or f.revived for f in uploads) or any(f.revived for f in tree)

    def tree_members(self) -> dict[str, bytes]:
        """archive_plan.members_locked: the tree's files, and its folders that hold nothing of
        the tree at any depth (local scratch is not in it)."""
        files = {f.name: bytes(f.data) for f in self.files.values() if f.in_tree}
        holding = {"/".join(path.split("/")[:depth]) for path in list(files) + list(self.dirs)
                   for depth in range(1, path.count("/") + 1)}
        return files | {path + "/": b"" for path in self.dirs if path not in holding}

    @property
    def gone_names(self) -> set[str]:
        return {f.name for f in self.gone}


# Fixed (the "unfinished" mark is journaled now): after a remount a dot-file whose writer died,
# renamed to a visible name, stays interrupted, as does an interrupted file renamed away and back.
# Kept as a switch for the reference's two code paths; False checks the fixed behaviour.
SCRATCH_UNFINISHED_FORGOTTEN_AT_REMOUNT = False
# Fixed (test_a_file_open_at_a_crash_keeps_the_size_of_its_data): a file open for writing at a
# crash came back with the size of its last close; the journal's replay now takes the spool's.
# Kept as a switch for the reference's two code paths; False checks the fixed behaviour.
CRASHED_SIZE_IS_THE_JOURNALS = False
# Fixed (test_a_local_file_whose_writer_was_killed_keeps_the_size_of_its_data_at_a_crash): a file
# whose writer was killed while another still wrote it, renamed to a local name and open at a
# crash, came back with the size of its last close; a scratch file's replay takes the spool's now.
LOCAL_UNFINISHED_CRASHED_SIZE_IS_THE_JOURNALS = False
# Fixed (test_a_lost_file_truncated_by_path_gets_an_errno): truncate(2) of a `lost` file (its
# spool copy evicted, then its session lost) raised FileNotFoundError in the path model; it is
# EACCES now. False: the random test truncates lost files.
TRUNCATE_OF_A_LOST_FILE_RAISES = False
# Fixed (journal file ids are never reused): a file deleted while open no longer writes its size
# into a new file's row. False: the random test creates files while a deleted one is open.
DELETED_OPEN_FILE_WRITES_A_REUSED_ROW = False


class Reference:
    def __init__(self, sessions):
        self.sessions: dict[str, Session] = {name: Session(name) for name in sessions}

    # --- files -------------------------------------------------------------------------------

    def create(self, session: str, name: str, append: bool) -> tuple[int, Handle | None]:
        s = self.sessions[session]
        if name in STATUS_NAMES:
            return errno.EACCES, None  # S "status": read-only
        if name in s.files and self.compared_on_rewrite(s.files[name]) and s.files[name].held is None:
            # D "Trees": a whole file of the frozen tree takes an identical re-copy (cp -a again).
            return self.open(s.files[name], truncate=True, append=append)
        gone = next((g for g in s.gone if g.name == name), None)
        # A deleted tree file whose digest is unknown (last changed by a truncate by path) has
        # nothing to compare a re-copy with: not revived (registry.revivable_locked wants its
        # sha256), so its name is a new one in the frozen tree, EACCES below (D "Trees": "stays
        # refused"). A file the server holds on its own always has its digest.
        if name not in s.files and not is_local_name(name) and gone is not None and \
                (gone.held is not None or gone.digest_known):
            # D: the server's file (or the frozen tree's, kept in its archive) comes back when written
            # again identical (tar -x twice); compared only, so in a sealed session or a frozen tree too.
            s.gone.remove(gone)
            s.files[name] = gone
            return self._handle(gone, True, append, Check(rewriting=True, size=0, revival=True, no_spool=gone.evicted))
        if s.tree_frozen and folder_of(name):
            # D "Trees": at .create the tree is frozen: no create in it, of a new name or over a
            # file (scratch too, though an open without O_CREAT may write that: model.create).
            return errno.EACCES, None
        if name in s.files:
            # model.create of an existing name: "a create racing another: behave like open with O_TRUNC";
            # D "An identical re-copy into a session whose project exists (sealed) is a no-op too".
            f = s.files[name]
            if s.sealed and f.held is None:
                return errno.EACCES, None
            return self.open(f, truncate=True, append=append)
        if s.sealed:
            return errno.EACCES, None  # D "A sealed session refuses every new name, dot-files included"
        local = is_local_name(name)
        f = File(name, local)
        s.files[name] = f
        return self._handle(f, True, append)

    def open(self, f: File, truncate: bool, append: bool) -> tuple[int, Handle | None]:
        if self.frozen(f) and not self.compared_on_rewrite(f):
            return errno.EACCES, None
        if f.lost:
            return errno.EACCES, None  # its spool copy is gone (open_files: nothing to write into)
        if self.compared_on_rewrite(f):
            # D "Identical re-copies" (and a frozen tree's whole file, D "Trees"): a handle that
            # only compares (with or without O_TRUNC).
            check = Check(rewriting=truncate, size=0 if truncate else len(f.compared_bytes()), no_spool=f.evicted)
            return self._handle(f, True, append, check)
        # S "reopen for write while pending": fine, re-queued at the next close.
        # D interrupted: "Only a rewrite from byte 0 (O_TRUNC, or a truncate to 0) makes it
        # uploadable again: appending keeps it interrupted"; engine.registry.open_for_write_locked
        # also counts opening an empty file as a rewrite from 0.
        f.unfinished_in_state_only = False  # engine.registry.open_for_write_locked: from last_error
        if truncate or f.size == 0:
            f.unfinished = False
            if not f.writers:
                f.prefix_whole = True
        if truncate and f.size:  # model._open_file_locked truncates the spool when the size is not 0
            f.data, f.crashed_size = bytearray(), None
        changed = truncate or f.size == 0  # open_files.open_locked, before the truncation
        if not f.writers:
            # D: a writing that writes it to its end in one run from byte 0 or from its end, by
            # writers that exit 0, makes it whole (known at its last close: `wrote`, `cut`).
            f.completing, f.run, f.opened_size, f.writing_failed = False, None, len(f.data), False
            f.programs = set()
            if changed:
                # A rewrite from byte 0: this writing's writers decide. Otherwise an earlier
                # unknown writer (a truncate by path) keeps only the delay from a close to stand in
                # for its exit (registry.open_for_write_locked: writer_unknown stays unless
                # rewritten), so a settle while this writing is open does not commit it either
                # (`commit`: the clock passes over an open file; D "The commit point").
                f.unknown_writer = False
        err, h = self._handle(f, True, append)
        h.changed = changed
        return err, h

    @staticmethod
    def _handle(f: File, writable: bool, append: bool, check: Check | None = None) -> tuple[int, Handle]:
        h = Handle(f, writable, append, check)
        f.handles.add(h)
        return 0, h

    def write(self, h: Handle, offset: int, data: bytes) -> int:
        f, c = h.file, h.check
        if c is not None:
            # D "Identical re-copies": "each write is compared with it and the first differing
            # byte is refused at once (EACCES)"; a refusal sticks to the handle.
            c.touched = True
            if h.append:
                offset = c.size
            if not c.differs:
                end = offset + len(data)
                # Without the spool copy only the size can be compared at once.
                held = f.compared_bytes()
                same = end <= len(held) and (c.no_spool or held[offset:end] == data)
                if c.rewriting:
                    if c.digest_valid:
                        if offset == c.digest_len:
                            c.digest_len += len(data)
                        else:
                            c.digest_valid = False
                    c.size = max(c.size, end)
                if c.no_spool:
                    c.written[offset:end] = data
                c.differs = not same or (c.no_spool and not (c.rewriting and c.digest_valid))
            return errno.EACCES if c.differs else 0
        h.changed = h.altered = True
        if h.append:
            offset = len(f.data)
        end = offset + len(data)
        f.wrote(offset, end)
        if end > len(f.data):
            f.data.extend(b"\0" * (end - len(f.data)))
        f.data[offset:end] = data
        return 0

    def truncate(self, f: File, length: int, h: Handle | None = None) -> int:
        if h is not None and h.check is not None:
            c = h.check
            c.touched = True
            if length == 0:  # GIO truncates to 0: a rewrite from the first byte begins
                c.rewriting, c.size, c.digest_len, c.digest_valid = True, 0, 0, True
                c.written = bytearray()
                return 0
            if length != c.size:
                c.differs = True
                return errno.EACCES
            return 0
        if length == f.size:
            return 0  # model.truncate: no change, no check (so `truncate -s` of a held file to its size works)
        if h is not None:
            h.changed = True
        if f.held is not None or self.frozen(f):
            return errno.EACCES  # S: truncate of a file the server holds bytes of; D "Trees"
        if f.lost and h is None:
            return errno.EACCES  # its data is gone from here and from the server: copy it again
        if length < len(f.data):
            del f.data[length:]
        else:
            f.data.extend(b"\0" * (length - len(f.data)))
        f.cut(length)
        f.journaled, f.crashed_size = length, None
        f.unfinished_in_state_only = False  # model.truncate: "still partial", from last_error
        if length == 0:
            f.unfinished = False  # D: a truncate to 0 makes an interrupted file uploadable again
        if h is None and not f.writers and not f.local and not f.unfinished and self.listed(f):
            f.awaiting = f.unknown_writer = True  # truncate(1) by path: the delay commits it
        if h is None:
            f.digest_known = length == 0  # nobody's close hashes it (open_files._release_writer)
        return 0

    def close(self, h: Handle, writer_died: bool = False, program: str = "writer") -> int:
        """close(): the FUSE flush, then the release. The errno is the flush's. `program`: who
        closed it (one process, or another)."""
        f, c = h.file, h.check
        f.handles.discard(h)
        if c is None and h.altered and not writer_died:
            f.programs.add(program)
            if len(f.programs) == 2 and not (f.unfinished and f.unfinished_state == INTERRUPTED and not f.completing):
                # D "The commit point": "Two programs that write one file at the same time, each
                # through an open of its own ... the file is held", whatever the writing does after
                # (a rewrite from byte 0 in the same writing too: registry.writer_failed_locked).
                f.fail(HELD)
        if c is not None:
            identical = not writer_died and c.matches(f.compared_bytes())
            if c.revival and not identical and self.listed(f):
                s = self.session_of(f)
                del s.files[f.name]  # deleted again: the server still holds it
                s.gone.append(f)
            if writer_died:
                return 0  # the rewrite was not finished: nothing to compare, nothing kept
            if not identical:
                c.differs = True
                # D: "at close, a rewrite from byte 0 must have the same size and sha256"; one
                # never written through says so in status only (its last close has no errno).
                return errno.EACCES if c.touched else 0
            return 0
        if h.writable and not f.writers:
            f.completing = f.writes_make_it_whole() and not f.writing_failed
            if not writer_died and not f.local and not f.unfinished:
                f.digest_known = True  # its last writer's close hashes it (open_files._release_writer)
        if writer_died and h.writable:
            f.fail(INTERRUPTED)  # D "Unfinished files": killed by a signal with the file open
        if h.writable:
            f.journaled = f.size
            # Through an unchanged handle a close awaits nobody's exit: a file that waited for none
            # (committed before) stays as it was (registry.await_commit_locked commits it at once).
            f.closer_awaited = f.closer_awaited or h.changed
            awaits = f.closer_awaited or writer_died or f.awaiting or f.unfinished
            if not f.writers and not f.local and self.listed(f) and awaits:
                f.rest_or_await()
        return 0

    def died_after_close(self, f: File) -> None:
        """D "The commit point": the writer closed the file, then exited by a signal before the
        commit: held, with the reason (only while listed). Not when a writer died holding it
        (D "Unfinished files": interrupted, whatever the other writers did)."""
        if f.unfinished and f.unfinished_state == INTERRUPTED and not f.completing:
            return
        if f.held is None and f.hidden is None and self.listed(f):
            f.fail(HELD)
            f.unfinished_in_state_only = False
            if not f.writers:
                f.rest()

    def frozen(self, f: File) -> bool:
        """D "Trees": a listed tree file (not scratch) once .create froze the tree
        (fs.rules.frozen_reason_locked)."""
        return f.in_tree and self.listed(f) and self.session_of(f).tree_frozen

    def compared_on_rewrite(self, f: File) -> bool:
        """A rewrite only compares: the server holds it, or it is a whole file of a frozen tree
        (fs.content_check.compared_on_rewrite_locked)."""
        return f.held is not None or (self.frozen(f) and f.state == IN_TREE and f.digest_known)

    def listed(self, f: File) -> bool:
        return any(s.files.get(f.name) is f for s in self.sessions.values())

    def session_of(self, f: File) -> Session:
        return next(s for s in self.sessions.values() if s.files.get(f.name) is f)

    def unlink(self, session: str, name: str, hidden: str | None = None) -> int:
        """S unlink: a local-only file is gone; one the server holds is remembered. With handles
        open, libfuse renames it to `hidden` (a path beside it) instead: the same, for fs360.
        Returns the errno."""
        s = self.sessions[session]
        if self.frozen(s.files[name]) and not s.archive_complete and not self.compared_on_rewrite(s.files[name]):
            return errno.EACCES  # D "Trees"
        f = s.files.pop(name)
        f.hidden = hidden
        if f.held is not None or (f.in_tree and s.archive_complete):  # D "Trees": the server holds it
            f.evicted = True  # registry.remove_file_locked: the spool copy goes with the unlink
            s.gone.append(f)
        elif f.in_tree and s.archive is not None:
            s.gone.append(f)  # D "Trees": the archive not up yet keeps it, and reads its spool copy
        return 0

    def rename(self, src: str, name: str, dst: str, new: str) -> int:
        """Returns the errno. S rename; D "Identical re-copies" for a scratch copy
        renamed onto a held file."""
        s, t = self.sessions[src], self.sessions[dst]
        f = s.files[name]
        if new in STATUS_NAMES:
            return errno.EPERM  # model: "status is reserved"
        target = t.files.get(new)
        if target is f:
            return 0
        if target is not None and f.local and target.held is not None:
            # D: "Renaming a local scratch file ... onto a name the server holds: identical content
            # (size and sha256) is accepted, the scratch file is dropped; different: EACCES".
            if f.unfinished or bytes(f.data) != target.held:
                return errno.EACCES
            del s.files[name]  # dropped; still-open handles keep writing to nothing listed
            return 0
        if f.held is not None or (target is not None and target.held is not None):
            return errno.EACCES  # S: the server cannot rename or replace a file
        if t.sealed:
            return errno.EACCES  # D: a sealed session takes no new name
        if self.frozen(f) or (t.tree_frozen and folder_of(new)):
            return errno.EACCES  # D "Trees": nothing moves into or out of a frozen tree
        new_local = is_local_name(new)
        if not new_local and new in t.gone_names:
            return errno.EACCES  # the name of a deleted file the server holds
        if target is not None:
            del t.files[new]  # S: "replaces a local-only target (POSIX)"
        del s.files[name]
        was_local = f.local
        if new_local and not was_local and f.unfinished_in_state_only and SCRATCH_UNFINISHED_FORGOTTEN_AT_REMOUNT:
            f.unfinished = False  # the rename to a scratch name drops the `interrupted` state
        f.name, f.local = new, new_local
        t.files[new] = f
        if was_local and not new_local and not f.writers and not f.lost:
            # D: a closed scratch file renamed to its final name waits for the renamer's exit
            # (unknown here: the delay commits it); an unfinished one rests.
            if f.unfinished and not f.completing:
                f.rest()
            else:
                f.awaiting = f.unknown_writer = True
            # Its writing's closers are the awaited writers now (registry_commits: a commit clears
            # them), so a later close through an unchanged handle awaits nobody.
            f.closer_awaited = False
        return 0

    def readable(self, f: File) -> bool:
        """A read needs the spool copy (open_files: "only the server holds this file's data now")."""
        return not f.evicted

    def release(self, f: File) -> int:
        """`fs360 release PATH`: a held file is queued (D "held"); anything else is EINVAL."""
        if f.state != HELD:
            return errno.EINVAL
        f.unfinished, f.unfinished_state = False, INTERRUPTED
        return 0

    def write_marker(self, session: str) -> int:
        """`echo '{...}' > .create` by a writer that exits 0: the project is requested (D
        "Decisions": .create); once the project exists only its same bytes may be written again. D "Trees": a tree is planned
        as one archive then (its closed files committed first, engine.request_project_locked),
        or the marker is refused (EINVAL) while a tree file is written or unfinished."""
        s = self.sessions[session]
        if s.sealed:
            # The same bytes again (the machine always writes the same .create: a re-run of the
            # copy) are taken and change nothing; removed after the project, it is a new one: refused.
            return errno.EACCES if s.marker_hidden else 0
        if s.archive is None:
            tree = [f for f in s.files.values() if f.in_tree]
            for f in tree:
                if f.awaiting and not f.writers:  # committed without its writers' exits
                    f.completing = False
                    f.rest()
            members = s.tree_members()
            if members:
                if any(f.state != IN_TREE for f in tree):
                    s.marker_refused = True
                    return errno.EINVAL
                s.archive = Archive(members)
        s.project, s.marker_hidden, s.marker_refused, s.marker_cancelled = WAITING, False, False, False
        return 0

    def unlink_marker(self, session: str) -> int:
        """`rm .create`: cancels a request not yet made; once the project exists only hides it."""
        s = self.sessions[session]
        if s.project is None or s.marker_hidden:
            return errno.ENOENT
        if s.sealed:
            s.marker_hidden = True
        else:
            s.project, s.marker_cancelled = None, True
            if s.archive is not None and not s.archive.held:
                s.archive = None  # nothing of it reached the server: the tree may change again
                s.gone = [g for g in s.gone if not g.in_tree]  # kept only for that archive
        return 0

    # --- the tree's folders (D "Trees") --------------------------------------------------------

    def mkdir(self, session: str, path: str) -> int:
        s = self.sessions[session]
        if s.tree_frozen:
            return errno.EACCES
        s.dirs.add(path)
        return 0

    def rmdir(self, session: str, path: str) -> int:
        s = self.sessions[session]
        if any(is_below(p, path) for p in list(s.dirs) + list(s.files)):
            return errno.ENOTEMPTY  # POSIX, before the frozen tree (model.rmdir)
        if s.tree_frozen and not s.archive_complete:
            return errno.EACCES
        s.dirs.remove(path)
        if s.archive_complete:
            s.archive.folder_removed = True
        return 0

    def move_folder(self, session: str, old: str, new: str) -> int:
        """A folder moves with all it holds, within its session (`new` is free, not below `old`)."""
        s = self.sessions[session]
        if s.tree_frozen:
            return errno.EACCES
        moved = lambda p: new + p[len(old):] if p == old or is_below(p, old) else p
        s.dirs = {moved(d) for d in s.dirs}
        files = {}
        for name, f in s.files.items():
            f.name = moved(name)
            files[f.name] = f
        s.files = files
        return 0

    def marker_listed(self, s: Session) -> bool:
        return s.project is not None and not s.marker_hidden

    def creatable(self) -> list[Session]:
        """Sessions whose requested project the mount creates now (nothing holds it back)."""
        return [s for s in self.sessions.values() if s.project == WAITING and not s.blocked()]

    def project_created(self, s: Session) -> None:
        """The project exists: the session is sealed, its files' spool copies go (D "After the
        project exists")."""
        s.project = CREATED
        for f in s.files.values():
            if f.held is not None or f.in_tree:  # D "Trees": the tree's spool files go too
                f.evicted = True

    def evict(self) -> None:
        """The disk passed 90% full: every complete file's spool copy goes (never unsent data)."""
        for s in self.sessions.values():
            for f in s.files.values():
                if f.held is not None:
                    f.evicted = True

    def lose_session(self, session: str) -> None:
        """The server forgot the session (D "Uploads": session lost): every file it held goes
        again from the spool into a new one, or is `lost` where the spool copy is gone; the
        deleted files it held are forgotten (their names are free again)."""
        s = self.sessions[session]
        if s.archive is not None:
            s.archive.held = False  # it goes again, from the tree's spool files
            # ... unless a tree file was deleted or a tree folder removed since: then it is `lost`,
            # with the reason (D "Trees": "the archive cannot be made again as planned").
            s.archive.lost = s.archive.lost or s.archive.folder_removed or any(g.in_tree for g in s.gone)
        s.gone.clear()
        for f in s.files.values():
            if f.held is not None and not f.local:
                f.held, f.server_name = None, None
                f.lost = f.evicted

    def rename_session(self, old: str, new: str) -> None:
        s = self.sessions.pop(old)  # S rename of a session: local only
        s.name = new
        self.sessions[new] = s

    # --- time and restarts -------------------------------------------------------------------

    def pending(self) -> list[tuple[Session, File]]:
        return [(s, f) for s in self.sessions.values() for f in s.files.values() if f.state == PENDING]

    def settle(self, server_name_of) -> None:
        """The writers exited 0, the write-back delay passed and the uploads finished (retrying
        through any fault): every closed file is committed, and every pending file is
        complete, under the server name the mount gave it."""
        self.commit()
        for s, f in self.pending():
            f.held = bytes(f.data)
            f.server_name = server_name_of(s.name, f.name)
        for s in self.sessions.values():
            if s.archive is not None and not s.archive.lost:
                s.archive.held = True

    def commit(self) -> None:
        """The writers exited 0 and the write-back delay passed: every closed file is committed
        (an appended unfinished one is whole when its writers are all known)."""
        for s in self.sessions.values():
            for f in list(s.files.values()) + s.gone:
                if f.awaiting and not f.writers:
                    if f.completing and not f.unknown_writer:
                        f.unfinished = False
                    f.completing = False
                    f.rest()
                elif f.writers and not f.unknown_writer:
                    # Open for writing now: the exits awaited so far came (what came before this
                    # writing, the mount's earlier writers, and this writing's closers of changed
                    # handles), so a close through an unchanged handle then awaits nobody. The
                    # delay stands in for an unknown writer's exit only at a close (the commit
                    # clock passes over an open file).
                    f.awaiting = f.closer_awaited = False
                elif f.local:
                    f.closer_awaited = False  # its closers exited 0 (journaled: registry_commits)

    def remount(self) -> None:
        """The mount stopped (its handles are gone without a close) and a new one started on the
        same cache: D "the mount stopped while the file was open" -> interrupted; files unlinked
        while open are gone; pending uploads resume (S "The journal ... resumes every upload")."""
        for s in self.sessions.values():
            s.marker_refused = s.marker_cancelled = False
            for name, f in list(s.files.items()):
                if f.revived:
                    # D "Identical re-copies": until its writer closes it the compare has not ended,
                    # "and the journal keeps the file deleted: a restart during the compare finds it
                    # deleted" (registry.revived_locked journals unlinked=0 only at an identical close).
                    del s.files[name]
                    s.gone.append(f)
            for f in list(s.files.values()) + s.gone:
                # Whether its last writing made it whole waited for that writing's exits, which the
                # new mount never sees (registry: `completing` is memory only).
                f.completing = False
                if f.awaiting:
                    # D: closed but not committed when the mount stopped: held.
                    f.unfinished, f.unfinished_state = True, HELD
                    f.rest()
                elif f.local and f.closer_awaited and not f.unfinished and not f.writers:
                    # A scratch file closed by a writer whose exit had not come: that exit is
                    # unknown now, so should it get its final name it is held (registry.py).
                    f.unfinished, f.unfinished_state = True, HELD
                if f.writers:
                    journals = CRASHED_SIZE_IS_THE_JOURNALS or \
                        (LOCAL_UNFINISHED_CRASHED_SIZE_IS_THE_JOURNALS and f.local and f.unfinished)
                    f.unfinished, f.unfinished_state = True, INTERRUPTED
                    f.rest()
                    if journals and f.journaled != len(f.data):
                        f.crashed_size = f.journaled
                if f.local and SCRATCH_UNFINISHED_FORGOTTEN_AT_REMOUNT:
                    f.unfinished = False
                f.unfinished_in_state_only = f.unfinished
                f.handles.clear()
                f.hidden = None

    def expected_on_server(self) -> dict[str, dict[str, str]]:
        """session name -> {server name: sha256} of everything the server must hold."""
        import hashlib
        return {s.name: {f.server_name: hashlib.sha256(f.held).hexdigest()
                         for f in list(s.files.values()) + s.gone if f.held is not None}
                for s in self.sessions.values()}
