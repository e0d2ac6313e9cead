"""All of fs360's settings, in one frozen dataclass."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

MiB = 1024 * 1024

# Scratch files of everyday programs, which the server would refuse anyway: partial downloads
# (*.part, *.crdownload), editors' swap and lock files (*.swp, ~$name of Office), a database's
# journal beside it (SQLite's *-journal, *-wal, *-shm), system thumbnails, and `sed -i`'s copy
# (sedXXXXXX, no extension: once a 415 taught the allowed list, its create was refused).

def _random_name(prefix: str, length: int, characters: str = "A-Za-z0-9") -> str:
    """The pattern of a temporary name `prefix` + `length` random characters, no extension (mkstemp's)."""
    return prefix + f"[{characters}]" * length


# Programs that edit a file in place write their copy under such a name beside it, then rename it
# over the file: the copy must not be refused for its lack of an extension (once a 415 taught the
# mount the allowed ones), and a user's own name ("sedan.jpg") must not look like one. Scratch at a
# session's top level only: a tree's files take any name, and its `Makefile` goes up in the archive.
TEMPORARY_NAMES = (
    _random_name("sed", 6),  # sed -i
    _random_name("zi", 6),  # zip, writing a new archive
    _random_name("", 8),  # perl -i
    _random_name("tmp", 8, "a-z0-9_"),  # Python's tempfile in the file's folder (atomic writes)
    _random_name("tmp.", 10),  # mktemp -p DIR
)
DEFAULT_LOCAL_ONLY_PATTERNS = ("*.part", "*.crdownload", "*.tmp", "*~", "*.swp", "~$*", "*-journal", "*-wal",
                               "*-shm", "Thumbs.db", "desktop.ini")

# The documented limits: endpoint -> (requests, window seconds).
DOCUMENTED_RATE_LIMITS: dict[str, tuple[int, float]] = {
    "open_session": (30, 3600.0),
    "put_file": (1200, 60.0),
    "get_file": (600, 60.0),
    "get_session": (120, 60.0),
    "delete_session": (60, 60.0),
    "create_project": (10, 3600.0),
    "get_project": (60, 60.0),
}

DEFAULT_API_URL = "https://360-for-you.com/api/v1"
# The smallest PUT body: the floor of --chunk-size, and of the chunks a proxy's 413 shrinks to. A
# 413 to a body this small is not about its size: the proxy refuses every body, an outage.
MIN_CHUNK_SIZE = 64 * 1024


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fs360"


@dataclass(frozen=True)
class Settings:
    api_url: str = DEFAULT_API_URL
    # Never printed: repr=False keeps it out of every repr and log line.
    api_key: str = field(default="", repr=False)
    ca_bundle: str | None = None
    # http:// to a host other than loopback (the key in clear text): only when asked for (a test server).
    insecure_http: bool = False
    cache_dir: Path = field(default_factory=default_cache_dir)

    workers: int = 4
    chunk_size: int = 8 * MiB
    # A file's chunks grow from chunk_size up to this while its PUTs are fast (engine/chunk_sizes.py).
    max_chunk_size: int = 64 * MiB
    writeback_delay: float = 1.5
    local_only_patterns: tuple[str, ...] = DEFAULT_LOCAL_ONLY_PATTERNS

    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    backoff_base: float = 0.5
    backoff_cap: float = 60.0
    # After fs360 gave up on a PUT (timeout, deadline) the server may still hold that file's
    # upload until its own idle timeout: the file's next PUT waits at least this long.
    abandoned_upload_quiet: float = 60.0
    # --- request deadlines by kind (a server that trickles must not hold a worker) ---
    # Every request ends within this many seconds, whatever the per-read timeouts say: a small
    # JSON request within it...
    request_deadline: float = 30.0
    # ...a PUT within it plus the time its body takes at this floor rate (bytes per second).
    min_upload_rate: float = 64 * 1024
    # The key check at mount: all its tries end within this many seconds, so a server that never
    # answers is reported well inside systemd's 90 s start limit (and a user's patience).
    credential_check_deadline: float = 25.0

    rate_limits_enabled: bool = True
    # Scales every rate-limit window; tests use < 1 against an emulator scaled alike.
    rate_window_scale: float = 1.0
    rate_limits: dict = field(default_factory=lambda: dict(DOCUMENTED_RATE_LIMITS))

    project_poll_interval: float = 5.0
    # Tree archives always in ZIP64 form (a server whose unpacker wants it; tests of the
    # form without 4 GiB of data). Otherwise ZIP64 only where the archive needs it.
    archive_zip64: bool = False
    # privacy_mode of a project whose .create names none: 2 private (the vendor's client's
    # default), 1 anyone with the link, 0 public. The server's own default may be public.
    default_privacy: int = 2
    # Fraction of the spool disk left free: complete files beyond it are evicted.
    cache_min_free_fraction: float = 0.10
    # Caps known before the server says so (0 = unknown); a 413 teaches the real one.
    max_file_size: int = 0
    max_session_size: int = 0
    allowed_extensions: tuple[str, ...] = ()

    # FUSE
    attr_timeout: float = 1.0
    allow_other: bool = False

    # --- the command line and the daemon's process life (cli.py, daemon.py) ---
    log_level: str = "info"
    # rsync/rclone-like limit for all uploads together: "10M", "500k", "off" or a
    # timetable "08:00,5M 18:00,off" (see engine/gate.py).
    bwlimit: str = "off"
    # Desktop notices (notify-send) when a project is ready or a file fails for good.
    desktop_notify: bool = True
    # The dashboard (fs360/web): HOST:PORT on loopback only (port 0: any free one), or "off".
    web_address: str = "127.0.0.1:0"
    # `mount --local`: the daemon starts an emulator with these arguments.
    local_emulator: bool = False
    emulator_args: tuple[str, ...] = ()

    # --- `fs360 serve webdav` (webdav/) ---
    # `user:password` lines, mode 0600: HTTP Basic auth (required off loopback, with TLS).
    webdav_password_file: str | None = None
    webdav_tls_cert: str | None = None
    webdav_tls_key: str | None = None
    # An empty PUT is held back this long (longer while the client locks the file) for the
    # content a second PUT brings: WebDAV clients create a file empty, then write it.
    webdav_empty_put_grace: float = 60.0

    @property
    def journal_path(self) -> Path:
        return self.cache_dir / "journal.sqlite"

    @property
    def spool_dir(self) -> Path:
        return self.cache_dir / "spool"

    @property
    def log_path(self) -> Path:
        return self.cache_dir / "fs360.log"

    def with_(self, **changes) -> "Settings":
        return replace(self, **changes)

    # The daemon gets its settings as one JSON document (key included) over a pipe:
    # every field reaches it, and nothing has to be rebuilt into an argv.
    def to_json(self) -> str:
        values = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Path):
                value = str(value)
            values[f.name] = value
        return json.dumps(values)

    @classmethod
    def from_json(cls, text: str) -> "Settings":
        values = json.loads(text)
        known = {f.name: f for f in fields(cls)}
        unknown = set(values) - set(known)
        if unknown:
            raise ValueError(f"unknown settings: {', '.join(sorted(unknown))}")
        defaults = cls()
        for name, value in values.items():
            default = getattr(defaults, name)
            if isinstance(default, Path) and value is not None:
                values[name] = Path(value)
            elif isinstance(default, tuple) and value is not None:
                values[name] = tuple(value)
            elif name == "rate_limits":
                values[name] = {k: tuple(v) for k, v in value.items()}
        return cls(**values)
