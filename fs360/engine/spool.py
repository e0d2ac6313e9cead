"""The spool: one local file per mounted file, named by the file's id.

Naming by id (not by path) lets renames touch only the journal.

Large aligned runs of bytes are written and read for upload with O_DIRECT, past the page
cache: a spooled byte is written once and read once, for its PUT, so caching it only pushes
the user's own data out of memory, and where memory is lent by a hypervisor each page the
cache touches anew costs a fault in the host (BENCHMARKS.md, "the spool past the page cache":
1.4-1.7 CPU-s per 512 MiB written that way, 0.07 direct). The direct writes are done behind
the writer (WritesBehind). A file's first MiB, and what is not aligned (small or odd
writes, tails), go through the cache, on a second descriptor: for files up to a MiB the cache
costs no more, and spares each a block allocation and its close a wait for the device. A file none of whose bytes went direct is
read through the cache too. The kernel keeps the two descriptors coherent (a direct write
first flushes and then drops the cached pages of its range, a direct read flushes them
first). A spool whose file system refuses O_DIRECT is cached throughout.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import functools
import mmap
import threading
import os
from pathlib import Path

from ..errors import EarlierWriteLost
from .content_digest import hash_like, tagged_hexdigest


# O_DIRECT wants offsets, lengths and buffer addresses aligned to the device's logical block
# (512 bytes on most disks, 4096 on some): a page is aligned for both.
DIRECT_ALIGN = 4096
# Shorter runs are not worth a wait for the device: the cache takes them.
DIRECT_MIN = 64 * 1024
# Nor a file's first bytes: files up to this size (one FUSE write) stay in the cache whole. A
# direct write forces a block allocation, and the close waits for it to reach the device (its
# errors are the writer's): `cp` of 200 files of 1 MiB returned in 0.46-0.54 s against
# 0.59-0.70 s with 128 KiB, for the same CPU; 100 files of 5 MiB measured the same either way.
DIRECT_FROM = 1024 * 1024
# The aligned buffer a thread copies a write into (the kernel's largest FUSE write).
DIRECT_BUFFER = 1024 * 1024


def direct_span(offset: int, length: int) -> tuple[int, int]:
    """How `length` bytes from `offset` split: (head, run), the first `head` bytes through the
    cache, the next `run` direct (aligned), the rest through the cache; (length, 0): none direct."""
    start = max(offset, DIRECT_FROM)
    start += -start % DIRECT_ALIGN
    end = offset + length
    run = max(0, end - start)
    run -= run % DIRECT_ALIGN
    if run < DIRECT_MIN:
        return length, 0
    return start - offset, run


def with_room_freed_once(operation, free_room):
    """`operation()`; when the disk is full (ENOSPC), `free_room()` (eviction of uploaded data)
    and, if it freed any, `operation()` once more. Writes through the cache and behind do this."""
    try:
        return operation()
    except OSError as exc:
        if exc.errno != errno.ENOSPC or free_room() <= 0:
            raise
    return operation()


def is_aligned(view: memoryview) -> bool:
    return ctypes.addressof(ctypes.c_char.from_buffer(view)) % DIRECT_ALIGN == 0


class Spool:
    def __init__(self, directory: Path, min_free_fraction: float = 0.10):
        self.directory = directory
        self._prefix = os.path.join(directory, "")
        self.min_free_fraction = min_free_fraction
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        self.direct = self._takes_direct_io()
        self.behind = WritesBehind()
        # The files some of whose bytes were written direct (this run): read direct for upload.
        self._written_direct: set[int] = set()

    def _takes_direct_io(self) -> bool:
        probe = self.directory / ".direct-probe"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o600)
        except OSError:
            return False
        try:
            block = mmap.mmap(-1, DIRECT_ALIGN)
            try:
                return os.pwrite(fd, block, 0) == DIRECT_ALIGN
            finally:
                block.close()
        except OSError:
            return False
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)

    def open_direct(self, file_id: int, flags: int) -> int:
        """A second descriptor of the spool file for its aligned runs (-1: the spool has none;
        for reading, none either when no byte of the file was written direct)."""
        if not self.direct or (flags == os.O_RDONLY and file_id not in self._written_direct):
            return -1
        return os.open(self.path(file_id), flags | os.O_DIRECT)

    def write(self, file_id: int, fd: int, direct_fd: int, data, offset: int) -> int:
        """pwrite of `data` at `offset` into file `file_id` (open as `fd`, and as `direct_fd`
        O_DIRECT, -1 for none). Its direct run (`direct_span`), when it has one, is written
        behind the caller: a failure of it is raised by a later `write` or `drain` of the file.
        What goes through the cache waits for the file's writes behind first, so that no older
        direct write lands over it."""
        head, run = direct_span(offset, len(data)) if direct_fd >= 0 else (len(data), 0)
        if not run:
            return self._write_cached(file_id, fd, data, offset)
        view = memoryview(data)
        if head:
            written = self._write_cached(file_id, fd, view[:head], offset)
            if written < head:
                return written
        self._written_direct.add(file_id)
        self.behind.submit(file_id, direct_fd, view[head:head + run], offset + head)
        done = head + run
        return done if done == len(data) else done + self._write_cached(file_id, fd, view[done:], offset + done)

    def _write_cached(self, file_id: int, fd: int, data, offset: int) -> int:
        self.behind.drain(file_id)  # no older direct write may land over these bytes
        return os.pwrite(fd, data, offset)

    def truncate(self, file_id: int, length: int, fd: int = -1) -> None:
        """ftruncate of `fd`, or truncate of the spool file by path: after the file's writes
        behind, if it has any (queued after them, without waiting: callable with the state lock)."""
        if fd >= 0:
            operation = functools.partial(os.ftruncate, fd, length)
        else:
            operation = functools.partial(os.truncate, self.path(file_id), length)
        if not self.behind.queue_if_behind(file_id, operation):
            operation()

    def path(self, file_id: int) -> str:
        # A string, not a Path: several calls per small file, and pathlib's join costs more than the open.
        return self._prefix + str(file_id)

    def create(self, file_id: int) -> None:
        fd = os.open(self.path(file_id), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)

    def remove(self, file_id: int) -> None:
        self._written_direct.discard(file_id)
        try:
            os.unlink(self.path(file_id))
        except FileNotFoundError:
            pass

    def exists(self, file_id: int) -> bool:
        return os.path.exists(self.path(file_id))

    def disk_usage(self) -> os.statvfs_result:
        return os.statvfs(self.directory)

    def bytes_to_free(self) -> int:
        """How much must go for the disk to keep its free fraction (0 when fine)."""
        st = self.disk_usage()
        total = st.f_blocks * st.f_frsize
        free = st.f_bavail * st.f_frsize
        return max(0, int(total * self.min_free_fraction) - free)


class WritesBehind:
    """Direct writes done behind their writers, by one thread (fs360-spool), in the order given.

    A FUSE write returns once its bytes are copied into one of a few aligned buffers, so the
    next write crosses FUSE while the device takes this one (a sequential writer waits for
    each write: cp's copy of a large file took twice as long with each direct write awaited).
    The buffers bound how far the device may lag. A truncate of a file with writes behind is
    queued after them, so that it lands in the order it was made. The first failure of a
    file's operation is kept and raised (EarlierWriteLost) by its next `submit` or `drain`;
    the file's later operations are dropped until then (it is not whole: its writer is told, at
    the latest by its close, and it is never uploaded). A full disk first asks `on_full`
    (eviction, set by the engine) to free room, as a write through the cache does. A daemon
    killed with writes still behind loses them, as a file open at a crash is not whole anyway;
    a closed file's writes were all drained by its close (flush).

    Its condition is a leaf lock. `drain` and `settle` wait for the device, and the writer
    thread's eviction takes the state lock: they are never called with the state lock held;
    `submit` may wait for a buffer, likewise; `queue_if_behind` never waits.
    """

    BUFFERS = 8

    def __init__(self):
        self.on_full = lambda: 0
        self._cond = threading.Condition()
        self._queue: collections.deque = collections.deque()
        self._free = [memoryview(mmap.mmap(-1, DIRECT_BUFFER)) for _ in range(self.BUFFERS)]
        self._pending: dict[int, int] = {}
        self._failed: dict[int, OSError] = {}
        self._thread: threading.Thread | None = None

    def submit(self, file_id: int, fd: int, data: memoryview, offset: int) -> None:
        done = 0
        while done < len(data):
            n = min(DIRECT_BUFFER, len(data) - done)
            with self._cond:
                self._raise_failure_locked(file_id)
                while not self._free:
                    self._cond.wait()
                buffer = self._free.pop()
            buffer[:n] = data[done:done + n]
            with self._cond:
                self._append_locked(file_id, functools.partial(self._write, fd, buffer[:n], offset + done), buffer)
            done += n

    def queue_if_behind(self, file_id: int, operation) -> bool:
        """Queues `operation()` after the file's writes behind, if it has any (else False)."""
        with self._cond:
            if not self._pending.get(file_id):
                return False
            self._append_locked(file_id, operation, None)
            return True

    def drain(self, file_id: int) -> None:
        """Waits for the file's operations behind; raises the first that failed (once)."""
        with self._cond:
            self._settle_locked(file_id)
            self._raise_failure_locked(file_id)

    def settle(self, file_id: int) -> None:
        """Waits for the file's operations behind, leaving a failure to its writer."""
        with self._cond:
            self._settle_locked(file_id)

    def _settle_locked(self, file_id: int) -> None:
        while self._pending.get(file_id):
            self._cond.wait()

    def _append_locked(self, file_id: int, operation, buffer) -> None:
        self._queue.append((file_id, operation, buffer))
        self._pending[file_id] = self._pending.get(file_id, 0) + 1
        if self._thread is None:
            self._thread = threading.Thread(target=self._work_loop, name="fs360-spool", daemon=True)
            self._thread.start()
        self._cond.notify_all()

    def _raise_failure_locked(self, file_id: int) -> None:
        failure = self._failed.pop(file_id, None)
        if failure is not None:
            raise EarlierWriteLost(f"an earlier write of this file to the spool failed ({failure.strerror})",
                                   failure.errno)

    def _work_loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                file_id, operation, buffer = self._queue.popleft()
                failed = file_id in self._failed
            failure = None
            if not failed:
                try:
                    operation()
                except OSError as exc:
                    failure = exc
            with self._cond:
                if failure is not None:
                    self._failed.setdefault(file_id, failure)
                if buffer is not None:
                    self._free.append(buffer)
                left = self._pending[file_id] - 1
                if left:
                    self._pending[file_id] = left
                else:
                    del self._pending[file_id]
                self._cond.notify_all()

    def _write(self, fd: int, data: memoryview, offset: int) -> None:
        def write_whole() -> None:
            if os.pwrite(fd, data, offset) < len(data):  # O_DIRECT writes whole or fails: a full disk
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        with_room_freed_once(write_whole, self.on_full)


