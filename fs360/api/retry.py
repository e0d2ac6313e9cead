"""Backoff for retryable errors: doubles up to a cap, jittered, honours a definite Retry-After."""

from __future__ import annotations

import random

from ..errors import AccountError, RateLimited


class Backoff:
    def __init__(self, base: float = 0.5, cap: float = 60.0, rng: random.Random | None = None):
        self.base = base
        self.cap = cap
        self._rng = rng or random.Random()

    def delay(self, attempt: int, error: BaseException | None = None) -> float:
        """Seconds to wait before try number `attempt + 1` (attempt counts from 1)."""
        if isinstance(error, AccountError):
            # The account, not the request, is wrong: try again slowly, until somebody fixes it.
            return self.cap
        if isinstance(error, RateLimited) and error.retry_after is not None:
            # The server said when; a little jitter keeps workers from waking together.
            return error.retry_after + self._rng.uniform(0, min(1.0, error.retry_after * 0.1))
        # A 429 that did not say when backs off like any server error: retrying every
        # second would keep the limit tripped.
        ceiling = min(self.cap, self.base * (2 ** max(0, attempt - 1)))
        # "Equal jitter": never less than half the step, so a storm still backs off.
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)
