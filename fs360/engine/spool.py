"""The spool: one local file per mounted file, named by the file's id.

Naming by id (not by path) lets renames touch only the journal.

Large aligned runs of bytes are written and read for upload with O_DIRECT, past the page
cache: a spooled byte is written once and read once, for its PUT, so caching it only pushes
the user's own data out of memory, and where memory is lent by a hypervisor each page the
cache touches anew costs a fault in the host (BENCHMARKS.md, "The spool past the page cache":
about 3 CPU-seconds per GiB written, and as much read, against 0.14 direct). What is not
aligned (the tail of a file, small or odd writes) goes through the cache, on a second
descriptor; the kernel keeps the two coherent (a direct write first flushes and then drops
the cached pages of its range, a direct read flushes them first). A spool whose file system
refuses O_DIRECT (tmpfs before Linux 6.6, some network file systems) is cached throughout.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import threading
import os
from pathlib import Path

from .content_digest import hash_like, tagged_hexdigest


# O_DIRECT wants offsets, lengths and buffer addresses aligned to the device's logical block
# (512 bytes on most disks, 4096 on some): a page is aligned for both.
DIRECT_ALIGN = 4096
# Shorter runs are not worth a wait for the device: the cache takes them.
DIRECT_MIN = 64 * 1024
# The aligned buffer a thread copies a write into (the kernel's largest FUSE write).
DIRECT_BUFFER = 1024 * 1024


def aligned_run(offset: int, length: int) -> int:
    """How many bytes from `offset` (of `length`) go direct: the aligned prefix, or none."""
    if offset % DIRECT_ALIGN:
        return 0
    run = length - length % DIRECT_ALIGN
    return run if run >= DIRECT_MIN else 0


def is_aligned(view: memoryview) -> bool:
    return ctypes.addressof(ctypes.c_char.from_buffer(view)) % DIRECT_ALIGN == 0


class Spool:
    def __init__(self, directory: Path, min_free_fraction: float = 0.10):
        self.directory = directory
        self.min_free_fraction = min_free_fraction
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        self.direct = self._takes_direct_io()
        self._buffers = threading.local()

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
        """A second descriptor of the spool file for its aligned runs (-1: the spool has none)."""
        return os.open(self.path(file_id), flags | os.O_DIRECT) if self.direct else -1

    def write(self, fd: int, direct_fd: int, data, offset: int) -> int:
        """pwrite of `data` at `offset`: its aligned prefix direct when `direct_fd` is open."""
        run = aligned_run(offset, len(data)) if direct_fd >= 0 else 0
        if not run:
            return os.pwrite(fd, data, offset)
        done = self._write_direct(direct_fd, memoryview(data)[:run], offset)
        if done < run or run == len(data):
            return done
        return done + os.pwrite(fd, memoryview(data)[run:], offset + run)

    def _write_direct(self, fd: int, data: memoryview, offset: int) -> int:
        buffer = getattr(self._buffers, "buffer", None)
        if buffer is None:
            buffer = self._buffers.buffer = memoryview(mmap.mmap(-1, DIRECT_BUFFER))
        done = 0
        while done < len(data):
            n = min(len(buffer), len(data) - done)
            buffer[:n] = data[done:done + n]
            written = os.pwrite(fd, buffer[:n], offset + done)
            done += written
            if written < n:
                break
        return done

    def path(self, file_id: int) -> Path:
        return self.directory / str(file_id)

    def create(self, file_id: int) -> None:
        fd = os.open(self.path(file_id), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)

    def remove(self, file_id: int) -> None:
        try:
            os.unlink(self.path(file_id))
        except FileNotFoundError:
            pass

    def exists(self, file_id: int) -> bool:
        return self.path(file_id).exists()

    def disk_usage(self) -> os.statvfs_result:
        return os.statvfs(self.directory)

    def bytes_to_free(self) -> int:
        """How much must go for the disk to keep its free fraction (0 when fine)."""
        st = self.disk_usage()
        total = st.f_blocks * st.f_frsize
        free = st.f_bavail * st.f_frsize
        return max(0, int(total * self.min_free_fraction) - free)


class SpoolReader:
    """A spool file opened for its upload: `read_exactly(view, offset)` fills `view` with the
    bytes from `offset`, reading aligned runs into an aligned `view` direct."""

    def __init__(self, spool: Spool, file_id: int):
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
    O_DIRECT) and `view` aligned, its aligned runs are read past the page cache."""
    done = 0
    direct = direct_fd >= 0 and len(view) >= DIRECT_MIN and is_aligned(view)
    while done < len(view):
        run = aligned_run(offset + done, len(view) - done) if direct else 0
        part = view[done:done + run] if run else view[done:]
        n = os.preadv(direct_fd if run else fd, [part], offset + done)
        if n == 0:
            raise OSError(errno.EIO, f"the spool file is shorter than expected (at byte {offset + done})")
        done += n
        direct = direct and n % DIRECT_ALIGN == 0


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

