"""The errno of every error class agrees with ERRNO_TABLE, the one documented table."""

import errno
import inspect

from fs360 import errors
from fs360.errors import ERRNO_TABLE, Fs360Error, errno_of


def all_error_classes():
    return [cls for _, cls in inspect.getmembers(errors, inspect.isclass)
            if issubclass(cls, Fs360Error) and cls.__module__ == errors.__name__]


def test_every_table_entry_matches_its_class():
    for cls, (number, reason) in ERRNO_TABLE.items():
        assert cls.errno == number, f"{cls.__name__}: class says {cls.errno}, table says {number}"
        assert reason.strip()


def test_every_class_agrees_with_its_nearest_table_entry():
    for cls in all_error_classes():
        documented = next(c for c in cls.__mro__ if c in ERRNO_TABLE)
        assert cls.errno == ERRNO_TABLE[documented][0], cls.__name__


def test_every_fs_error_is_in_the_table():
    missing = [cls.__name__ for cls in all_error_classes()
               if issubclass(cls, errors.FsError) and cls is not errors.FsError and cls not in ERRNO_TABLE]
    assert missing == []


def test_api_error_classes_carry_their_code():
    for code, cls in errors.API_ERROR_CLASSES.items():
        assert issubclass(cls, errors.ApiError)
        assert cls(code=code).code == code


def test_errno_of():
    assert errno_of(errors.NoSpace()) == errno.ENOSPC
    assert errno_of(errors.ExtensionNotAllowed()) == errno.EPERM
    assert errno_of(OSError(errno.EROFS, "ro")) == errno.EROFS
    assert errno_of(ValueError("bug")) == errno.EIO
