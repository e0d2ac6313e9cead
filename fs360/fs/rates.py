"""Upload rates as the server receives them, from the engine's progress events.

The engine tells of each piece of a PUT body as it goes out (`bytes_sent`, with its
`nbytes`: 256 KiB pieces, engine/gate.py and api/transport.PacedBody, so a rate is
known within a chunk, not once per chunk); a piece's bytes went out between the
previous event and this one. So a rate is the bytes sent over a sliding window that
ends at the last event, never "the last chunk over the time since it ended" (that
showed 5 MiB/s at a 2 MiB/s limit). Bytes a failed PUT sent count: they crossed the
line (and go again with the retry), as the bandwidth limit counts them.

- A file's rate exists only while it uploads; a finished, queued or paused file has none.
- Until a window's worth of history exists, the first event's bytes are left out (they were
  sent over a time nobody measured) and the rate is over the time since that event.
- When no event has come for longer than a few usual intervals, the window ends now, so a
  stalled upload's rate falls instead of staying at its last value.

`RateBook` keeps one window per file, per session and for the whole mount, a history of the
mount's rate over the last hour (the dashboard's plot), counters for /metrics, and where each
uploading file's PUT has got to (the server's last `received` plus the pieces sent since), so
progress moves with the bytes, not in steps of a chunk.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque

# Seconds a rate is averaged over (at least: see RateWindow.rate).
WINDOW = 20.0
# A rate needs at least this many seconds between its first and last counted event.
MIN_SPAN = 1.0
# A window holds at least this many intervals between events when they are rarer than WINDOW
# allows (a very low --bwlimit: a 256 KiB piece per 16 s at 16k).
MIN_INTERVALS = 3
# Events kept at most this long (the longest window a slow upload may need).
KEEP = 600.0
# No event for this many usual intervals (and at least STALL_FLOOR seconds): the upload stalls.
STALL_INTERVALS = 3
STALL_FLOOR = 5.0
# The dashboard's plot: the mount's bytes per bucket, over the last hour.
HISTORY_BUCKET = 30.0
HISTORY_SPAN = 3600.0


class RateWindow:
    """Bytes sent over time, as (monotonic time, bytes) events."""
    __slots__ = ("_events",)

    def __init__(self):
        self._events: deque[tuple[float, int]] = deque()

    def add(self, at: float, nbytes: int) -> None:
        self._events.append((at, nbytes))
        while self._events and self._events[0][0] < at - KEEP:
            self._events.popleft()

    def last_at(self) -> float | None:
        return self._events[-1][0] if self._events else None

    def rate(self, now: float) -> float | None:
        """Bytes per second, or None when nothing was measured (lately)."""
        events = self._events
        while events and events[0][0] < now - KEEP:
            events.popleft()
        if len(events) < 2:
            return None
        first_at, last_at = events[0][0], events[-1][0]
        usual = (last_at - first_at) / (len(events) - 1)
        end = last_at
        if now - last_at > max(STALL_FLOOR, STALL_INTERVALS * usual):
            end = now  # quiet for long: the window ends now and the rate falls
        start = end - WINDOW
        if len(events) > MIN_INTERVALS:
            start = min(start, events[-1 - MIN_INTERVALS][0])
        if start >= first_at:
            # History reaches before the window: the bytes sent inside it, over its length;
            # of the event that straddles its start, the share sent after the start.
            counted, before = 0.0, first_at
            for t, n in events:
                if t > start:
                    counted += n if before >= start else n * (t - start) / (t - before)
                before = t
            span = end - start
        else:
            # The window starts before what is known: from the first event on, without its bytes.
            counted = sum(n for t, n in events) - events[0][1]
            span = end - first_at
        if span < MIN_SPAN:
            return None
        return counted / span


class RateHistory:
    """The mount's bytes sent per HISTORY_BUCKET seconds over the last HISTORY_SPAN, by
    wall-clock bucket, so the plot's time axis is real time."""

    def __init__(self):
        self._buckets: dict[int, int] = {}

    def add(self, wall: float, nbytes: int) -> None:
        key = int(wall // HISTORY_BUCKET)
        if key not in self._buckets:  # a new bucket: the ones past the hour go
            oldest = key - int(HISTORY_SPAN // HISTORY_BUCKET)
            for old in [k for k in self._buckets if k < oldest]:
                del self._buckets[old]
        self._buckets[key] = self._buckets.get(key, 0) + nbytes

    def points(self, wall: float) -> list[tuple[float, float]]:
        """(bucket start as Unix time, bytes per second) for each bucket of the last hour, empty
        ones as 0; the current bucket's rate is of what it holds so far."""
        current = int(wall // HISTORY_BUCKET)
        count = int(HISTORY_SPAN // HISTORY_BUCKET)
        return [(key * HISTORY_BUCKET, self._buckets.get(key, 0) / HISTORY_BUCKET)
                for key in range(current - count + 1, current + 1)]


class RateBook:
    """A listener of the engine's progress events (on the listeners' thread); read by status
    snapshots with `rates_of`. Its own lock is a leaf: never held around the engine's."""

    def __init__(self, listeners=None, clock=time.monotonic, wall=time.time):
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._files: dict[int, RateWindow] = {}
        self._sessions: dict[int, RateWindow] = {}
        self._mount = RateWindow()
        self._started: dict[int, float] = {}  # file id -> wall time its upload began
        # file id -> bytes gone out: the server's last acknowledged `received` plus the pieces
        # of the PUT under way; forgotten when the attempt ends (failed: the server says again).
        self._gone_out: dict[int, int] = {}
        self.history = RateHistory()
        # For /metrics: bytes sent, and events by name (retries are file_failed).
        self.bytes_sent = 0
        self.events: Counter[str] = Counter()
        if listeners is not None:
            listeners.add(self.on_event)

    def on_event(self, event: str, at: float | None = None, **details) -> None:
        at = self._clock() if at is None else at
        record = details.get("file")
        with self._lock:
            self.events[event] += 1
            if record is None:
                return
            if event == "file_uploading":
                self._started.setdefault(record.id, self._wall())
                self._gone_out.pop(record.id, None)
            elif event == "bytes_sent":
                self._sent_locked(record, details["nbytes"], at)
            elif event in ("chunk_acknowledged", "chunk_refused"):
                self._gone_out[record.id] = details["received"]
            elif event == "file_failed":
                self._gone_out.pop(record.id, None)
            elif event in ("file_complete", "file_rejected"):
                self._files.pop(record.id, None)
                self._gone_out.pop(record.id, None)

    def _sent_locked(self, record, nbytes: int, at: float) -> None:
        self._files.setdefault(record.id, RateWindow()).add(at, nbytes)
        self._sessions.setdefault(record.session_id, RateWindow()).add(at, nbytes)
        self._mount.add(at, nbytes)
        self.history.add(self._wall(), nbytes)
        self.bytes_sent += nbytes
        # The first piece of an attempt goes on from what the server held when it began.
        self._gone_out[record.id] = self._gone_out.get(record.id, record.server_received) + nbytes

    def gone_out(self, file_id: int) -> int | None:
        """Bytes of an uploading file that went out (the server's part and the PUT under way's
        pieces), or None when no piece of its current attempt was counted."""
        with self._lock:
            return self._gone_out.get(file_id)

    def started_at(self, file_id: int) -> float | None:
        """Wall time the file's upload began (for the log line of an uploaded file)."""
        with self._lock:
            return self._started.get(file_id)

    def finished(self, file_id: int) -> None:
        with self._lock:
            self._started.pop(file_id, None)

    def file_rate(self, file_id: int) -> float | None:
        with self._lock:
            window = self._files.get(file_id)
            return window.rate(self._clock()) if window is not None else None

    def session_rate(self, session_id: int) -> float | None:
        with self._lock:
            window = self._sessions.get(session_id)
            return window.rate(self._clock()) if window is not None else None

    def mount_rate(self) -> float | None:
        with self._lock:
            return self._mount.rate(self._clock())

    def history_points(self) -> list[tuple[float, float]]:
        with self._lock:
            return self.history.points(self._wall())

    def counters(self) -> tuple[int, dict[str, int]]:
        with self._lock:
            return self.bytes_sent, dict(self.events)


def eta_seconds(remaining: int, rate: float | None) -> int | None:
    """Seconds left at `rate`; None without a rate or with nothing left."""
    if not rate or remaining <= 0:
        return None
    return max(1, round(remaining / rate))
