"""Every error fs360 raises, with its retry policy, its errno and its reason, in one place.

Each class says whether the operation that raised it may be retried soon
(`retryable`), which errno a program writing to the mount sees (`errno`) and why,
in words a user can act on (`reason`). The FUSE adapter turns any `Fs360Error`
into its errno; anything else becomes EIO and is logged. `ERRNO_TABLE`, the
documented table, is read off the classes.
"""

from __future__ import annotations

import errno as _errno


class Fs360Error(Exception):
    """Base class. `retryable` says whether trying again soon may succeed; `outage` whether
    the failure is of the server or the way to it, shared by every request of its kind
    (api/troubles.py), not an answer about the one request."""

    retryable = False
    outage = False
    errno = _errno.EIO
    code = "internal_error"
    reason = "unexpected internal error: logged with its cause"
    endpoint = ""  # the API endpoint whose request raised it (set by the client)

    def __init__(self, message: str = "", **fields):
        super().__init__(message or self.code)
        self.fields = fields


class InternalError(Fs360Error):
    """A bug of fs360 while uploading a file (its traceback is in the log): the file is tried
    again a few times, then it waits for the user (engine/transfer.py)."""
    retryable = True
    code = "internal_error"
    reason = "fs360 failed with an internal error (logged with its traceback): tried again a few times"


class Cancelled(Exception):
    """The file changed hands (unlinked, session lost, shutting down) between chunks.

    A signal, not an error: deliberately not an `Fs360Error`, so that no
    `except Fs360Error` can take it for a failure of the upload.
    """


class SettingError(Fs360Error, ValueError):
    """A setting (flag, config file, -o, fs360 set) is not allowed: the message is one line that
    names where the value came from and what is allowed."""
    code = "invalid_setting"
    reason = "a setting is not allowed: fix it where the message says"


# --- transport and server errors (from the API client) -------------------------

class TransportError(Fs360Error):
    """The request did not get a usable answer: connection refused or cut, timeout.

    `gave_up_on_upload`: fs360 itself abandoned a PUT (a timeout or the deadline) whose
    connection the server may not have seen end yet (over a stalled link, the reset that
    ends it is lost too): the server may still hold that file's upload until its own idle
    timeout, so the file's next PUT waits (Settings.abandoned_upload_quiet)."""
    retryable = True
    outage = True
    code = "network_error"
    reason = "the server could not be reached or did not answer: retried with backoff"
    gave_up_on_upload = False


class DeadlineExceeded(TransportError):
    """The whole request (send, headers, body) did not end within its deadline; its connection is closed."""
    code = "deadline_exceeded"
    reason = "the server did not answer within the request's deadline: retried on a new connection"


class ResponseTooLarge(TransportError):
    """The answer's body passed the client's cap: the API's answers are small, so it is not the API's."""
    code = "response_too_large"
    reason = "the server's answer was far larger than any API answer: retried on a new connection"


class ServerError(Fs360Error):
    """5xx, or an error page that is not the API's JSON (a proxy's 413 or 502): retried with backoff."""
    retryable = True
    outage = True
    code = "server_error"
    reason = "the server (or a proxy in front of it) failed: retried with backoff"

    def __init__(self, message="", status: int = 500, **fields):
        super().__init__(message, **fields)
        self.status = status


class BodyTooLarge(ServerError):
    """413 to a PUT without the API's code: a proxy in front of the server refused the body's size
    (api.md Part C). An answer about that body, not an outage: the file's next PUTs are smaller
    (engine/chunk_sizes.py). At the smallest size (config.MIN_CHUNK_SIZE) the proxy refuses
    every body: the client marks that one an outage, held behind one probe for every file."""
    outage = False
    code = "body_too_large"
    reason = "a proxy in front of the server refused a PUT's size: sent again in smaller chunks"


class Redirected(ServerError):
    """3xx: fs360 never follows a redirect (the key must not go elsewhere); retried slowly, never final."""
    code = "redirected"
    reason = "the server redirected the request elsewhere: check --api-url"

    def __init__(self, message="", status: int = 302, location: str = "", **fields):
        super().__init__(message, status=status, **fields)
        self.location = location


class TlsError(ServerError):
    """The server's certificate was not accepted. Final at mount; while mounted retried slowly, never final."""
    code = "tls_error"
    reason = "the server's TLS certificate was not accepted: check --ca-bundle and --api-url"

    def __init__(self, message="", status: int = 0, **fields):
        super().__init__(message, status=status, **fields)


class MalformedResponse(Fs360Error):
    """A 2xx whose body is not the documented JSON (HTML page, missing fields, lies)."""
    retryable = True
    code = "malformed_response"
    reason = "the server's answer is not the documented JSON: retried with backoff"


