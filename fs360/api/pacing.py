"""Client-side pacing: one token bucket per endpoint, shared by all threads.

The server counts requests in a sliding window. A bucket of capacity B refilled
at r per second lets through at most B + r*W requests in any window W, so B and r
are chosen with B + r*W <= 95% of the limit: a burst can never trip a 429.
"""

from __future__ import annotations

import threading
import time

# Endpoints the documentation gives no limit for, paced with the bucket of a documented one.
PACED_WITH = {"list_projects": "get_project"}


class TokenBucket:
    """Capacity B, refill r per second, B + r*W = `margin` of the limit.

    Tokens are taken on credit: the caller is told how long to wait for its token,
    so the send times follow the refill schedule exactly. `_stamp` is the time up
    to which tokens have been accounted; a 429 moves it into the future, so no
    token accrues while the server asked us to wait and no burst follows the pause.
    """

    def __init__(self, limit: int, window: float, margin: float = 0.95, clock=time.monotonic):
        self._clock = clock
        budget = max(1.0, limit * margin)
        self.capacity = max(1.0, float(int(budget * 0.05)))
        self.rate = max(budget - self.capacity, 0.5) / window  # tokens per second
        self._tokens = self.capacity
        self._stamp = clock()
        self._lock = threading.Lock()

    def _refill_locked(self, now: float) -> None:
        """Needs self._lock held."""
        if now > self._stamp:
            self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now

    def reserve(self) -> float:
        """Takes a token, possibly on credit; returns how long the caller must wait first."""
        with self._lock:
            now = self._clock()
            self._refill_locked(now)
            self._tokens -= 1.0
            return (self._stamp - now) + max(0.0, -self._tokens) / self.rate

    def block_for(self, seconds: float) -> None:
        """A 429 said to wait: nobody sends on this endpoint until then, and no token accrues meanwhile."""
        with self._lock:
            now = self._clock()
            self._refill_locked(now)
            self._tokens = min(self._tokens, 0.0)
            self._stamp = max(self._stamp, now + seconds)


class Pacer:
    def __init__(self, limits: dict[str, tuple[int, float]], enabled: bool = True, window_scale: float = 1.0,
                 sleep=time.sleep, clock=time.monotonic):
        self.enabled = enabled
        self._sleep = sleep
        self._buckets = {name: TokenBucket(n, w * window_scale, clock=clock) for name, (n, w) in limits.items()}

    def _bucket(self, endpoint: str) -> TokenBucket | None:
        return self._buckets.get(PACED_WITH.get(endpoint, endpoint))

    def acquire(self, endpoint: str) -> float:
        """Blocks until a request to `endpoint` may go; returns the seconds waited."""
        bucket = self._bucket(endpoint)
        if not self.enabled or bucket is None:
            return 0.0
        wait = bucket.reserve()
        if wait > 0:
            self._sleep(wait)
        return wait

    def rate_limited(self, endpoint: str, retry_after: float) -> None:
        """A 429 with a definite wait: nobody sends on `endpoint` for `retry_after` seconds."""
        bucket = self._bucket(endpoint)
        if bucket is not None:
            bucket.block_for(retry_after)
