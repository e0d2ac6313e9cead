"""Names every part of the emulator shares: paths, scopes, id and range syntax."""

from __future__ import annotations

import re
from datetime import datetime, timezone

API_PREFIX = "/api/v1"
EMU_PREFIX = "/_emulator"
SCOPE_WRITE = "projects:write"
SCOPE_READ = "projects:read"

UPLOAD_ID_RE = re.compile(r"[A-Za-z0-9]{4,64}\Z")
CR_RE = re.compile(r"bytes[ ]+([0-9]{1,19})-([0-9]{1,19})/([0-9]{1,19}|\*)\Z")

GiB = 1 << 30


def error_body(code: str, **extra) -> dict:
    return {"error": code, **extra}


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
