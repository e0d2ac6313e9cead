"""Every mount option in one schema: its type, its allowed values, its flag and help.

The command line, the config file (every table of it), `-o key=value`, `fs360 set` and
the privacy of `.create` all check their values here, so a bad value is refused the same
way wherever it comes from: one line that names where it came from and what is allowed
(`SettingError`). Paths are made absolute here (against the caller's working directory,
or the config file's folder for the file's values): the daemon runs in `/`.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .config import MIN_CHUNK_SIZE
from .errors import SettingError

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

# privacy_mode of a project by the name the mount options use (api.md Part C).
PRIVACY = {"private": 2, "link": 1, "public": 0}
LOG_LEVELS = ("debug", "info", "warning", "error")
TRUE_WORDS = ("", "1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")

# The fields of `.create` fs360 knows (api.md: the POST /projects body; Part C: other options
# pass through). Others are sent as written, and `status` names them: mostly a typo.
CREATE_FIELDS = ("title", "privacy_mode", "download_link", "coordinate_system", "epsg", "proj4", "coord_unit",
                 "anonymize")

_UNITS = {"b": 1, "k": KiB, "m": MiB, "g": GiB, "t": 1024 * GiB}


# --- value parsers shared with the engine (bwlimit) --------------------------------------------


def parse_rate(text: str) -> float | None:
    """Bytes per second of "10M", "500k", "2.5M", "1G", "800b"; a bare number is KiB/s
    (as rsync and rclone read it); "off" (or 0) is no limit (None)."""
    text = text.strip().lower()
    if text in ("off", "", "0"):
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([bkmg]?)(?:i?b)?(?:/s)?", text)
    if not match:
        raise ValueError(f"not a rate: {text!r} (e.g. 10M, 500k, off)")
    rate = float(match.group(1)) * _UNITS[match.group(2) or "k"]
    return rate or None


def parse_bwlimit(spec: str) -> list[tuple[int, float | None]]:
    """A limit, or a timetable "08:00,5M 18:00,off", as [(minute of the day, rate)]."""
    spec = (spec or "off").strip()
    if "," not in spec:
        return [(0, parse_rate(spec))]
    table: dict[int, float | None] = {}
    for entry in spec.split():
        clock, _, rate = entry.partition(",")
        match = re.fullmatch(r"(\d{1,2}):(\d{2})", clock)
        if not match or int(match.group(1)) > 23 or int(match.group(2)) > 59:
            raise ValueError(f"not a time of day: {clock!r} (e.g. 08:00,5M 18:00,off)")
        minute = int(match.group(1)) * 60 + int(match.group(2))
        if minute in table:
            raise ValueError(f"{clock} is in the timetable twice")
        table[minute] = parse_rate(rate)
    return sorted(table.items())


def parse_size(text: str) -> int:
    """Bytes of "8M", "512k", "1G", "1.5M", "4096" (a bare number is bytes)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([bkmgt]?)(?:i?b)?", text.strip().lower())
    if not match:
        raise ValueError("not a size")
    return int(float(match.group(1)) * _UNITS[match.group(2) or "b"])


def parse_address(text: str) -> tuple[str, int]:
    """`HOST:PORT` or `[IPv6]:PORT` -> (host, port)."""
    if "://" in text:  # (http://127.0.0.1:8360 read as the host "http://127.0.0.1")
        raise ValueError("HOST:PORT, not a URL")
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError("not HOST:PORT")
    return host, int(port)


def is_loopback_host(host: str) -> bool:
    host = (host or "").strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_loopback_address(text: str) -> tuple[str, int] | None:
    """(host, port) of the dashboard's `HOST:PORT`, None for "off"; ValueError otherwise. Only
    a loopback IP or `localhost`: a `*.localhost` name (loopback by `is_loopback_host`) is
    resolved only where the resolver knows RFC 6761, so the dashboard could not bind it."""
    text = text.strip()
    if text.lower() == "off":
        return None
    try:
        host, port = parse_address(text)
    except ValueError:
        raise ValueError(f"not HOST:PORT: {text!r} (e.g. 127.0.0.1:8360, or off)") from None
    if not is_loopback_host(host) or host.lower().endswith(".localhost"):
        raise ValueError(f"the dashboard listens on loopback only (127.0.0.1, ::1, localhost), not {host!r}")
    return ("localhost" if host.lower() == "localhost" else host), port


def without_credentials(url: str) -> str:
    """`url` as it may be shown: a user name and password in it left out."""
    return re.sub(r"//[^@/]*@", "//", url)


