"""Every place fs360 reaches into mfusepy's internals, each with why.

mfusepy is pinned to the minor version these were written for (pyproject.toml), and
tests/unit/test_mfusepy_overrides.py fails loudly when the upstream code of any method
overridden here changes: re-read that method, re-check the override, then update the
recorded digest. The operations themselves (fuse_ops.py) use only mfusepy's public API.

| override | why |
|---|---|
| `_wrapper` | keep each libfuse worker's Python thread state alive; return an errno raised on purpose without mfusepy's debug traceback |
| `readdir_fuse_3` | a real READDIRPLUS: full attributes for every entry, so `ls -l` needs no lookup per file |
| `utimens_fuse_3` | read UTIME_NOW / UTIME_OMIT, which mfusepy folds into a bogus time |
| `truncate_fuse_3` | pass the file handle of `ftruncate` on (mfusepy drops it), for files unlinked while open |
| `getxattr` | answer foreign attribute names (asked before every write, and by `ls -l` of every file) before mfusepy decodes or logs |
| `write` | hand the operation a view of libfuse's buffer, not a copy of each write into `bytes` |
| `fgetattr` | answer a missing name ENOENT without an exception through mfusepy's layers (every new name is looked up first) |
"""

from __future__ import annotations

import ctypes
import errno
import functools
import threading

import mfusepy

from .model import SESSION_XATTRS, XATTRS, foreign_xattr_errno

# The extended attributes the model answers; any other is answered at once (getxattr below).
OWN_XATTRS = frozenset(name.encode() for name in XATTRS + SESSION_XATTRS)
FUSE_READDIR_PLUS = 1
FUSE_FILL_DIR_PLUS = 2
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
# fuse_common.h (libfuse 3): connection capabilities.
FUSE_CAP_READDIRPLUS = 1 << 13
FUSE_CAP_READDIRPLUS_AUTO = 1 << 14


def errno_answering(func):
    """`func`, returning an errno raised on purpose (EACCES, ENOENT, ENOTSUP, ...) as the answer
    it is, without mfusepy's debug traceback (`translated` has logged it)."""
    @functools.wraps(func)
    def call(*a, **kw):
        try:
            return func(*a, **kw)
        except mfusepy.FuseOSError as exc:
            if isinstance(exc.errno, int) and exc.errno > 0:
                return -exc.errno
            raise
    return call


