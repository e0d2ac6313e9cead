"""The FUSE adapter: mfusepy calls in, MountModel calls out, errnos back.

Thin on purpose: every decision lives in the path model (`model.py` and its parts). Every operation is wrapped
so that an fs360 error becomes the errno of the table in `errors.py` and
anything unexpected becomes EIO, logged with its traceback (mfusepy would
otherwise turn it into EINVAL).
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import threading

import mfusepy

from ..errors import Fs360Error, errno_of
from .mfusepy_overrides import FUSE_CAP_READDIRPLUS, FUSE_CAP_READDIRPLUS_AUTO, Fs360Fuse
from .model import MountModel

log = logging.getLogger(__name__)


def translated(method):
    """An fs360 error becomes its errno (an answer, logged at debug); anything else becomes
    its errno too (EIO when it has none) and is logged with its traceback."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except mfusepy.FuseOSError:
            raise
        except Exception as exc:
            if isinstance(exc, Fs360Error) or getattr(exc, "errno", None) == errno.ENOSPC:
                # An answer (ENOENT to each new name cp looks up): formatted only when logged.
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("%s%r: %s", method.__name__, _printable(args), exc)
                if method.__name__ in REFUSABLE and errno_of(exc) in REFUSALS and args and isinstance(args[0], str):
                    _tell_refusal(self, args[0], errno_of(exc))
            else:
                log.exception("unexpected error in %s%r", method.__name__, _printable(args))
            raise mfusepy.FuseOSError(errno_of(exc)) from None
    return wrapper


# The operations whose refusal may make a program fail (and exit non-zero), and the refusals that
# count: the mount's own "no" to a name or a change (not ENOENT, which cp meets at each new name,
# nor EXDEV, after which mv copies). A held file's reason then says the mount refused it first.
REFUSABLE = frozenset({"create", "mkdir", "rename", "unlink", "rmdir", "symlink", "link", "mknod", "open",
                       "truncate", "write", "fallocate", "flush"})
REFUSALS = frozenset({errno.EACCES, errno.EPERM, errno.EINVAL, errno.ENAMETOOLONG, errno.EFBIG, errno.EDQUOT,
                      errno.ENOSPC})


def _tell_refusal(ops, path: str, error: int) -> None:
    """The model learns which program got the mount's refusal of `path` (never fails the answer)."""
    try:
        pid = mfusepy.fuse_get_context()[2]
        if pid:
            ops.model.refused_to(pid, path, error)
    except Exception:  # (a test's object without a model, no FUSE context): the refusal itself stands
        log.debug("the refusal of %r was not noted", path, exc_info=True)


def _printable(args) -> tuple:
    return tuple(a if isinstance(a, (str, int)) else type(a).__name__ for a in args)


def configure_connection(conn_info, config, attr_timeout: float) -> None:
    """fs360's FUSE connection (libfuse's init): timeouts, 1 MiB writes, readdirplus. Also what
    bench/floor_fs.py mounts with, so that the floor answers the requests fs360 gets."""
    if config is not None:
        # Remembered metadata is stable for a second; ls -l of 10,000 files stays in cache.
        config.attr_timeout = attr_timeout
        config.entry_timeout = attr_timeout
        # Every name change passes through here, so "no such file" may be cached too:
        # cp, rsync and tar stat each target before creating it.
        config.negative_timeout = attr_timeout
        # No hard_remove: libfuse then renames a file unlinked while open to `.fuse_hidden…`
        # and keeps a path for it, so fstat of it works (with hard_remove, ESTALE).
        config.hard_remove = 0
    if conn_info is not None and hasattr(conn_info, "max_write"):
        conn_info.max_write = 1024 * 1024
        # No FUSE_CAP_WRITEBACK_CACHE: measured, the copy returns a little sooner but completes
        # no sooner, and write errors would reach the writer only at close(), which then sends
        # no FLUSH (the commit point's pid) when a write-back failed (BENCHMARKS.md, issue 21).
        if conn_info.capable & FUSE_CAP_READDIRPLUS:
            # Always READDIRPLUS, not only for the first page of a listing ("auto"): ls -l of
            # a big folder then needs no lookup per file.
            conn_info.want = (conn_info.want | FUSE_CAP_READDIRPLUS) & ~FUSE_CAP_READDIRPLUS_AUTO


