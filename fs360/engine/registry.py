"""The registry: every session, file, folder and project record, and their state machine.

It is the only writer of record state. Each change is written through to the
journal in the same step (journal first: if the journal cannot take a change,
memory does not pretend it happened), so a restart replays exactly what was
promised. Every method needs the engine's state lock held (hence `_locked`); none
does network I/O. A file that becomes due is handed to `schedule(record, delay)`,
the scheduler's door, so the registry can be tested alone; `nudge()` wakes
housekeeping when something a project waits for changed.

One object, split by job into parts that share its state (registry_base.py):
  registry_sessions.py  sessions, their projects and their tree's folders
  registry_files.py     files: written, closed, truncated, queued, renamed, removed, re-copied
  registry_commits.py   the commit point: when a closed file is final
  registry_names.py     the names files go to the server under
  registry_uploads.py   what transfers report: picked, progress, sent, where the server says a file is
and here: the replay of the journal, and the spool's eviction candidates.
"""

from __future__ import annotations

import json
import logging
import os
import time

from .processes import all_still_running, writers_from_text
from .records import (CLOSED, FAILED, HELD, INTERRUPTED, LOCAL, PENDING, STOPPED_BEFORE_COMMIT,
                      STOPPED_WHILE_WRITING, UPLOADING, WRITING, COMPLETE, FileRecord, ProjectRequest,
                      SessionRecord, unfinished_state_of)
from .registry_base import Caps, RegistryState, project_may_use
from .registry_commits import CommitPoint
from .registry_files import FileWriters
from .registry_names import ServerNames
from .registry_sessions import SessionsAndFolders
from .registry_uploads import UploadOutcomes

__all__ = ["Registry", "Caps", "project_may_use", "STOPPED_WHILE_WRITING", "STOPPED_BEFORE_COMMIT"]

log = logging.getLogger(__name__)


class Registry(SessionsAndFolders, FileWriters, CommitPoint, ServerNames, UploadOutcomes, RegistryState):
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
                sha256=row["sha256"], archive=bool(row["archive"]), unfinished=row["unfinished"],
                prefix_whole=bool(row["prefix_whole"]))
            record.local_only = record.state == LOCAL
            if record.local_only and record.unfinished:
                # Held or interrupted is in memory only for a scratch file (its row says `local`),
                # and a rename to its final name rests it in that state: its reason says which.
                # Without this, one held at a remount (or by its writer's failure after closing
                # it) came back `interrupted` from the next one, its reason still offering
                # `fs360 release`, which then refused it. (Open for writing at the stop, its row
                # says STOPPED_WHILE_WRITING: interrupted, see open_for_write_locked.)
                record.unfinished_state = unfinished_state_of(record.unfinished)
            self._files[record.id] = record
            if record.archive:
                session.archive = record
            elif record.unlinked:
                session.unlinked.append(record)
                if not record.evicted and not record.in_tree:
                    # Kept for the PUT under way at its deletion (remove_file_locked): none outlives the mount.
                    self.drop_spool_locked(record)
            else:
                session.files[record.name] = record
            if record.server_name:
                self._take_name_locked(record, session)
            if record.state == WRITING or record.unfinished == STOPPED_WHILE_WRITING or record.local_only:
                # (a scratch file is never sent: its spool is its data, whoever wrote it last)
                self._size_from_spool_locked(record)
            if record.state == CLOSED:
                self._resume_commit_locked(record, writers_from_text(row["writers"]))
            elif record.local_only and row["writers"]:
                self._resume_scratch_writers_locked(record, writers_from_text(row["writers"]))
            elif record.state == HELD:
                record.unfinished_state = HELD
            elif record.state == WRITING:
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
        self.recount_locked()
        for row in self.journal.dirs():
            self._folders[row["id"]] = (row["session_id"], row["path"])
        for row in self.journal.projects():
            session = self._sessions_by_id.get(row["session_id"])
            if session is not None:
                session.project = ProjectRequest(
                    options=json.loads(row["options"]), state=row["state"], name=row["name"],
                    status=row["status"], record=json.loads(row["record"]), last_error=row["last_error"],
                    attempts=row["attempts"], next_attempt=0.0, posted_upload_id=row["posted_upload_id"],
                    marker_hidden=bool(row["marker_hidden"]), posted_at=row["posted_at"],
                    listed_before=None if row["listed_before"] is None else json.loads(row["listed_before"]),
                    marker=row["marker"], marker_mtime_ns=row["marker_mtime_ns"])

    def _resume_scratch_writers_locked(self, record: FileRecord, writers: dict[int, int]) -> None:
        """A closed scratch file whose writers had not all exited when the mount stopped: those
        still running are awaited again; if one ended unseen, the file is unfinished, and held
        should it be renamed to its final name (as a `closed` file would be)."""
        if all_still_running(writers):
            record.writers = writers
        elif not record.unfinished:
            record.unfinished_state = HELD
            self.set_unfinished_locked(record, STOPPED_BEFORE_COMMIT)

    def _resume_commit_locked(self, record: FileRecord, writers: dict[int, int]) -> None:
        """A file closed but not committed when the mount stopped: while every writer it waited
        for still runs, it waits on (the path model watches them again); a writer that ended
        meanwhile ended unseen, so the file is held."""
        if all_still_running(writers):
            record.writers = writers
            record.closed_at = time.monotonic()
            self._schedule_commit(record, self.settings.writeback_delay)
            return
        record.unfinished_state = HELD
        self.set_unfinished_locked(record, STOPPED_BEFORE_COMMIT)
        self.set_state_locked(record, HELD, last_error=record.unfinished)

    def _size_from_spool_locked(self, record: FileRecord) -> None:
        """A file open for writing when the mount stopped: the journal has the size of its last
        close (sizes are journaled at close), the spool holds what was written since."""
        try:
            size = os.stat(self.spool.path(record.id)).st_size
        except OSError:
            return  # deleted while open: nothing is left to size
        if size != record.size:
            record.size = size  # before the sums are made (recount_locked)
            self.journal.update_file(record.id, size=size)

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
