"""Finding a running mount and talking to it.

- The registry: the daemon writes `RUNTIME/mounts/<hash of the mountpoint>.json`
  ({"mountpoint", "cache_dir"}) once mounted and removes it at exit, so
  `unmount`, `pause`, `set`, `status` go from a mountpoint to its cache dir; the
  daemon's pid is then the one in `CACHE/lock` (held with flock while it runs).
- The control channel: a Unix socket `CACHE/control.sock` (mode 0600, in the
  0700 cache dir), one JSON request line, one JSON answer line. It never
  carries the key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
from pathlib import Path

log = logging.getLogger(__name__)

SOCKET_NAME = "control.sock"
LOCK_NAME = "lock"
# sun_path holds 108 bytes; longer paths are reached through /proc/self/fd/N/NAME.
MAX_SOCKET_PATH = 100


# The runtime dir of a process started without XDG_RUNTIME_DIR (mount(8) at boot, cron, su).
FALLBACK_RUNTIME_DIR = "/tmp/fs360-{uid}"


def _runtime_dir_of(base: str | None) -> Path:
    """fs360's runtime dir under XDG_RUNTIME_DIR `base`, or the fallback without one."""
    return Path(base) / "fs360" if base else Path(FALLBACK_RUNTIME_DIR.format(uid=os.getuid()))


def runtime_dir() -> Path:
    path = _runtime_dir_of(os.environ.get("XDG_RUNTIME_DIR"))
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_uid != os.getuid():
        raise OSError(f"{path} belongs to another user")
    return path


def _entry_name(mountpoint: str) -> str:
    return hashlib.sha256(os.fsencode(mountpoint)).hexdigest()[:32] + ".json"


def _entry_path(mountpoint: str) -> Path:
    return runtime_dir() / "mounts" / _entry_name(mountpoint)


def _entry_paths(mountpoint: str) -> list[Path]:
    """Where a daemon of this user may have registered `mountpoint`: its runtime dir depends on
    the environment it was started in (mount(8) at boot has no XDG_RUNTIME_DIR, a login shell
    has), so the registration is looked for in each."""
    bases = (os.environ.get("XDG_RUNTIME_DIR"), f"/run/user/{os.getuid()}", None)  # (None: the fallback)
    found = []
    for folder in dict.fromkeys(map(_runtime_dir_of, bases)):
        entry = folder / "mounts" / _entry_name(mountpoint)
        try:
            if folder.stat().st_uid == os.getuid():  # (another user's dir is never read)
                found.append(entry)
        except OSError:
            continue
    return found


def register(mountpoint: str, cache_dir: Path) -> Path:
    entry = _entry_path(mountpoint)
    entry.parent.mkdir(mode=0o700, exist_ok=True)
    tmp = entry.with_suffix(".tmp")
    tmp.write_text(json.dumps({"mountpoint": mountpoint, "cache_dir": str(cache_dir)}))
    os.replace(tmp, entry)
    return entry


def cache_dir_of(mountpoint: str) -> Path | None:
    """The cache dir `mountpoint`'s daemon registered (one whose control socket is there first:
    a registration in another runtime dir may be a killed daemon's)."""
    found = []
    for entry in _entry_paths(mountpoint):
        try:
            found.append(Path(json.loads(entry.read_text())["cache_dir"]))
        except (OSError, ValueError, KeyError):
            continue
    return next((cache for cache in found if (cache / SOCKET_NAME).exists()), found[0] if found else None)


def daemon_pid(mountpoint: str) -> int | None:
    """The pid the daemon wrote to its lock file, if it still runs."""
    cache_dir = cache_dir_of(mountpoint)
    if cache_dir is None:
        return None
    try:
        pid = int((cache_dir / LOCK_NAME).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_running(pid) else None


def pid_running(pid: int) -> bool:
    """Alive and not a zombie (a zombie has finished: waiting on it would only lose time)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # The state follows the command name, which is in parentheses and may hold spaces.
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _with_socket_path(directory: Path, action):
    path = str(directory / SOCKET_NAME)
    if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
        return action(path)
    dir_fd = os.open(directory, os.O_PATH | os.O_DIRECTORY)
    try:
        return action(f"/proc/self/fd/{dir_fd}/{SOCKET_NAME}")
    finally:
        os.close(dir_fd)


def request(mountpoint: str, message: dict, timeout: float = 10.0) -> dict:
    """Sends one request to the daemon of `mountpoint`; raises OSError if none answers."""
    cache_dir = cache_dir_of(mountpoint)
    if cache_dir is None:
        raise OSError(f"no running fs360 daemon is registered for {mountpoint}")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        _with_socket_path(cache_dir, sock.connect)
        sock.sendall(json.dumps(message).encode() + b"\n")
        with sock.makefile("rb") as reader:
            line = reader.readline()
    if not line:
        raise OSError("the daemon closed the control channel without an answer")
    return json.loads(line)


class ControlServer:
    """Serves the control socket on a daemon thread; `handle(dict) -> dict` answers."""

    def __init__(self, cache_dir: Path, handle):
        self.cache_dir = cache_dir
        self.handle = handle
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            os.unlink(cache_dir / SOCKET_NAME)  # left by a killed daemon; the cache dir lock is ours
        except FileNotFoundError:
            pass
        old_umask = os.umask(0o177)  # born 0600: no window where another user could connect
        try:
            _with_socket_path(cache_dir, self.sock.bind)
        finally:
            os.umask(old_umask)
        self.sock.listen(8)
        threading.Thread(target=self._serve, name="fs360-control", daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            with conn:
                try:
                    conn.settimeout(10)
                    with conn.makefile("rb") as reader:
                        line = reader.readline(65536)
                    answer = self.handle(json.loads(line))
                except (OSError, ValueError) as exc:
                    answer = {"ok": False, "error": f"bad request: {exc}"}
                except Exception:  # a bug here must not end the control channel
                    log.exception("control request failed")
                    answer = {"ok": False, "error": "internal error (see the log)"}
                try:
                    conn.sendall(json.dumps(answer).encode() + b"\n")
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()
        try:
            os.unlink(self.cache_dir / SOCKET_NAME)
        except OSError:
            pass


# --- reading a mount -------------------------------------------------------------------


def _unescape(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def fs360_mounts(mine_only: bool = False) -> list[str]:
    """Every fs360 mountpoint, from /proc/mounts; `mine_only`: those mounted by this user (FUSE
    shows the mounting user as user_id=UID among the options)."""
    out = []
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) > 3 and fields[2] == "fuse.fs360":
            if mine_only and f"user_id={os.getuid()}" not in fields[3].split(","):
                continue
            out.append(_unescape(fields[1]))
    return out


def mount_status(mountpoint: str, timeout: float = 10.0) -> dict:
    """The whole mount's snapshot (doc/STATUS-JSON.md) from its daemon; OSError if none answers."""
    answer = request(mountpoint, {"cmd": "status"}, timeout=timeout)
    if not answer.get("ok") or not isinstance(answer.get("status"), dict):
        raise OSError(answer.get("error") or "the daemon gave no status (an older fs360? remount it)")
    return answer["status"]
