"""Which names the mount takes, which stay local, and which the server would refuse."""

from __future__ import annotations

import fnmatch
import functools
import re

from ..engine.server_names import MAX_NAME_BYTES, server_name_for, split_extension
from ..errors import InvalidName, NameTooLong, NotPermitted

CREATE_MARKER = ".create"
STATUS_NAMES = ("status", "status.json")
ROOT_STATUS = "status"


def check_file_name(name: str) -> None:
    """Raises unless `name` can be a file of the mount (UTF-8, at most 255 bytes, no C0 controls)."""
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        # mfusepy hands non-UTF-8 bytes over as surrogates; the server takes UTF-8 only.
        raise InvalidName(f"name is not valid UTF-8: {name.encode('utf-8', 'surrogateescape')!r}") from None
    if len(encoded) > MAX_NAME_BYTES:
        raise NameTooLong(f"name longer than {MAX_NAME_BYTES} bytes")
    # Any other character is fine: the file goes to the server under a safe name of its own.
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise InvalidName(control_characters_reason(name))
    if name in ("", ".", ".."):
        raise InvalidName("not a file name")


CONTROL_WORDS = {"\t": "a tab", "\n": "a line break", "\r": "a carriage return"}


def control_characters_reason(name: str) -> str:
    """Why a name with control characters is refused, saying which ones and what to do."""
    found = dict.fromkeys(CONTROL_WORDS.get(c, f"U+{ord(c):04X}") for c in name if ord(c) < 32 or ord(c) == 127)
    return (f"name has control characters ({', '.join(found)}), which no name on this mount may hold: "
            f"rename the source without them and copy it again")


def is_trash_folder(name: str) -> bool:
    """The names a desktop's trash (GIO, Nautilus, KDE: the freedesktop.org spec) makes at a
    mount's root, `.Trash` and `.Trash-$uid`."""
    return name == ".Trash" or name.startswith(".Trash-")


def check_session_name(name: str) -> None:
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidName("folder name is not valid UTF-8") from None
    if len(encoded) > MAX_NAME_BYTES:
        raise NameTooLong(f"name longer than {MAX_NAME_BYTES} bytes")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise InvalidName("folder " + control_characters_reason(name))
    if is_trash_folder(name):
        # It would be an upload session, and a file the server holds cannot move into another:
        # refused, a file manager offers to delete for good instead (GIO: no trash here).
        raise NotPermitted(f"{name}: no trash folder on this mount (it would be an upload folder of its own); "
                           f"delete files for good instead")


def is_local_only(name: str, patterns: tuple[str, ...]) -> bool:
    """Scratch names (dot-files, *.part, ...) are never uploaded."""
    if name == CREATE_MARKER:
        return False
    if name.startswith("."):
        return True
    matcher = _matcher_of(patterns)
    return matcher is not None and matcher(name) is not None


@functools.lru_cache(maxsize=8)
def _matcher_of(patterns: tuple[str, ...]):
    """The patterns as one compiled expression (fnmatchcase's, joined): asked several times per
    file, eleven fnmatchcase calls cost ten times one match."""
    return re.compile("|".join(fnmatch.translate(p) for p in patterns)).match if patterns else None


def extension_of(name: str) -> str:
    """The extension the server will check for a local file `name` ('' when none)."""
    return split_extension(server_name_for(name))[1]
