"""Client-side pacing: one token bucket per endpoint, shared by all threads.

The server counts requests in a sliding window. A bucket of capacity B refilled
at r per second lets through at most B + r*W requests in any window W, so B and r
are chosen with B + r*W <= 95% of the limit: a burst can never trip a 429.
"""

from __future__ import annotations

import threading
import time


class TokenBucket:
    def __init__(self, limit: int, window: float, margin: float = 0.95):
        budget = max(1.0, limit * margin)
        self.capacity = max(1.0, float(int(budget * 0.05)))
        self.rate = max(budget - self.capacity, 0.5) / window  # tokens per second
        self._tokens = self.capacity
        self._stamp = time.monotonic()
        self._blocked_until = 0.0
        self._lock = threading.Lock()

    def _refill_locked(self, now: float) -> None:
        """Needs self._lock held."""
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def reserve(self) -> float:
        """Takes a token, possibly on credit; returns how long the caller must wait first."""
        with self._lock:
            now = time.monotonic()
            self._refill_locked(now)
            self._tokens -= 1.0
            wait = 0.0 if self._tokens >= 0 else -self._tokens / self.rate
            return max(wait, self._blocked_until - now)

    def block_for(self, seconds: float) -> None:
        """A 429 said to wait: nobody sends on this endpoint until then."""
        with self._lock:
            self._blocked_until = max(self._blocked_until, time.monotonic() + seconds)
            self._tokens = min(self._tokens, 0.0)


class Pacer:
    def __init__(self, limits: dict[str, tuple[int, float]], enabled: bool = True, window_scale: float = 1.0,
                 sleep=time.sleep):
        self.enabled = enabled
        self._sleep = sleep
        self._buckets = {name: TokenBucket(n, w * window_scale) for name, (n, w) in limits.items()}

    def acquire(self, endpoint: str) -> float:
        """Blocks until a request to `endpoint` may go; returns the seconds waited."""
        bucket = self._buckets.get(endpoint)
        if not self.enabled or bucket is None:
            return 0.0
        wait = bucket.reserve()
        if wait > 0:
            self._sleep(wait)
        return wait

    def rate_limited(self, endpoint: str, retry_after: float) -> None:
        bucket = self._buckets.get(endpoint)
        if bucket is not None:
            bucket.block_for(retry_after)
