"""The upload engine: sessions, files, the upload queue, workers and projects.

One lock (`self.lock`) guards every record and the queue; helpers whose names
end in `_locked` need it held. Network I/O always happens with the lock released.
Every state change is written to the journal in the same step, so a restart
replays exactly what was promised.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import itertools
import logging
import mmap
import os
import threading
import time
from dataclasses import dataclass

from ..api.client import ApiClient
from ..api.retry import Backoff
from ..config import Settings
from ..errors import (AccountError, Cancelled, ExtensionNotAllowed, FileTooLarge, Fs360Error, InvalidArgument,
                      RemoteFileNotFound, ServerHoldsOtherFile, SessionNotFound, SessionTooLarge, WaitForRateLimit)
from .archive import ArchiveMember, ArchiveReader
from .gate import TransferGate  # ops: bwlimit/pause
from .journal import Journal
from .progress import Listeners
from .projects import ProjectKeeper
from .records import (COMPLETE, FAILED, IN_TREE, INTERRUPTED, LOCAL, LOST, P_CREATED, P_READY, PENDING,
                      QUEUED_STATES, REJECTED, UPLOADING, WRITING, FileRecord, ProjectRequest, SessionRecord,
                      duration_text, in_scratch_folder)
from .server_names import deduplicated, server_name_for
from .spool import RunningDigest, Spool
from .transfer_pool import TransferJob, TransferProcesses, run_job

log = logging.getLogger(__name__)

# Why a file open for writing when the mount stopped is not whole (journaled at its first open).
STOPPED_WHILE_WRITING = "the mount stopped while this file was being written; copy it again"
# Seconds between journal commits of one file's upload progress.
PROGRESS_JOURNAL_INTERVAL = 0.5
# Top-level names the server unpacks as a session's one archive (api.md).
ARCHIVE_EXTENSIONS = ("zip", "7z", "rar")


@dataclass
class Caps:
    """What the server taught us (or the settings said): the caps and the extensions."""
    file_cap: int = 0
    session_cap: int = 0
    allowed_extensions: tuple[str, ...] = ()
    refused_extensions: tuple[str, ...] = ()


class Engine:
    def __init__(self, settings: Settings, client: ApiClient | None = None):
        self.settings = settings
        settings.cache_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(settings.cache_dir, 0o700)
        self.client = client or ApiClient(settings)
        self.journal = Journal(settings.journal_path)
        self.spool = Spool(settings.spool_dir, settings.cache_min_free_fraction)
        self.backoff = Backoff(settings.backoff_base, settings.backoff_cap)
        self.listeners = Listeners()
        self.gate = TransferGate(settings.bwlimit)  # ops: bwlimit and pause, shared by all workers
        self.lock = threading.RLock()
        # Two conditions on the one lock: a queued file must wake a worker, never just
        # the housekeeping thread (one shared condition lost such wake-ups).
        self._work_ready = threading.Condition(self.lock)
        self._wakeup = threading.Condition(self.lock)  # housekeeping: projects, eviction
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self.sessions: dict[str, SessionRecord] = {}
        self._files: dict[int, FileRecord] = {}
        self._sessions_by_id: dict[int, SessionRecord] = {}
        self._queue: list[tuple[float, int, int, int]] = []  # (due, seq, file id, generation)
        self._seq = itertools.count()
        self._session_locks: dict[int, threading.Lock] = {}
        self.caps = Caps()
        # The HTTP of uploads in worker processes, off this interpreter's GIL (or in the worker threads).
        self.transfers = TransferProcesses(settings, self.client.pacer, settings.workers) \
            if settings.upload_processes else None
        # Files a worker is sending right now: never handed to a second worker.
        self._busy: set[int] = set()
        self._deferred: set[int] = set()
        self.projects = ProjectKeeper(self)
        with self.lock:
            self._replay_journal_locked()

    # --- start-up and shut-down ---------------------------------------------------------

    def _replay_journal_locked(self) -> None:
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
                                    sealed=bool(row["sealed"]))
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
            if record.state == WRITING:
                # The mount stopped while a program was writing it: its data may be
                # partial, so it is never uploaded as if it were whole.
                self._set_unfinished_locked(record, STOPPED_WHILE_WRITING)
                self._set_state_locked(record, INTERRUPTED, last_error=record.unfinished)
            elif record.state == INTERRUPTED and not record.unfinished:
                # A journal from before `unfinished` was kept: the state says it all.
                record.unfinished = record.last_error or "an earlier write of this file did not finish"
            elif record.state in (PENDING, UPLOADING, FAILED):
                record.needs_resync = True
                if record.state == UPLOADING:
                    self._set_state_locked(record, PENDING)
                self._enqueue_locked(record, 0.0)
        for row in self.journal.projects():
            session = self._sessions_by_id.get(row["session_id"])
            if session is not None:
                session.project = ProjectRequest(
                    options=json.loads(row["options"]), state=row["state"], name=row["name"],
                    status=row["status"], record=json.loads(row["record"]), last_error=row["last_error"],
                    attempts=row["attempts"], next_attempt=0.0, posted_upload_id=row["posted_upload_id"],
                    marker_hidden=bool(row["marker_hidden"]))

    def start(self) -> "Engine":
        for index in range(self.settings.workers):
            self._spawn(self._worker_loop, f"fs360-upload-{index}")
        self._spawn(self._maintenance_loop, "fs360-maintenance")
        return self

    def _spawn(self, target, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self, timeout: float = 30.0) -> None:
        """Stops the workers after their current chunk; unfinished work stays in the journal."""
        with self.lock:
            self._stopping = True
            self._work_ready.notify_all()
            self._wakeup.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads.clear()
        if self.transfers is not None:
            self.transfers.close()
        self.client.close()
        self.journal.close()

    @property
    def stopping(self) -> bool:
        return self._stopping

    def wait_idle(self, timeout: float | None = None, poll: float = 0.2, on_tick=None) -> bool:
        """Waits until no file is queued or uploading; returns whether that happened."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self.lock:
                busy = [f for f in self._files.values() if f.state in (PENDING, UPLOADING, FAILED)]
            if on_tick is not None:
                on_tick(busy)
            if not busy:
                return True
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(poll)

    # --- sessions ----------------------------------------------------------------------------

    def create_session_locked(self, name: str, mode: int) -> SessionRecord:
        now_ns = time.time_ns()
        session_id = self.journal.insert_session(dict(name=name, upload_id=None, expires_at=None, mode=mode,
                                                      mtime_ns=now_ns, sealed=0))
        session = SessionRecord(id=session_id, name=name, mode=mode, mtime_ns=now_ns)
        self.sessions[name] = session
        self._sessions_by_id[session_id] = session
        return session

    def rename_session_locked(self, session: SessionRecord, new_name: str) -> None:
        del self.sessions[session.name]
        session.name = new_name
        self.sessions[new_name] = session
        self.journal.update_session(session.id, name=new_name)

    def discard_session_locked(self, session: SessionRecord) -> None:
        """rmdir: forget the session and its spool; the server session is deleted in the background."""
        archive = [session.archive] if session.archive is not None else []
        for record in list(session.files.values()) + session.unlinked + archive:
            record.generation += 1
            self.spool.remove(record.id)
            self._files.pop(record.id, None)
        del self.sessions[session.name]
        del self._sessions_by_id[session.id]
        self.journal.delete_session(session.id)
        if session.upload_id and not self._project_may_use_locked(session, session.upload_id):
            self._delete_remote_session_later(session.upload_id)

    @staticmethod
    def _project_may_use_locked(session: SessionRecord, upload_id: str) -> bool:
        """Whether a project was (or may have been) made from `upload_id`: a DELETE of the
        session may then discard the project's input on the real server (api.md Part C)."""
        project = session.project
        return project is not None and (project.state in (P_CREATED, P_READY)
                                        or project.posted_upload_id == upload_id)

    def _delete_remote_session_later(self, upload_id: str) -> None:
        threading.Thread(target=self._delete_remote_session, args=(upload_id,), daemon=True,
                         name="fs360-delete-session").start()

    def _delete_remote_session(self, upload_id: str) -> None:
        for attempt in range(1, 6):
            try:
                self.client.delete_session(upload_id)
                return
            except Fs360Error as exc:
                if not exc.retryable:
                    log.warning("could not delete server session: %s", exc)
                    return
                time.sleep(self.backoff.delay(attempt, exc))
        log.warning("gave up deleting a server session; it expires by itself")

    def set_session_attrs_locked(self, session: SessionRecord, mode: int | None = None,
                                 mtime_ns: int | None = None) -> None:
        if mode is not None:
            session.mode = mode
        if mtime_ns is not None:
            session.mtime_ns = mtime_ns
        self.journal.update_session(session.id, mode=session.mode, mtime_ns=session.mtime_ns)

    def _remote_session(self, session: SessionRecord) -> str:
        """The session's upload_id, opening one (POST /uploads) when it has none.

        A session is used for as long as the server answers for it, whatever its stated
        expiry (the real server may count that from the last request): it is replaced only
        after a 404 says it is gone (`session_lost`)."""
        with self.lock:
            if session.upload_id:
                return session.upload_id
            guard = self._session_locks.setdefault(session.id, threading.Lock())
        with guard:  # one POST /uploads per session, however many workers get here
            with self.lock:
                if session.upload_id:
                    return session.upload_id
            # Never sleeps on the pacer: out of budget, the file goes back to the queue (see _upload).
            opened = self.client.open_session(wait=False)
            with self.lock:
                session.upload_id = opened.upload_id
                session.remote_names = {}  # a new session holds nothing
                session.expires_at = time.time() + opened.expires_in_seconds
                self.journal.update_session(session.id, upload_id=session.upload_id, expires_at=session.expires_at)
                self.listeners.emit("session_opened", session=session)
                return session.upload_id

    def session_lost(self, session: SessionRecord, dead_upload_id: str) -> None:
        """The server lost the session (404 or expiry): every file goes again from the spool."""
        with self.lock:
            if session.upload_id != dead_upload_id or self._sessions_by_id.get(session.id) is not session:
                return  # somebody already handled it, or the session was discarded (rmdir)
            log.warning("session %r: the server no longer has upload session; sending its files again",
                        session.name)
            session.upload_id = None
            session.expires_at = None
            session.remote_names = None
            self.journal.update_session(session.id, upload_id=None, expires_at=None)
            if not self._project_may_use_locked(session, dead_upload_id):
                # Idempotent: if the server still has it somewhere, it stops using the account's quota.
                self._delete_remote_session_later(dead_upload_id)
            for record in session.unlinked:
                self._release_server_name_locked(record)
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
                    self._set_state_locked(record, LOST, last_error="the server lost this file and the local copy "
                                                                    "was already dropped: copy it again")
                    continue
                self._set_state_locked(record, PENDING, last_error="", attempts=0)
                self._enqueue_locked(record, 0.0)
            self._wakeup.notify_all()

    # --- files ---------------------------------------------------------------------------------

    def session_of(self, record: FileRecord) -> SessionRecord:
        return self._sessions_by_id[record.session_id]

    def create_file_locked(self, session: SessionRecord, name: str, mode: int, uid: int, gid: int,
                           local_only: bool) -> FileRecord:
        now_ns = time.time_ns()
        state = LOCAL if local_only else WRITING
        values = dict(session_id=session.id, name=name, size=0, mode=mode, uid=uid, gid=gid, mtime_ns=now_ns,
                      state=state, server_received=0, upload_id=None, last_error="", attempts=0, next_attempt=0,
                      completed_at=0, evicted=0, unlinked=0, server_name=None, sha256=None, archive=0,
                      unfinished="")
        file_id = self.journal.insert_file(values)
        self.spool.create(file_id)
        record = FileRecord(id=file_id, session_id=session.id, name=name, mode=mode, mtime_ns=now_ns, uid=uid,
                            gid=gid, state=state, local_only=local_only)
        self._files[file_id] = record
        session.files[name] = record
        if not local_only and not record.in_tree:
            self._choose_server_name_locked(record, session)
        return record

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
            self._set_unfinished_locked(record, "")
            record.digest = RunningDigest()
        elif record.state == INTERRUPTED and not record.unfinished:
            self._set_unfinished_locked(record, record.last_error or "an earlier write of this file did not finish")
        if record.open_writers == 1 and not record.unfinished:
            # Journal only (memory keeps the truth while it is open): should the mount stop before
            # the last close, the file comes back unfinished. A scratch file has no `writing` state
            # to say so, and a rename to its final name must never upload it then.
            self.journal.update_file(record.id, unfinished=STOPPED_WHILE_WRITING)
        if record.local_only:
            return
        record.generation += 1
        if record.state != WRITING:
            self._set_state_locked(record, WRITING, last_error="", attempts=0)

    def wrote_locked(self, record: FileRecord, offset: int, data) -> None:
        """`data` was written to its spool file at `offset` (memory only until the last close)."""
        if offset + len(data) > record.size:
            record.size = offset + len(data)
        if record.digest is not None:
            record.digest.add(offset, data)
        record.mtime_ns = time.time_ns()

    @staticmethod
    def allocated_locked(record: FileRecord, end: int) -> None:
        """fallocate grew its spool file to `end` with zeros."""
        if end > record.size:
            record.size = end
            if record.digest is not None:
                record.digest.valid = False  # zeros the digest never saw

    def close_writer_locked(self, record: FileRecord, size: int, unfinished: str = "") -> None:
        """A writer closed it. `unfinished`: why that writer did not finish (a failed write,
        a dying process): the file is then never uploaded as it is."""
        record.open_writers = max(0, record.open_writers - 1)
        record.size = size
        if unfinished and not record.unfinished:
            self._set_unfinished_locked(record, unfinished)
        elif not record.open_writers and record.id in self._files:
            self.journal.update_file(record.id, unfinished=record.unfinished)  # the last close: as it is
        if record.open_writers or record.unlinked or record.local_only or record.id not in self._files:
            self.journal.update_file(record.id, size=size, mtime_ns=record.mtime_ns)
        elif record.unfinished:
            self._interrupt_locked(record)
        else:
            self.queue_upload_locked(record)

    def queue_upload_locked(self, record: FileRecord, delay: float | None = None) -> None:
        """The file is closed and its name final: upload it after the write-back delay (or `delay`).
        A file of the tree is whole now, and waits for the archive instead."""
        record.generation += 1
        if record.in_tree:
            self._set_state_locked(record, IN_TREE, size=record.size, mtime_ns=record.mtime_ns, last_error="",
                                   attempts=0)
            return
        self._set_state_locked(record, PENDING, size=record.size, mtime_ns=record.mtime_ns, last_error="",
                               attempts=0, sha256=self.content_sha256(record))
        self._enqueue_locked(record, self.settings.writeback_delay if delay is None else delay)
        self.listeners.emit("file_pending", file=record)

    def truncated_locked(self, record: FileRecord, length: int, listed: bool) -> None:
        """Its spool file was truncated to `length`: with no writer open it is queued again
        (truncate -s); `listed`: the file is still in its folder."""
        record.size = length
        record.mtime_ns = time.time_ns()
        if length == 0:
            # Rewritten from 0: whatever was unfinished before is gone with its bytes.
            record.unfinished = ""
            record.digest = RunningDigest()
        else:
            if record.digest is not None:
                record.digest.valid = record.digest.valid and record.digest.length == length
            if record.state == INTERRUPTED:
                record.unfinished = record.unfinished or record.last_error  # still partial
        if not record.open_writers and not record.local_only and not record.unfinished and listed:
            self.queue_upload_locked(record)
        else:
            self.journal.update_file(record.id, size=length, mtime_ns=record.mtime_ns)

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
                self._set_state_locked(record, WRITING)
            elif record.unfinished:
                self._interrupt_locked(record)
            else:
                # A closed scratch file (rsync's .name.XXXXXX, GIO's .goutputstream-*) renamed to
                # its final name: the rename is the writer's "done", no delay needed.
                self.queue_upload_locked(record, delay=0.0)
        elif not was_local and local_only:
            record.generation += 1
            self._set_state_locked(record, LOCAL, last_error="")
        elif (record.state == IN_TREE) != record.in_tree and record.state in QUEUED_STATES + (IN_TREE, UPLOADING):
            # A closed file moved into the tree (its upload, not begun, stops), or out of it.
            self.queue_upload_locked(record)
        elif record.state in QUEUED_STATES:
            # A rename right after close (rsync, GIO): wait the delay again from now.
            record.generation += 1
            self._enqueue_locked(record, self.settings.writeback_delay)
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
            self.journal.delete_file(record.id)
            self._files.pop(record.id, None)
            self._release_server_name_locked(record, session)
        session.files.pop(record.name, None)
        record.generation += 1
        self._wakeup.notify_all()

    def server_lacks_file_locked(self, record: FileRecord) -> None:
        """The server says a file it should hold complete is not: it goes again from the spool,
        or, when the spool no longer has it, it is lost."""
        if record.evicted:
            self._set_state_locked(record, LOST, last_error="the server does not have this file complete: "
                                                            "copy it again")
            return
        record.needs_resync = True
        self._set_state_locked(record, PENDING, last_error="")
        self._enqueue_locked(record, 0.0)

    def set_file_attrs_locked(self, record: FileRecord, **attrs) -> None:
        for key, value in attrs.items():
            setattr(record, key, value)
        self.journal.update_file(record.id, **attrs)

    # --- folders of a session's tree (the path model keeps them; the journal remembers them) --------

    def folder_rows_locked(self) -> list:
        """Every journaled folder: rows of (id, session_id, path, mode, mtime_ns)."""
        return self.journal.dirs()

    def add_folder_locked(self, session: SessionRecord, path: str, mode: int, mtime_ns: int) -> int:
        return self.journal.insert_dir(session.id, path, mode, mtime_ns)

    def update_folder_locked(self, folder_id: int, **values) -> None:
        self.journal.update_dir(folder_id, **values)

    def remove_folder_locked(self, folder_id: int) -> None:
        self.journal.delete_dir(folder_id)

    def remove_folders_of_locked(self, session: SessionRecord) -> None:
        self.journal.delete_dirs_of(session.id)

    def hide_marker_locked(self, session: SessionRecord) -> None:
        """`unlink .create` after the project exists: the project stays, the marker leaves the listing."""
        self.journal.update_project(session.id, marker_hidden=1)
        session.project.marker_hidden = True

    # --- server names (see server_names.py) -------------------------------------------------

    def _choose_server_name_locked(self, record: FileRecord, session: SessionRecord,
                                   avoid: set[str] = frozenset()) -> None:
        """Gives `record` the server name of its local name, de-duplicated in its session
        against every other file's name and `avoid` (names the server already holds)."""
        self._release_server_name_locked(record, session)
        taken = set(session.server_names) | avoid
        chosen = deduplicated(server_name_for(record.name), taken)
        session.server_names[chosen.lower()] = record
        if chosen != record.server_name:
            record.server_name = chosen
            self.journal.update_file(record.id, server_name=chosen)

    def _release_server_name_locked(self, record: FileRecord, session: SessionRecord | None = None) -> None:
        session = session or self._sessions_by_id.get(record.session_id)
        if session is not None and record.server_name \
                and session.server_names.get(record.server_name.lower()) is record:
            del session.server_names[record.server_name.lower()]

    def _rechoose_server_name_locked(self, record: FileRecord, source: SessionRecord) -> None:
        """After a rename: a file nothing of which was sent takes the name of its new local name."""
        if record.may_be_on_server and record.server_name:
            return  # frozen: the server may hold bytes under it
        self._release_server_name_locked(record, source)
        if record.local_only or record.in_tree:
            if record.server_name:
                record.server_name = None  # it goes up inside the archive, under its path
                self.journal.update_file(record.id, server_name=None)
            return
        self._choose_server_name_locked(record, self.session_of(record))

    def _set_state_locked(self, record: FileRecord, state: str, **extra) -> None:
        # Journal first: if it cannot record the change, memory does not pretend it happened.
        self.journal.update_file(record.id, state=state, **extra)
        record.state = state
        for key, value in extra.items():
            setattr(record, key, value)

    def learn_locked(self, **changes) -> None:
        for key, value in changes.items():
            setattr(self.caps, key, value)
        self.journal.set_meta("caps", dict(file_cap=self.caps.file_cap, session_cap=self.caps.session_cap,
                                           allowed_extensions=list(self.caps.allowed_extensions),
                                           refused_extensions=list(self.caps.refused_extensions)))

    def _interrupt_locked(self, record: FileRecord) -> None:
        record.generation += 1
        self._set_state_locked(record, INTERRUPTED, size=record.size, mtime_ns=record.mtime_ns,
                               last_error=record.unfinished)
        log.warning("%s: not uploaded: %s", record.name, record.unfinished)

    def _set_unfinished_locked(self, record: FileRecord, reason: str) -> None:
        """Why the content is not whole ('' once it is written again from byte 0). Journaled: a
        scratch file or an interrupted one keeps it across a remount, so a rename to its final
        name can never start uploading a partial file."""
        if record.unfinished != reason:
            record.unfinished = reason
            self.journal.update_file(record.id, unfinished=reason)

    def mark_unfinished_locked(self, record: FileRecord, reason: str) -> None:
        """A writer that closed the file died right after, of a signal: the file is not whole.
        Still open or queued, it becomes `interrupted`; once a PUT went out it is too late."""
        if record.id not in self._files or record.unlinked:
            return
        if record.may_be_on_server and not record.local_only:
            log.warning("%s: its writer died after closing it, but its upload had begun: %s", record.name, reason)
            return
        if not record.unfinished:
            self._set_unfinished_locked(record, reason)
        if not record.local_only and not record.open_writers and record.state != INTERRUPTED:
            self._interrupt_locked(record)

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

    # --- the queue and the workers ---------------------------------------------------------------

    def _enqueue_locked(self, record: FileRecord, delay: float) -> None:
        due = time.monotonic() + delay
        heapq.heappush(self._queue, (due, next(self._seq), record.id, record.generation))
        self._work_ready.notify()

    def _next_job_locked(self) -> FileRecord | None:
        """Waits for a due, still valid queue entry; None when stopping."""
        while not self._stopping:
            now = time.monotonic()
            if self._queue and self._queue[0][0] <= now:
                _, _, file_id, generation = heapq.heappop(self._queue)
                record = self._files.get(file_id)
                if record is None or record.generation != generation or record.state not in QUEUED_STATES \
                        or record.unlinked or record.open_writers:
                    continue
                if record.id in self._busy:
                    # Its previous upload is still between chunks: queue it again when that one ends,
                    # so one file never has two PUTs in flight.
                    self._deferred.add(record.id)
                    continue
                self._busy.add(record.id)
                return record
            timeout = (self._queue[0][0] - now) if self._queue else None
            self._work_ready.wait(timeout)
        return None

    def _worker_loop(self) -> None:
        # One reusable page-aligned buffer per worker: kernel copies into it are fast.
        buffer = mmap.mmap(-1, max(self.settings.chunk_size, mmap.PAGESIZE))
        try:
            while True:
                with self.lock:
                    record = self._next_job_locked()
                    if record is None:
                        return
                    generation = record.generation
                    # Journaled with the upload_id just before the first PUT (see _upload).
                    record.state = UPLOADING
                    self.listeners.emit("file_uploading", file=record)
                try:
                    self._upload(record, generation, buffer)
                except Exception:  # a bug must not kill a worker; the file goes on later
                    log.exception("unexpected error while uploading %r", record.name)
                    self._retry_after_bug(record, generation)
                finally:
                    with self.lock:
                        self._busy.discard(record.id)
                        if record.id in self._deferred:
                            self._deferred.discard(record.id)
                            # The journal may have given this id to a new file meanwhile (a deleted
                            # file's row is reused): the one to queue is whoever has the id now.
                            current = self._files.get(record.id)
                            if current is not None:
                                self._enqueue_locked(current, 0.0)
        finally:
            try:
                buffer.close()
            except BufferError:
                pass  # a view of it is still referenced (a traceback, a request): the GC frees it

    def _retry_after_bug(self, record: FileRecord, generation: int) -> None:
        """Settles a file whose upload ended in an unexpected error; if even that fails, the file
        is retried from memory: nothing ends a worker."""
        with self.lock:
            try:
                self._retry_later_locked(record, generation, Fs360Error("internal error (see the log)"))
            except Exception:
                log.exception("cannot settle %r; retrying it from memory", record.name)
                if record.generation == generation and record.id in self._files and not record.unlinked:
                    record.state, record.needs_resync = FAILED, True
                    self._enqueue_locked(record, self.settings.backoff_cap)

    def _upload(self, record: FileRecord, generation: int, buffer) -> None:
        session = self.session_of(record)
        upload_id = None
        puts_let_go = [0]
        try:
            upload_id = self._remote_session(session)
            self._ensure_name_free_on_server(record, session, upload_id)
            start = self._resume_offset(record, upload_id)
            with self.lock:
                if record.generation != generation:
                    raise Cancelled()
                # One write before the first PUT: from here the server may hold bytes of it.
                record.upload_id = upload_id
                self._claim_server_name_locked(record, session, upload_id)
                self.journal.update_file(record.id, state=UPLOADING, upload_id=upload_id)
            # The gate (bwlimit, pause) waits inside should_stop, asked before every PUT.
            on_progress, gated_stop = self.gate.gated(
                record.size, start, self.settings.chunk_size,
                lambda received: self._progress(record, received),
                lambda: self._stopping or record.generation != generation)

            def should_stop() -> bool:
                stop = gated_stop()
                puts_let_go[0] += not stop  # False lets a PUT go: counted for _forget_unsent_locked
                return stop
            with self.lock:
                members = tuple(self.archive_members_locked(session)) if record.archive else None
            job = TransferJob(upload_id, record.server_name, record.size, start, self.settings.chunk_size,
                              archive=members, zip64=self.settings.archive_zip64)
            # An archive is read from its members' spool files (by path): no fd of its own.
            fd = None if record.archive else os.open(self.spool.path(record.id), os.O_RDONLY)
            try:
                if self.transfers is not None:
                    final = self.transfers.send_file(job, fd, on_progress, should_stop)
                else:
                    final = run_job(self.client, job, fd, buffer, on_progress, should_stop)
            finally:
                if fd is not None:
                    os.close(fd)
            if record.archive and not record.sha256:
                try:
                    self._record_archive_sha256(record, members)
                except OSError as exc:  # the upload itself is done: only status lacks the sha256
                    log.warning("%s: cannot compute the archive's sha256: %s", record.name, exc)
        except Cancelled:
            with self.lock:
                if not puts_let_go[0] and upload_id and record.upload_id == upload_id:
                    self._forget_unsent_locked(record, session)
                if record.state == UPLOADING and record.generation == generation:
                    # Shutting down: the journal keeps it queued for the next mount.
                    self._set_state_locked(record, PENDING)
            return
        except WaitForRateLimit as exc:
            # No new session may be opened yet: this worker takes a file of an open session
            # meanwhile, and this one comes back when the budget allows.
            with self.lock:
                self._wait_for_rate_limit_locked(record, generation, exc)
            return
        except SessionNotFound:
            # Only the session this worker talked to is dead; the session may already have a new one
            # (another worker met the 404 first), which must not be dropped.
            if upload_id:
                self.session_lost(session, upload_id)
            with self.lock:
                if record.generation == generation and record.state == UPLOADING:
                    self._set_state_locked(record, PENDING, server_received=0, upload_id=None)
                    self._enqueue_locked(record, 0.0)
            return
        except Fs360Error as exc:
            with self.lock:
                self._settle_error_locked(record, generation, exc)
            return
        except OSError as exc:
            with self.lock:
                if record.generation == generation:
                    self._set_state_locked(record, REJECTED, last_error=f"cannot read the spooled data: {exc}")
            return
        with self.lock:
            if session.upload_id != upload_id and record.generation == generation and not record.unlinked:
                # The session was lost while this file went to it: send it again to the new one.
                self._set_state_locked(record, PENDING, server_received=0, upload_id=None)
                self._enqueue_locked(record, 0.0)
                return
            record.server_received = final.received
            if record.unlinked or record.generation != generation:
                self.journal.update_file(record.id, server_received=final.received)
                return
            self._set_state_locked(record, COMPLETE, server_received=final.received, completed_at=time.time(),
                                   last_error="")
            self.listeners.emit("file_complete", file=record)
            self._wakeup.notify_all()

    def _resume_offset(self, record: FileRecord, upload_id: str) -> int:
        """Before any retry the server is asked where the file stands; a first try starts at 0."""
        if not (record.needs_resync or record.attempts or record.server_received or record.upload_id):
            return 0
        try:
            progress = self.client.file_status(upload_id, record.server_name)
        except RemoteFileNotFound:
            received = 0
        else:
            if progress.total != record.size and progress.received > 0:
                raise ServerHoldsOtherFile(
                    f"the server already holds a different file named {record.server_name!r}", status=409)
            received = progress.received
        with self.lock:
            record.needs_resync = False
            record.server_received = received
            if received == 0 and record.upload_id is not None:
                record.upload_id = None  # the server holds nothing: the file may change again
            self.journal.update_file(record.id, server_received=received, upload_id=record.upload_id)
        return received

    def _ensure_name_free_on_server(self, record: FileRecord, session: SessionRecord, upload_id: str) -> None:
        """Before the first PUT of a file, its server name must not hold another file's bytes
        (a resume would merge two files into one): such a name is a conflict, and the file
        takes the next free name instead."""
        with self.lock:
            held = session.remote_names if session.upload_id == upload_id else None
        if held is None:
            # A session from the journal: ask once what it holds (one request per session).
            listing = self.client.session_status(upload_id)
            with self.lock:
                ours = {r.server_name.lower(): r for r in session.server_names.values()
                        if r.upload_id == upload_id and r.server_name}
                held = {f.name.lower(): ours.get(f.name.lower()) for f in listing if f.received > 0}
                if session.upload_id == upload_id:
                    session.remote_names = held
        with self.lock:
            owner = held.get(record.server_name.lower(), record) if record.server_name else None
            if owner is not record:
                taken_by = record.server_name
                self._choose_server_name_locked(record, session, avoid=set(held))
                if taken_by:
                    log.warning("%s: the server already holds another file named %s; sending it as %s",
                                record.name, taken_by, record.server_name)

    def _forget_unsent_locked(self, record: FileRecord, session: SessionRecord) -> None:
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
            self._files.pop(record.id, None)
            self._release_server_name_locked(record, session)
            self.journal.delete_file(record.id)
            self._wakeup.notify_all()
        elif record.id in self._files:
            self.journal.update_file(record.id, upload_id=None)

    @staticmethod
    def _claim_server_name_locked(record: FileRecord, session: SessionRecord, upload_id: str) -> None:
        """The first PUT of `record` is about to go: its name holds its bytes from now on."""
        if session.upload_id == upload_id and session.remote_names is not None:
            session.remote_names[record.server_name.lower()] = record

    def _progress(self, record: FileRecord, received: int) -> None:
        with self.lock:
            sent = received - record.server_received
            record.server_received = received
            if sent > 0:
                record.rate.add(sent)
                record.attempts = 0  # progress: the next error backs off from the start again
            # A few commits a second at most, never one per chunk: the journal's offset is only a
            # hint (every resume asks the server), and the last one goes with the completion.
            now = time.monotonic()
            if received < record.size and now - record.progress_journaled_at >= PROGRESS_JOURNAL_INTERVAL:
                record.progress_journaled_at = now
                self.journal.update_file(record.id, server_received=received)
        self.listeners.emit("bytes_sent", file=record, received=received)

    def _settle_error_locked(self, record: FileRecord, generation: int, exc: Fs360Error) -> None:
        if record.generation != generation:
            return
        if exc.retryable or isinstance(exc, AccountError):
            self._retry_later_locked(record, generation, exc)
            return
        if isinstance(exc, FileTooLarge) and isinstance(exc.fields.get("limit"), int):
            self.learn_locked(file_cap=exc.fields["limit"])
        elif isinstance(exc, SessionTooLarge) and isinstance(exc.fields.get("limit"), int):
            self.learn_locked(session_cap=exc.fields["limit"])
        elif isinstance(exc, ExtensionNotAllowed):
            allowed = exc.fields.get("allowed")
            refused = exc.fields.get("extension")
            changes = {}
            if isinstance(allowed, list) and all(isinstance(a, str) for a in allowed):
                changes["allowed_extensions"] = tuple(a.lower().lstrip(".") for a in allowed)
            if isinstance(refused, str):
                changes["refused_extensions"] = tuple(sorted(set(self.caps.refused_extensions) | {refused.lower()}))
            self.learn_locked(**changes)
        # Refused outright: unless earlier chunks got through, the server holds nothing of it.
        upload_id = record.upload_id if record.server_received else None
        self._set_state_locked(record, REJECTED, last_error=str(exc), upload_id=upload_id)
        self.listeners.emit("file_rejected", file=record, error=exc)
        log.warning("%s: refused by the server: %s", record.name, exc)

    def _wait_for_rate_limit_locked(self, record: FileRecord, generation: int, exc: WaitForRateLimit) -> None:
        if record.generation != generation or record.unlinked or record.id not in self._files:
            return
        self._set_state_locked(record, PENDING, next_attempt=time.time() + exc.retry_after,
                               last_error=f"waiting for the server's rate limit: the next new session "
                                          f"in {duration_text(exc.retry_after)}")
        self._enqueue_locked(record, exc.retry_after)

    def _retry_later_locked(self, record: FileRecord, generation: int, exc: Fs360Error) -> None:
        if record.generation != generation or record.unlinked or record.id not in self._files:
            return
        attempts = record.attempts + 1
        delay = self.backoff.delay(attempts, exc)
        if getattr(exc, "gave_up_on_upload", False):
            delay = max(delay, self.settings.abandoned_upload_quiet)
        record.needs_resync = True
        self._set_state_locked(record, FAILED, attempts=attempts, last_error=str(exc),
                               next_attempt=time.time() + delay)
        self._enqueue_locked(record, delay)
        self.listeners.emit("file_failed", file=record, error=exc, retry_in=delay)
        log.info("%s: %s; retry %d in %.1f s", record.name, exc, attempts, delay)

    # --- projects and housekeeping ---------------------------------------------------------------

    def request_project_locked(self, session: SessionRecord, options: dict) -> None:
        """.create accepted. A session with a tree plans its archive now, or raises
        InvalidArgument with the reason it cannot (nothing changes then)."""
        if session.archive is None and "download_link" not in options:
            members = self.archive_members_locked(session)
            if members:
                self._plan_archive_locked(session, members)
        self.projects.request_locked(session, options)
        self._wakeup.notify_all()

    def cancel_project_locked(self, session: SessionRecord) -> bool:
        cancelled = self.projects.cancel_locked(session)
        archive = session.archive
        if cancelled and archive is not None and not archive.may_be_on_server:
            # Nothing of the archive reached the server: the tree may change again.
            archive.generation += 1
            self._files.pop(archive.id, None)
            self._release_server_name_locked(archive, session)
            self.journal.delete_file(archive.id)
            session.archive = None
        return cancelled

    # --- the tree's archive (see archive.py) -----------------------------------------------------

    def archive_members_locked(self, session: SessionRecord) -> list[ArchiveMember]:
        """The session's tree as archive members: its files, with their spool files as sources,
        and its empty folders; nothing of dot-folders. The same tree gives the same members,
        after a restart too (the journal keeps both the files and the folders)."""
        files = session.tree_files()
        folders = [row["path"] for row in self.journal.dirs()
                   if row["session_id"] == session.id and not in_scratch_folder(row["path"])]
        held = {f.name.rpartition("/")[0] for f in files} | {p.rpartition("/")[0] for p in folders}
        # A folder holding nothing of the tree at any depth is an entry of its own.
        nonempty = {"/".join(path.split("/")[:depth]) for path in held if path
                    for depth in range(1, path.count("/") + 2)}
        members = [ArchiveMember(f.name, str(self.spool.path(f.id)), f.size) for f in files]
        members += [ArchiveMember(path + "/") for path in folders if path not in nonempty]
        return members

    def archive_server_name_locked(self, session: SessionRecord) -> str:
        """The archive's server name: the session's name, de-duplicated against its top-level files."""
        if session.archive is not None:
            return session.archive.server_name
        return deduplicated(server_name_for(session.name + ".zip"), set(session.server_names))

    def tree_refusal_locked(self, session: SessionRecord, archive_size: int | None = None) -> str:
        """Why the session's tree cannot go up as its archive ('' when it can, or has no tree)."""
        tree = session.tree_files()
        for record in session.uploads():
            if not record.archive and server_name_for(record.name).rpartition(".")[2] in ARCHIVE_EXTENSIONS:
                return (f"this folder already has an archive ({record.name}); the server takes one: "
                        f"remove one of them")
        unfinished = [f for f in tree if f.open_writers or f.state != IN_TREE]
        if unfinished:
            return "; ".join(f"{f.name}: still being written" if f.open_writers or f.state == WRITING
                             else f"{f.name}: {f.state} ({f.last_error}); delete it or copy it again"
                             for f in sorted(unfinished, key=lambda f: f.name))
        cap = self.caps.file_cap
        if cap and archive_size is not None and archive_size > cap:
            return (f"the tree makes a {archive_size}-byte archive; the server takes files up to {cap} bytes: "
                    f"send part of it in another folder")
        return ""

    def _plan_archive_locked(self, session: SessionRecord, members: list[ArchiveMember]) -> None:
        """Freezes the tree as one upload of its own. The archive's size is known from the
        names and sizes alone (no data is read)."""
        reason = self.tree_refusal_locked(session)
        size = None
        if not reason:
            with ArchiveReader(members, force_zip64=self.settings.archive_zip64) as planned:
                size = planned.size
            reason = self.tree_refusal_locked(session, size)
        if reason:
            raise InvalidArgument(reason)
        now_ns = time.time_ns()
        name = session.name + ".zip"
        server_name = self.archive_server_name_locked(session)
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
        self._enqueue_locked(record, 0.0)
        self.listeners.emit("file_pending", file=record)
        log.info("session %r: its tree of %d entries goes up as %s (%d bytes)", session.name, len(members),
                 server_name, size)

    def _record_archive_sha256(self, record: FileRecord, members: tuple[ArchiveMember, ...]) -> None:
        """The sha256 of the archive as uploaded, for status (read once more, from the spool)."""
        digest = hashlib.sha256()
        with ArchiveReader(members, force_zip64=self.settings.archive_zip64) as reader:
            block = bytearray(1 << 20)
            offset = 0
            while offset < reader.size:
                n = reader.read_at(offset, block)
                digest.update(memoryview(block)[:n])
                offset += n
        with self.lock:
            record.sha256 = digest.hexdigest()
            self.journal.update_file(record.id, sha256=record.sha256)

    def seal_locked(self, session: SessionRecord) -> None:
        session.sealed = True
        self.journal.update_session(session.id, sealed=1)

    def _maintenance_loop(self) -> None:
        while True:
            with self.lock:
                if self._stopping:
                    return
                self._wakeup.wait(0.5)
                if self._stopping:
                    return
            try:
                self.projects.step()
                self.evict_if_needed()
                self.journal.restore_reserve()
            except Exception:
                log.exception("unexpected error in housekeeping")

    def evict_if_needed(self) -> int:
        """Frees spool space: complete files' data goes, oldest first; unsent data never does."""
        need = self.spool.bytes_to_free()
        if need <= 0:
            return 0
        with self.lock:
            candidates = sorted((f for f in self._files.values()
                                 if f.state == COMPLETE and not f.evicted and not f.open_writers and not f.archive),
                                key=lambda f: f.completed_at)
            freed = 0
            for record in candidates:
                if freed >= need:
                    break
                self.drop_spool_locked(record)
                freed += record.size
            return freed

    def drop_spool_locked(self, record: FileRecord) -> None:
        self.spool.remove(record.id)
        record.evicted = True
        self.journal.update_file(record.id, evicted=1)

    # --- status -------------------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        with self.lock:
            out: dict[str, int] = {}
            for record in self._files.values():
                out[record.state] = out.get(record.state, 0) + 1
            return out