class RateLimited(Fs360Error):
    """429: wait `retry_after` seconds, or back off like a server error when the server did not say."""
    retryable = True
    code = "rate_limited"
    reason = "the server's rate limit was reached: retried after the wait it asked for"

    def __init__(self, message="", retry_after: float | None = None, **fields):
        super().__init__(message, **fields)
        self.retry_after = retry_after


class NotSent(Fs360Error):
    """The request was not sent: it may go `retry_after` seconds from now. The caller takes
    other work meanwhile and comes back then; nothing of it counts as a failed attempt."""
    retryable = True
    code = "not_sent"
    reason = "not sent yet: fs360 waits its turn"

    def __init__(self, message="", retry_after: float = 0.0, **fields):
        super().__init__(message, **fields)
        self.retry_after = retry_after


class WaitForRateLimit(NotSent):
    """Not sent: the endpoint's documented budget is used up until `retry_after` seconds from now."""
    code = "waiting_for_rate_limit"
    reason = "the server's documented rate limit: fs360 waits its turn instead of tripping a 429"


class HeldBack(NotSent):
    """Not sent: a failure shared by every request of its kind holds it (the account refused, an
    endpoint that fails or does not answer, a wait the server asked for: api/troubles.py). The
    message is the one reason shown on every file it holds; one probe request decides when the
    wait ends, `fs360 resume` ends it at once."""
    code = "held_back"
    reason = "a failure shared by every upload holds it back: one request checks from time to time"


class ApiError(Fs360Error):
    """A 4xx refusal; `code` is the server's error code, `status` its HTTP status."""
    reason = "the server refused the operation"

    def __init__(self, message="", status: int = 400, code: str = "", **fields):
        super().__init__(message or code, **fields)
        self.status = status
        if code:
            self.code = code


# --- account errors: 401, 402 and 403, whatever the code -------------------------

_NEW_KEY = ("make a new API key with both scopes projects:read and projects:write on your profile page "
            "and remount with it")
_PLAN_FORBIDS_API = "your plan does not allow uploads through the API: upgrade it"


class AccountError(ApiError):
    """About the account or its key, never about one file.

    Not `retryable`: trying again soon cannot help, the user must act on `reason`.
    The engine keeps the files, retries slowly and never rejects them for it.
    """
    errno = _errno.EACCES
    code = "account_refused"
    reason = "the server refuses this account or its API key: see your profile page"

    def __init__(self, message="", status: int = 403, code: str = "", reason: str = "", **fields):
        if reason:
            self.reason = reason
        super().__init__(message or self.reason, status=status, code=code, **fields)


class Unauthorized(AccountError):
    """401: the key is missing, unknown or revoked."""
    code = "unauthorized"
    reason = f"the API key was refused: {_NEW_KEY}"


class QuotaExceeded(AccountError):
    """402: the account's storage quota is used up."""
    code = "storage_quota_exceeded"
    errno = _errno.EDQUOT
    reason = "your account's storage quota is used up: free space (delete projects) or upgrade your plan"


class Forbidden(AccountError):
    """403: the key lacks a scope, or the plan or the account's state forbids the operation."""
    code = "insufficient_scope"
    reason = ("the server refuses this account the operation: check on your profile page that the API key "
              "has both scopes projects:read and projects:write and that your plan allows API uploads")


# What to do, by the server's code; the class (by HTTP status) gives the default.
ACCOUNT_REASONS: dict[str, str] = {
    "unauthorized": Unauthorized.reason,
    "invalid_api_key": Unauthorized.reason,
    "missing_bearer_token": f"the server got no API key: {_NEW_KEY}",
    "insufficient_scope": ("the API key lacks a scope: make a key with both scopes projects:read and "
                           "projects:write on your profile page and remount with it"),
    "tariff_does_not_allow_api": _PLAN_FORBIDS_API,
    "tariff_forbids_upload": _PLAN_FORBIDS_API,
    "tariff": _PLAN_FORBIDS_API,
    "project_limit_reached": "your plan's project limit is reached: delete a project or upgrade your plan",
    "email_not_verified": "your account's e-mail address is not verified: verify it, then uploads go on",
    "storage_quota_exceeded": QuotaExceeded.reason,
}

# The HTTP status decides the class; the code only picks the reason.
ACCOUNT_ERROR_BY_STATUS: dict[int, type[AccountError]] = {401: Unauthorized, 402: QuotaExceeded, 403: Forbidden}


# --- refusals about one file or session ----------------------------------------

class SessionNotFound(ApiError):
    """404 upload_session_not_found: the session expired or was deleted."""
    code = "upload_session_not_found"
    reason = "the server session expired or was deleted: a new one is opened"


class RemoteFileNotFound(ApiError):
    """404 file_not_found: the server holds no byte of this file yet."""
    code = "file_not_found"
    reason = "the server holds no byte of this file yet"


