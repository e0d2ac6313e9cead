"""Every error fs360 raises, with its retry policy and its errno, in one place.

Each class says whether the operation that raised it may be retried (`retryable`)
and which errno a program writing to the mount sees (`errno`). The FUSE adapter
turns any `Fs360Error` into its errno; anything else becomes EIO and is logged.
The reasons for each errno choice stand in `ERRNO_TABLE` below, the one table.
"""

from __future__ import annotations

import errno as _errno


class Fs360Error(Exception):
    """Base class. `retryable` says whether trying again may succeed."""

    retryable = False
    errno = _errno.EIO
    code = "internal_error"

    def __init__(self, message: str = "", **fields):
        super().__init__(message or self.code)
        self.fields = fields

    @property
    def message(self) -> str:
        return str(self)


# --- transport and server errors (from the API client) -------------------------

class TransportError(Fs360Error):
    """The request did not get a usable answer: connection refused or cut, timeout."""
    retryable = True
    code = "network_error"


class ServerError(Fs360Error):
    """5xx: the server failed; retried with backoff."""
    retryable = True
    code = "server_error"

    def __init__(self, message="", status: int = 500, **fields):
        super().__init__(message, **fields)
        self.status = status


class MalformedResponse(Fs360Error):
    """A 2xx whose body is not the documented JSON (HTML page, missing fields, lies)."""
    retryable = True
    code = "malformed_response"


class RateLimited(Fs360Error):
    """429: wait `retry_after` seconds, then retry."""
    retryable = True
    code = "rate_limited"

    def __init__(self, message="", retry_after: float = 1.0, **fields):
        super().__init__(message, **fields)
        self.retry_after = retry_after


class ApiError(Fs360Error):
    """A documented 4xx refusal; `code` is the server's error code, `status` its HTTP status."""

    def __init__(self, message="", status: int = 400, code: str = "", **fields):
        super().__init__(message or code, **fields)
        self.status = status
        if code:
            self.code = code


class Unauthorized(ApiError):
    """401: the key is missing or unknown. Not retried: the user must fix the key."""
    code = "unauthorized"
    errno = _errno.EACCES


class Forbidden(ApiError):
    """403: the key lacks a scope, or the tariff forbids the operation."""
    code = "insufficient_scope"
    errno = _errno.EACCES


class QuotaExceeded(ApiError):
    """402: the account's storage quota is used up."""
    code = "storage_quota_exceeded"
    errno = _errno.EDQUOT


class SessionNotFound(ApiError):
    """404 upload_session_not_found: the session expired or was deleted."""
    code = "upload_session_not_found"


class RemoteFileNotFound(ApiError):
    """404 file_not_found: the server holds no byte of this file yet."""
    code = "file_not_found"


class NonContiguousChunk(ApiError):
    """409: our offset was ahead of the server's; `received` says where to go on."""
    code = "non_contiguous_chunk"
    retryable = True

    @property
    def received(self) -> int:
        return int(self.fields.get("received", 0))


class FileTooLarge(ApiError):
    """413 file_too_large: the per-file cap, `limit` bytes."""
    code = "file_too_large"
    errno = _errno.EFBIG


class SessionTooLarge(ApiError):
    """413 session_too_large: the per-session cap, `limit` bytes."""
    code = "session_too_large"
    errno = _errno.EDQUOT


class ExtensionNotAllowed(ApiError):
    """415: the server refuses this extension; `allowed` lists what it takes."""
    code = "extension_not_allowed"
    errno = _errno.EPERM


class InvalidFilenameRemote(ApiError):
    """400 invalid_filename: the server refused the name."""
    code = "invalid_filename"
    errno = _errno.EINVAL


class ProjectCreationFailed(ApiError):
    """400 project_creation_failed: a file of the session is not complete."""
    code = "project_creation_failed"
    retryable = True  # we wait for the files, then try again


# --- filesystem errors (from the path model) -----------------------------------

class FsError(Fs360Error):
    """An operation on the mount that the contract refuses."""


class NotFound(FsError):
    errno = _errno.ENOENT
    code = "not_found"


class AlreadyExists(FsError):
    errno = _errno.EEXIST
    code = "exists"


class NotPermitted(FsError):
    errno = _errno.EPERM
    code = "not_permitted"


class AccessDenied(FsError):
    errno = _errno.EACCES
    code = "access_denied"


class NameTooLong(FsError):
    errno = _errno.ENAMETOOLONG
    code = "name_too_long"


