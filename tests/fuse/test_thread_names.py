"""The threads a running mount has, against the lists the code's docstrings give (engine/__init__.py
and the lists it points to): every thread of the daemon is documented under the name the kernel
shows (`/proc/PID/task/*/comm`, fs360/thread_names.py), the threads a mount runs for its whole
life are all there, and no documented thread is one the code no longer starts."""

from __future__ import annotations

import re
from pathlib import Path

import fs360
import fs360.api
import fs360.daemon
import fs360.engine
import fs360.fs.exits
import fs360.webdav
from fs360.thread_names import kernel_name
from tests.harness import write_random

# Where each package documents its threads, in a "Threads" block: "  fs360-NAME  what it does".
DOCUMENTED_IN = (fs360.engine, fs360.api, fs360.fs.exits, fs360.daemon, fs360.webdav)
# Running for a mount's whole life once a file went up (the others are short-lived, or not
# started by a background mount: fs360-status is the foreground's, fs360-webdav serve webdav's).
ALWAYS = {"fs360-maintenance", "fs360-commits", "fs360-listeners", "fs360-deadlines", "fs360-exits",
          "fs360-control", "fs360-web"}


def documented_threads() -> set[str]:
    names = set()
    for module in DOCUMENTED_IN:
        block = re.search(r"^Threads\b.*?\n(.*?)(?:\n\s*\n|\Z)", module.__doc__, re.S | re.M)
        assert block, f"{module.__name__} lists no threads"
        names |= set(re.findall(r"^  (fs360-[\w-]+)", block.group(1), re.M))
    return names


def matches(documented: str, comm: str) -> bool:
    """Whether a thread the kernel shows as `comm` is the documented one (`-N`: a number)."""
    if documented.endswith("-N"):
        return re.fullmatch(re.escape(documented[:-1]) + r"\d+", comm) is not None
    return comm == kernel_name(documented)


def test_the_documented_threads_are_started_by_the_code():
    """No stale entry: each documented name is a thread name in fs360's code."""
    code = "\n".join(path.read_text() for path in Path(fs360.__file__).parent.rglob("*.py"))
    for name in documented_threads():
        literal = f'"{name}"' if not name.endswith("-N") else f'f"{name[:-1]}{{'
        assert literal in code, f"{name} is documented, but no thread of that name is started"


def test_every_thread_of_a_running_mount_is_documented(mount, emulator):
    (mount.mountpoint / "s").mkdir()
    write_random(mount.mountpoint / "s" / "a.jpg", 100_000)
    assert mount.wait_settled("s") == {"a.jpg": "complete"}
    pid = mount.pid
    process_name = Path(f"/proc/{pid}/comm").read_text().strip()
    comms = [task.joinpath("comm").read_text().strip() for task in Path(f"/proc/{pid}/task").iterdir()]
    named = [comm for comm in comms if comm != process_name]  # libfuse's and the main thread keep it
    documented = documented_threads()
    undocumented = [comm for comm in named if not any(matches(name, comm) for name in documented)]
    assert undocumented == [], f"threads no docstring lists: {undocumented} (all: {comms})"
    missing = {name for name in ALWAYS if not any(matches(name, comm) for comm in named)}
    assert missing == set(), f"threads a mount runs that are not running: {missing} (all: {comms})"
    assert sorted(c for c in named if matches("fs360-upload-N", c)) == [f"fs360-upload-{i}" for i in range(4)]
