"""The processes behind a commit point, as the journal keeps them: each writer by its thread
group and its start time, so a mount that comes back can tell whether the very process it
waited for still runs (a pid alone may have been reused)."""

from __future__ import annotations


def started_at(tgid: int) -> int | None:
    """When process `tgid` started (clock ticks after boot, /proc/PID/stat field 22); None
    when it is gone or cannot be read."""
    try:
        with open(f"/proc/{tgid}/stat", "rb") as f:
            stat = f.read()
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
