"""The registry: every session, file, folder and project record, and their state machine.

It is the only writer of record state. Each change is written through to the
journal in the same step (journal first: if the journal cannot take a change,
memory does not pretend it happened), so a restart replays exactly what was
promised. Every method needs the engine's state lock held (hence `_locked`); none
does network I/O. A file that becomes due is handed to `schedule(record, delay)`,
the scheduler's door, so the registry can be tested alone; `nudge()` wakes
housekeeping when something a project waits for changed.

Over 500 lines because it is one state machine (sessions, files, the names they
go to the server under): splitting it would spread each transition over files.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Callable

from ..config import Settings
from .journal import PROJECT_COLUMNS, Journal
from .locking import StateLock
from .records import (COMPLETE, FAILED, INTERRUPTED, IN_TREE, LOCAL, LOST, P_CREATED, P_READY, PENDING,
                      QUEUED_STATES, UPLOADING, WRITING, FileRecord, ProjectRequest, SessionRecord)
from .server_names import deduplicated, server_name_for
from .spool import RunningDigest, Spool

log = logging.getLogger(__name__)

# Why a file open for writing when the mount stopped is not whole (journaled at its first open).
STOPPED_WHILE_WRITING = "the mount stopped while this file was being written; copy it again"


@dataclass
class Caps:
    """What the server taught us (or the settings said): the caps and the extensions."""
    file_cap: int = 0
    session_cap: int = 0
    allowed_extensions: tuple[str, ...] = ()
    refused_extensions: tuple[str, ...] = ()


def project_may_use(session: SessionRecord, upload_id: str) -> bool:
    """Whether a project was (or may have been) made from `upload_id`: a DELETE of the
    session may then discard the project's input on the real server (api.md Part C)."""
    project = session.project
    return project is not None and (project.state in (P_CREATED, P_READY) or project.posted_upload_id == upload_id)