class Fs360Operations(mfusepy.Operations):
    use_ns = True

    def __init__(self, model: MountModel, on_init=None, on_destroy=None):
        self.model = model
        self._listings: dict[int, list] = {}
        self._listings_lock = threading.Lock()
        self._dir_handles = itertools.count(1)
        self._on_init = on_init
        self._on_destroy = on_destroy

    def init_with_config(self, conn_info, config) -> None:
        configure_connection(conn_info, config, self.model.settings.attr_timeout)
        self.model.watch_exits()
        if self._on_init:
            self._on_init()

    def destroy(self, path) -> None:
        # The last close of a lazy unmount may come with no release: settle what is still open.
        self.model.release_all()
        self.model.stop_watching_exits()
        if self._on_destroy:
            self._on_destroy()

    @translated
    def getattr(self, path, fh=None):
        return self.model.getattr(path, fh.fh if fh is not None and hasattr(fh, "fh") else None)

    @translated
    def attributes(self, path, fh=None):
        """getattr's, None for a missing name (Fs360Fuse.fgetattr answers ENOENT without raising)."""
        return self.model.attributes(path, fh.fh if fh is not None and hasattr(fh, "fh") else None)

    @translated
    def readdir(self, path, fh):
        return [".", ".."] + [(name, attrs, 0) for name, attrs in self.model.readdir(path)]

    def opendir(self, path):
        with self._listings_lock:
            return next(self._dir_handles)

    def releasedir(self, path, fh):
        with self._listings_lock:
            self._listings.pop(fh, None)
        return 0

    @translated
    def listing(self, path, fh, offset):
        """(name, attrs) of a folder for readdirplus: a fresh snapshot at offset 0, then the same one."""
        with self._listings_lock:
            entries = self._listings.get(fh) if offset else None
        if entries is None:
            entries = self.model.readdir(path)
            with self._listings_lock:
                self._listings[fh] = entries
        return entries

    @translated
    def statfs(self, path):
        return self.model.statfs()

    @translated
    def mkdir(self, path, mode):
        uid, gid, _ = mfusepy.fuse_get_context()
        self.model.mkdir(path, mode, uid, gid)

    @translated
    def rmdir(self, path):
        self.model.rmdir(path)

    @translated
    def create(self, path, mode, fi):
        uid, gid, _ = mfusepy.fuse_get_context()
        fi.fh = self.model.create(path, mode, fi.flags, uid, gid)
        self._set_io_mode(fi)
        return 0

    @translated
    def open(self, path, fi):
        fi.fh = self.model.open(path, fi.flags)
        self._set_io_mode(fi)
        return 0

    def _set_io_mode(self, fi) -> None:
        # Status files and .create are produced at open: read them to EOF, never from the page cache.
        if self.model.is_snapshot(fi.fh):
            fi.direct_io = 1
        else:
            fi.keep_cache = 0
        # A status file's close has nothing to settle: no FLUSH, one round trip fewer per read of
        # it (each one waits for a CPU while uploads run). noflush needs libfuse 3.11.
        if self.model.is_status_snapshot(fi.fh) and hasattr(fi, "noflush"):
            fi.noflush = 1

    @translated
    def read(self, path, size, offset, fh):
        return self.model.read(fh.fh, size, offset)

    @translated
    def write(self, path, data, offset, fh):
        return self.model.write(fh.fh, data, offset)

    @translated
    def truncate(self, path, length, fh=None):
        self.model.truncate(path, length, fh.fh if fh is not None and hasattr(fh, "fh") else None)

    @translated
    def fallocate(self, path, mode, offset, size, fh):
        self.model.fallocate(fh.fh, mode, offset, size)

    @translated
    def flush(self, path, fh):
        # The flush is sent by the closing task itself: its pid says who the writer is, and
        # whether it is dying.
        self.model.flush(fh.fh, mfusepy.fuse_get_context()[2])

    @translated
    def release(self, path, fh):
        self.model.release(fh.fh)

    @translated
    def fsync(self, path, datasync, fh):
        self.model.fsync(fh.fh, bool(datasync))

    @translated
    def rename(self, old, new):
        self.model.rename(old, new, mfusepy.fuse_get_context()[2])

    @translated
    def unlink(self, path):
        self.model.unlink(path, mfusepy.fuse_get_context()[2])

    @translated
    def chmod(self, path, mode):
        self.model.chmod(path, mode)

    @translated
    def chown(self, path, uid, gid):
        self.model.chown(path, uid, gid)

    @translated
    def utimens(self, path, times=None):
        """times: None or (atime, mtime) in ns; mtime None = now (atime is not kept)."""
        self.model.utimens(path, times[1] if times else None)

    @translated
    def getxattr(self, path, name, position=0):
        # Foreign names never get here: Fs360Fuse.getxattr answers them before decoding.
        return self.model.getxattr(path, name)

    @translated
    def listxattr(self, path):
        return self.model.listxattr(path)

    @translated
    def setxattr(self, path, name, value, options, position=0):
        self.model.setxattr(path, name, value, options)

    @translated
    def removexattr(self, path, name):
        self.model.removexattr(path, name)

    @translated
    def symlink(self, target, source):
        self.model.refuse_special(target, "symbolic links")

    @translated
    def link(self, target, source):
        self.model.refuse_special(target, "hard links")

    @translated
    def mknod(self, path, mode, dev):
        self.model.refuse_special(path, "device files, FIFOs or sockets")

    @translated
    def access(self, path, amode):
        self.model.getattr(path)
        return 0


# max_idle_threads given: libfuse 3.12-3.14 otherwise warns "Ignoring invalid max threads value
# 4294967295" at every start; as many idle threads as threads keeps its default behaviour.
# default_permissions: the kernel checks permissions (no ACCESS round trips).
# use_ino: the inode numbers are the model's (fs/attrs.py, inode_number), stable for an entry's life.
MOUNT_OPTIONS = dict(foreground=True, nothreads=False, default_permissions=True, use_ino=True, max_threads=10,
                     max_idle_threads=10)


def mount(model: MountModel, mountpoint: str, allow_other: bool = False, on_init=None, on_destroy=None) -> None:
    """Runs the FUSE loop until unmounted (blocks)."""
    options = dict(MOUNT_OPTIONS, fsname="fs360", subtype="fs360")
    if allow_other:
        options["allow_other"] = True
    Fs360Fuse(Fs360Operations(model, on_init, on_destroy), mountpoint, raw_fi=True, **options)