class NonContiguousChunk(ApiError):
    """409: our offset was ahead of the server's; `received` says where to go on."""
    code = "non_contiguous_chunk"
    retryable = True
    reason = "the server holds fewer bytes than sent: the upload goes on from there"

    @property
    def received(self) -> int:
        return int(self.fields.get("received", 0))


class ServerHoldsOtherFile(ApiError):
    """The server has a file of this name with another size: ours cannot go there."""
    code = "name_taken_on_server"
    reason = "the server already holds a different file of this name in the session"


class FileTooLarge(ApiError):
    """413 file_too_large: the per-file cap, `limit` bytes."""
    code = "file_too_large"
    errno = _errno.EFBIG
    reason = "the server's per-file cap, as it said"


class SessionTooLarge(ApiError):
    """413 session_too_large: the per-session cap, `limit` bytes."""
    code = "session_too_large"
    errno = _errno.EDQUOT
    reason = "the server's per-session cap, as it said"


class ExtensionNotAllowed(ApiError):
    """415: the server refuses this extension; `allowed` lists what it takes."""
    code = "extension_not_allowed"
    errno = _errno.EPERM
    reason = "the server refuses this extension: refused at create"


class InvalidFilenameRemote(ApiError):
    """400 invalid_filename: the server refused the name."""
    code = "invalid_filename"
    errno = _errno.EINVAL
    reason = "the server refused the name"


class ProjectCreationFailed(ApiError):
    """400 project_creation_failed: a file of the session is not complete."""
    code = "project_creation_failed"
    retryable = True  # we wait for the files, then try again
    reason = "a file of the session is not complete on the server: sent again, then retried"


# --- the upload's own check (engine/uploader.py) --------------------------------

class SentContentChanged(Fs360Error):
    """The sha256 of what the upload sent differs from the sha256 journaled when the file was
    queued: its spool copy changed since (outside fs360, or a bug). Its last chunk is held
    back, so the server never completes it."""
    code = "sent_content_changed"
    reason = ("the data being uploaded no longer matches the file as it was written: never completed "
              "on the server; copy the file again")


# --- filesystem errors (from the path model) -----------------------------------

class FsError(Fs360Error):
    """An operation on the mount that the contract refuses."""
    reason = "the mount refuses the operation"


class NotFound(FsError):
    errno = _errno.ENOENT
    code = "not_found"
    reason = "no such session or file"


class AlreadyExists(FsError):
    errno = _errno.EEXIST
    code = "exists"
    reason = "O_EXCL on an existing name, or mkdir of an existing session"


class NotPermitted(FsError):
    errno = _errno.EPERM
    code = "not_permitted"
    reason = "nested folders and non-folders at the root have no upload meaning"


class AccessDenied(FsError):
    errno = _errno.EACCES
    code = "access_denied"
    reason = "the server holds bytes of it, or the session is sealed: it cannot change"


class NameTooLong(FsError):
    errno = _errno.ENAMETOOLONG
    code = "name_too_long"
    reason = "the server takes names up to 255 bytes"


class InvalidName(FsError):
    errno = _errno.EINVAL
    code = "invalid_name"
    reason = "the server would refuse the name (control characters, empty after flattening)"


class InvalidArgument(FsError):
    errno = _errno.EINVAL
    code = "invalid_argument"
    reason = "invalid .create content, or an argument the operation cannot take"


class NotEmpty(FsError):
    errno = _errno.ENOTEMPTY
    code = "not_empty"
    reason = "rmdir of a session that still lists files (POSIX)"


class IsADirectory(FsError):
    errno = _errno.EISDIR
    code = "is_a_directory"
    reason = "a file operation on a session folder"


class CrossDevice(FsError):
    """A folder of a session's tree moved to another session: not a rename the mount makes (a
    tree is its session's archive), so `mv` copies it and deletes the original, as it does
    between file systems."""
    errno = _errno.EXDEV
    code = "cross_session"
    reason = "a folder moves only within its session: mv copies it instead, as between file systems"


class NotADirectory(FsError):
    errno = _errno.ENOTDIR
    code = "not_a_directory"
    reason = "a folder operation on a file"


class NoSpace(FsError):
    errno = _errno.ENOSPC
    code = "no_space"
    reason = "the spool disk is full: nothing can be staged"


class JournalClosed(FsError):
    """A change came after the engine stopped and closed its journal: an upload attempt that
    outlived the stop's wait (a large chunk on a slow link). Not recorded: the next mount finds
    the file as it was journaled last, and asks the server where it stands."""
    errno = _errno.EIO
    code = "journal_closed"
    reason = "the mount has stopped: nothing more is recorded"


