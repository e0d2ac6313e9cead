"""Client-side pacing: one sliding window per endpoint, shared by all threads.

The server counts requests in a sliding window of W seconds. Each endpoint here
keeps the times of its last `allowed` sends, `allowed` being 95% of the documented
limit: a send may go once the oldest of them is a full window old. So a burst uses
the whole budget at once (28 new sessions open together; only the 29th waits), and
no window ever holds more than 95% of the limit, whatever the pattern.
"""

from __future__ import annotations

import threading
import time
from collections import deque

# Endpoints the documentation gives no limit for, paced with the window of a documented one.
PACED_WITH = {"list_projects": "get_project"}
# The share of a documented limit used: the rest absorbs the skew between our send times
# and the server's arrival times.
MARGIN = 0.95
EPSILON = 1e-3


class SlidingWindow:
    """At most `allowed` send times in any window (t - W, t], as the server counts them.

    Sends may be booked ahead (`reserve`): the caller is told how long to wait, so
    concurrent callers queue in order. A 429 closes the endpoint until its wait is over.
    """

    def __init__(self, limit: int, window: float, margin: float = MARGIN, clock=time.monotonic):
        self._clock = clock
        self.window = window
        self.allowed = max(1, int(limit * margin))
        self._sends: deque[float] = deque(maxlen=self.allowed)  # nondecreasing
        self._closed_until = float("-inf")
        self._lock = threading.Lock()

    def _earliest_locked(self, now: float) -> float:
        """Needs self._lock held. The first time a new send may go."""
        earliest = max(now, self._closed_until)
        if self._sends:
            earliest = max(earliest, self._sends[-1])
            if len(self._sends) == self.allowed:
                # Just past the window: the oldest send must have left it (float sums are inexact).
                earliest = max(earliest, self._sends[0] + self.window + EPSILON)
        return earliest

    def reserve(self) -> float:
        """Books the first free send time; returns how long the caller must wait for it."""
        with self._lock:
            now = self._clock()
            at = self._earliest_locked(now)
            self._sends.append(at)
            return at - now

    def try_reserve(self) -> float:
        """Books a send now if one may go now (returns 0); else books nothing and returns the wait."""
        with self._lock:
            now = self._clock()
            wait = self._earliest_locked(now) - now
            if wait <= 0:
                self._sends.append(now)
                return 0.0
            return wait

    def block_for(self, seconds: float) -> None:
        """A 429 said to wait: nobody sends on this endpoint until then."""
        with self._lock:
            self._closed_until = max(self._closed_until, self._clock() + seconds)


class Pacer:
    def __init__(self, limits: dict[str, tuple[int, float]], enabled: bool = True, window_scale: float = 1.0,
                 sleep=time.sleep, clock=time.monotonic):
        self.enabled = enabled
        self._sleep = sleep
        self._windows = {name: SlidingWindow(n, w * window_scale, clock=clock) for name, (n, w) in limits.items()}
        # For /metrics: how often, and how long in all, a request waited for its budget.
        self.waits = 0
        self.waited_seconds = 0.0
        self._counts_lock = threading.Lock()

    def _window(self, endpoint: str) -> SlidingWindow | None:
        return self._windows.get(PACED_WITH.get(endpoint, endpoint))

    def acquire(self, endpoint: str) -> float:
        """Blocks until a request to `endpoint` may go; returns the seconds waited."""
        window = self._window(endpoint)
        if not self.enabled or window is None:
            return 0.0
        wait = window.reserve()
        if wait > 0:
            with self._counts_lock:
                self.waits += 1
                self.waited_seconds += wait
            self._sleep(wait)
        return wait

    def try_acquire(self, endpoint: str) -> float:
        """0 when a request to `endpoint` may go now (and it is counted); else the seconds until
        one may, with nothing counted: the caller does other work meanwhile instead of sleeping."""
        window = self._window(endpoint)
        if not self.enabled or window is None:
            return 0.0
        return window.try_reserve()

    def rate_limited(self, endpoint: str, retry_after: float) -> None:
        """A 429 with a definite wait: nobody sends on `endpoint` for `retry_after` seconds."""
        window = self._window(endpoint)
        if window is not None:
            window.block_for(retry_after)
