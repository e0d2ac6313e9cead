"""The exact name the server holds for each file, and how it is chosen.

The real server flattens every name (api.md Part C: a web framework's
secure_filename, then the extension lower-cased), so "scan 1.e57" and
"scan_1.e57" would be one file there and "Фото.jpg" would become "jpg". fs360
therefore sends only names that this flattening leaves unchanged, de-duplicated
case-insensitively within the session, and keeps the local name exactly as the
program wrote it. A name is chosen when a file becomes uploadable, may change
while nothing of the file was sent, and is frozen (and journaled) from then on.
"""

from __future__ import annotations

import itertools
import re

from anyascii import anyascii

MAX_NAME_BYTES = 255
NOT_SERVER_SAFE = re.compile(r"[^A-Za-z0-9._-]")
NOT_EXTENSION_SAFE = re.compile(r"[^a-z0-9]")
# What a name is called on the server when nothing of its stem survives flattening.
FALLBACK_STEM = "file"
# Room kept for a de-duplication suffix ("_12345") within the server's 255 bytes.
SUFFIX_ROOM = 8


def split_extension(name: str) -> tuple[str, str]:
    """(stem, extension) as the server sees them: trailing whitespace is not part of the
    extension ("scan.jpg " is a jpg), and a leading dot does not start one."""
    trimmed = name.rstrip()
    stem, dot, ext = trimmed.rpartition(".")
    if not dot or not stem.strip("."):
        return trimmed, ""
    return stem, ext


def _server_safe(text: str) -> str:
    """Transliterated to ASCII, whitespace runs as "_", every other unsafe character dropped."""
    return NOT_SERVER_SAFE.sub("", "_".join(anyascii(text).split()))


def server_name_for(name: str) -> str:
    """The name the server would store unchanged for a local file `name`: ASCII letters,
    digits and `._-`, no leading or trailing `._-`, the extension lower-cased."""
    stem, ext = split_extension(name)
    ext = NOT_EXTENSION_SAFE.sub("", anyascii(ext).lower())
    stem = _server_safe(stem).strip("._-") or FALLBACK_STEM
    limit = MAX_NAME_BYTES - SUFFIX_ROOM - (len(ext) + 1 if ext else 0)
    stem = stem[:limit].rstrip("._-") or FALLBACK_STEM
    return f"{stem}.{ext}" if ext else stem


def deduplicated(server_name: str, taken) -> str:
    """`server_name`, or with the first free `_2`, `_3`... before its extension; `taken`
    holds lower-cased names (the server compares names case-insensitively)."""
    if server_name.lower() not in taken:
        return server_name
    stem, dot, ext = server_name.rpartition(".")
    if not dot:
        stem, ext = server_name, ""
    for number in itertools.count(2):
        candidate = f"{stem}_{number}{dot}{ext}"
        if candidate.lower() not in taken:
            return candidate
    raise AssertionError("unreachable")
