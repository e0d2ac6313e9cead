"""Which names the mount takes, which stay local, and which the server would refuse."""

from __future__ import annotations

import fnmatch

from ..errors import InvalidName, NameTooLong

CREATE_MARKER = ".create"
STATUS_NAMES = ("status", "status.json")
ROOT_STATUS = "status"
MAX_NAME_BYTES = 255


def check_file_name(name: str) -> None:
    """Raises unless the server would store `name` exactly as given."""
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        # mfusepy hands non-UTF-8 bytes over as surrogates; the server takes UTF-8 only.
        raise InvalidName(f"name is not valid UTF-8: {name.encode('utf-8', 'surrogateescape')!r}") from None
    if len(encoded) > MAX_NAME_BYTES:
        raise NameTooLong(f"name longer than {MAX_NAME_BYTES} bytes")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise InvalidName("name has control characters, which the server strips")
    if "\\" in name:
        raise InvalidName("name has a backslash, which the server strips")
    if name in ("", ".", ".."):
        raise InvalidName("name is empty after flattening")


def check_session_name(name: str) -> None:
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidName("folder name is not valid UTF-8") from None
    if len(encoded) > MAX_NAME_BYTES:
        raise NameTooLong(f"name longer than {MAX_NAME_BYTES} bytes")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise InvalidName("folder name has control characters")


def is_local_only(name: str, patterns: tuple[str, ...]) -> bool:
    """Scratch names (dot-files, *.part, ...) are never uploaded."""
    if name == CREATE_MARKER:
        return False
    if name.startswith("."):
        return True
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def extension_of(name: str) -> str:
    """The last suffix, lower-case, without the dot ('' when none): what the server checks."""
    base = name.rsplit("/", 1)[-1]
    if "." not in base.lstrip("."):
        return ""
    return base.rsplit(".", 1)[-1].lower()
