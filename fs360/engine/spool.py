"""The spool: one local file per mounted file, named by the file's id.

Naming by id (not by path) lets renames touch only the journal.
"""

from __future__ import annotations

import threading
import os
from pathlib import Path

from .content_digest import hash_like, tagged_hexdigest


class Spool:
    def __init__(self, directory: Path, min_free_fraction: float = 0.10):
        self.directory = directory
        self.min_free_fraction = min_free_fraction
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)

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