class JournalUnwritable(FsError):
    """The journal (SQLite, in the cache dir) refused a write that is not about a full disk: a
    read-only or failing disk. Nothing that must be journaled can change until it takes writes."""
    errno = _errno.EIO
    code = "journal_unwritable"
    reason = "the cache dir's journal cannot be written: its disk is read-only or failing"


class EarlierWriteLost(FsError):
    """A write done behind its writer (engine/spool.py) failed: bytes the writer was told were
    written are not in the spool, so the file is not whole. It carries that write's errno, and
    is never retried as the present call's own failure would be."""
    code = "write_behind_failed"
    reason = "an earlier write of the file to the spool failed: copy it again"

    def __init__(self, message: str, errno: int):
        super().__init__(message)
        self.errno = errno


class FileTooBig(FsError):
    errno = _errno.EFBIG
    code = "file_too_large"
    reason = "past the server's per-file cap (learned from a 413 or configured)"


class QuotaWouldPass(FsError):
    errno = _errno.EDQUOT
    code = "session_too_large"
    reason = "the session would pass the server's session cap"


class NotSupported(FsError):
    errno = _errno.ENOTSUP
    code = "not_supported"
    reason = "setxattr: fs360's attributes are read-only"


class NoAttribute(FsError):
    errno = _errno.ENODATA
    code = "no_attribute"
    reason = "getxattr of an attribute fs360 does not have"


def refusal_in_plain_words(code: str, fields: dict) -> str | None:
    """What the server's refusal of one file means and what to do about it, from its code and
    the fields it sent (`extension`, `allowed`, `limit`); None for a code without advice."""
    if code == "extension_not_allowed":
        extension = fields.get("extension")
        what = (f"the server does not take .{extension} files" if isinstance(extension, str) and extension
                else "the server does not take files without an extension")
        allowed = fields.get("allowed")
        if isinstance(allowed, list) and allowed and all(isinstance(a, str) for a in allowed):
            shown = [a.lstrip(".") for a in allowed[:12]]
            what += f"; allowed: {', '.join(shown)}" + (", …" if len(allowed) > 12 else "")
        return what + ": rename it to a type the server takes, or keep it out of the session"
    limit = fields.get("limit")
    limit_text = f" ({limit:,} bytes)" if isinstance(limit, int) and not isinstance(limit, bool) else ""
    if code == "file_too_large":
        return f"the file is larger than the server takes per file{limit_text}: split it, or leave it out"
    if code == "session_too_large":
        return (f"the session would pass the server's size limit per session{limit_text}: put the rest of "
                f"the files in another session folder")
    if code == "invalid_filename":
        return "the server refused the file's name: rename it (letters, digits, '-', '_' and '.' are safe)"
    if code == "upload_session_not_found":
        return ("the server no longer has this upload session (it expired or was deleted): fs360 opens a new one "
                "and sends the files not yet complete again")
    if code == "file_not_found":
        return "the server has no such file yet: fs360 sends it from its start"
    if code == "project_creation_failed":
        return ("the server refused to make the project, saying a file of the session is not complete there: fs360 "
                "checks the session's files and tries again")
    if code in MALFORMED_REQUEST_CODES:
        return ("the server found fs360's request malformed (a fault of fs360, not of your files): report it with "
                "fs360.log from the cache dir")
    return None


# A request of fs360's the server could not take as built: never the file's fault.
MALFORMED_REQUEST_CODES = ("chunk_length_mismatch", "invalid_content_range", "length_required", "invalid_upload_id",
                           "upload_id_or_download_link_required", "provide_either_upload_id_or_download_link")
UNKNOWN_REFUSAL = ("the server refused it with a reason fs360 has no advice for: if it stays, report it with "
                   "fs360.log from the cache dir")


def _classes_under(base: type[Fs360Error]) -> list[type[Fs360Error]]:
    found = [base]
    for sub in base.__subclasses__():
        if sub.__module__ == __name__:
            found += _classes_under(sub)
    return found


# The errno a writing program sees, and why: read off the classes, so there is one copy.
ERRNO_TABLE: dict[type[Fs360Error], tuple[int, str]] = {cls: (cls.errno, cls.reason)
                                                        for cls in _classes_under(Fs360Error)}


def errno_of(exc: BaseException) -> int:
    """The errno for any exception: the class's own for fs360 errors, EIO otherwise."""
    if isinstance(exc, Fs360Error):
        return exc.errno
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return _errno.EIO


# The server's error codes, mapped to our classes, used by the client's one translator
# (after the HTTP status: a 401, 402 or 403 is an account error whatever its code).
API_ERROR_CLASSES: dict[str, type[ApiError]] = {
    **{code: Unauthorized for code in ("unauthorized", "invalid_api_key", "missing_bearer_token")},
    **{code: Forbidden for code in ("insufficient_scope", "tariff_does_not_allow_api", "tariff_forbids_upload",
                                    "tariff", "project_limit_reached", "email_not_verified")},
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
