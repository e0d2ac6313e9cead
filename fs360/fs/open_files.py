"""A session's files while open: opening, reading, writing, truncating, allocating and
closing them through their spool copy (or, for a file the server holds, a content check)."""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import time

from ..engine.records import LOST, FileRecord
from ..engine.registry import STOPPED_WHILE_WRITING
from ..engine.spool import direct_span, with_room_freed_once
from ..errors import (AccessDenied, EarlierWriteLost, FileTooBig, IsADirectory, NoSpace, NotFound, NotSupported,
                      QuotaWouldPass)
from .content_check import ContentCheck, compared_on_rewrite_locked
from .exits import Writers
from .handles import FileHandle, HandleTable
from .markers import Markers
from .rules import check_growth, check_growth_locked, check_mutable_locked, refused_recopy_reason_locked
from .tree import FILE, MARKER, MISSING, ROOT_STATUS_FILE, STATUS, SessionTree, is_listed_locked

log = logging.getLogger(__name__)

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR


def opens_for_writing(flags: int) -> bool:
    return bool(flags & WRITE_FLAGS) or bool(flags & os.O_TRUNC)


def no_data_reason(record: FileRecord) -> str:
    """Why a file without its spool copy cannot be opened or truncated: the server holds it, or
    (`lost`: its copy was dropped, then the server lost its session) nobody does."""
    if record.state == LOST:
        return f"the data of {record.name!r} is gone from here and from the server: delete it, then copy it again"
    return "only the server holds this file's data now"


@contextlib.contextmanager
def spool_limits():
    """The spool's own limits reach the writer as what they are, not as an internal error."""
    try:
        yield
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise NoSpace("the spool disk is full") from None
        if exc.errno == errno.EFBIG:
            raise FileTooBig("larger than the spool's disk takes") from None
        raise


@contextlib.contextmanager
def failures_marked(handle: FileHandle):
    """A write, truncate or fallocate that fails leaves the file short of what the writer
    meant: its handle is marked, and its close makes the file `interrupted`."""
    try:
        yield
    except (NoSpace, FileTooBig, QuotaWouldPass, EarlierWriteLost, OSError) as exc:
        code = getattr(exc, "errno", None) or errno.EIO
        handle.failure = (f"a write failed ({errno.errorcode.get(code, code)}: "
                          f"{getattr(exc, 'strerror', None) or exc}); copy it again")
        raise


