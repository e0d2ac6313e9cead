"""This machine's FUSE: whether this user can mount (/dev/fuse, fusermount3, allow_other, the
mountpoint), and the dead mount a daemon that is gone (kill -9, a crash) leaves behind.

Stdlib only: `fs360 mount`, `fs360 doctor` and `fs360 recover` use it, and the daemon too, to
say why libfuse refused a mount (libfuse itself only returns a number).
"""

from __future__ import annotations

import errno
import os
import shlex
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from . import control

# Layers of dead mounts released at most (each `fs360 mount` after a kill adds none, but be sure).
MAX_DEAD_LAYERS = 4
# What a FUSE mount whose daemon is gone answers: ECONNABORTED to a call the end caught, ENOTCONN after.
DEAD_MOUNT_ERRNOS = (errno.ENOTCONN, errno.ECONNABORTED)


@dataclass
class Check:
    name: str
    ok: bool | None  # None: a warning (not checked, and why), which leaves the machine healthy
    detail: str
    fix: str = ""


def dev_fuse() -> Check:
    if not os.path.exists("/dev/fuse"):
        return Check("/dev/fuse", False, "missing", "load the module: modprobe fuse (in a container: --device /dev/fuse)")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        if _fusermount_can_open():
            return Check("/dev/fuse", True, "not yours to open, but fusermount3 (setuid root) opens it")
        return Check("/dev/fuse", False, "not readable and writable by you",
                     "chmod 666 /dev/fuse (as root; in a container: --device /dev/fuse)")
    return Check("/dev/fuse", True, "present")


def _fusermount_can_open() -> bool:
    """A user who cannot open /dev/fuse still mounts through a setuid-root fusermount3 (unless
    no_new_privs stops setuid, as in many containers)."""
    path = shutil.which("fusermount3")
    if path is None or os.getuid() == 0:
        return False
    try:
        with open("/proc/self/status") as f:
            if any(line.split() == ["NoNewPrivs:", "1"] for line in f):
                return False
    except OSError:
        pass
    info = os.stat(path)
    return bool(info.st_mode & stat.S_ISUID) and info.st_uid == 0


def fusermount() -> Check:
    path = shutil.which("fusermount3")
    if path is None:
        return Check("fusermount3", False, "not on PATH", "install the fuse3 package (apt-get install fuse3)")
    return Check("fusermount3", True, path)


def user_allow_other() -> Check:
    try:
        lines = Path("/etc/fuse.conf").read_text().splitlines()
    except OSError:
        lines = []
    if os.getuid() == 0 or any(line.strip() == "user_allow_other" for line in lines):
        return Check("allow_other", True, "permitted")
    return Check("allow_other", False, "-o allow_other is asked but /etc/fuse.conf lacks user_allow_other",
                 "add the line user_allow_other to /etc/fuse.conf (as root)")


def mountpoint_access(mountpoint: str) -> Check:
    """fusermount3 mounts only on a folder the user may write to."""
    if is_dead_mount(mountpoint):
        return Check("mountpoint", False, f"{mountpoint} is a dead mount (its daemon is gone)",
                     f"fs360 mount cleans it up, or: fs360 recover {shlex.quote(mountpoint)}")
    if not os.path.isdir(mountpoint):
        return Check("mountpoint", False, f"{mountpoint} is not a directory", f"mkdir -p {shlex.quote(mountpoint)}")
    if not os.access(mountpoint, os.W_OK):
        return Check("mountpoint", False, f"you cannot write to {mountpoint}", "mount on a folder of yours")
    return Check("mountpoint", True, mountpoint)


def fuse_checks(allow_other: bool, mountpoint: str | None = None) -> list[Check]:
    checks = [dev_fuse(), fusermount()]
    if allow_other:
        checks.append(user_allow_other())
    if mountpoint:
        checks.append(mountpoint_access(mountpoint))
    return checks