class SpoolReader:
    """A spool file opened for its upload: `read_exactly(view, offset)` fills `view` with the
    bytes from `offset`, the runs written direct read direct."""

    def __init__(self, spool: Spool, file_id: int):
        spool.behind.settle(file_id)  # none behind once its writers closed it: to be sure
        self.fd = os.open(spool.path(file_id), os.O_RDONLY)
        try:
            self.direct_fd = spool.open_direct(file_id, os.O_RDONLY)
        except OSError:
            os.close(self.fd)
            raise

    def close(self) -> None:
        os.close(self.fd)
        if self.direct_fd >= 0:
            os.close(self.direct_fd)

    def read_exactly(self, view: memoryview, offset: int) -> None:
        read_exactly(self.fd, view, offset, self.direct_fd)


def read_exactly(fd: int, view: memoryview, offset: int, direct_fd: int = -1) -> None:
    """Fills `view` with the bytes of `fd` from `offset`; with `direct_fd` open (the same file,
    O_DIRECT), the runs that `direct_span` says were written direct are read past the page cache
    where their part of `view` is aligned."""
    done = 0
    while done < len(view):
        at, left = offset + done, len(view) - done
        head, run = direct_span(at, left) if direct_fd >= 0 else (left, 0)
        direct = run and not head and is_aligned(view[done:done + run])
        part = view[done:done + (run if direct else head or left)]
        n = os.preadv(direct_fd if direct else fd, [part], at)
        if n == 0:
            raise OSError(errno.EIO, f"the spool file is shorter than expected (at byte {at})")
        done += n


