"""The registry's commit point: when a closed file is final (see doc/SEMANTICS.md, "The commit
point", and fs/exits.py, which reports the writers and their exits)."""

from __future__ import annotations

import logging
import time

from .processes import writers_text
from .records import CLOSED, HELD, HELD_WAY_OUT, INTERRUPTED, FileRecord
from .registry_base import RegistryState

log = logging.getLogger(__name__)


class CommitPoint(RegistryState):
    """A closed file waits for its writers' exits; see fs/exits.py for how they are known."""

    # --- files: the commit point ----------------------------------------------------------------
    # A file is final when every process that closed it written has exited 0, or, for a writer
    # that keeps running (a file manager, a shell's redirection), once it stayed closed for the
    # write-back delay. A writer that exits non-zero or by a signal first leaves it `held`.

    def await_commit_locked(self, record: FileRecord) -> None:
        """Closed by its last writer (or a closed scratch file renamed to its final name): it is
        committed once its writers (`record.writers`, filled by the path model) have exited 0,
        or when the write-back delay has passed."""
        if record.writers or record.earlier_writers or record.writer_unknown:
            record.generation += 1
            # The writers go to the journal in their text form (memory keeps them as a dict). After
            # a restart an earlier writer counts as this writing's: its failure holds the file.
            self.journal.update_file(record.id, state=CLOSED, size=record.size, mtime_ns=record.mtime_ns,
                                     last_error="", attempts=0, unfinished=record.unfinished,
                                     writers=writers_text(record.awaited_writer_starts()))
            record.state, record.last_error, record.attempts = CLOSED, "", 0
            self._schedule_commit(record, self.settings.writeback_delay)
        else:
            self.commit_locked(record, succeeded=True)

    def commit_locked(self, record: FileRecord, succeeded: bool) -> None:
        """The commit point is reached: `succeeded`, every writer exited 0 (which also makes an
        unfinished file it appended to whole); otherwise the write-back delay passed."""
        record.writers = record.earlier_writers = None
        record.writer_unknown = False
        record.earlier_failure = ""
        if record.unfinished and not succeeded:
            self._rest_unfinished_locked(record)
            return
        record.completing = False
        self.queue_upload_locked(record)

    @staticmethod
    def writer_awaited_locked(record: FileRecord, tgid: int, start: int) -> None:
        """Process `tgid` (started at `start`) closed `record` written: its exit is awaited."""
        if record.writers is None:
            record.writers = {}
        record.writers[tgid] = start

    @staticmethod
    def writer_unknown_locked(record: FileRecord, tgid: int | None = None) -> None:
        """A writer of `record` cannot be watched (no pid, no watch), or process `tgid` ended with
        an unknown status: only the write-back delay commits the file."""
        if tgid is None or record.awaits(tgid):
            record.writer_unknown = True

    def writer_exited_locked(self, record: FileRecord, tgid: int, failure: str) -> None:
        """Process `tgid`, which closed `record` written, exited: `failure` says why it failed
        ('' when it exited 0). A failure before the commit point holds the file."""
        was_writer = record.writers is not None and tgid in record.writers
        if was_writer:
            del record.writers[tgid]
        was_earlier = record.earlier_writers is not None and tgid in record.earlier_writers
        if was_earlier:
            del record.earlier_writers[tgid]
        if not (was_writer or was_earlier) or record.id not in self._files or record.unlinked:
            return
        if failure:
            if record.local_only and time.monotonic() - record.closed_at > self.settings.writeback_delay:
                return  # a scratch file closed long before: a later failure says nothing of it
            if not was_writer:
                # What came before this writing may be partial: held, unless this writing wrote
                # the file whole (known at its last close, see close_writer_locked).
                if record.open_writers:
                    record.earlier_failure = record.earlier_failure or failure
                    return
                if record.completing:
                    return
            self.writer_failed_locked(record, failure, HELD)
            if record.state == CLOSED:
                self._rest_unfinished_locked(record)
        elif record.state == CLOSED and not record.writers and not record.earlier_writers \
                and not record.writer_unknown:
            self.commit_locked(record, succeeded=True)
        elif record.state == CLOSED or record.local_only:
            # The others still run (or a scratch file waits for its final name): after a crash the
            # journal must not name this one, whose exit was seen (a restart would take it for a
            # writer that ended unseen, and hold the file).
            self.journal.update_file(record.id, writers=writers_text(record.awaited_writer_starts()))

    def changed_through_locked(self, record: FileRecord, tgid: int, name: str) -> None:
        """Program `tgid` (`name`) changed the file through a handle it opened (the first close of
        that handle said who): two programs doing so in one writing, each through its own handle
        (`cat a > f & cat b > f`, two copies to one name at once), leave a mix of both, which
        no exit status tells: held. One handle shared (a shell's redirection) is one writer."""
        programs = record.writing_programs = record.writing_programs or {}
        programs[tgid] = name
        if len(programs) == 2:
            first, second = programs.values()
            both = f"{first} and {second}" if first != second else f"two {first} processes"
            self.writer_failed_locked(record, f"{both} wrote it at the same time: it may hold a mix of both; "
                                              f"{HELD_WAY_OUT}", HELD)

    def writer_failed_locked(self, record: FileRecord, reason: str, state: str) -> None:
        """This writing of the file failed (`reason`): it rests in `state` once closed."""
        if state == HELD and record.unfinished and record.unfinished_state == INTERRUPTED \
                and not record.completing:
            return  # a writer of it died holding it: surely partial, whatever the others did after
        record.completing = False
        record.unfinished_state = state
        record.writer_failure = reason
        if record.unfinished != reason:
            self.set_unfinished_locked(record, reason)

    def release_held_locked(self, record: FileRecord) -> bool:
        """`fs360 release`: the user says a held file is whole; it is queued now. False when the
        file is not held."""
        if record.state != HELD or record.open_writers:
            return False
        record.unfinished_state = INTERRUPTED
        self.set_unfinished_locked(record, "")
        self.queue_upload_locked(record)
        log.info("%s: released by the user; uploading it", record.name)
        return True

