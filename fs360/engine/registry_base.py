"""The registry's shared state and the steps every part of it uses: lookups, and the
writes of a file's state (journal first). See registry.py."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

from ..config import Settings
from .journal import Journal
from .locking import StateLock
from .records import CLOSED, P_CREATED, P_READY, QUEUED_STATES, STOPPED_WHILE_WRITING, FileRecord, SessionRecord
from .spool import Spool

log = logging.getLogger(__name__)


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


class RegistryState:
    """What every part of the registry shares. The parts (registry_*.py) are mixins of one
    object, `Registry`: one writer of record state, split by job."""

    def __init__(self, settings: Settings, journal: Journal, spool: Spool, lock: StateLock,
                 schedule: Callable[[FileRecord, float], None], nudge: Callable[[], None] = lambda: None,
                 schedule_commit: Callable[[FileRecord, float], None] = lambda record, delay: None,
                 want_session: Callable[[SessionRecord], None] = lambda session: None):
        self.settings = settings
        self.journal = journal
        self.spool = spool
        self.lock = lock
        self._schedule = schedule
        # The commit clock's door: commit_locked(record, succeeded=False) is due after `delay`.
        self._schedule_commit = schedule_commit
        # Tells housekeeping that something a project waits for changed (it looks again now).
        self.nudge = nudge
        # Asks for the session's server session to be opened now, before its first file is queued.
        self._want_session = want_session
        self.sessions: dict[str, SessionRecord] = {}
        self._sessions_by_id: dict[int, SessionRecord] = {}
        self._files: dict[int, FileRecord] = {}
        # Folder id -> (session id, path): the archive plan's view of the folders, kept in memory so
        # that status renders (which list a tree's entries) never query the journal.
        self._folders: dict[int, tuple[int, str]] = {}
        # A folder's mtime as names come and go (see SessionsAndFolders.touch_folder_locked): when
        # each was last journaled (monotonic), and the ones memory has newer, not yet journaled.
        self._touch_journaled_at: dict[tuple[str, int], float] = {}
        self._touches_behind: dict[tuple[str, int], int] = {}
        # By file id: the handles open on a deleted file the server holds, created again, whose
        # content is being compared (memory only: the handles go with the mount).
        self._revivals_open: dict[int, int] = {}
        self.caps = Caps()

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

    def closed_files_locked(self) -> list[FileRecord]:
        """Files waiting for their commit point (after a restart: their writers still run)."""
        return [f for f in self._files.values() if f.state == CLOSED]

    def awaiting_writers_locked(self) -> list[FileRecord]:
        """Files whose writers' exits are awaited: closed ones, and closed scratch files (after a
        restart: their writers still run)."""
        return [f for f in self._files.values() if f.state == CLOSED or (f.local_only and f.writers)]

    # --- files: states --------------------------------------------------------------------------

    def set_state_locked(self, record: FileRecord, state: str, **extra) -> None:
        self.lock.assert_held()
        # Journal first: if it cannot record the change, memory does not pretend it happened.
        self.journal.update_file(record.id, state=state, **extra)
        record.state = state
        for key, value in extra.items():
            setattr(record, key, value)

    # --- files: sizes, and their sum per session -------------------------------------------------

    def _counted_in(self, record: FileRecord) -> SessionRecord | None:
        """The session whose `listed_bytes` holds the record's size: listed there, not scratch."""
        session = self._sessions_by_id.get(record.session_id)
        if session is not None and not record.local_only and session.files.get(record.name) is record:
            return session
        return None

    def resize_locked(self, record: FileRecord, size: int) -> None:
        """Every change of a file's size goes through here: its session's sum follows it."""
        session = self._counted_in(record)
        if session is not None:
            session.listed_bytes += size - record.size
        record.size = size

    def uncount_locked(self, record: FileRecord) -> None:
        """Before the record leaves its session's listing (or becomes scratch)."""
        session = self._counted_in(record)
        if session is not None:
            session.listed_bytes -= record.size

    def count_locked(self, record: FileRecord) -> None:
        """After the record joined a session's listing (or stopped being scratch)."""
        session = self._counted_in(record)
        if session is not None:
            session.listed_bytes += record.size

    def others_size_locked(self, record: FileRecord) -> int:
        """The sizes of the other listed, non-scratch files of the record's session."""
        session = self.session_of(record)
        return session.listed_bytes - (record.size if self._counted_in(record) is session else 0)

    def recount_locked(self) -> None:
        """Every session's sum from scratch (after the replay)."""
        for session in self.sessions.values():
            session.listed_bytes = sum(f.size for f in session.files.values() if not f.local_only)

    def set_file_attrs_locked(self, record: FileRecord, ctime_ns: int | None = None, **attrs) -> None:
        """Journaled `attrs`; `ctime_ns` (memory only): a change of its metadata (chmod, rename)."""
        if attrs:
            self.journal.update_file(record.id, **attrs)
        for key, value in attrs.items():
            setattr(record, key, value)
        if ctime_ns is not None:
            record.ctime_ns = ctime_ns

    def attrs_given_locked(self, record: FileRecord, ctime_ns: int, **attrs) -> None:
        """chmod, chown, utimens of a file: as set_file_attrs_locked, and a time its writer gave is
        the one an identical re-copy keeps (cp -a sets it before the close)."""
        self.set_file_attrs_locked(record, ctime_ns=ctime_ns, **attrs)
        if "mtime_ns" in attrs:
            record.times_given = True

    @staticmethod
    def recopy_opened_locked(record: FileRecord) -> None:
        """A re-copy of a held file opened: what time it ends with is its writer's to set from now."""
        record.times_given = False

    def requeue_locked(self, record: FileRecord, state: str, delay: float, resync: bool = False, **extra) -> None:
        """Back to the queue in `state` (pending or failed), due in `delay` seconds. `resync`: the
        server is asked where the file stands before its next PUT."""
        self.set_state_locked(record, state, **extra)
        if resync:
            record.needs_resync = True
        self._schedule(record, delay)

    def bring_forward_locked(self, own_turn: Callable[[FileRecord], float]) -> None:
        """A hold on uploads ended: every queued file waiting beyond `own_turn(record)` (the wall
        time its own backoff allows, 0: none) is due then, and a project waiting after a failure
        is tried at once."""
        now = time.time()
        for record in self._files.values():
            if record.state in QUEUED_STATES and record.next_attempt > now and not record.unlinked:
                due = max(now, own_turn(record))
                if due < record.next_attempt:
                    record.generation += 1  # its queue entry for later is dropped when it comes up
                    record.next_attempt = due
                    self._schedule(record, due - now)
        for session in self.sessions.values():
            project = session.project
            if project is not None and project.last_error and project.next_attempt > now:
                project.next_attempt = now

    def learn_locked(self, **changes) -> None:
        for key, value in changes.items():
            setattr(self.caps, key, value)
        self.journal.set_meta("caps", dict(file_cap=self.caps.file_cap, session_cap=self.caps.session_cap,
                                           allowed_extensions=list(self.caps.allowed_extensions),
                                           refused_extensions=list(self.caps.refused_extensions)))

    def _rest_unfinished_locked(self, record: FileRecord) -> None:
        """Not whole (interrupted) or not known to be (held): never uploaded as it is."""
        record.generation += 1
        record.writers = record.earlier_writers = None
        record.writer_unknown = False
        record.earlier_failure = ""
        self.set_state_locked(record, record.unfinished_state, size=record.size, mtime_ns=record.mtime_ns,
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
            # A scratch file's row has no `writing` state: while open, a reason that would hold it
            # (a writer's failure after closing it while another still writes) must not stand in
            # the journal for "being written" (registry.replay_locked reads held from a reason).
            journaled = STOPPED_WHILE_WRITING if record.open_writers and (record.local_only or not reason) \
                else reason
            self.journal.update_file(record.id, unfinished=journaled)
            record.stop_journaled = journaled == STOPPED_WHILE_WRITING