def refusal_reason(mountpoint: str, code, allow_other: bool) -> str:
    """One line for a mount libfuse refused (it returns only a number): the first failing check
    of this machine, with its fix."""
    failed = next((c for c in fuse_checks(allow_other, mountpoint) if not c.ok), None)
    if failed is not None:
        return f"cannot mount {mountpoint}: {failed.name}: {failed.detail}; fix: {failed.fix}"
    return (f"cannot mount {mountpoint}: libfuse refused (error {code}); its own message shows with "
            f"fs360 mount -f, and fs360 doctor checks this machine")


# --- the mountpoint before a mount -------------------------------------------------------------


def is_dead_mount(path: str) -> bool:
    """A FUSE mount whose daemon is gone answers every access with ENOTCONN. statfs, because the
    kernel always asks the daemon for it (a stat may be answered from its attribute cache)."""
    try:
        os.statvfs(path)
    except OSError as exc:
        return exc.errno in DEAD_MOUNT_ERRNOS
    return False


def release_dead_mount(mountpoint: str) -> str:
    """Unmounts the dead mount at `mountpoint`; '' once done, else why not (one line)."""
    commands = [["fusermount3", "-u", mountpoint], ["fusermount3", "-u", "-z", mountpoint]]
    if os.getuid() == 0:
        commands.append(["umount", "-l", mountpoint])
    said = "fusermount3 is not installed"
    for _ in range(MAX_DEAD_LAYERS):
        for command in commands:
            if shutil.which(command[0]) is None:
                continue
            result = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
            said = (result.stderr or result.stdout).strip().splitlines()[-1:] or [f"exit status {result.returncode}"]
            said = said[0]
            if result.returncode == 0:
                break
        if not is_dead_mount(mountpoint):
            return ""
    return (f"{mountpoint} is a dead mount (its daemon is gone) and could not be released ({said}); "
            f"run: fusermount3 -u -z {shlex.quote(mountpoint)}")


def prepare_mountpoint(mountpoint: str, allow_non_empty: bool) -> tuple[str, str]:
    """(why fs360 cannot mount at `mountpoint` or '', a note for the user or ''). A dead mount
    left by a daemon that is gone is released first."""
    note = ""
    if is_dead_mount(mountpoint):
        problem = release_dead_mount(mountpoint)
        if problem:
            return problem, ""
        note = f"released the dead mount at {mountpoint} (the daemon that mounted it was gone)"
    try:
        os.stat(mountpoint)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return f"{mountpoint} does not exist: make it first (mkdir -p {shlex.quote(mountpoint)})", ""
        return f"cannot use {mountpoint}: {exc.strerror}", ""
    if not os.path.isdir(mountpoint):
        return f"{mountpoint} is not a directory", note
    if os.path.ismount(mountpoint):
        return f"{mountpoint} is already a mount point (unmount it first: fs360 unmount or umount)", note
    if not allow_non_empty:
        try:
            entries = os.listdir(mountpoint)
        except OSError as exc:
            return f"cannot list {mountpoint}: {exc.strerror}", note
        if entries:
            return (f"{mountpoint} is not empty ({len(entries)} entries): the mount would hide them; "
                    f"use an empty folder, or --allow-non-empty"), note
    return "", note


def cache_dir_problem(cache_dir, mountpoint: str = "") -> str:
    """Why the cache dir cannot be used with a mount at `mountpoint` ('' when it can): inside the
    mount itself (the daemon would write its journal through its own mount and wait on itself
    for ever), or inside any fs360 mount (that mount would take the files for uploads)."""
    def inside(path: str, top: str) -> bool:
        return path == top or path.startswith(top.rstrip("/") + "/")
    try:
        cache = os.path.realpath(os.path.expanduser(str(cache_dir)))
    except OSError as exc:
        return f"cannot use the cache dir {cache_dir}: {exc.strerror or exc}"
    if mountpoint and inside(cache, os.path.realpath(mountpoint)):
        return (f"the cache dir {cache} is inside the mountpoint {mountpoint}: fs360 would keep its own files in "
                f"its own mount; give a cache dir elsewhere (--cache-dir, default ~/.cache/fs360)")
    for other in control.fs360_mounts():
        if inside(cache, other):
            return (f"the cache dir {cache} is inside the fs360 mount {other}, which would take its files for "
                    f"uploads; give a cache dir elsewhere (--cache-dir, default ~/.cache/fs360)")
    return ""
