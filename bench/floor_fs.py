"""The floor: the least any Python FUSE file system on this libfuse can cost, for the benchmarks.

    python -m bench.floor_fs MOUNTPOINT [--stage DIR [--direct]]

A mount with fs360's own FUSE setup (mfusepy with fs360's overrides, 1 MiB writes and st_blksize, the same
timeouts, threads and readdirplus) whose files hold nothing: each write is counted and dropped.
No staging (bench/mount_bench.py measures that apart), no journal, no hash, no upload, no commit point. What `cp` into it costs, in time and in the CPU of this process,
is what no design of fs360 on mfusepy could go under; `bench full` measures it beside fs360 in the
same run, so that a missed target can be told apart from one out of reach.

With `--stage DIR` each file's bytes are also kept, in a file of DIR written in the write call (through
the page cache, or with `--direct` past it from an aligned copy, as fs360's spool writes large runs):
the least a file system that must keep every byte until its writer's exit (the commit point) can
cost, for the copy-time bounds of the shaped links (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import errno
import mmap
import os
import stat
import threading
import time

import mfusepy

from fs360.fs.attrs import IO_BLOCK_SIZE
from fs360.config import Settings
from fs360.fs.fuse_ops import MOUNT_OPTIONS, configure_connection
from fs360.fs.mfusepy_overrides import Fs360Fuse


class FloorOperations(mfusepy.Operations):
    use_ns = True

    def __init__(self, stage: str | None = None, direct: bool = False):
        self._mutex = threading.Lock()
        self.stage, self.direct = stage, direct
        self.staged: dict[str, int] = {}  # path -> descriptor of its staged copy
        self._aligned = threading.local()  # each FUSE thread's aligned buffer for O_DIRECT
        now = time.time_ns()
        self.dirs = {"/": now}
        self.sizes: dict[str, int] = {}  # path -> size
        self.inos: dict[str, int] = {"/": 1}  # path -> inode number
        self.handles = 0
        self.uid, self.gid = os.getuid(), os.getgid()

    def init_with_config(self, conn_info, config) -> None:
        configure_connection(conn_info, config, Settings.attr_timeout)  # fs360's default

    def _attrs(self, path: str) -> dict:
        if path in self.dirs:
            return dict(st_ino=self._ino(path), st_mode=stat.S_IFDIR | 0o755, st_nlink=2, st_uid=self.uid,
                        st_gid=self.gid, st_mtime=self.dirs[path], st_ctime=self.dirs[path], st_atime=self.dirs[path])
        size = self.sizes.get(path)
        if size is None:
            raise mfusepy.FuseOSError(errno.ENOENT)
        # fs360's st_blksize: cp sizes its writes by it (1 MiB requests, not 128 KiB ones).
        return dict(st_ino=self._ino(path), st_mode=stat.S_IFREG | 0o644, st_nlink=1, st_uid=self.uid,
                    st_gid=self.gid, st_size=size, st_blocks=(size + 511) // 512, st_blksize=IO_BLOCK_SIZE)

    def _ino(self, path: str) -> int:
        """Under the mutex. fs360's mount options leave inode numbers to the file system (use_ino)."""
        return self.inos.setdefault(path, len(self.inos) + 1)

    def getattr(self, path, fh=None):
        with self._mutex:
            return self._attrs(path)

    def access(self, path, amode):
        with self._mutex:
            self._attrs(path)
        return 0

    def readdir(self, path, fh):
        prefix = path.rstrip("/") + "/"
        parent = path.rstrip("/").rpartition("/")[0] or "/"
        with self._mutex:
            # use_ino: each entry's number (libfuse passes mfusepy's zeroed one, ino 0, for a bare name)
            paths = [(".", path), ("..", parent)] + [(p[len(prefix):], p) for p in list(self.dirs) + list(self.sizes)
                                                      if p.startswith(prefix) and "/" not in p[len(prefix):]
                                                      and p != prefix]
            return [(name, self._attrs(p), 0) for name, p in paths]

    def mkdir(self, path, mode):
        with self._mutex:
            self.dirs[path] = time.time_ns()

    def create(self, path, mode, fi):
        with self._mutex:
            self.sizes[path] = 0
            self._new_handle(fi)
            if self.stage is not None:
                name = os.path.join(self.stage, str(fi.fh))
                self.staged[path] = os.open(name, os.O_RDWR | os.O_CREAT | os.O_TRUNC | (os.O_DIRECT if self.direct else 0),
                                            0o600)
                os.unlink(name)  # kept open: gone with the mount
        return 0

    def open(self, path, fi):
        with self._mutex:
            self._attrs(path)
            self._new_handle(fi)
        return 0

    def _new_handle(self, fi) -> None:
        """Under the mutex."""
        self.handles += 1
        fi.fh = self.handles
        fi.keep_cache = 0

    def write(self, path, data, offset, fh):
        with self._mutex:
            self.sizes[path] = max(self.sizes.get(path, 0), offset + len(data))
            fd = self.staged.get(path)
        if fd is not None:
            self._stage(fd, data, offset)
        return len(data)

    def _stage(self, fd: int, data, offset: int) -> None:
        if not self.direct:
            os.pwrite(fd, data, offset)
            return
        size = len(data)
        if offset % 4096 or size % 4096:
            raise mfusepy.FuseOSError(errno.EINVAL)  # cp's 1 MiB writes are aligned but the last
        buffer = getattr(self._aligned, "buffer", None)
        if buffer is None or len(buffer) < size:
            buffer = self._aligned.buffer = mmap.mmap(-1, max(size, 1 << 20))
        view = memoryview(buffer)[:size]
        view[:] = data
        os.pwrite(fd, view, offset)

    def truncate(self, path, length, fh=None):
        with self._mutex:
            self.sizes[path] = length

    def rename(self, old, new):
        # rsync writes each file as `.name.XXXXXX`, then renames it; a folder moves with what it holds.
        with self._mutex:
            moved = [(table, path) for table in (self.dirs, self.sizes) for path in table
                     if path == old or path.startswith(old + "/")]
            if not moved:
                raise mfusepy.FuseOSError(errno.ENOENT)
            for table, path in moved:
                table[new + path[len(old):]] = table.pop(path)
        return 0

    def unlink(self, path):
        with self._mutex:
            if self.sizes.pop(path, None) is None:
                raise mfusepy.FuseOSError(errno.ENOENT)
        return 0

    def flush(self, path, fh):
        return 0

    def release(self, path, fh):
        return 0

    def utimens(self, path, times=None):
        return 0

    def chmod(self, path, mode):
        return 0

    def chown(self, path, uid, gid):
        return 0

    def statfs(self, path):
        return dict(f_bsize=4096, f_frsize=4096, f_blocks=1 << 30, f_bfree=1 << 30, f_bavail=1 << 30,
                    f_files=1 << 20, f_ffree=1 << 20, f_namemax=255)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mountpoint")
    parser.add_argument("--stage", metavar="DIR", help="keep each file's bytes in a file of DIR")
    parser.add_argument("--direct", action="store_true", help="stage with O_DIRECT (whole 4 KiB blocks only)")
    args = parser.parse_args()
    Fs360Fuse(FloorOperations(args.stage, args.direct), args.mountpoint, raw_fi=True, fsname="fs360-floor",
              subtype="fs360-floor", **MOUNT_OPTIONS)

if __name__ == "__main__":
    main()
