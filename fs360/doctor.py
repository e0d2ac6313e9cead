"""`fs360 doctor`: is this machine and this configuration ready to mount? One line per check,
with the fix for each failure; every check runs, whatever an earlier one found."""

from __future__ import annotations

import email.utils
import errno
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import requests

from . import control
from .api.client import USER_AGENT, ApiClient
from .config import Settings
from .errors import Fs360Error
from .fs.status import human_bytes
from .fuse_host import Check, dev_fuse, fusermount, mountpoint_access, user_allow_other

MIN_FREE_BYTES = 1024 ** 3
MAX_CLOCK_SKEW = 60.0
# A mountpoint that does not answer a stat within this long is reported as hung.
STAT_TIMEOUT = 3.0


def run_checks(settings: Settings | None, settings_error: str | None, config: tuple[Path, str | None],
               cache_dir: Path, api_url: str | None, mountpoint: str | None = None) -> list[Check]:
    """Every check. `settings` is None when the options or the key are wrong (`settings_error`
    says why): the checks that need no settings still run, on `cache_dir` and `api_url` (None: no
    server named, so no clock check). `config`: the config file's path and its error, if any.
    `mountpoint`: the one mount to look at for a dead mount (None: all of yours)."""
    checks = [_config(*config), dev_fuse(), fusermount(), _dead_mounts(mountpoint)]
    if mountpoint:
        checks.append(mountpoint_access(mountpoint))
    if settings is None:
        checks.append(Check("settings", False, settings_error or "no settings",
                            "see the message (the options, the config file, the key's source)"))
        checks.append(_cache_dir(cache_dir))
        if api_url:
            checks.append(_clock(Settings(api_url=api_url)))
        return checks
    if settings.allow_other:
        checks.append(user_allow_other())
    checks.append(_cache_dir(settings.cache_dir))
    if settings.local_emulator:
        return checks + [Check("clock", None, "not checked: --local runs the emulator on this machine's own clock")]
    checks.append(_key(settings))
    checks.append(_clock(settings))
    return checks


def _config(path: Path, error: str | None) -> Check:
    if error:
        # (The error names the file already, and says what to do when it is not about one key.)
        return Check("config", False, error if str(path) in error else f"{path}: {error}",
                     "fix that key in the config file" if "=" in error else "fix the file where it says (it is TOML)")
    if not path.exists():
        return Check("config", True, f"no config file at {path} (optional: any mount option as a key)")
    return Check("config", True, f"read {path}")


def _dead_mounts(only: str | None) -> Check:
    """Your fs360 mounts (or `only` that one) whose daemon is gone ("Transport endpoint is not
    connected") or hangs."""
    dead = []
    for mountpoint in control.fs360_mounts(mine_only=True):
        if only is not None and mountpoint != only:
            continue
        outcome: list = []
        probe = threading.Thread(target=_stat_into, args=(mountpoint, outcome), daemon=True)
        probe.start()
        probe.join(STAT_TIMEOUT)
        if not outcome:
            dead.append(f"{mountpoint} (does not answer)")
        elif outcome[0] == errno.ENOTCONN:
            dead.append(f"{mountpoint} (its daemon is gone)")
    if not dead:
        return Check("dead mounts", True, "none")
    first = dead[0].split(" (")[0]
    return Check("dead mounts", False, ", ".join(dead),
                 f"fusermount3 -uz {first}, then mount it again (unfinished uploads resume)")


def _stat_into(path: str, outcome: list) -> None:
    try:
        os.stat(path)
        outcome.append(0)
    except OSError as exc:
        outcome.append(exc.errno)


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
    client = None
    try:
        client = ApiClient(settings)  # (refuses a key no request can carry)
        client.check_credentials()
    except Fs360Error as exc:
        return Check("key", False, str(exc), "check --api-url and the key (api_key_file, $FS360_API_KEY)")
    finally:
        if client is not None:
            client.close()
    return Check("key", True, f"accepted by {settings.api_url}")


def _clock(settings: Settings) -> Check:
    try:
        response = requests.head(settings.api_url, timeout=(settings.connect_timeout, settings.read_timeout),
                                 verify=settings.ca_bundle or True, headers={"User-Agent": USER_AGENT})
    except requests.RequestException as exc:
        return Check("clock", False, f"cannot reach the server ({type(exc).__name__})", "check --api-url and the network")
    if "Date" not in response.headers:
        return Check("clock", None, "not checked: the server sends no Date header")
    try:
        server = email.utils.parsedate_to_datetime(response.headers["Date"]).timestamp()
    except (TypeError, ValueError):
        return Check("clock", None, f"not checked: unreadable Date header {response.headers['Date'][:40]!r}")
    skew = time.time() - server
    if abs(skew) > MAX_CLOCK_SKEW:
        return Check("clock", False, f"local clock is {skew:+.0f} s off the server's",
                     "synchronise the clock (timedatectl set-ntp true)")
    return Check("clock", True, f"within {abs(skew):.0f} s of the server")


def report(checks: list[Check]) -> tuple[str, bool]:
    lines = []
    for check in checks:
        verdict = "warn" if check.ok is None else "ok  " if check.ok else "FAIL"
        line = f"{verdict} {check.name}: {check.detail}"
        if check.ok is False and check.fix:
            line += f" -> fix: {check.fix}"
        lines.append(line)
    return "\n".join(lines) + "\n", all(c.ok is not False for c in checks)
