"""The processes behind a commit point, as the journal keeps them: each writer by its thread
group and its start time, so a mount that comes back can tell whether the very process it
waited for still runs (a pid alone may have been reused)."""

from __future__ import annotations

import os

PROC_READ = 65536


def read_proc(path: str, limit: int | None = None) -> bytes:
    """A /proc file's bytes (its first `limit` bytes at most), read with plain system calls: a
    Python file object costs four more per file, and the commit point reads several per close."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        pieces = []
        left = PROC_READ if limit is None else limit
        while left > 0:
            piece = os.read(fd, min(left, PROC_READ))
            if not piece:
                break
            pieces.append(piece)
            if limit is not None:
                left -= len(piece)
        return b"".join(pieces)
    finally:
        os.close(fd)


def started_at(tgid: int) -> int | None:
    """When process `tgid` started (clock ticks after boot, /proc/PID/stat field 22); None
    when it is gone or cannot be read."""
    try:
        stat = read_proc(f"/proc/{tgid}/stat")
        return int(stat[stat.rindex(b")") + 2:].split()[22 - 3])
    except (OSError, IndexError, ValueError):
        return None


def writers_text(writers: dict[int, int] | None) -> str:
    """The journal's form of a file's awaited writers: 'tgid:start tgid:start'."""
    return " ".join(f"{tgid}:{start}" for tgid, start in sorted((writers or {}).items()))


def writers_from_text(text: str) -> dict[int, int]:
    writers = {}
    for item in (text or "").split():
        tgid, _, start = item.partition(":")
        if tgid.isdigit() and start.isdigit():
            writers[int(tgid)] = int(start)
    return writers


def all_still_running(writers: dict[int, int]) -> bool:
    """Whether every one of these processes is still the one that wrote (same start time)."""
    return bool(writers) and all(started_at(tgid) == start for tgid, start in writers.items())
