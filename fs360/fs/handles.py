"""Open files by handle number: what each kind of open holds between open and release."""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field

from ..engine.records import FileRecord
from ..errors import InvalidArgument
from .content_check import ContentCheck


@dataclass(eq=False)
class FileHandle:
    """A session's file: it holds its record, so it follows the file through renames."""
    record: FileRecord
    # The spool file (-1 for a check of a server-held file whose spool copy is gone).
    fd: int
    writable: bool
    append: bool
    # A write or truncate through this handle failed: the file is not whole.
    failure: str = ""
    # The process that closed it was dying (killed, or exiting non-zero).
    writer_died: str = ""
    check: ContentCheck | None = None
    # The same spool file opened O_DIRECT for the aligned runs of writes (-1: none; spool.py),
    # at the first write that has one while `direct_pending` (open_files.OpenFiles._direct_fd).
    direct_fd: int = -1
    direct_pending: bool = False
    # Its writer closed it (a FLUSH came) and has not written through it since: whole, as far as
    # this handle goes, even if its RELEASE never arrives (a lazy unmount).
    closed: bool = False
    # Something of the file's content came through it: its opening (O_TRUNC, or an empty file),
    # a write, truncate or fallocate. A close before that (a shell's child closing its
    # redirection before the exec of `cat rest >> f`, a touch) is no writer's close.
    changed: bool = False
    # A check of a deleted file the server holds, listed again for a re-copy: unless the copy
    # is identical, the file is deleted again at the release.
    revival: bool = False
    revival_number: int = 0  # the record's `revivals` its re-creation made (see OpenFiles._outrevived_locked)
    # Data was written through it (not only cut, allocated, or opened on an empty file), and the
    # program whose task first closed it so (0: none yet, or not known).
    altered: bool = False
    program: int = 0
    # Held from reading the descriptors to the end of their use by a write (its pwrite or its
    # submit behind), a truncate, fallocate or fsync through the handle, and by release while it
    # takes them: it closes none still in use.
    io: threading.Lock = field(default_factory=threading.Lock, repr=False)


@dataclass(eq=False)
class SnapshotHandle:
    """An open `status`: rendered once at open, so one read sees one consistent state."""
    content: bytes


class HandleTable:
    """Handle number -> handle; numbers are never reused."""

    def __init__(self):
        self._handles: dict[int, object] = {}
        self._next_fh = itertools.count(1)
        self._lock = threading.Lock()

    def add(self, handle) -> int:
        with self._lock:
            fh = next(self._next_fh)
            self._handles[fh] = handle
        return fh

    def get(self, fh: int):
        return self._handles.get(fh)

    def require(self, fh: int):
        handle = self._handles.get(fh)
        if handle is None:
            raise InvalidArgument(f"unknown file handle {fh}")
        return handle

    def pop(self, fh: int):
        with self._lock:
            return self._handles.pop(fh, None)

    def numbers(self) -> list[int]:
        with self._lock:
            return list(self._handles)

    def values(self) -> list:
        with self._lock:
            return list(self._handles.values())