class InvalidName(FsError):
    errno = _errno.EINVAL
    code = "invalid_name"


class InvalidArgument(FsError):
    errno = _errno.EINVAL
    code = "invalid_argument"


class NotEmpty(FsError):
    errno = _errno.ENOTEMPTY
    code = "not_empty"


class IsADirectory(FsError):
    errno = _errno.EISDIR
    code = "is_a_directory"


class NotADirectory(FsError):
    errno = _errno.ENOTDIR
    code = "not_a_directory"


class NoSpace(FsError):
    errno = _errno.ENOSPC
    code = "no_space"


class FileTooBig(FsError):
    errno = _errno.EFBIG
    code = "file_too_large"


class QuotaWouldPass(FsError):
    errno = _errno.EDQUOT
    code = "session_too_large"


class NotSupported(FsError):
    errno = _errno.ENOTSUP
    code = "not_supported"


class NoAttribute(FsError):
    errno = _errno.ENODATA
    code = "no_attribute"


# The errno a writing program sees, and why. The classes above carry the same
# numbers; this table is the documentation and is checked against them by a test.
ERRNO_TABLE: dict[type[Fs360Error], tuple[int, str]] = {
    NoSpace: (_errno.ENOSPC, "the spool disk is full: nothing can be staged"),
    FileTooBig: (_errno.EFBIG, "past the server's per-file cap (learned from a 413 or configured)"),
    FileTooLarge: (_errno.EFBIG, "the server's per-file cap, as it said"),
    QuotaWouldPass: (_errno.EDQUOT, "the session would pass the server's session cap"),
    SessionTooLarge: (_errno.EDQUOT, "the server's per-session cap, as it said"),
    QuotaExceeded: (_errno.EDQUOT, "the account's storage quota is used up"),
    ExtensionNotAllowed: (_errno.EPERM, "the server refuses this extension: refused at create"),
    NotPermitted: (_errno.EPERM, "nested folders and non-folders at the root have no upload meaning"),
    AccessDenied: (_errno.EACCES, "the server holds bytes of it, or the session is sealed: it cannot change"),
    Unauthorized: (_errno.EACCES, "the API key is missing or unknown"),
    Forbidden: (_errno.EACCES, "the API key lacks the scope, or the tariff forbids it"),
    NameTooLong: (_errno.ENAMETOOLONG, "the server takes names up to 255 bytes"),
    InvalidName: (_errno.EINVAL, "the server would refuse the name (control characters, empty after flattening)"),
    InvalidFilenameRemote: (_errno.EINVAL, "the server refused the name"),
    InvalidArgument: (_errno.EINVAL, "invalid .create content, or an argument the operation cannot take"),
    NotFound: (_errno.ENOENT, "no such session or file"),
    AlreadyExists: (_errno.EEXIST, "O_EXCL on an existing name, or mkdir of an existing session"),
    NotEmpty: (_errno.ENOTEMPTY, "rmdir of a session that still lists files (POSIX)"),
    IsADirectory: (_errno.EISDIR, "a file operation on a session folder"),
    NotADirectory: (_errno.ENOTDIR, "a folder operation on a file"),
    NotSupported: (_errno.ENOTSUP, "setxattr: fs360's attributes are read-only"),
    NoAttribute: (_errno.ENODATA, "getxattr of an attribute fs360 does not have"),
    Fs360Error: (_errno.EIO, "unexpected internal error: logged with its cause"),
}


def errno_of(exc: BaseException) -> int:
    """The errno for any exception: the class's own for fs360 errors, EIO otherwise."""
    if isinstance(exc, Fs360Error):
        return exc.errno
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return _errno.EIO


# The server's error codes, mapped to our classes, used by the client's one translator.
API_ERROR_CLASSES: dict[str, type[ApiError]] = {
    "unauthorized": Unauthorized,
    "insufficient_scope": Forbidden,
    "tariff_forbids_upload": Forbidden,
    "tariff": Forbidden,
    "storage_quota_exceeded": QuotaExceeded,
    "upload_session_not_found": SessionNotFound,
    "file_not_found": RemoteFileNotFound,
    "non_contiguous_chunk": NonContiguousChunk,
    "file_too_large": FileTooLarge,
    "session_too_large": SessionTooLarge,
    "extension_not_allowed": ExtensionNotAllowed,
    "invalid_filename": InvalidFilenameRemote,
    "project_creation_failed": ProjectCreationFailed,
}
