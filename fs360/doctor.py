"""`fs360 doctor`: is this machine and this configuration ready to mount? One line per check,
with the fix for each failure."""

from __future__ import annotations

import email.utils
import shutil
import tempfile
import time
from pathlib import Path

import requests

from .api.client import USER_AGENT, ApiClient
from .config import Settings
from .errors import Fs360Error
from .fs.status import human_bytes
from .fuse_host import Check, fuse_checks

MIN_FREE_BYTES = 1024 ** 3
MAX_CLOCK_SKEW = 60.0


def run_checks(settings: Settings | None, failed: tuple[str, str] | None = None,
               mountpoint: str | None = None) -> list[Check]:
    """`settings` is None when the options themselves are wrong: `failed` is (check name, why)."""
    checks = fuse_checks(settings is not None and settings.allow_other, mountpoint)
    if settings is None:
        name, why = failed or ("settings", "no settings")
        return checks + [Check(name, False, why)]
    checks.append(_cache_dir(settings.cache_dir))
    if settings.local_emulator:
        return checks
    checks.append(_key(settings))
    checks.append(_clock(settings))
    return checks


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
                                 verify=settings.ca_bundle or True, headers={"User-Agent": USER_AGENT})
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