def check_api_url(url: str, insecure_http: bool = False) -> str:
    """Why `url` is not a usable API base URL ('' when it is). `http://` would carry the key in
    clear text: only for loopback, or with insecure_http (a test server on another machine)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return "not a URL"
    if parts.scheme not in ("http", "https") or not host:
        return "not an http(s) URL with a host"
    try:
        parts.port
    except ValueError:
        return "its port is not a number from 1 to 65535"
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        return "an API URL has no query (?...) or fragment (#...): give the API's base, as https://HOST/api/v1"
    if parts.username is not None or parts.password is not None:
        return "a user name or password has no place in the API URL (fs360 sends the API key): remove it"
    if parts.scheme == "http" and not insecure_http and not is_loopback_host(host):
        return "http:// would send the API key in clear text: use https://, or --insecure-http for a test server"
    return ""


# --- the schema -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Origin:
    """Where a value came from, to name it in an error; relative paths are taken from `base_dir`."""
    kind: str                 # "flag", "file", "-o", "set"
    base_dir: str = ""
    path: str = ""            # the config file
    table: str = ""           # its [mount."/x"] table, "" for the global keys

    def place(self, name: str) -> str:
        """Where key `name` was written: "FILE: [mount."/x"] name", "-o name", "set name"."""
        if self.kind == "file":
            section = f"[{WEBDAV_TABLE}] " if self.table == WEBDAV_TABLE else f'[mount."{self.table}"] '
            return f"{self.path}: " + (section if self.table else "") + name
        return (f"{self.path}: " if self.path else "") + f"{self.kind} {name}"

    def show(self, option: "Option", raw) -> str:
        """The value as it was written, where it was written."""
        if self.kind == "flag":
            return option.flag if isinstance(raw, bool) else f"{option.flag} {raw}"
        if self.kind == "file":
            return f"{self.place(option.name)} = {_toml(raw)}"
        return f"{self.place(option.name)}={raw}"


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


def _human_size(n: float) -> str:
    for unit, size in (("G", GiB), ("M", MiB), ("K", KiB)):
        if n >= size and n % size == 0:
            return f"{n // size:.0f}{unit}"
    return f"{n:.0f}"


@dataclass(frozen=True)
class Option:
    name: str                  # the config key; its flag is --name with "-"
    kind: str                  # bool, int, seconds, size, choice, path, file, url, bwlimit, address, list
    default: object = None
    help: str = ""
    low: float | None = None
    high: float | None = None
    choices: tuple = ()
    short: str = ""            # a short flag beside the long one ("-f")
    in_config: bool = True     # a key of the config file and of -o
    hidden: bool = False       # not in --help
    runtime: bool = False      # `fs360 set` may change it on a running mount
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def repeatable(self) -> bool:
        return self.kind == "list"

    def allowed(self) -> str:
        if self.kind == "bool":
            return "true or false"
        if self.kind == "int":
            return f"a whole number from {self.low:g} to {self.high:g}"
        if self.kind == "seconds":
            return f"a number of seconds from {self.low:g} to {self.high:g}"
        if self.kind == "size":
            low = "0 (unknown)" if self.low == 0 else _human_size(self.low)
            return f"a size from {low} to {_human_size(self.high)}, e.g. 8M"
        if self.kind == "choice":
            return ", ".join(self.choices)
        if self.kind == "file":
            return "the path of an existing file"
        if self.kind == "path":
            return "a path"
        if self.kind == "url":
            return "an https:// URL (http:// only for a loopback host, or with --insecure-http)"
        if self.kind == "bwlimit":
            return 'a rate (10M, 500k, off) or a timetable "08:00,5M 18:00,off"'
        if self.kind == "loopback_address":
            return "HOST:PORT on loopback (127.0.0.1, ::1, localhost), or off"
        if self.kind == "address":
            return "HOST:PORT, e.g. 127.0.0.1:8360 or [::1]:0 (port 0: a free one)"
        return "a string or a list of strings"

    def check(self, raw, origin: Origin, require_files: bool = True):
        """The value `raw` (a string from a flag, -o or set; any TOML value from the file) as
        fs360 uses it; SettingError, one line, when it is not allowed."""
        try:
            return self._parse(raw, origin, require_files)
        except (ValueError, TypeError) as exc:
            why = str(exc) if str(exc) else "not allowed"
            raise SettingError(f"{origin.show(self, raw)}: {why}; allowed: {self.allowed()}") from None

    def _parse(self, raw, origin: Origin, require_files: bool):
        kind = self.kind
        if kind == "list":
            items = raw if isinstance(raw, list) else [raw]
            if not all(isinstance(item, str) and item.strip() for item in items):
                raise ValueError("not a string")
            return [item.strip() for item in items]
        if kind == "bool":
            if isinstance(raw, bool):
                return raw
            if isinstance(raw, str) and raw.strip().lower() in TRUE_WORDS + FALSE_WORDS:
                return raw.strip().lower() in TRUE_WORDS
            raise ValueError("not true or false")
        if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
            raise ValueError("of the wrong type")
        if kind == "int":
            return int(self._in_range(_whole(raw)))
        if kind == "seconds":
            return float(self._in_range(_number(raw)))
        if kind == "size":
            value = parse_size(raw) if isinstance(raw, str) else _whole(raw)
            return int(self._in_range(value))
        text = str(raw).strip()
        if kind == "choice":
            if text not in self.choices:
                raise ValueError(f"unknown value{_did_you_mean(text, self.choices)}")
            return text
        if kind == "bwlimit":
            if not text:  # (`fs360 set M bwlimit=` turned the limit off without a word)
                raise ValueError("empty: give a rate (10M, 500k) or off")
            parse_bwlimit(text)
            return text
        if kind == "loopback_address":
            parse_loopback_address(text)
            return text
        if kind == "address":
            parse_address(text)
            return text
        if kind == "url":
            if not isinstance(raw, str) or urlsplit(text).scheme not in ("http", "https") or not urlsplit(text).netloc:
                raise ValueError("not an http(s) URL with a host")
            return text
        if kind in ("path", "file"):
            if not isinstance(raw, str) or not text:
                raise ValueError("not a path")
            path = Path(os.path.normpath(os.path.join(origin.base_dir or os.getcwd(), os.path.expanduser(text))))
            if kind == "file" and require_files and not path.is_file():
                raise ValueError(f"{path} is not a file")
            return path
        raise TypeError(f"unknown kind {kind}")

    def _in_range(self, value: float) -> float:
        if self.low is not None and value < self.low:
            raise ValueError("too small")
        if self.high is not None and value > self.high:
            raise ValueError("too large")
        return value


def _number(raw) -> float:
    try:
        value = float(raw.strip()) if isinstance(raw, str) else float(raw)
    except ValueError:
        raise ValueError("not a number") from None
    if not math.isfinite(value):
        raise ValueError("not a finite number")
    return value


def _whole(raw) -> int:
    value = _number(raw)
    if not value.is_integer():
        raise ValueError("not a whole number")
    return int(value)


def _did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


MOUNT_OPTIONS: tuple[Option, ...] = (
    Option("api_url", "url", help="base URL of the API (default: the real service)"),
    Option("api_key_file", "file", help="file holding the API key, mode 600 "
           "(else $CREDENTIALS_DIRECTORY/fs360-api-key, $FS360_API_KEY or $API_KEY)"),
    Option("local", "bool", False, "start an emulator and mount against it (no key needed)"),
    Option("cache_dir", "path", help="spool and journal (default ~/.cache/fs360)"),
    Option("foreground", "bool", False, "stay in the foreground, log to stderr, speak sd_notify", short="-f",
           in_config=False),
    Option("workers", "int", 4, "parallel uploads (default 4)", low=1, high=64),
    Option("chunk_size", "size", 8 * MiB, "bytes of a file's first PUT, e.g. 8M (default)", low=MIN_CHUNK_SIZE, high=GiB),
    Option("max_chunk_size", "size", 64 * MiB, "largest PUT: a file's chunks grow to it while its PUTs are fast "
           "(default 64M)", low=MIN_CHUNK_SIZE, high=GiB),
    Option("writeback_delay", "seconds", 1.5, "seconds a closed file waits (default 1.5)", low=0, high=3600),
    Option("local_only", "list", (), "extra names never uploaded (fnmatch pattern, repeatable)",
           metavar="PATTERN"),
    Option("options", "list", (), "allow_other, or any option as key=value (as in fstab)", short="-o",
           metavar="OPTIONS"),
    Option("log_level", "choice", "info", "debug, info (default), warning or error", choices=LOG_LEVELS),
    Option("ca_bundle", "file", help="CA certificates to verify the server with"),
    Option("insecure_http", "bool", False, "allow an http:// API URL on a host other than loopback "
           "(a test server: the key travels in clear text)"),
    Option("allow_non_empty", "bool", False, "mount over a folder that holds files (hidden while mounted)"),
    Option("no_rate_limits", "bool", False, "no client pacing (emulator without limits)"),
    Option("rate_window_scale", "seconds", 1.0, low=0.0001, high=1000, in_config=False, hidden=True),
    Option("poll_interval", "seconds", 5.0, "seconds between project polls (default 5)", low=0.01, high=3600),
    Option("max_file_size", "size", 0, "known per-file cap of the server", low=0, high=1024 ** 5),
    Option("privacy", "choice", "private", "of projects whose .create does not say (default private)",
           choices=tuple(PRIVACY)),
    Option("bwlimit", "bwlimit", "off", 'all uploads together: 10M, 500k, off, or a timetable '
           '"08:00,5M 18:00,off"', runtime=True),
    Option("no_notify", "bool", False, "no desktop notice (notify-send)"),
    Option("web_address", "loopback_address", "127.0.0.1:0", "the dashboard's address, on loopback only (default "
           "127.0.0.1:0, any free port), or off", metavar="HOST:PORT"),
    Option("zip64_archives", "bool", False, "always write folder-tree archives in ZIP64 form (else only when needed)"),
    Option("emulator_arg", "list", (), in_config=False, hidden=True),
    # `--timing NAME=SECONDS`: tests scale retry timings of a mount down (production keeps the defaults).
    Option("timing", "list", (), in_config=False, hidden=True),
)
OPTIONS = {option.name: option for option in MOUNT_OPTIONS}
CONFIG_KEYS = tuple(sorted(name for name, option in OPTIONS.items() if option.in_config))

# --- `fs360 serve webdav`: its own options (flags, and keys of the config file's [webdav] table,
# where the mount options are keys too) ---
WEBDAV_OPTIONS: tuple[Option, ...] = (
    Option("addr", "address", "127.0.0.1:8360", "HOST:PORT to listen on (default 127.0.0.1:8360; port 0 "
           "picks a free one); any other than loopback needs --password-file and TLS"),
    Option("password_file", "file", help="user:password lines, mode 600: HTTP Basic auth"),
    Option("tls_cert", "file", help="TLS certificate (PEM)"),
    Option("tls_key", "file", help="TLS private key (PEM)"),
    Option("empty_put_grace", "seconds", 60.0, "seconds an empty PUT waits for the content a second PUT "
           "brings (default 60)", low=0, high=86400),
)
WEBDAV_TABLE = "webdav"
WEBDAV_KEYS = tuple(sorted(CONFIG_KEYS + tuple(o.name for o in WEBDAV_OPTIONS)))
OPTIONS.update({option.name: option for option in WEBDAV_OPTIONS})


def option_named(name: str, origin: Origin, keys=CONFIG_KEYS) -> Option:
    """The option a config key, -o or set names; SettingError naming the known ones."""
    key = name.strip().replace("-", "_")
    if key not in keys:
        known = sorted(keys) + (["allow_other"] if origin.kind == "-o" else [])
        raise SettingError(f"{origin.place(name)}: unknown {'key' if origin.kind == 'file' else 'option'}"
                           f"{_did_you_mean(key, keys)}; known: {', '.join(known)}")
    return OPTIONS[key]


def runtime_value(name: str, raw: str) -> tuple[str, object]:
    """A `fs360 set KEY=VALUE` checked: (key, value), or SettingError."""
    origin = Origin("set")
    runtime = tuple(sorted(n for n, o in OPTIONS.items() if o.runtime))
    option = option_named(name, origin, CONFIG_KEYS)
    if not option.runtime:
        raise SettingError(f"set {name}: cannot change while mounted (mount again with it); "
                           f"changes while mounted: {', '.join(runtime)}")
    return option.name, option.check(raw, origin)


def unknown_create_fields(options: dict) -> list[str]:
    """The fields of a `.create` fs360 does not know, each with the known one it may be a typo of."""
    return [name + _did_you_mean(name, CREATE_FIELDS) for name in sorted(options) if name not in CREATE_FIELDS]


# The settings `--timing NAME=SECONDS` may change (a hidden option of the tests).
TIMINGS = ("backoff_base", "backoff_cap", "abandoned_upload_quiet", "request_deadline", "connect_timeout",
           "read_timeout", "credential_check_deadline")


def timings(entries) -> dict[str, float]:
    """{setting: seconds} of `--timing NAME=SECONDS` entries (the last one of a name wins)."""
    out = {}
    for entry in entries:
        name, _, value = str(entry).partition("=")
        if name not in TIMINGS:
            raise SettingError(f"--timing {entry}: {name!r} is not one of {', '.join(TIMINGS)}")
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        if not math.isfinite(seconds) or seconds < 0:
            raise SettingError(f"--timing {entry}: {value!r} is not a number of seconds")
        out[name] = seconds
    return out
