"""`fs360 doctor`: is this machine and this configuration ready to mount? One line per check,
with the fix for each failure."""

from __future__ import annotations

import email.utils
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from .api.client import ApiClient
from .config import Settings
from .errors import Fs360Error
from .fs.status import human_bytes

MIN_FREE_BYTES = 1024 ** 3
MAX_CLOCK_SKEW = 60.0


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def run_checks(settings: Settings | None, key_error: str | None) -> list[Check]:
    """`settings` is None when the options themselves are wrong (`key_error` says why)."""
    checks = [_dev_fuse(), _fusermount()]
    if settings is None:
        return checks + [Check("key", False, key_error or "no settings", "see the message above")]
    if settings.allow_other:
        checks.append(_user_allow_other())
    checks.append(_cache_dir(settings.cache_dir))
    if settings.local_emulator:
        return checks
    checks.append(_key(settings))
    checks.append(_clock(settings))
    return checks


def _dev_fuse() -> Check:
    if not os.path.exists("/dev/fuse"):
        return Check("/dev/fuse", False, "missing", "load the module: modprobe fuse (in a container: --device /dev/fuse)")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return Check("/dev/fuse", False, "not readable and writable by you", "chmod 666 /dev/fuse (as root)")
    return Check("/dev/fuse", True, "present")


def _fusermount() -> Check:
    path = shutil.which("fusermount3")
    if path is None:
        return Check("fusermount3", False, "not on PATH", "install the fuse3 package (apt-get install fuse3)")
    return Check("fusermount3", True, path)


def _user_allow_other() -> Check:
    try:
        lines = Path("/etc/fuse.conf").read_text().splitlines()
    except OSError:
        lines = []
    if os.getuid() == 0 or any(line.strip() == "user_allow_other" for line in lines):
        return Check("allow_other", True, "permitted")
    return Check("allow_other", False, "-o allow_other is asked but /etc/fuse.conf lacks user_allow_other",
                 "add the line user_allow_other to /etc/fuse.conf (as root)")


def _cache_dir(cache_dir: Path) -> Check:
    try:
        cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cache_dir, prefix=".doctor-"):
            pass
    except OSError as exc:
        return Check("cache dir", False, f"{cache_dir} is not writable: {exc.strerror}",
                     "give --cache-dir a directory of yours (or fix its owner and mode)")
    mode = cache_dir.stat().st_mode & 0o777
    free = shutil.disk_usage(cache_dir).free
    if free < MIN_FREE_BYTES:
        return Check("cache dir", False, f"{cache_dir}: only {human_bytes(free)} free",
                     "free space there, or point --cache-dir at a larger disk")
    detail = f"{cache_dir}: {human_bytes(free)} free"
    if mode & 0o077:
        detail += f" (mode {mode:o}; the mount makes it 700)"
    return Check("cache dir", True, detail)


def _key(settings: Settings) -> Check:
    client = ApiClient(settings)
    try:
        client.check_credentials()
    except Fs360Error as exc:
        return Check("key", False, str(exc), "check --api-url and the key (api_key_file, $FS360_API_KEY)")
    finally:
        client.close()
    return Check("key", True, f"accepted by {settings.api_url}")


def _clock(settings: Settings) -> Check:
    try:
        response = requests.head(settings.api_url, timeout=(settings.connect_timeout, settings.read_timeout),
                                 verify=settings.ca_bundle or True)
    except requests.RequestException as exc:
        return Check("clock", False, f"cannot reach the server ({type(exc).__name__})", "check --api-url and the network")
    if "Date" not in response.headers:
        return Check("clock", True, "not checked: the server sends no Date header")
    try:
        server = email.utils.parsedate_to_datetime(response.headers["Date"]).timestamp()
    except (TypeError, ValueError):
        return Check("clock", True, f"not checked: unreadable Date header {response.headers['Date'][:40]!r}")
    skew = time.time() - server
    if abs(skew) > MAX_CLOCK_SKEW:
        return Check("clock", False, f"local clock is {skew:+.0f} s off the server's",
                     "synchronise the clock (timedatectl set-ntp true)")
    return Check("clock", True, f"within {abs(skew):.0f} s of the server")


def report(checks: list[Check]) -> tuple[str, bool]:
    lines = []
    for check in checks:
        line = f"{'ok  ' if check.ok else 'FAIL'} {check.name}: {check.detail}"
        if not check.ok and check.fix:
            line += f" -> fix: {check.fix}"
        lines.append(line)
    return "\n".join(lines) + "\n", all(c.ok for c in checks)
