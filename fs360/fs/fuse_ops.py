"""The FUSE adapter: mfusepy calls in, MountModel calls out, errnos back.

Thin on purpose: every decision lives in `model.py`. Every operation is wrapped
so that an fs360 error becomes the errno of the table in `errors.py` and
anything unexpected becomes EIO, logged with its traceback (mfusepy would
otherwise turn it into EINVAL).
"""

from __future__ import annotations

import errno
import functools
import logging

import mfusepy

from ..errors import Fs360Error, errno_of
from .model import MountModel

log = logging.getLogger(__name__)


def translated(method):
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Fs360Error as exc:
            log.debug("%s%r: %s", method.__name__, _printable(args), exc)
            raise mfusepy.FuseOSError(exc.errno) from None
        except mfusepy.FuseOSError:
            raise
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise mfusepy.FuseOSError(errno.ENOSPC) from None
            log.exception("%s%r failed", method.__name__, _printable(args))
            raise mfusepy.FuseOSError(errno_of(exc) if exc.errno else errno.EIO) from None
        except Exception:
            log.exception("unexpected error in %s%r", method.__name__, _printable(args))
            raise mfusepy.FuseOSError(errno.EIO) from None
    return wrapper


def _printable(args) -> tuple:
    return tuple(a if isinstance(a, (str, int)) else type(a).__name__ for a in args)


class Fs360Operations(mfusepy.Operations):
    use_ns = True

    def __init__(self, model: MountModel, on_init=None, on_destroy=None):
        self.model = model
        self._on_init = on_init
        self._on_destroy = on_destroy

    def init_with_config(self, conn_info, config) -> None:
        if config is not None:
            # Remembered metadata is stable for a second; ls -l of 10,000 files stays in cache.
            config.attr_timeout = self.model.settings.attr_timeout
            config.entry_timeout = self.model.settings.attr_timeout
            config.negative_timeout = 0.0
            config.hard_remove = 1
        if conn_info is not None and hasattr(conn_info, "max_write"):
            conn_info.max_write = 1024 * 1024
        if self._on_init:
            self._on_init()

    def destroy(self, path) -> None:
        if self._on_destroy:
            self._on_destroy()

    @translated
    def getattr(self, path, fh=None):
        return self.model.getattr(path, fh.fh if fh is not None and hasattr(fh, "fh") else None)

    @translated
    def readdir(self, path, fh):
        return [".", ".."] + [(name, attrs, 0) for name, attrs in self.model.readdir(path)]

    @translated
    def statfs(self, path):
        return self.model.statfs()

    @translated
    def mkdir(self, path, mode):
        self.model.mkdir(path, mode)

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
        self.model.flush(fh.fh)

    @translated
    def release(self, path, fh):
        self.model.release(fh.fh)

    @translated
    def fsync(self, path, datasync, fh):
        self.model.fsync(fh.fh, bool(datasync))

    @translated
    def rename(self, old, new):
        self.model.rename(old, new)

    @translated
    def unlink(self, path):
        self.model.unlink(path)

    @translated
    def chmod(self, path, mode):
        self.model.chmod(path, mode)

    @translated
    def chown(self, path, uid, gid):
        self.model.chown(path, uid, gid)

    @translated
    def utimens(self, path, times=None):
        self.model.utimens(path, times[1] if times else None)

    @translated
    def getxattr(self, path, name, position=0):
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
        raise mfusepy.FuseOSError(errno.EPERM)

    @translated
    def link(self, target, source):
        raise mfusepy.FuseOSError(errno.EPERM)

    @translated
    def mknod(self, path, mode, dev):
        raise mfusepy.FuseOSError(errno.EPERM)

    @translated
    def access(self, path, amode):
        self.model.getattr(path)
        return 0


def mount(model: MountModel, mountpoint: str, foreground: bool = True, allow_other: bool = False,
          on_init=None, on_destroy=None) -> None:
    """Runs the FUSE loop until unmounted (blocks)."""
    options = dict(foreground=foreground, nothreads=False, fsname="fs360", subtype="fs360",
                   default_permissions=True, hard_remove=True)
    if allow_other:
        options["allow_other"] = True
    mfusepy.FUSE(Fs360Operations(model, on_init, on_destroy), mountpoint, raw_fi=True, **options)
