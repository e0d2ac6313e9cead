"""Each error class's errno (as documented in doc/SEMANTICS.md), its reason, its retry policy."""

import errno
import inspect

import pytest

from fs360 import errors as E
from fs360.errors import ERRNO_TABLE, Fs360Error, errno_of


def all_error_classes():
    return [cls for _, cls in inspect.getmembers(E, inspect.isclass)
            if issubclass(cls, Fs360Error) and cls.__module__ == E.__name__]


# The errno a writing program must see, written out as the contract says it.
EXPECTED_ERRNO = [
    (E.NoSpace, errno.ENOSPC), (E.FileTooBig, errno.EFBIG), (E.FileTooLarge, errno.EFBIG),
    (E.QuotaWouldPass, errno.EDQUOT), (E.SessionTooLarge, errno.EDQUOT), (E.QuotaExceeded, errno.EDQUOT),
    (E.ExtensionNotAllowed, errno.EPERM), (E.NotPermitted, errno.EPERM), (E.AccessDenied, errno.EACCES),
    (E.Unauthorized, errno.EACCES), (E.Forbidden, errno.EACCES), (E.AccountError, errno.EACCES),
    (E.NameTooLong, errno.ENAMETOOLONG), (E.InvalidName, errno.EINVAL), (E.InvalidFilenameRemote, errno.EINVAL),
    (E.InvalidArgument, errno.EINVAL), (E.NotFound, errno.ENOENT), (E.AlreadyExists, errno.EEXIST),
    (E.NotEmpty, errno.ENOTEMPTY), (E.IsADirectory, errno.EISDIR), (E.NotADirectory, errno.ENOTDIR),
    (E.NotSupported, errno.ENOTSUP), (E.NoAttribute, errno.ENODATA),
    (E.TransportError, errno.EIO), (E.DeadlineExceeded, errno.EIO), (E.ServerError, errno.EIO),
    (E.Redirected, errno.EIO), (E.RateLimited, errno.EIO), (E.MalformedResponse, errno.EIO),
    (E.SessionNotFound, errno.EIO), (E.ServerHoldsOtherFile, errno.EIO), (E.Fs360Error, errno.EIO),
]


@pytest.mark.parametrize("cls,number", EXPECTED_ERRNO, ids=[c.__name__ for c, _ in EXPECTED_ERRNO])
def test_errno_of_each_class(cls, number):
    assert cls.errno == number
    assert errno_of(cls()) == number


def test_every_class_states_its_own_reason():
    for cls in all_error_classes():
        assert "reason" in vars(cls) and cls.reason.strip(), cls.__name__


def test_errno_table_is_read_off_every_class():
    assert set(ERRNO_TABLE) == set(all_error_classes())
    assert ERRNO_TABLE[E.FileTooBig] == (errno.EFBIG, E.FileTooBig.reason)


def test_account_errors_share_a_base_and_are_not_retried_soon():
    for cls, status in ((E.Unauthorized, 401), (E.QuotaExceeded, 402), (E.Forbidden, 403)):
        assert issubclass(cls, E.AccountError) and issubclass(cls, E.ApiError)
        assert E.ACCOUNT_ERROR_BY_STATUS[status] is cls
        assert not cls.retryable
    exc = E.Forbidden(reason="verify your e-mail")
    assert exc.reason == "verify your e-mail" and str(exc) == "verify your e-mail"
    assert E.Forbidden.reason != "verify your e-mail"  # the instance's advice does not leak into the class


def test_every_account_code_maps_to_an_account_class_with_advice():
    for code, reason in E.ACCOUNT_REASONS.items():
        assert issubclass(E.API_ERROR_CLASSES[code], E.AccountError), code
        assert reason.strip()


def test_transient_answers_are_retryable_and_never_final():
    for cls in (E.TransportError, E.DeadlineExceeded, E.ResponseTooLarge, E.ServerError, E.Redirected,
                E.TlsError, E.RateLimited, E.MalformedResponse):
        assert cls.retryable, cls.__name__


def test_cancelled_is_a_signal_not_an_error():
    assert not issubclass(E.Cancelled, Fs360Error)
    assert issubclass(E.ServerHoldsOtherFile, E.ApiError)
    assert E.ServerHoldsOtherFile("x", status=409).code == "name_taken_on_server"


def test_api_error_classes_carry_their_code():
    for code, cls in E.API_ERROR_CLASSES.items():
        assert issubclass(cls, E.ApiError)
        assert cls(code=code).code == code


def test_errno_of_other_exceptions():
    assert errno_of(OSError(errno.EROFS, "ro")) == errno.EROFS
    assert errno_of(ValueError("bug")) == errno.EIO
