"""The one place an fs360 error becomes an HTTP answer: its errno picks the status, its
message is the reason the client sees (never a traceback, never the key)."""

from __future__ import annotations

import contextlib
import errno
import logging

from wsgidav.dav_error import DAVError

from ..errors import Fs360Error, errno_of

log = logging.getLogger(__name__)

# errno of the path model -> HTTP status (RFC 4918 where it names one).
HTTP_STATUS_BY_ERRNO = {
    errno.ENOENT: 404,        # no such session or file
    errno.EEXIST: 405,        # MKCOL of an existing name (RFC 4918 9.3.1)
    errno.EPERM: 403,         # what the server cannot do: nested sessions, reserved names, extensions
    errno.EACCES: 403,        # the server holds it, the session is sealed, the tree is planned
    errno.EINVAL: 400,        # an invalid name, an invalid .create
    errno.ENAMETOOLONG: 400,
    errno.ENOTEMPTY: 409,     # a session or folder that still lists files
    errno.EISDIR: 409,
    errno.ENOTDIR: 409,
    errno.EXDEV: 502,         # a folder moved to another session: the client copies it (RFC 4918 9.9.4)
    errno.ENOSPC: 507,        # Insufficient Storage: the spool disk is full
    errno.EDQUOT: 507,        # the account's or the session's cap
    errno.EFBIG: 413,         # the server's per-file cap
    errno.ENOTSUP: 403,
    errno.ENODATA: 404,
}


def http_status_of(exc: BaseException) -> int:
    return HTTP_STATUS_BY_ERRNO.get(errno_of(exc), 500)


def as_dav_error(exc: BaseException) -> DAVError:
    """The DAVError a client gets for `exc`, with the model's reason as its text."""
    status = http_status_of(exc)
    if isinstance(exc, Fs360Error) or getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        log.debug("answered %d: %s", status, exc)
        return DAVError(status, context_info=str(exc))
    log.error("unexpected error answered with %d", status, exc_info=exc)
    return DAVError(status, context_info="unexpected internal error: see the server's log")


@contextlib.contextmanager
def answered():
    """Around each call into the model: its refusals leave as HTTP statuses."""
    try:
        yield
    except DAVError:
        raise
    except Exception as exc:
        raise as_dav_error(exc) from None
