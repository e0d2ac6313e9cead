"""The registry's side of uploads: what a transfer reports (picked, progress, sent, where the
server says a file stands) applied to the file's record and journaled (see registry.py;
transfer.py decides, the registry writes)."""

from __future__ import annotations

import time

from .records import COMPLETE, FAILED, LOST, PENDING, UPLOADING, FileRecord
from .registry_base import RegistryState

# Seconds between journal commits of one file's upload progress.
PROGRESS_JOURNAL_INTERVAL = 0.5


class UploadOutcomes(RegistryState):
    """A file's upload as its transfer reports it."""

    def picked_locked(self, record: FileRecord) -> None:
        """A worker took the file: `uploading` in memory (journaled with the upload_id at its claim,
        just before the first PUT; a file deleted before that leaves no trace)."""
        record.state = UPLOADING

    def progress_locked(self, record: FileRecord, received: int) -> bool:
        """The server holds `received` bytes of the file. Returns whether to journal that now
        (journal_progress, after the lock is released): a few commits a second at most, never one
        per chunk; the journal's offset is only a hint (every resume asks the server), and the
        last one goes with the completion."""
        sent = received - record.server_received
        record.server_received = received
        if sent > 0:
            record.attempts = 0  # progress: the next error backs off from the start again
        now = time.monotonic()
        if received < record.size and now - record.progress_journaled_at >= PROGRESS_JOURNAL_INTERVAL:
            record.progress_journaled_at = now
            return True
        return False

    def journal_progress(self, record: FileRecord, received: int) -> None:
        """Outside the state lock: a commit may wait on the disk, and FUSE callbacks wait on the lock."""
        self.journal.update_file(record.id, server_received=received)

    def sent_locked(self, record: FileRecord, generation: int, received: int) -> bool:
        """Every byte of the file is on the server. Returns whether that completed the file (not
        when it was deleted or written again meanwhile: the server's copy is then kept as sent)."""
        if record.unlinked or record.generation != generation:
            self.journal.update_file(record.id, server_received=received)
            record.server_received = received
            return False
        self.set_state_locked(record, COMPLETE, server_received=received, completed_at=time.time(), last_error="")
        return True

    def sent_after_deletion_locked(self, record: FileRecord, generation: int, upload_id: str, received: int,
                                   sent_digest: str | None) -> bool:
        """The PUT under way when the file was deleted completed it on the server (unzip -o and
        tar -x unlink a file before writing it again). Complete only when that attempt was of the
        content the file had at its deletion (its generation then, nothing written since it was
        picked), to the session it went to, every byte of its size on the server, and the digest of
        the whole file as sent is the one journaled when it was queued. Still deleted, an identical
        re-creation revives it (revivable_locked); created again identical meanwhile (or being
        compared), it is complete as if never deleted. Returns whether it did."""
        if not (record.deleted_generation == generation and self._files.get(record.id) is record
                and record.state == UPLOADING
                and not record.archive and record.upload_id == upload_id and received == record.size
                and record.sha256 and sent_digest == record.sha256):
            return False
        self.set_state_locked(record, COMPLETE, server_received=received, completed_at=time.time(), last_error="")
        return True

    def attempt_over_locked(self, record: FileRecord, generation: int) -> None:
        """A worker is done with the attempt of `generation`, however it ended. If the file was deleted
        while that attempt's PUT was under way, nothing can complete it any more: still deleted, its
        spool copy goes (the server holds it whole, or part of it, as that PUT's answer said); created
        again identical meanwhile (or being compared), an upload it did not complete goes on from the
        server's word, as if never deleted (never while compared: Engine._runnable_locked)."""
        if record.deleted_generation != generation:
            return
        record.deleted_generation = -1
        if self._files.get(record.id) is not record:
            return  # its session was lost or discarded: gone with it
        if record.unlinked:
            if not record.evicted:
                self.drop_spool_locked(record)
        elif record.state == UPLOADING:
            self.requeue_locked(record, PENDING, 0.0, resync=True)

    def failed_in_memory_locked(self, record: FileRecord, reason: str = "") -> None:
        """Its upload ended in a bug that even settling it could not journal: tried again later
        from memory, asking the server first where it stands. `reason`: why, for status."""
        record.state, record.needs_resync = FAILED, True
        if reason:
            record.last_error = reason

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
        self.requeue_locked(record, PENDING, 0.0, resync=True, last_error="")