class RunningDigest:
    """The content digest of a file written front to back (content_digest.py), computed as
    the writes go by.

    Writers like cp, rsync and dd write sequentially: then the digest costs no extra
    read. Any other write pattern makes it unknown (`None` from `hexdigest`), and the
    caller reads the spool file once instead (`of_file`). `like`: a digest to compare with
    later, whose kind of hash this one takes (None: the identity hash).
    """

    __slots__ = ("_hash", "length", "valid", "_lock")

    def __init__(self, like: str | None = None):
        self._hash = hash_like(like)
        self.length = 0
        self.valid = True
        # Its own lock: writers feed it without the engine's state lock (hashing 1 MiB takes a
        # millisecond that FUSE callbacks must not wait for).
        self._lock = threading.Lock()

    def add(self, offset: int, data: bytes) -> None:
        with self._lock:
            if not self.valid:
                return
            if offset == self.length:
                self._hash.update(data)
                self.length += len(data)
            else:
                # A rewrite of earlier bytes, or a hole: the running hash no longer says it.
                self.valid = False

    def cut(self, length: int) -> None:
        """The file was truncated to `length`: still known only if that is where it stood."""
        with self._lock:
            self.valid = self.valid and self.length == length

    def invalidate(self) -> None:
        """Bytes the digest never saw (zeros from fallocate)."""
        with self._lock:
            self.valid = False

    @classmethod
    def of_file(cls, path, like: str | None = None) -> "RunningDigest":
        """The digest of a whole file, read once."""
        running = cls(like)
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                running.add(running.length, block)
        return running

    def hexdigest(self, size: int) -> str | None:
        """The digest of the first `size` bytes when every one of them went through `add`."""
        with self._lock:
            if self.valid and self.length == size:
                return tagged_hexdigest(self._hash)
        return None
