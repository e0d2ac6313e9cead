"""The registry's files: created, written, closed, truncated, queued, renamed, removed, and
identical re-copies of files the server holds (see registry.py)."""

from __future__ import annotations

import logging
import os
import time

from .records import (COMPLETE, HELD, INTERRUPTED, IN_TREE, LOCAL, PENDING, QUEUED_STATES,
                      STOPPED_WHILE_WRITING, UNFINISHED_STATES, UPLOADING, WRITES_SPOILED, WRITING, FileRecord,
                      SessionRecord, rewritten_in_part)
from .processes import writers_text
from .registry_base import RegistryState
from .content_digest import is_legacy_digest
from .spool import RunningDigest

log = logging.getLogger(__name__)


class FileWriters(RegistryState):
    """Files: from their creation to their queuing, and their names and removal in the folder."""

    # --- files: writers ------------------------------------------------------------------------

    def create_file_locked(self, session: SessionRecord, name: str, mode: int, uid: int, gid: int,
                           local_only: bool) -> FileRecord:
        """A new file, created to be opened for writing at once (open_for_write_locked): one
        journal row that already says so, and holds its server name."""
        now_ns = time.time_ns()
        state = LOCAL if local_only else WRITING
        uploaded_alone = not local_only and "/" not in name  # not scratch, not in the tree
        server_name = self.free_server_name_locked(name, session) if uploaded_alone else None
        values = dict(session_id=session.id, name=name, size=0, mode=mode, uid=uid, gid=gid, mtime_ns=now_ns,
                      state=state, server_received=0, upload_id=None, last_error="", attempts=0, next_attempt=0,
                      completed_at=0, evicted=0, unlinked=0, server_name=server_name, sha256=None, archive=0,
                      unfinished=STOPPED_WHILE_WRITING, writers="", prefix_whole=1)
        file_id = self.journal.insert_file(values)
        self.spool.create(file_id)
        record = FileRecord(id=file_id, session_id=session.id, name=name, mode=mode, mtime_ns=now_ns, uid=uid,
                            gid=gid, state=state, local_only=local_only, server_name=server_name,
                            stop_journaled=True)
        self._files[file_id] = record
        session.files[name] = record
        if server_name:
            self._take_name_locked(record, session)
        return record

    def add_archive_locked(self, session: SessionRecord, size: int, server_name: str) -> FileRecord:
        """The session's tree frozen as one upload of its own (see archive_plan.py), queued now."""
        now_ns = time.time_ns()
        name = session.name + ".zip"
        values = dict(session_id=session.id, name=name, size=size, mode=0o644, uid=os.getuid(), gid=os.getgid(),
                      mtime_ns=now_ns, state=PENDING, server_received=0, upload_id=None, last_error="",
                      attempts=0, next_attempt=0, completed_at=0, evicted=0, unlinked=0, server_name=server_name,
                      sha256=None, archive=1, unfinished="", writers="", prefix_whole=1)
        file_id = self.journal.insert_file(values)
        record = FileRecord(id=file_id, session_id=session.id, name=name, mode=0o644, mtime_ns=now_ns, size=size,
                            uid=values["uid"], gid=values["gid"], state=PENDING, server_name=server_name,
                            archive=True)
        self._files[file_id] = record
        session.archive = record
        self._take_name_locked(record, session)
        self._schedule(record, 0.0)
        return record

    def drop_archive_locked(self, session: SessionRecord) -> None:
        """The archive was planned but nothing of it reached the server: the tree may change again."""
        archive = session.archive
        archive.generation += 1
        for record in [f for f in session.unlinked if f.in_tree]:
            # Deleted from the frozen tree, kept only for this archive: gone for good now.
            session.unlinked.remove(record)
            self.spool.remove(record.id)
            self._forget_file_locked(record, session)
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
        first_writer = record.open_writers == 1
        if truncated and record.size:
            self.resize_locked(record, 0)
            record.mtime_ns = time.time_ns()
        if rewrite:
            self.set_unfinished_locked(record, "")
            record.digest = RunningDigest()
        elif record.state in UNFINISHED_STATES and not record.unfinished:
            self.set_unfinished_locked(record, record.last_error or "an earlier write of this file did not finish")
        if first_writer:
            # A writing makes an unfinished file whole only if it writes it to its end in one run
            # from byte 0 or from its end now (rsync resuming in place, rsync --append, curl -C -,
            # cat rest >> f) and its writers exit 0: a touch, an open with no write, a write in
            # place or a truncate leaves it as it was (note_written_locked).
            record.completing = False
            record.written_from, record.written_to, record.opened_size = -1, 0, record.size
            record.writer_failure = ""
            record.writing_programs = None
            if rewrite:
                self._prefix_whole_locked(record, True)
                # Its content starts again: earlier writers' exits no longer say anything of it.
                record.earlier_writers, record.earlier_failure = None, ""
                record.writer_unknown = False
            elif record.writers:
                # Their exits still decide what came before this writing (a touch while the
                # program that wrote the file runs on must not stand in for its exit).
                record.earlier_writers = {**(record.earlier_writers or {}), **record.writers}
            # (An earlier writer that cannot be watched, a truncate by path, still has only the
            # write-back delay to stand in for its exit: writer_unknown stays unless rewritten.)
            record.writers = None
        if record.open_writers == 1 and (not record.unfinished or record.local_only):
            # Journal only (memory keeps the truth while it is open): should the mount stop before
            # the last close, the file comes back unfinished. A scratch file has no `writing` state
            # to say so, and a rename to its final name must never upload it then. An unfinished
            # scratch file too: the next mount takes held or interrupted from its row's reason
            # (registry.replay_locked), and cut mid-write it is interrupted, never held.
            self._journal_stop_locked(record)
        if record.local_only:
            return
        record.generation += 1
        if record.state != WRITING:
            self.set_state_locked(record, WRITING, last_error="", attempts=0)

    def _journal_stop_locked(self, record: FileRecord) -> None:
        """The journal says STOPPED_WHILE_WRITING while the file is open (once per opening)."""
        if not record.stop_journaled:
            self.journal.update_file(record.id, unfinished=STOPPED_WHILE_WRITING)
            record.stop_journaled = True

    def wrote_locked(self, record: FileRecord, offset: int, end: int) -> RunningDigest | None:
        """Bytes from `offset` up to `end` were written to its spool file (memory only until the
        last close). Returns the running digest for the caller to feed the data to, after the lock
        is released."""
        self.note_written_locked(record, offset, end)
        if end > record.size:
            if not record.size and record.server_name:
                # The first bytes of a file that goes up on its own (not scratch, not in the tree,
                # its extension allowed): its folder's server session opens now, not after its
                # close. Not at its creation: `touch`, vim's 4913 test file get no session.
                self._want_session(self.session_of(record))
            self.resize_locked(record, end)
        record.mtime_ns = time.time_ns()
        return record.digest

    def note_written_locked(self, record: FileRecord, offset: int, end: int) -> None:
        """This writing's run of writes (FileRecord.written_from): it goes on while each write
        starts within it; its first write must start at byte 0 or at the size the file had when
        the writing began."""
        if record.written_from == WRITES_SPOILED:
            return
        if record.written_from < 0:
            if offset in (0, record.opened_size):
                record.written_from, record.written_to = offset, end
            else:
                self._spoil_locked(record)
        elif record.written_from <= offset <= record.written_to:
            record.written_to = max(record.written_to, end)
        else:
            self._spoil_locked(record)

    def _note_cut_locked(self, record: FileRecord, length: int) -> None:
        """A truncate to `length` (not 0) during a writing: its run still reaches the end only if
        the cut falls within it (rsync resuming in place cuts the file to its new size)."""
        if record.open_writers and record.written_from != WRITES_SPOILED:
            if record.written_from < 0 or not record.written_from <= length <= record.written_to:
                self._spoil_locked(record)
            else:
                record.written_to = length

    def _spoil_locked(self, record: FileRecord) -> None:
        """This writing's writes are not one run: the file may hold a hole or bytes nobody wrote
        in order, so no append can make it whole later (journaled now: a crash must not forget it)."""
        record.written_from = WRITES_SPOILED
        self._prefix_whole_locked(record, False)

    def _prefix_whole_locked(self, record: FileRecord, whole: bool) -> None:
        if record.prefix_whole != whole:
            record.prefix_whole = whole
            self.journal.update_file(record.id, prefix_whole=whole)

    def _writes_make_it_whole_locked(self, record: FileRecord) -> bool:
        """At the last close: this writing wrote the file to its end in one run, from byte 0, or
        from its old end onto bytes all written front to back before (an append to a clean part)."""
        if record.written_from < 0 or record.written_to < record.size:
            return False
        if record.written_from == 0:
            self._prefix_whole_locked(record, True)
            return True
        return record.prefix_whole

    def allocated_locked(self, record: FileRecord, end: int) -> None:
        """fallocate grew its spool file to `end` with zeros."""
        if end > record.size:
            self._spoil_locked(record)  # zeros nobody wrote
            self.resize_locked(record, end)
            if record.digest is not None:
                record.digest.invalidate()

    def close_writer_locked(self, record: FileRecord, size: int, unfinished: str = "") -> None:
        """A writer closed it. `unfinished`: why that writer did not finish (a failed write,
        a dying process): the file is then `interrupted`, never uploaded as it is. The last
        close of a whole file starts its commit point (await_commit_locked)."""
        record.open_writers = max(0, record.open_writers - 1)
        self.resize_locked(record, size)
        # This writing's own failure (not an earlier writer's), and who changed it.
        own_failure, programs = unfinished or record.writer_failure, record.writing_programs
        if not record.open_writers:
            # (Not when a writer of this writing already failed: an exit may come before the release.)
            record.completing = self._writes_make_it_whole_locked(record) and not record.writer_failure
            if record.earlier_failure and not record.completing:
                self.writer_failed_locked(record, record.earlier_failure, HELD)
        if unfinished:
            self.writer_failed_locked(record, unfinished, INTERRUPTED)
        last_close = not record.open_writers and record.id in self._files
        if last_close:
            # The journal's unfinished becomes what memory says (set_unfinished_locked journaled a
            # reason; '' goes with the row's next write below, or with the queuing).
            record.stop_journaled = False
            record.closed_at = time.monotonic()
            record.writing_programs = None  # the writing is over (a dict each: 100,000 files)
        if record.open_writers or record.unlinked or record.local_only or record.id not in self._files:
            as_is = {"unfinished": record.unfinished} if last_close else {}
            if last_close and record.local_only:
                # A scratch file may get its final name after a restart: its writers' exits decide
                # then too, and one that ended while no daemon watched holds it (registry.py).
                as_is["writers"] = writers_text(record.awaited_writer_starts())
            self.journal.update_file(record.id, size=size, mtime_ns=record.mtime_ns, **as_is)
        elif record.unfinished and not record.completing:
            if not own_failure and record.written_from != -1:
                self.set_unfinished_locked(record, rewritten_in_part(record.unfinished_state, programs))
            self._rest_unfinished_locked(record)
        else:
            self.await_commit_locked(record)

    def truncated_locked(self, record: FileRecord, length: int, listed: bool) -> None:
        """Its spool file was truncated to `length`: with no writer open it is queued again
        (truncate -s); `listed`: the file is still in its folder."""
        self.resize_locked(record, length)
        record.mtime_ns = time.time_ns()
        if length == 0:
            # Rewritten from 0: whatever was unfinished before is gone with its bytes.
            self.set_unfinished_locked(record, "")
            record.digest = RunningDigest()
            record.earlier_writers, record.earlier_failure = None, ""
            record.written_from, record.written_to = 0, 0
            self._prefix_whole_locked(record, True)
        else:
            self._note_cut_locked(record, length)
            if record.digest is not None:
                record.digest.cut(length)
            if record.state in UNFINISHED_STATES and not record.unfinished:
                self.set_unfinished_locked(record, record.last_error)  # still partial
        if not record.open_writers and not record.local_only and not record.unfinished and listed:
            record.writer_unknown = True  # truncate(1) by path: the commit waits the delay
            self.await_commit_locked(record)
        else:
            self.journal.update_file(record.id, size=length, mtime_ns=record.mtime_ns)

    def queue_upload_locked(self, record: FileRecord, delay: float = 0.0, unchanged: bool = False) -> None:
        """The file is committed (see commit_locked) and its name final: upload it after `delay`.
        A file of the tree is whole now, and waits for the archive instead. `unchanged`: queued
        again with the very content it was queued with (moved into the tree or out of it), so the
        digest journaled then stands (its running digest is no longer kept)."""
        record.generation += 1
        digest = record.sha256 if unchanged and record.sha256 else self.known_digest(record)
        # Whole (it is queued): `unfinished` '' goes in the same journal write.
        if record.in_tree:
            # Its digest (when known) lets an identical re-copy of the frozen tree be compared.
            self.set_state_locked(record, IN_TREE, size=record.size, mtime_ns=record.mtime_ns, last_error="",
                                  attempts=0, sha256=digest, unfinished="")
        else:
            # The sha256 of its running digest; unknown (not written front to back, no hash made at
            # its close), the upload hashes it before its first PUT: never a read under the lock.
            self.set_state_locked(record, PENDING, size=record.size, mtime_ns=record.mtime_ns, last_error="",
                                  attempts=0, sha256=digest, unfinished="")
            self._schedule(record, delay)
        # Its digest is journaled (or goes in the archive's): the running hash's state (about 1 KiB
        # with its lock) is not kept for every file; an append reopening it reads the spool instead.
        record.digest = None

    # --- files: names and removal ----------------------------------------------------------------

    def rename_file_locked(self, record: FileRecord, target: SessionRecord, new_name: str, local_only: bool) -> None:
        source = self.session_of(record)
        replaced = target.files.get(new_name)
        if replaced is not None and replaced is not record:
            self.remove_file_locked(replaced)
        self.uncount_locked(record)
        del source.files[record.name]
        record.name = new_name
        record.session_id = target.id
        target.files[new_name] = record
        # With the writers it still awaits: a committed file's journal named those it had awaited,
        # which a remount took for writers that ended unseen once it had a scratch name (held).
        self.journal.update_file(record.id, name=new_name, session_id=target.id,
                                 writers=writers_text(record.awaited_writer_starts()))
        was_local = record.local_only
        record.local_only = local_only
        self.count_locked(record)
        if was_local and not local_only:
            if record.open_writers:
                self.set_state_locked(record, WRITING)
            elif record.unfinished and not record.completing:
                self._rest_unfinished_locked(record)
            else:
                # A closed scratch file (rsync's .name.XXXXXX, GIO's .goutputstream-*) renamed to
                # its final name: committed once its writers and the renamer have exited 0
                # (rsync --partial renames a partial file and then exits 20; rsync --partial-dir
                # finishes its partial file in place, then renames it).
                self.await_commit_locked(record)
        elif not was_local and local_only:
            record.generation += 1
            self.set_state_locked(record, LOCAL, last_error="")
            if record.open_writers:
                # Its row no longer says `writing`: should the mount stop before the last close,
                # its reason must say so (see open_for_write_locked).
                self._journal_stop_locked(record)
        elif (record.state == IN_TREE) != record.in_tree and record.state in QUEUED_STATES + (IN_TREE, UPLOADING):
            # A closed file moved into the tree (its upload, not begun, stops), or out of it. (Any
            # change of its content since it was queued would have taken it out of these states.)
            self.queue_upload_locked(record, unchanged=True)
        elif record.state in QUEUED_STATES or (record.state == UPLOADING and not record.may_be_on_server):
            # Committed, not sent: an attempt already picked up stops at its claim (it may have
            # opened the old session, or checked the old name), and the file goes again from here.
            record.generation += 1
            if record.state == UPLOADING:
                self.set_state_locked(record, PENDING)
            self._schedule(record, 0.0)
        self._rechoose_server_name_locked(record, source)

    def remove_file_locked(self, record: FileRecord) -> None:
        """unlink: a file the server may hold is remembered (the session cannot drop it), and so is
        a file of a frozen tree whose archive is not up yet: the archive still holds it, and reads
        its spool copy (a re-run of tar -x or unzip -o creates it again: revivable_locked). A file
        whose PUT is under way keeps its spool copy until that attempt is over (attempt_over_locked):
        an identical re-creation meanwhile undoes the deletion, and its upload may have to go on."""
        session = self.session_of(record)
        self.uncount_locked(record)
        in_archive = record.in_tree and session.archive is not None and not session.archive_complete
        in_flight = record.state == UPLOADING and record.may_be_on_server
        kept = in_archive or in_flight
        if not kept:
            # The spool file goes first: on a full disk, that is what makes room for the journal.
            self.spool.remove(record.id)
        held = record.may_be_on_server or (record.in_tree and session.archive_complete) or in_archive
        if held and not record.local_only:
            self.journal.update_file(record.id, unlinked=1, evicted=int(not kept))
            record.unlinked, record.evicted = True, not kept
            if in_flight and record.deleted_generation < 0:
                # (Already set: created again while that PUT was under way, and deleted once more.)
                record.deleted_generation = record.generation  # its PUT under way may complete it
            session.unlinked.append(record)
        else:
            self._forget_file_locked(record, session)
        session.files.pop(record.name, None)
        record.generation += 1
        self.nudge()

    def revivable_locked(self, session: SessionRecord, name: str) -> FileRecord | None:
        """The file of `name` deleted from the folder that the server holds complete (or that the
        frozen tree's archive holds, or whose PUT under way at the deletion may still complete it),
        with its digest known: a re-run that unlinks first (tar -x, unzip -o, cp
        --remove-destination) may bring it back by writing the same content again (see relist_locked)."""
        return next((f for f in session.unlinked if f.name == name and f.sha256
                     and (f.state in (COMPLETE, IN_TREE) or f.deleted_generation >= 0)), None)

    def relist_locked(self, record: FileRecord) -> None:
        """An unlinked file the server holds is listed in its folder again (its identical re-copy
        is being compared; a different one unlinks it again). Until the writer comparing it closes
        it (revival_closed_locked), it holds the project back as any file being written, and it is
        never sent. The journal keeps it deleted until then (revived_locked): a remount meanwhile
        finds it deleted, as no compare outlives the mount."""
        session = self.session_of(record)
        session.unlinked.remove(record)
        record.unlinked = False
        record.revivals += 1
        session.files[record.name] = record
        session.refused_names.pop(record.name, None)  # refused while deleted; a different copy says so again
        self.count_locked(record)
        self._revivals_open[record.id] = self._revivals_open.get(record.id, 0) + 1
        self.nudge()

    def revived_locked(self, record: FileRecord) -> None:
        """The re-copy of a deleted file created again (relist_locked) was identical: the deletion is
        undone. One whose PUT under way at the deletion ended meanwhile without completing it (queued
        again by attempt_over_locked, but never sent while compared) goes on from where the server
        stands."""
        self.journal.update_file(record.id, unlinked=0)
        if record.state in QUEUED_STATES:
            self._schedule(record, 0.0)

    def revival_closed_locked(self, record: FileRecord) -> None:
        """A writer that created a deleted file again (relist_locked) closed it: its compare ended."""
        left = self._revivals_open.pop(record.id, 0) - 1
        if left > 0:
            self._revivals_open[record.id] = left
        self.nudge()

    def being_revived_locked(self, record: FileRecord) -> bool:
        """A deleted file the server holds, created again, whose re-copy is still being compared."""
        return record.id in self._revivals_open

    def _forget_file_locked(self, record: FileRecord, session: SessionRecord) -> None:
        self.journal.delete_file(record.id)
        self._files.pop(record.id, None)
        self.release_server_name_locked(record, session)

    # --- identical re-copies ------------------------------------------------------------------

    @staticmethod
    def known_digest(record: FileRecord, like: str | None = None) -> str | None:
        """The content digest (of the kind of `like`) when the running digest knows it (written
        front to back, or hashed already): never reads the file, so it may be asked with the state
        lock held (None: unknown, or a legacy sha256 the running digest does not make)."""
        if is_legacy_digest(like) or record.digest is None:
            return None
        return record.digest.hexdigest(record.size)

    def content_digest(self, record: FileRecord, like: str | None = None) -> str | None:
        """The digest of the spooled content (content_digest.py), of the kind of `like` (None:
        the identity hash): from the running digest when the file was written front to back,
        else by reading the spool file once (None when it is gone). Never with the state lock
        held: it may read the whole file."""
        self.lock.assert_not_held()
        digest = self.known_digest(record, like)
        if digest is not None:
            return digest
        try:
            running = RunningDigest.of_file(self.spool.path(record.id), like)
        except OSError:
            return None
        if not is_legacy_digest(like):
            record.digest = running
        return running.hexdigest(record.size)

    def content_hashed_locked(self, record: FileRecord, digest: RunningDigest) -> None:
        """The upload hashed the spool of a file queued without its sha256 (before any PUT)."""
        record.digest = digest
        sha256 = self.known_digest(record)
        if sha256 is not None:
            self.set_file_attrs_locked(record, sha256=sha256)

    def refuse_change_locked(self, record: FileRecord, reason: str = "") -> str:
        """A different content for a name the server holds (or a frozen tree's file, with its
        `reason`): say why, in status and the log."""
        said = reason or f"the server already holds a different {record.name}; it cannot be replaced"
        if record.last_error != said:
            self.journal.update_file(record.id, last_error=said)
            record.last_error = said
        log.warning("%s", f"{record.name}: {said}" if reason else said)
        return said

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
        self.set_file_attrs_locked(held, ctime_ns=time.time_ns(), **changes)

