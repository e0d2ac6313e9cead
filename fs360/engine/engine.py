"""The engine: wires the registry, the scheduler, transfers and housekeeping.

The path model (fs/) makes the registry's state changes through `engine.registry`,
and the few operations that need more than the registry (a discarded session's
server delete, a `.create` that freezes the tree) through the engine's methods
below. Threads and the lock order: see the package's docstring.
"""

from __future__ import annotations

import logging
import mmap
import os
import threading
import time
from collections import deque

from ..api.client import ApiClient
from ..api.retry import Backoff
from ..api.troubles import pacing_waits
from ..config import Settings
from ..errors import JournalClosed, JournalUnwritable
from .archive_plan import TreeArchive
from .gate import TransferGate  # ops: bwlimit/pause
from .housekeeping import Housekeeping
from .journal import Journal
from .locking import StateLock
from .progress import Listeners
from .projects import ProjectKeeper
from .records import CLOSED, QUEUED_STATES, FileRecord, SessionRecord
from .registry import Registry
from .scheduler import Scheduler
from .spool import Spool
from .transfer import Transfer


log = logging.getLogger(__name__)
# What of its page-aligned buffer an upload worker keeps resident between files.
BUFFER_KEPT_RESIDENT = 1024 * 1024
# The commit thread wakes at most this often for write-back delays that fall due.
COMMIT_BATCH_SECONDS = 0.05
# How often a .create waiting for its tree's files to be committed looks again (await_tree_commits).
TREE_COMMIT_POLL = 0.02


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
        self.lock = StateLock()
        # A queued file wakes a worker, never just housekeeping (one shared condition lost such wake-ups).
        self._work_ready = threading.Condition(self.lock)
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self.scheduler = Scheduler()
        # When closed files whose writers run on are committed (the write-back delay): a clock of
        # its own, so that busy upload workers never delay a commit.
        self.commit_clock = Scheduler()
        self._commit_due = threading.Condition(self.lock)
        # Server sessions a worker opens before any of their files is queued (want_session_locked),
        # and the sessions asked for so once already (never twice: one POST /uploads per folder).
        self._sessions_to_open: deque[SessionRecord] = deque()
        self._opened_early: set[int] = set()
        self.registry = Registry(settings, self.journal, self.spool, self.lock, self._schedule_locked,
                                 nudge=self._nudge_locked, schedule_commit=self._schedule_commit_locked,
                                 want_session=self._want_session_locked)
        self.tree = TreeArchive(settings, self.registry)
        self.projects = ProjectKeeper(settings, self.lock, self.registry, self.client, self.backoff,
                                      self.listeners, self.session_lost)
        self.housekeeping = Housekeeping(self.lock, self.registry, self.journal, self.spool, self.client,
                                         self.backoff, self.projects, lambda: self._stopping)
        self.spool.behind.on_full = self.housekeeping.evict_if_needed
        self.transfer = Transfer(settings, self.lock, self.registry, self.tree, self.client, self.gate,
                                 self.backoff, self.listeners, self.session_lost, lambda: self._stopping)
        self.transfer.chunk_sizes.remember_in(self.journal, settings.api_url)  # a proxy's body limit
        # A hold on a kind of request ends (api/troubles.py): what waited for it goes now.
        self.client.troubles.on_clear(self.bring_forward)
        with self.lock:
            self.registry.replay_locked()

    # --- operations that need more than the registry -----------------------------------------

    def discard_session_locked(self, session: SessionRecord) -> None:
        """rmdir: forget the session and its spool; the server session is deleted in the background."""
        doomed = self.registry.discard_session_locked(session)
        if doomed:
            self.housekeeping.delete_remote_session_later(doomed)

    def session_lost(self, session: SessionRecord, dead_upload_id: str) -> None:
        """The server lost the session (404 or expiry): every file goes again from the spool."""
        with self.lock:
            doomed = self.registry.session_lost_locked(session, dead_upload_id)
        if doomed:
            self.housekeeping.delete_remote_session_later(doomed)

    def request_project_locked(self, session: SessionRecord, options: dict, requester: frozenset[int] = frozenset(),
                               marker: bytes | None = None, marker_mtime_ns: int | None = None) -> None:
        """.create accepted. A session with a tree plans its archive now, or raises
        InvalidArgument with the reason it cannot (nothing changes then). Writing .create says
        the tree is done for its writer: the closed files whose awaited writers are all the
        `requester` (the process that wrote .create and its ancestors) are committed first (a
        script that writes its files and then .create, in one process that runs on). `marker`,
        `marker_mtime_ns`: the .create as accepted and its mtime (ProjectRequest)."""
        if session.archive is None and "download_link" not in options:
            self._commit_tree_locked(session, requester)
            self.tree.plan_locked(session)
        self.projects.request_locked(session, options, marker, marker_mtime_ns)
        self._nudge_locked()

    def check_project_request_locked(self, session: SessionRecord, requester: frozenset[int] = frozenset()) -> None:
        """Raises InvalidArgument with the reason a .create without options would be refused now
        (the close of an empty marker, which requests the project only at its last close)."""
        if session.archive is None:
            self._commit_tree_locked(session, requester)
            self.tree.check_locked(session)

    def _commit_tree_locked(self, session: SessionRecord, requester: frozenset[int]) -> None:
        for record in _closed_tree_files(session):
            if record.awaited_writers() <= requester:
                self.registry.commit_locked(record, succeeded=False)

    @staticmethod
    def _tree_files_awaiting_locked(session: SessionRecord, requester: frozenset[int]) -> list[FileRecord]:
        """The closed tree files of `session` that still wait for a writer other than `requester`."""
        return [f for f in _closed_tree_files(session) if not f.awaited_writers() <= requester]

    def await_tree_commits(self, session: SessionRecord, requester: frozenset[int], timeout: float) -> None:
        """Before a .create by `requester`: waits (no lock held) up to `timeout` for each closed tree
        file of the session whose writers are other processes to reach its commit point as any file
        does (their exits, or the write-back delay). A program that fails after closing its file
        must leave it held, not have it frozen into the archive by someone else's .create (`cp -r
        tree s/ && echo {} > s/.create` finds cp's exit on its way here)."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                if not self._tree_files_awaiting_locked(session, requester):
                    return
            if time.monotonic() >= deadline:
                return  # those left are "still being written": the plan says so
            time.sleep(TREE_COMMIT_POLL)

    def cancel_project_locked(self, session: SessionRecord) -> bool:
        cancelled = self.projects.cancel_locked(session)
        if cancelled and session.archive is not None and not session.archive.may_be_on_server:
            self.registry.drop_archive_locked(session)  # nothing of it was sent: the tree may change again
        return cancelled

    def bring_forward(self, own_turns: bool = True) -> None:
        """Every retry that waits longer than its own backoff asks (`own_turns`; else every retry)
        goes now: a hold on its kind of request ended (the first success after an outage, the
        account fixed), or `fs360 resume`."""
        with self.lock:
            self.registry.bring_forward_locked(self.transfer.own_turn if own_turns else lambda record: 0.0)
            self.housekeeping.nudge_locked()

    def try_now(self) -> None:
        """`fs360 resume`: every wait for a failure shared by all uploads ends now (the account is
        checked at once, each held kind of request sends its probe) and every retry goes now."""
        self.client.troubles.resume()
        self.bring_forward(own_turns=False)

    def trouble_reasons(self) -> list[str]:
        """What holds uploads back for everyone now (the account, outages, the server's waits)."""
        return self.client.troubles.reasons()

    def pacing_waits(self) -> list[dict]:
        """What fs360's own pacing holds back now, with when it ends (api/troubles.pacing_waits)."""
        return pacing_waits(self.client.pacer)

    # --- start-up and shut-down ---------------------------------------------------------

    def start(self) -> "Engine":
        for index in range(self.settings.workers):
            self._spawn(self._worker_loop, f"fs360-upload-{index}")
        self._spawn(self.housekeeping.loop, "fs360-maintenance")
        self._spawn(self._commit_loop, "fs360-commits")
        return self

    def _spawn(self, target, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self, timeout: float = 30.0) -> None:
        """Stops the workers after their current chunk; unfinished work stays in the journal, and
        a file still waiting for its commit point is held at the next mount (see settle_commits).
        Stopping a stopped engine does nothing."""
        with self.lock:
            if self._stopping:
                return
            self._stopping = True
            self._work_ready.notify_all()
            self._commit_due.notify_all()
            self.housekeeping.nudge_locked()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads.clear()
        self.listeners.close()
        self.client.close()
        with self.lock:
            self.registry.write_touches_locked()
        self.journal.close()

    def settle_commits(self, timeout: float) -> None:
        """The mount ends: files waiting for their commit point get it first, within `timeout`
        (a writer that exits as the mount ends, after a lazy unmount, still decides its file)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                closed = self.registry.closed_files_locked()
                for record in closed:
                    if time.monotonic() - record.closed_at >= self.settings.writeback_delay:
                        self.registry.commit_locked(record, succeeded=False)
                if not any(f.state == CLOSED for f in closed):
                    return
            time.sleep(0.05)

    # --- the queue and the workers ---------------------------------------------------------------

    def _schedule_locked(self, record: FileRecord, delay: float) -> None:
        self.lock.assert_held()
        self.scheduler.add_locked(record.id, record.generation, time.monotonic() + delay)
        self._work_ready.notify()

    def _nudge_locked(self) -> None:
        self.housekeeping.nudge_locked()

    def _want_session_locked(self, session: SessionRecord) -> None:
        """A folder's first uploadable file is being written: a worker opens its server session
        now, so that the file's first PUT does not wait for that round trip after its close."""
        if session.upload_id or session.id in self._opened_early:
            return
        self._opened_early.add(session.id)
        self._sessions_to_open.append(session)
        self._work_ready.notify()

    def _runnable_locked(self, file_id: int, generation: int) -> bool:
        """Whether a queue entry may go now. A deleted file created again never goes while its re-copy
        is compared (revived_locked queues it once identical)."""
        record = self.registry.file_locked(file_id)
        return record is not None and record.generation == generation and record.state in QUEUED_STATES \
            and not record.unlinked and not record.open_writers and not self.registry.being_revived_locked(record)

    def _schedule_commit_locked(self, record: FileRecord, delay: float) -> None:
        due = time.monotonic() + delay
        first = self.commit_clock.next_due_locked()
        self.commit_clock.add_locked(record.id, record.generation, due)
        if first is None or due < first:
            # Only a new first entry changes how long the commit thread sleeps: cp closing a file
            # a millisecond would otherwise wake it for each one, 1.5 s too early.
            self._commit_due.notify()

    def _still_closed_locked(self, file_id: int, generation: int) -> bool:
        record = self.registry.file_locked(file_id)
        return record is not None and record.generation == generation and record.state == CLOSED \
            and not record.open_writers

    def _commit_loop(self) -> None:
        """Commits the closed files whose write-back delay passed with a writer still running."""
        with self.lock:
            while not self._stopping:
                file_id, wait = self.commit_clock.take_due_locked(time.monotonic(), self._still_closed_locked)
                if file_id is None:
                    # Files closed a few ms apart (cp) fall due a few ms apart: taken together, a
                    # little late (never early), for one wake-up instead of one each.
                    self._commit_due.wait(None if wait is None else max(wait, COMMIT_BATCH_SECONDS))
                    continue
                self.commit_clock.finish_locked(file_id)
                try:
                    self.registry.commit_locked(self.registry.file_locked(file_id), succeeded=False)
                except Exception:  # a journal that cannot take it: it stays closed, held at the next mount
                    log.exception("cannot commit file %d", file_id)

    def _next_job_locked(self) -> FileRecord | SessionRecord | None:
        """Waits for a session to open early, or a due, still valid queue entry; None when stopping."""
        while not self._stopping:
            if self._sessions_to_open:
                return self._sessions_to_open.popleft()
            file_id, wait = self.scheduler.take_due_locked(time.monotonic(), self._runnable_locked)
            if file_id is not None:
                return self.registry.file_locked(file_id)
            self._work_ready.wait(wait)
        return None

    def _worker_loop(self) -> None:
        # One reusable page-aligned buffer per worker: kernel copies into it are fast. Private, so
        # that MADV_DONTNEED below really gives its pages back (a shared mapping keeps them).
        buffer = mmap.mmap(-1, max(self.settings.chunk_size, mmap.PAGESIZE),
                           flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        try:
            while True:
                with self.lock:
                    record = self._next_job_locked()
                    if record is None:
                        return
                    if isinstance(record, FileRecord):
                        generation = record.generation
                        self.registry.picked_locked(record)
                if isinstance(record, SessionRecord):
                    self.transfer.open_early(record)
                    continue
                self.listeners.emit("file_uploading", file=record)
                try:
                    self.transfer.attempt(record, generation, buffer)
                except JournalClosed:
                    # stop() waited for this attempt no longer (a large chunk on a slow link) and
                    # closed the journal: what it did is not recorded, and the next mount asks
                    # the server where the file stands.
                    log.info("the mount stopped during the upload of %r: it goes on from where the server "
                             "stands at the next mount", record.name)
                    return
                except Exception as exc:  # a bug must not kill a worker; the file goes on later
                    log.exception("unexpected error while uploading %r", record.name)
                    self._retry_after_bug(record, generation, exc)
                finally:
                    # After a big file a worker keeps no chunk's worth of resident pages, but it
                    # keeps its first MiB: giving back and faulting in again the pages of every
                    # small file cost more than the PUT itself on a VM.
                    if record.size > BUFFER_KEPT_RESIDENT and len(buffer) > BUFFER_KEPT_RESIDENT:
                        buffer.madvise(mmap.MADV_DONTNEED, BUFFER_KEPT_RESIDENT, len(buffer) - BUFFER_KEPT_RESIDENT)
                    if not self.journal.closed:  # (closed: stopped, as above; nothing to settle)
                        with self.lock:
                            self.registry.attempt_over_locked(record, generation)
                            if self.scheduler.finish_locked(record.id) and self.registry.file_locked(record.id):
                                # It came up again while this upload ran: one PUT per file in flight.
                                self._schedule_locked(record, 0.0)
        finally:
            try:
                buffer.close()
            except BufferError:
                pass  # a view of it is still referenced (a traceback, a request): the GC frees it

    def _retry_after_bug(self, record: FileRecord, generation: int, exc: Exception) -> None:
        """Settles a file whose upload ended in an unexpected error (tried again a few times); if
        even that fails, the file is retried from memory: nothing ends a worker."""
        with self.lock:
            try:
                self.transfer.internal_error_locked(record, generation, f"{type(exc).__name__}: {exc}")
            except Exception:
                log.exception("cannot settle %r; retrying it from memory", record.name)
                if self.registry.is_current_locked(record, generation):
                    # Status says why the file waits when it is the journal (the reason is in words).
                    self.registry.failed_in_memory_locked(record, str(exc) if isinstance(exc, JournalUnwritable)
                                                          else "")
                    self._schedule_locked(record, self.settings.backoff_cap)


def _closed_tree_files(session: SessionRecord) -> list[FileRecord]:
    """The session's tree files closed by every writer, waiting for their commit point."""
    return [f for f in session.tree_files() if f.state == CLOSED and not f.open_writers]