class OpenFiles:
    def __init__(self, engine, tree: SessionTree, markers: Markers, handles: HandleTable, writers: Writers):
        self.engine = engine
        self.tree = tree
        self.markers = markers
        self.handles = handles
        self.writers = writers

    def open_locked(self, record: FileRecord, flags: int) -> int:
        writing = opens_for_writing(flags)
        truncate = bool(flags & os.O_TRUNC)
        if writing and compared_on_rewrite_locked(self.engine, record):
            return self._open_check_locked(record, truncate, bool(flags & os.O_APPEND))
        if writing:
            check_mutable_locked(self.engine, record)
        elif record.evicted or not self.engine.spool.exists(record.id):
            raise AccessDenied(no_data_reason(record))
        try:
            fd = os.open(self.engine.spool.path(record.id), os.O_RDWR if writing else os.O_RDONLY)
        except FileNotFoundError:
            raise AccessDenied(no_data_reason(record)) from None
        handle = FileHandle(record, fd, writing, bool(flags & os.O_APPEND))
        handle.changed = writing and (truncate or record.size == 0)
        if writing:
            # Its O_DIRECT descriptor is opened at its first write with a run to go direct
            # (_direct_fd): a small file never has one.
            handle.direct_pending = self.engine.spool.direct
            if truncate and record.size:
                self.engine.spool.truncate(record.id, 0, fd)
            self.engine.registry.open_for_write_locked(record, rewrite=truncate or record.size == 0, truncated=truncate)
        return self.handles.add(handle)

    def open_revival_locked(self, record: FileRecord, append: bool) -> int:
        """A re-run that deleted a file the server holds creates it again (tar -x, unzip -o,
        cp --remove-destination, install): it is listed again and what is written is compared;
        identical, it is the server's file again (no PUT); different, it is refused and deleted.
        The new file starts empty: with O_APPEND, writes go after what this writer wrote."""
        # The handle first: relisting counts a compare that only its release ends, so an open
        # that fails must not have relisted the file (it would hold the project back for good).
        fh = self._open_check_locked(record, truncate=True, append=append)
        handle = self.handles.get(fh)
        handle.revival = True
        self.engine.registry.relist_locked(record)
        handle.revival_number = record.revivals
        return fh

    @staticmethod
    def _outrevived_locked(handle: FileHandle) -> bool:
        """Another program deleted and created the file again since this handle's re-creation
        (two re-runs overlapping): what this one writes concerns a file that is gone, and decides
        nothing of the one listed now."""
        return handle.revival and handle.revival_number != handle.record.revivals

    def _open_check_locked(self, record: FileRecord, truncate: bool, append: bool) -> int:
        """A file the server holds (or a frozen tree's), opened for writing: the handle only compares
        what is written (against the spool copy while it exists, and by its content digest at close);
        the spool copy is opened read-only, so the archive it goes into is never touched."""
        fd = -1
        if not record.evicted:
            try:
                fd = os.open(self.engine.spool.path(record.id), os.O_RDONLY)
            except FileNotFoundError:
                pass
        check = ContentCheck(record.size, record.sha256, rewriting=truncate)
        self.engine.registry.recopy_opened_locked(record)
        return self.handles.add(FileHandle(record, fd, writable=True, append=append, check=check))

    # --- reading and writing --------------------------------------------------------------------

    def read(self, handle: FileHandle, size: int, offset: int) -> bytes:
        if handle.fd < 0:
            raise AccessDenied("only the server holds this file's data now")
        self._drain(handle)
        return os.pread(handle.fd, size, offset)

    def _drain(self, handle: FileHandle) -> None:
        """The file's writes done behind its writers (spool.py) reach the spool file first; for a
        handle that writes the file (whichever of its handles wrote them), one that failed fails
        this call, and marks the handle."""
        behind = self.engine.spool.behind
        if not handle.writable or handle.check is not None:
            behind.settle(handle.record.id)
            return
        with failures_marked(handle):
            behind.drain(handle.record.id)

    def write(self, handle: FileHandle, data: bytes, offset: int) -> int:
        if not handle.writable:
            raise AccessDenied("not open for writing")
        if handle.check is not None:
            if not handle.check.compare_write(handle.fd, data, handle.check.size if handle.append else offset):
                self._refuse_change(handle)
            return len(data)
        record = handle.record
        handle.closed = False
        handle.changed = handle.altered = True
        if handle.append:
            offset = record.size
        with failures_marked(handle):
            end = offset + len(data)
            if end > record.size:
                check_growth(self.engine, record, end)
            written = self._pwrite(handle, data, offset)
        with self.engine.lock:
            digest = self.engine.registry.wrote_locked(record, offset, offset + written)
        if digest is not None:  # hashed with the state lock released
            digest.add(offset, data if written == len(data) else memoryview(data)[:written])
        return written

    def _direct_fd(self, handle: FileHandle, offset: int, length: int) -> int:
        """The handle's O_DIRECT descriptor of its spool file, opened by the first write that has a
        run to go direct (-1: none). One that cannot be opened (the file was deleted meanwhile:
        its path is gone) leaves the handle writing through the cache, as a local file would.
        Needs handle.io held: two threads writing through one handle open it once."""
        if not handle.direct_pending or not direct_span(offset, length)[1]:
            return handle.direct_fd
        try:
            handle.direct_fd = self.engine.spool.open_direct(handle.record.id, os.O_WRONLY)
        except OSError as exc:
            log.debug("%s: no direct descriptor (%s); its writes go through the cache", handle.record.name, exc)
        handle.direct_pending = False
        return handle.direct_fd

    def _refuse_change(self, handle: FileHandle) -> None:
        """The rewrite of a file the server holds differs: refused, with the reason kept."""
        handle.check.differs = True
        with self.engine.lock:
            if self._outrevived_locked(handle):
                raise AccessDenied(f"{handle.record.name} was deleted and created again by another program since this "
                                   f"one created it: what this one writes is not kept")
            raise AccessDenied(refused_recopy_reason_locked(self.engine, handle.record))

    def _pwrite(self, handle: FileHandle, data: bytes, offset: int) -> int:
        # A full disk first drops uploaded data the spool still keeps, then the write tries once more.
        with handle.io:  # release takes the descriptors between two writes, never inside one
            write = functools.partial(self.engine.spool.write, handle.record.id, handle.fd,
                                      self._direct_fd(handle, offset, len(data)), data, offset)
            with spool_limits():
                return with_room_freed_once(write, self.engine.housekeeping.evict_if_needed)

    def truncate(self, path: str | None, length: int, handle: FileHandle | None) -> None:
        """By open handle when there is one, else by path."""
        if handle is not None and handle.check is not None:
            if not handle.check.compare_truncate(length):
                self._refuse_change(handle)
            return
        if handle is None:
            with self.engine.lock:
                record = self._file_to_truncate_locked(path)
            if record is not None:
                # Its writer's writes behind land first, so that this truncate runs now and what
                # it meets (a file gone, a full disk) is told to this caller, not to that writer.
                # (A write made between here and the lock below queues it after itself instead.)
                self.engine.spool.behind.settle(record.id)
            with self.engine.lock:
                record = self._file_to_truncate_locked(path)
                if record is None or length == record.size:
                    return
                check_mutable_locked(self.engine, record)
                # By path, the file may be closed and queued: all in one step under the lock, so its
                # upload cannot start between the check and the truncate with the old size.
                if length > record.size:
                    check_growth_locked(self.engine, record, length)
                try:
                    with spool_limits():
                        self.engine.spool.truncate(record.id, length)
                except FileNotFoundError:  # evicted, then its session lost: the file is `lost`
                    raise AccessDenied(no_data_reason(record)) from None
                self.engine.registry.truncated_locked(record, length, listed=is_listed_locked(self.engine, record))
            return
        record = handle.record
        with self.engine.lock:
            if length == record.size:
                return
            check_mutable_locked(self.engine, record)
        handle.closed = False
        handle.changed = True
        self._drain(handle)
        # Through the handle (its writer keeps the file from being queued meanwhile); it works on a
        # file unlinked while open too (its spool file is gone).
        with failures_marked(handle):
            if length > record.size:
                check_growth(self.engine, record, length)
            with spool_limits(), handle.io:  # not with a descriptor its release has taken (_pwrite)
                os.ftruncate(handle.fd, length)
        with self.engine.lock:
            self.engine.registry.truncated_locked(record, length, listed=is_listed_locked(self.engine, record))

    def _file_to_truncate_locked(self, path: str) -> FileRecord | None:
        """The record a truncate by path changes (None: nothing to do)."""
        node = self.tree.resolve_locked(path)
        if node.kind in (STATUS, ROOT_STATUS_FILE):
            raise AccessDenied("status files are read-only")
        if node.kind == MARKER:
            self.markers.check_truncate_by_path(node.session)
            return None
        if node.kind == FILE:
            return node.record
        if node.kind == MISSING:
            raise NotFound(path)
        raise IsADirectory(path)

    def fallocate(self, handle, mode: int, offset: int, length: int) -> None:
        if not isinstance(handle, FileHandle) or not handle.writable or handle.check is not None:
            raise AccessDenied("not open for writing")
        if mode != 0:
            raise NotSupported("only plain fallocate is supported")
        end = offset + length
        handle.closed = False
        handle.changed = True
        self._drain(handle)
        with failures_marked(handle):
            if end > handle.record.size:
                check_growth(self.engine, handle.record, end)
            with spool_limits(), handle.io:  # not with a descriptor its release has taken (_pwrite)
                os.posix_fallocate(handle.fd, offset, length)
        with self.engine.lock:
            self.engine.registry.allocated_locked(handle.record, end)

    def fsync(self, handle: FileHandle, datasync: bool) -> None:
        if handle.fd >= 0:
            self._drain(handle)
            with handle.io:  # not with a descriptor its release has taken (_pwrite)
                if handle.fd >= 0:
                    (os.fdatasync if datasync else os.fsync)(handle.fd)

    # --- closing ----------------------------------------------------------------------------------

    def flush(self, handle: FileHandle, pid: int | None) -> None:
        """close() by process `pid`: a file closed by a dying writer is remembered as unfinished,
        and a living writer's exit is awaited (the commit point); a rewrite of a file the server
        holds that differs fails the close."""
        if not handle.writable:
            return
        self._drain(handle)  # a write behind that failed fails the close, and the file is not whole
        handle.closed = True
        if handle.check is not None or not handle.changed:
            # Nothing came through it: its closer's exit says nothing of the content (unless the
            # closer is dying now: `false > f` closes the file as it exits 1).
            reason = self.writers.dying(pid)
        else:
            reason, closer = self.writers.closed(pid, handle.record)
            if closer is not None and not reason and handle.altered and not handle.program:
                handle.program = closer.tgid  # the handle's own program: its first closer's
                with self.engine.lock:
                    self.engine.registry.changed_through_locked(handle.record, closer.tgid, closer.name)
        if reason:
            handle.writer_died = handle.writer_died or reason
        if handle.check is not None and handle.check.touched and not handle.writer_died \
                and not handle.check.matches():
            self._refuse_change(handle)

    def release(self, handle: FileHandle) -> None:
        try:
            # The handle forgets its descriptors before they are closed: a write racing its release
            # (a WebDAV PUT still sending its body as the daemon stops; FUSE sends none after a
            # RELEASE) fails on -1, instead of writing into whatever file takes the number next.
            with handle.io:  # a write already using them ends (or queues its run behind) first
                fds = (handle.fd, handle.direct_fd)
                handle.fd = handle.direct_fd = -1
                handle.direct_pending = False
            with contextlib.suppress(EarlierWriteLost):  # marked on the handle: the file is not whole
                self._drain(handle)  # after the take: a run queued just before lands before its close
            for fd in fds:
                if fd >= 0:
                    with contextlib.suppress(OSError):  # one that fails to close leaks no other
                        os.close(fd)
        finally:
            if handle.check is not None:
                self._release_check(handle)
            elif handle.writable:
                self._release_writer(handle)

    def release_at_unmount(self, handle: FileHandle) -> None:
        """The mount ends with `handle` open (DESTROY with no RELEASE): a writer that had closed it
        was done with it (a lazy unmount ends the connection right after the last close); one that
        had not is cut off mid-copy (a SIGTERM, a shutdown), so the file is not whole."""
        if handle.writable and handle.check is None and not handle.closed:
            handle.failure = handle.failure or STOPPED_WHILE_WRITING
        self.release(handle)

    def _release_writer(self, handle: FileHandle) -> None:
        record = handle.record
        unfinished = handle.failure or handle.writer_died
        if not handle.closed:
            with self.engine.lock:  # no flush said who wrote last: the delay commits it
                self.engine.registry.writer_unknown_locked(record)
        if not unfinished and record.open_writers == 1 and not record.local_only and not record.unfinished:
            # The last writer of a file about to be queued: one not written front to back is
            # hashed here, without the lock (a tree's file too: a re-copy of the frozen tree compares it).
            self.engine.registry.content_digest(record)
        with self.engine.lock:
            self.engine.registry.close_writer_locked(record, record.size, unfinished)

    def _release_check(self, handle: FileHandle) -> None:
        """The end of a rewrite of a file the server holds: identical, it takes the time its writer
        set (cp -a), else now; a
        revival that is not identical is deleted again (the server still holds the file)."""
        identical = handle.check.rewriting and handle.check.matches() and not handle.writer_died
        record = handle.record
        with self.engine.lock:
            if handle.revival:
                self.engine.registry.revival_closed_locked(record)
            if not is_listed_locked(self.engine, record) or self._outrevived_locked(handle):
                return
            if identical:
                self.engine.registry.keep_identical_locked(record, mtime_ns=None if record.times_given
                                                           else time.time_ns())
                if handle.revival:
                    self.engine.registry.revived_locked(record)
            elif handle.check.rewriting and not handle.check.differs and not handle.writer_died \
                    and not handle.revival:
                # Cut and never written again (`: > f`), its refusal left to this last close: the
                # file is the server's as before; status says why it did not change.
                refused_recopy_reason_locked(self.engine, record)
            elif handle.revival:
                self.engine.registry.remove_file_locked(record)
                if handle.check.differs:
                    # Deleted, then written anew (`unzip -o`, or `rm f; cp new f`): its name
                    # leaves the folder again, and its line with it; the folder's refused list
                    # says what became of the new content (the user deleted nothing).
                    self.engine.registry.name_refused_locked(
                        self.engine.registry.session_of(record), record.name,
                        f"not kept: {record.last_error}; copy the new content under another name, "
                        f"or into a new folder")