class Registry:
    def __init__(self, settings: Settings, journal: Journal, spool: Spool, lock: StateLock,
                 schedule: Callable[[FileRecord, float], None], nudge: Callable[[], None] = lambda: None):
        self.settings = settings
        self.journal = journal
        self.spool = spool
        self.lock = lock
        self._schedule = schedule
        # Tells housekeeping that something a project waits for changed (it looks again now).
        self.nudge = nudge
        self.sessions: dict[str, SessionRecord] = {}
        self._sessions_by_id: dict[int, SessionRecord] = {}
        self._files: dict[int, FileRecord] = {}
        # Folder id -> (session id, path): the archive plan's view of the folders, kept in memory so
        # that status renders (which list a tree's entries) never query the journal.
        self._folders: dict[int, tuple[int, str]] = {}
        self.caps = Caps()

    # --- replay -------------------------------------------------------------------------------

    def replay_locked(self) -> None:
        """Loads the journal; files that were on their way are queued again, to be resynced."""
        learned = self.journal.get_meta("caps", {})
        self.caps = Caps(
            file_cap=self.settings.max_file_size or learned.get("file_cap", 0),
            session_cap=self.settings.max_session_size or learned.get("session_cap", 0),
            allowed_extensions=tuple(self.settings.allowed_extensions or learned.get("allowed_extensions", ())),
            refused_extensions=tuple(learned.get("refused_extensions", ())),
        )
        for row in self.journal.sessions():
            session = SessionRecord(id=row["id"], name=row["name"], mode=row["mode"], mtime_ns=row["mtime_ns"],
                                    upload_id=row["upload_id"], expires_at=row["expires_at"],
                                    sealed=bool(row["sealed"]), uid=row["uid"], gid=row["gid"])
            self.sessions[session.name] = session
            self._sessions_by_id[session.id] = session
        for row in self.journal.files():
            session = self._sessions_by_id.get(row["session_id"])
            if session is None:
                self.journal.delete_file(row["id"])
                continue
            record = FileRecord(
                id=row["id"], session_id=row["session_id"], name=row["name"], mode=row["mode"],
                mtime_ns=row["mtime_ns"], size=row["size"], uid=row["uid"], gid=row["gid"], state=row["state"],
                server_received=row["server_received"], upload_id=row["upload_id"], last_error=row["last_error"],
                attempts=row["attempts"], next_attempt=row["next_attempt"], completed_at=row["completed_at"],
                evicted=bool(row["evicted"]), unlinked=bool(row["unlinked"]), server_name=row["server_name"],
                sha256=row["sha256"], archive=bool(row["archive"]), unfinished=row["unfinished"])
            record.local_only = record.state == LOCAL
            self._files[record.id] = record
            if record.archive:
                session.archive = record
            elif record.unlinked:
                session.unlinked.append(record)
            else:
                session.files[record.name] = record
            if record.server_name:
                session.server_names[record.server_name.lower()] = record
            if record.state == WRITING or record.unfinished == STOPPED_WHILE_WRITING:
                self._size_from_spool_locked(record)
            if record.state == WRITING:
                # The mount stopped while a program was writing it: its data may be
                # partial, so it is never uploaded as if it were whole.
                self.set_unfinished_locked(record, STOPPED_WHILE_WRITING)
                self.set_state_locked(record, INTERRUPTED, last_error=record.unfinished)
            elif record.state == INTERRUPTED and not record.unfinished:
                # A journal from before `unfinished` was kept: the state says it all.
                record.unfinished = record.last_error or "an earlier write of this file did not finish"
            elif record.state in (PENDING, UPLOADING, FAILED):
                record.needs_resync = True
                if record.state == UPLOADING:
                    self.set_state_locked(record, PENDING)
                self._schedule(record, 0.0)
        for row in self.journal.dirs():
            self._folders[row["id"]] = (row["session_id"], row["path"])
        for row in self.journal.projects():
            session = self._sessions_by_id.get(row["session_id"])
            if session is not None:
                session.project = ProjectRequest(
                    options=json.loads(row["options"]), state=row["state"], name=row["name"],
                    status=row["status"], record=json.loads(row["record"]), last_error=row["last_error"],
                    attempts=row["attempts"], next_attempt=0.0, posted_upload_id=row["posted_upload_id"],
                    marker_hidden=bool(row["marker_hidden"]))

    def _size_from_spool_locked(self, record: FileRecord) -> None:
        """A file open for writing when the mount stopped: the journal has the size of its last
        close (sizes are journaled at close), the spool holds what was written since."""
        try:
            size = os.stat(self.spool.path(record.id)).st_size
        except OSError:
            return  # deleted while open: nothing is left to size
        if size != record.size:
            record.size = size
            self.journal.update_file(record.id, size=size)

    # --- lookups ------------------------------------------------------------------------------

    def session_of(self, record: FileRecord) -> SessionRecord:
        return self._sessions_by_id[record.session_id]

    def holds_session_locked(self, session: SessionRecord) -> bool:
        """Whether `session` is still registered (not discarded by rmdir)."""
        return self._sessions_by_id.get(session.id) is session

    def file_locked(self, file_id: int) -> FileRecord | None:
        return self._files.get(file_id)

    def is_current_locked(self, record: FileRecord, generation: int) -> bool:
        """Whether `record` is still registered, listed and unchanged since `generation`."""
        return record.generation == generation and not record.unlinked and record.id in self._files

    def files_locked(self):
        return self._files.values()

    def counts_locked(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for record in self._files.values():
            out[record.state] = out.get(record.state, 0) + 1
        return out

    # --- sessions -----------------------------------------------------------------------------

    def create_session_locked(self, name: str, mode: int, uid: int | None = None,
                              gid: int | None = None) -> SessionRecord:
        now_ns = time.time_ns()
        session_id = self.journal.insert_session(dict(name=name, upload_id=None, expires_at=None, mode=mode,
                                                      mtime_ns=now_ns, sealed=0, uid=uid, gid=gid))
        session = SessionRecord(id=session_id, name=name, mode=mode, mtime_ns=now_ns, uid=uid, gid=gid)
        self.sessions[name] = session
        self._sessions_by_id[session_id] = session
        return session

    def rename_session_locked(self, session: SessionRecord, new_name: str) -> None:
        del self.sessions[session.name]
        session.name = new_name
        self.sessions[new_name] = session
        self.journal.update_session(session.id, name=new_name)

    def discard_session_locked(self, session: SessionRecord) -> str | None:
        """rmdir: forgets the session and its spool. Returns the server session to delete (None:
        none, or a project may use it)."""
        archive = [session.archive] if session.archive is not None else []
        for record in list(session.files.values()) + session.unlinked + archive:
            record.generation += 1
            self.spool.remove(record.id)
            self._files.pop(record.id, None)
        del self.sessions[session.name]
        del self._sessions_by_id[session.id]
        self.journal.delete_session(session.id)
        if session.upload_id and not project_may_use(session, session.upload_id):
            return session.upload_id
        return None

    def set_session_attrs_locked(self, session: SessionRecord, mode: int | None = None,
                                 mtime_ns: int | None = None, uid: int | None = None, gid: int | None = None) -> None:
        if mode is not None:
            session.mode = mode
        if mtime_ns is not None:
            session.mtime_ns = mtime_ns
        if uid is not None:
            session.uid = uid
        if gid is not None:
            session.gid = gid
        self.journal.update_session(session.id, mode=session.mode, mtime_ns=session.mtime_ns, uid=session.uid,
                                    gid=session.gid)

    def session_opened_locked(self, session: SessionRecord, upload_id: str, expires_in: float) -> None:
        session.upload_id = upload_id
        session.remote_names = {}  # a new session holds nothing
        session.expires_at = time.time() + expires_in
        self.journal.update_session(session.id, upload_id=upload_id, expires_at=session.expires_at)

    def session_lost_locked(self, session: SessionRecord, dead_upload_id: str) -> str | None:
        """The server lost the session (404 or expiry): every file goes again from the spool.
        Returns the dead server session to delete (None: nothing to do, or a project may use it)."""
        if session.upload_id != dead_upload_id or not self.holds_session_locked(session):
            return None  # somebody already handled it, or the session was discarded (rmdir)
        log.warning("session %r: the server no longer has upload session; sending its files again", session.name)
        session.upload_id = None
        session.expires_at = None
        session.remote_names = None
        self.journal.update_session(session.id, upload_id=None, expires_at=None)
        for record in session.unlinked:
            self.release_server_name_locked(record)
            self._files.pop(record.id, None)
            self.journal.delete_file(record.id)
            self.spool.remove(record.id)
        session.unlinked.clear()
        for record in session.uploads():
            if record.state in (WRITING, INTERRUPTED):
                continue
            record.server_received = 0
            record.upload_id = None
            if record.state == UPLOADING:
                # Its worker meets the 404 itself and puts it back in the queue.
                self.journal.update_file(record.id, server_received=0, upload_id=None)
                continue
            if record.evicted:
                self.set_state_locked(record, LOST, last_error="the server lost this file and the local copy "
                                                               "was already dropped: copy it again")
                continue
            self.set_state_locked(record, PENDING, last_error="", attempts=0)
            self._schedule(record, 0.0)
        self.nudge()
        # Idempotent: if the server still has it somewhere, it stops using the account's quota.
        return None if project_may_use(session, dead_upload_id) else dead_upload_id

    def seal_locked(self, session: SessionRecord) -> None:
        session.sealed = True
        self.journal.update_session(session.id, sealed=1)

    # --- projects -----------------------------------------------------------------------------

    def set_project_locked(self, session: SessionRecord, project: ProjectRequest | None) -> None:
        session.project = project
        if project is None:
            session.notice = ""
            self.journal.delete_project(session.id)
        else:
            self.journal.upsert_project(session.id, {c: getattr(project, c) for c in PROJECT_COLUMNS})

    def update_project_locked(self, session: SessionRecord, **values) -> None:
        self.journal.update_project(session.id, **values)
        for key, value in values.items():
            setattr(session.project, key, value)

    def hide_marker_locked(self, session: SessionRecord) -> None:
        """`unlink .create` after the project exists: the project stays, the marker leaves the listing."""
        self.update_project_locked(session, marker_hidden=True)

    # --- folders of a session's tree (the path model keeps them; the journal remembers them) --------

    def folder_rows_locked(self) -> list:
        """Every journaled folder: rows of (id, session_id, path, mode, mtime_ns), read once by the
        path model when it starts."""
        return self.journal.dirs()

    def folder_paths_locked(self, session: SessionRecord) -> list[str]:
        """The paths of the session's folders, sorted (the same tree gives the same archive)."""
        return sorted(path for session_id, path in self._folders.values() if session_id == session.id)

    def add_folder_locked(self, session: SessionRecord, path: str, mode: int, mtime_ns: int,
                          uid: int | None = None, gid: int | None = None) -> int:
        folder_id = self.journal.insert_dir(session.id, path, mode, mtime_ns, uid, gid)
        self._folders[folder_id] = (session.id, path)
        return folder_id

    def update_folder_locked(self, folder_id: int, **values) -> None:
        self.journal.update_dir(folder_id, **values)
        if "path" in values and folder_id in self._folders:
            self._folders[folder_id] = (self._folders[folder_id][0], values["path"])

    def remove_folder_locked(self, folder_id: int) -> None:
        self.journal.delete_dir(folder_id)
        self._folders.pop(folder_id, None)

    def remove_folders_of_locked(self, session: SessionRecord) -> None:
        self.journal.delete_dirs_of(session.id)
        for folder_id in [i for i, (session_id, _) in self._folders.items() if session_id == session.id]:
            del self._folders[folder_id]

    # --- files: writers ------------------------------------------------------------------------

    def create_file_locked(self, session: SessionRecord, name: str, mode: int, uid: int, gid: int,
                           local_only: bool) -> FileRecord:
        """A new file, created to be opened for writing at once (open_for_write_locked): one
        journal row that already says so, and holds its server name."""
        now_ns = time.time_ns()
        state = LOCAL if local_only else WRITING
        uploaded_alone = not local_only and "/" not in name  # not scratch, not in the tree
        server_name = self._free_server_name_locked(name, session) if uploaded_alone else None
        values = dict(session_id=session.id, name=name, size=0, mode=mode, uid=uid, gid=gid, mtime_ns=now_ns,
                      state=state, server_received=0, upload_id=None, last_error="", attempts=0, next_attempt=0,
                      completed_at=0, evicted=0, unlinked=0, server_name=server_name, sha256=None, archive=0,
                      unfinished=STOPPED_WHILE_WRITING)
        file_id = self.journal.insert_file(values)
        self.spool.create(file_id)
        record = FileRecord(id=file_id, session_id=session.id, name=name, mode=mode, mtime_ns=now_ns, uid=uid,
                            gid=gid, state=state, local_only=local_only, server_name=server_name,
                            stop_journaled=True)
        self._files[file_id] = record
        session.files[name] = record
        if server_name:
            session.server_names[server_name.lower()] = record
        return record

    def add_archive_locked(self, session: SessionRecord, size: int, server_name: str) -> FileRecord:
        """The session's tree frozen as one upload of its own (see archive_plan.py), queued now."""
        now_ns = time.time_ns()
        name = session.name + ".zip"
        values = dict(session_id=session.id, name=name, size=size, mode=0o644, uid=os.getuid(), gid=os.getgid(),
                      mtime_ns=now_ns, state=PENDING, server_received=0, upload_id=None, last_error="",
                      attempts=0, next_attempt=0, completed_at=0, evicted=0, unlinked=0, server_name=server_name,
                      sha256=None, archive=1, unfinished="")
        file_id = self.journal.insert_file(values)
        record = FileRecord(id=file_id, session_id=session.id, name=name, mode=0o644, mtime_ns=now_ns, size=size,
                            uid=values["uid"], gid=values["gid"], state=PENDING, server_name=server_name,
                            archive=True)
        self._files[file_id] = record
        session.archive = record
        session.server_names[server_name.lower()] = record
        self._schedule(record, 0.0)
        return record

    def drop_archive_locked(self, session: SessionRecord) -> None:
        """The archive was planned but nothing of it reached the server: the tree may change again."""
        archive = session.archive
        archive.generation += 1
        self._files.pop(archive.id, None)
        self.release_server_name_locked(archive, session)
        self.journal.delete_file(archive.id)
        session.archive = None

    def open_for_write_locked(self, record: FileRecord, rewrite: bool = False, truncated: bool = False) -> None:
        """A writer opened it: any pending upload is cancelled until the last close.

        `rewrite`: the content starts again from byte 0 (O_TRUNC, or an empty file), so an
        earlier failure no longer matters. Otherwise an `interrupted` file stays unfinished:
        appending to a partial file does not make it whole. `truncated`: its spool file was
        just cut to 0 (O_TRUNC)."""
        record.open_writers += 1
        if truncated and record.size:
            record.size = 0
            record.mtime_ns = time.time_ns()
        if rewrite:
            self.set_unfinished_locked(record, "")
            record.digest = RunningDigest()
        elif record.state == INTERRUPTED and not record.unfinished:
            self.set_unfinished_locked(record, record.last_error or "an earlier write of this file did not finish")
        if record.open_writers == 1 and not record.unfinished and not record.stop_journaled:
            # Journal only (memory keeps the truth while it is open): should the mount stop before
            # the last close, the file comes back unfinished. A scratch file has no `writing` state
            # to say so, and a rename to its final name must never upload it then.
            self.journal.update_file(record.id, unfinished=STOPPED_WHILE_WRITING)
            record.stop_journaled = True
        if record.local_only:
            return
        record.generation += 1
        if record.state != WRITING:
            self.set_state_locked(record, WRITING, last_error="", attempts=0)

    @staticmethod
    def wrote_locked(record: FileRecord, end: int) -> RunningDigest | None:
        """Bytes up to `end` were written to its spool file (memory only until the last close).
        Returns the running digest for the caller to feed the data to, after the lock is released."""
        if end > record.size:
            record.size = end
        record.mtime_ns = time.time_ns()
        return record.digest

    @staticmethod
    def allocated_locked(record: FileRecord, end: int) -> None:
        """fallocate grew its spool file to `end` with zeros."""
        if end > record.size:
            record.size = end
            if record.digest is not None:
                record.digest.invalidate()

    def close_writer_locked(self, record: FileRecord, size: int, unfinished: str = "") -> None:
        """A writer closed it. `unfinished`: why that writer did not finish (a failed write,
        a dying process): the file is then never uploaded as it is."""
        record.open_writers = max(0, record.open_writers - 1)
        record.size = size
        if unfinished and not record.unfinished:
            self.set_unfinished_locked(record, unfinished)
        last_close = not record.open_writers and record.id in self._files
        if last_close:
            # The journal's unfinished becomes what memory says (set_unfinished_locked journaled a
            # reason; '' goes with the row's next write below, or with the queuing).
            record.stop_journaled = False
        if record.open_writers or record.unlinked or record.local_only or record.id not in self._files:
            as_is = {"unfinished": record.unfinished} if last_close else {}
            self.journal.update_file(record.id, size=size, mtime_ns=record.mtime_ns, **as_is)
        elif record.unfinished:
            self._interrupt_locked(record)
        else:
            self.queue_upload_locked(record)

    def truncated_locked(self, record: FileRecord, length: int, listed: bool) -> None:
        """Its spool file was truncated to `length`: with no writer open it is queued again
        (truncate -s); `listed`: the file is still in its folder."""
        record.size = length
        record.mtime_ns = time.time_ns()
        if length == 0:
            # Rewritten from 0: whatever was unfinished before is gone with its bytes.
            self.set_unfinished_locked(record, "")
            record.digest = RunningDigest()
        else:
            if record.digest is not None:
                record.digest.cut(length)
            if record.state == INTERRUPTED and not record.unfinished:
                self.set_unfinished_locked(record, record.last_error)  # still partial
        if not record.open_writers and not record.local_only and not record.unfinished and listed:
            self.queue_upload_locked(record)
        else:
            self.journal.update_file(record.id, size=length, mtime_ns=record.mtime_ns)

    def queue_upload_locked(self, record: FileRecord, delay: float | None = None) -> None:
        """The file is closed and its name final: upload it after the write-back delay (or `delay`).
        A file of the tree is whole now, and waits for the archive instead."""
        record.generation += 1
        # Whole (it is queued): `unfinished` '' goes in the same journal write.
        if record.in_tree:
            self.set_state_locked(record, IN_TREE, size=record.size, mtime_ns=record.mtime_ns, last_error="",
                                  attempts=0, unfinished="")
            return
        self.set_state_locked(record, PENDING, size=record.size, mtime_ns=record.mtime_ns, last_error="",
                              attempts=0, sha256=self.content_sha256(record), unfinished="")
        self._schedule(record, self.settings.writeback_delay if delay is None else delay)

    # --- files: names and removal ----------------------------------------------------------------

    def rename_file_locked(self, record: FileRecord, target: SessionRecord, new_name: str, local_only: bool) -> None:
        source = self.session_of(record)
        replaced = target.files.get(new_name)
        if replaced is not None and replaced is not record:
            self.remove_file_locked(replaced)
        del source.files[record.name]
        record.name = new_name
        record.session_id = target.id
        target.files[new_name] = record
        self.journal.update_file(record.id, name=new_name, session_id=target.id)
        was_local = record.local_only
        record.local_only = local_only
        if was_local and not local_only:
            if record.open_writers:
                self.set_state_locked(record, WRITING)
            elif record.unfinished:
                self._interrupt_locked(record)
            else:
                # A closed scratch file (rsync's .name.XXXXXX, GIO's .goutputstream-*) renamed to
                # its final name: the rename is the writer's "done", no delay needed.
                self.queue_upload_locked(record, delay=0.0)
        elif not was_local and local_only:
            record.generation += 1
            self.set_state_locked(record, LOCAL, last_error="")
        elif (record.state == IN_TREE) != record.in_tree and record.state in QUEUED_STATES + (IN_TREE, UPLOADING):
            # A closed file moved into the tree (its upload, not begun, stops), or out of it.
            self.queue_upload_locked(record)
        elif record.state in QUEUED_STATES:
            # A rename right after close (rsync, GIO): wait the delay again from now.
            record.generation += 1
            self._schedule(record, self.settings.writeback_delay)
        self._rechoose_server_name_locked(record, source)

    def remove_file_locked(self, record: FileRecord) -> None:
        """unlink: a file the server may hold is remembered (the session cannot drop it)."""
        session = self.session_of(record)
        # The spool file goes first: on a full disk, that is what makes room for the journal.
        self.spool.remove(record.id)
        if record.may_be_on_server and not record.local_only:
            self.journal.update_file(record.id, unlinked=1, evicted=1)
            record.unlinked = record.evicted = True
            session.unlinked.append(record)
        else:
            self._forget_file_locked(record, session)
        session.files.pop(record.name, None)
        record.generation += 1
        self.nudge()

    def _forget_file_locked(self, record: FileRecord, session: SessionRecord) -> None:
        self.journal.delete_file(record.id)
        self._files.pop(record.id, None)
        self.release_server_name_locked(record, session)

    def choose_server_name_locked(self, record: FileRecord, session: SessionRecord,
                                  avoid: set[str] = frozenset()) -> None:
        """Gives `record` the server name of its local name, de-duplicated in its session
        against every other file's name and `avoid` (names the server already holds)."""
        self.release_server_name_locked(record, session)
        chosen = self._free_server_name_locked(record.name, session, avoid)
        session.server_names[chosen.lower()] = record
        if chosen != record.server_name:
            record.server_name = chosen
            self.journal.update_file(record.id, server_name=chosen)

    @staticmethod
    def _free_server_name_locked(name: str, session: SessionRecord, avoid: set[str] = frozenset()) -> str:
        return deduplicated(server_name_for(name), set(session.server_names) | avoid)

    def release_server_name_locked(self, record: FileRecord, session: SessionRecord | None = None) -> None:
        session = session or self._sessions_by_id.get(record.session_id)
        if session is not None and record.server_name \
                and session.server_names.get(record.server_name.lower()) is record:
            del session.server_names[record.server_name.lower()]

    def _rechoose_server_name_locked(self, record: FileRecord, source: SessionRecord) -> None:
        """After a rename: a file nothing of which was sent takes the name of its new local name."""
        if record.may_be_on_server and record.server_name:
            return  # frozen: the server may hold bytes under it
        self.release_server_name_locked(record, source)
        if record.local_only or record.in_tree:
            if record.server_name:
                record.server_name = None  # it goes up inside the archive, under its path
                self.journal.update_file(record.id, server_name=None)
            return
        self.choose_server_name_locked(record, self.session_of(record))

    def claim_server_name_locked(self, record: FileRecord, session: SessionRecord, upload_id: str) -> None:
        """The first PUT of `record` is about to go: one write, and from here the server may hold
        bytes of it under its name."""
        record.upload_id = upload_id
        record.state = UPLOADING
        if session.upload_id == upload_id and session.remote_names is not None:
            session.remote_names[record.server_name.lower()] = record
        self.journal.update_file(record.id, state=UPLOADING, upload_id=upload_id)

    def name_held_by_another_locked(self, record: FileRecord, session: SessionRecord, upload_id: str) -> None:
        """The server holds another file's bytes under `record`'s server name (and none of ours):
        the name is marked as not ours, the claim is dropped and the file takes the next free name."""
        taken = record.server_name.lower()
        if session.upload_id == upload_id and session.remote_names is not None:
            session.remote_names[taken] = None
        record.upload_id = None
        record.server_received = 0
        self.journal.update_file(record.id, upload_id=None, server_received=0)
        self.choose_server_name_locked(record, session, avoid=set(session.remote_names or ()) | {taken})

    def forget_unsent_locked(self, record: FileRecord, session: SessionRecord) -> None:
        """Cancelled before its first PUT went out: the server holds nothing of it after all, so
        a file deleted meanwhile leaves no trace and its name is free again."""
        if record.server_received:
            return
        record.upload_id = None
        if session.remote_names is not None and record.server_name \
                and session.remote_names.get(record.server_name.lower()) is record:
            del session.remote_names[record.server_name.lower()]
        if record.unlinked and record in session.unlinked:
            session.unlinked.remove(record)
            self._forget_file_locked(record, session)
            self.nudge()
        elif record.id in self._files:
            self.journal.update_file(record.id, upload_id=None)

    # --- files: states --------------------------------------------------------------------------

    def set_state_locked(self, record: FileRecord, state: str, **extra) -> None:
        self.lock.assert_held()
        # Journal first: if it cannot record the change, memory does not pretend it happened.
        self.journal.update_file(record.id, state=state, **extra)
        record.state = state
        for key, value in extra.items():
            setattr(record, key, value)

    def set_file_attrs_locked(self, record: FileRecord, **attrs) -> None:
        for key, value in attrs.items():
            setattr(record, key, value)
        self.journal.update_file(record.id, **attrs)

    def requeue_locked(self, record: FileRecord, state: str, delay: float, **extra) -> None:
        """Back to the queue in `state` (pending or failed), due in `delay` seconds."""
        self.set_state_locked(record, state, **extra)
        self._schedule(record, delay)

    def resynced_locked(self, record: FileRecord, received: int) -> None:
        """The server said where the file stands; nothing there: the file may change again."""
        record.needs_resync = False
        record.server_received = received
        if received == 0 and record.upload_id is not None:
            record.upload_id = None
        self.journal.update_file(record.id, server_received=received, upload_id=record.upload_id)

    def server_lacks_file_locked(self, record: FileRecord) -> None:
        """The server says a file it should hold complete is not: it goes again from the spool,
        or, when the spool no longer has it, it is lost."""
        if record.evicted:
            self.set_state_locked(record, LOST, last_error="the server does not have this file complete: "
                                                           "copy it again")
            return
        record.needs_resync = True
        self.requeue_locked(record, PENDING, 0.0, last_error="")

    def learn_locked(self, **changes) -> None:
        for key, value in changes.items():
            setattr(self.caps, key, value)
        self.journal.set_meta("caps", dict(file_cap=self.caps.file_cap, session_cap=self.caps.session_cap,
                                           allowed_extensions=list(self.caps.allowed_extensions),
                                           refused_extensions=list(self.caps.refused_extensions)))

    def _interrupt_locked(self, record: FileRecord) -> None:
        record.generation += 1
        self.set_state_locked(record, INTERRUPTED, size=record.size, mtime_ns=record.mtime_ns,
                              last_error=record.unfinished)
        log.warning("%s: not uploaded: %s", record.name, record.unfinished)

    def set_unfinished_locked(self, record: FileRecord, reason: str) -> None:
        """Why the content is not whole ('' once it is written again from byte 0). Journaled: a
        scratch file or an interrupted one keeps it across a remount, so a rename to its final
        name can never start uploading a partial file."""
        if record.unfinished != reason:
            record.unfinished = reason
            # Whole again while a writer still has it open: the journal goes on saying "being
            # written" until the last close, should the mount stop before it.
            journaled = reason or (STOPPED_WHILE_WRITING if record.open_writers else "")
            self.journal.update_file(record.id, unfinished=journaled)
            record.stop_journaled = journaled == STOPPED_WHILE_WRITING

    def mark_unfinished_locked(self, record: FileRecord, reason: str) -> None:
        """A writer that closed the file died right after, of a signal: the file is not whole.
        Still open or queued, it becomes `interrupted`; once a PUT went out it is too late."""
        if record.id not in self._files or record.unlinked:
            return
        if record.may_be_on_server and not record.local_only:
            log.warning("%s: its writer died after closing it, but its upload had begun: %s", record.name, reason)
            return
        if not record.unfinished:
            self.set_unfinished_locked(record, reason)
        if not record.local_only and not record.open_writers and record.state != INTERRUPTED:
            self._interrupt_locked(record)

    # --- identical re-copies ------------------------------------------------------------------

    def content_sha256(self, record: FileRecord) -> str | None:
        """sha256 of the spooled content: from the running digest when the file was written
        front to back, else by reading the spool file once (None when it is gone)."""
        digest = record.digest.hexdigest(record.size) if record.digest is not None else None
        if digest is not None:
            return digest
        try:
            record.digest = RunningDigest.of_file(self.spool.path(record.id))
        except OSError:
            return None
        return record.digest.hexdigest(record.size)

    def refuse_change_locked(self, record: FileRecord) -> str:
        """A different content for a name the server holds: say why, in status and the log."""
        reason = f"the server already holds a different {record.name}; it cannot be replaced"
        if record.last_error != reason:
            self.journal.update_file(record.id, last_error=reason)
            record.last_error = reason
        log.warning("%s", reason)
        return reason

    def keep_identical_locked(self, held: FileRecord, copy: FileRecord | None = None, mode: int | None = None,
                              mtime_ns: int | None = None) -> None:
        """An identical re-copy of a file the server holds: the new data is dropped (the local
        `copy`, if any), the record stays as it is and takes the copy's mode and mtime."""
        if copy is not None:
            self.remove_file_locked(copy)
            mode, mtime_ns = copy.mode, copy.mtime_ns
        changes = {"last_error": ""}
        if mode is not None:
            changes["mode"] = mode
        if mtime_ns is not None:
            changes["mtime_ns"] = mtime_ns
        self.set_file_attrs_locked(held, **changes)
        held.ctime_ns = time.time_ns()

    # --- the spool ------------------------------------------------------------------------------

    def drop_spool_locked(self, record: FileRecord) -> None:
        self.spool.remove(record.id)
        record.evicted = True
        self.journal.update_file(record.id, evicted=1)

    def eviction_candidates_locked(self) -> list[FileRecord]:
        """Complete files whose spool data may go, oldest first; unsent data never does."""
        return sorted((f for f in self._files.values()
                       if f.state == COMPLETE and not f.evicted and not f.open_writers and not f.archive),
                      key=lambda f: f.completed_at)