class Fs360Fuse(mfusepy.FUSE):
    """mfusepy with the overrides of the table above.

    About readdirplus: a listing gives the kernel every entry's attributes.

    mfusepy hands libfuse only the mode of each entry, and libfuse drops the attributes
    of entries buffered at offset 0 anyway (it replies with ino 0, "ignore the stat"),
    so `ls -l` of a folder would cost a lookup round trip per file. Here a READDIRPLUS
    is answered with explicit offsets and the full stat of each entry (FUSE_FILL_DIR_PLUS),
    which the kernel caches for attr_timeout / entry_timeout. The listing is taken once
    per opendir, at offset 0, and later calls page through that same snapshot.
    """

    _pinned_threads: set[int] = set()
    _errno_answering: dict = {}

    def _wrapper(self, func, *args, **kwargs):
        # libfuse's worker threads are not Python threads: for each callback ctypes makes a
        # Python thread state and throws it away afterwards, which costs more than most
        # operations themselves. One extra PyGILState_Ensure per worker thread keeps its
        # thread state alive (the thread states of workers libfuse retires are leaked: a few).
        native = threading.get_native_id()
        if native not in self._pinned_threads:
            self._pinned_threads.add(native)
            ctypes.pythonapi.PyGILState_Ensure()
        # mfusepy binds each operation's method once, at mount: its wrapper is made once too
        # (functools.wraps costs microseconds, and ls -l of 10,000 files makes 30,000 calls).
        call = self._errno_answering.get(func)
        if call is None:
            call = self._errno_answering.setdefault(func, errno_answering(func))
        return super()._wrapper(call, *args, **kwargs)

    def readdir_fuse_3(self, path, buf, filler, offset, fip, flags):
        if not flags & FUSE_READDIR_PLUS or not hasattr(self.operations, "listing"):
            return super().readdir_fuse_3(path, buf, filler, offset, fip, flags)
        decoded = None if path is None else path.decode(self.encoding, self.errors)
        entries = self.operations.listing(decoded, fip.contents.fh, offset)
        # Offsets: "." is 1, ".." is 2, entry i is i + 3; a call resumes after `offset`.
        index = offset
        while index < len(entries) + 2:
            if index < 2:
                name, st, fill_flags = (b".", b"..")[index], None, 0
            else:
                name, attrs = entries[index - 2]
                st = mfusepy.c_stat()
                mfusepy.set_st_attrs(st, attrs, use_ns=self.use_ns)
                fill_flags = FUSE_FILL_DIR_PLUS
                name = name.encode(self.encoding, self.errors)
            if filler(buf, name, st, index + 1, fill_flags) != 0:
                break  # the reply is full: the kernel asks again from the last offset it got
            index += 1
        return 0

    def utimens_fuse_3(self, path, buf, fip):
        # mfusepy folds tv_nsec into one number, so UTIME_NOW / UTIME_OMIT (what `touch`
        # and `touch -a` send) would become bogus times: read the timespec here instead.
        if not buf:
            mtime = None
        else:
            spec = buf.contents.modtime
            if spec.tv_nsec == UTIME_OMIT:
                return 0  # the mtime stays; the atime is not kept at all
            if spec.tv_nsec == UTIME_NOW:
                mtime = None
            else:
                mtime = spec.tv_sec * 10**9 + spec.tv_nsec
        decoded = None if path is None else path.decode(self.encoding, self.errors)
        return self.operations.utimens(decoded, (None, mtime))

    def truncate_fuse_3(self, path, length, fip):
        # mfusepy drops the file handle of ftruncate: pass it on, so a file unlinked while
        # open is truncated through its handle.
        fh = fip.contents if fip else None
        decoded = None if path is None else path.decode(self.encoding, self.errors)
        return self.operations.truncate(decoded, length, fh)

    def write(self, path, buf, size, offset, fip):
        # mfusepy copies every write into bytes (ctypes.string_at): a view of libfuse's buffer
        # instead, valid for this call only. What takes it (the spool's pwrite, the digests, the
        # comparison of a re-copy, .create's bytearray) reads it in place or copies it.
        data = memoryview(ctypes.cast(buf, ctypes.POINTER(ctypes.c_ubyte * size)).contents).cast("B")
        fh = fip.contents if self.raw_fi else fip.contents.fh
        decoded = None if path is None else path.decode(self.encoding, self.errors)
        return self.operations.write(decoded, data, offset, fh)

    def fgetattr(self, path, buf, fip):
        # mfusepy's, but a missing name is answered ENOENT without an exception raised through
        # three layers (operations with an `attributes` that returns None for it).
        attributes = getattr(self.operations, "attributes", None)
        if attributes is None:
            return super().fgetattr(path, buf, fip)
        fh = (fip.contents if self.raw_fi else fip.contents.fh) if fip else None
        attrs = attributes(None if path is None else path.decode(self.encoding, self.errors), fh)
        if attrs is None:
            return -errno.ENOENT
        ctypes.memset(buf, 0, ctypes.sizeof(mfusepy.c_stat))
        mfusepy.set_st_attrs(buf.contents, attrs, use_ns=self.use_ns)
        return 0

    def getxattr(self, path, name, value, size, *args):
        # The kernel asks for security.capability before every write() (FUSE never marks an
        # inode S_NOSEC) and `ls -l` asks for ACLs and the SELinux label of every file: those
        # are answered here, before mfusepy decodes anything, raises or logs. As in
        # MountModel.getxattr: ENOTSUP outside the user namespace, and on that answer ls asks no
        # other file of its listing (10,000 files: 20,000 round trips fewer).
        if name not in OWN_XATTRS:
            return -foreign_xattr_errno(name.decode(errors="surrogateescape"))
        return super().getxattr(path, name, value, size, *args)
