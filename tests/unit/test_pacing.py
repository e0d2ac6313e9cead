"""Backoff and the sliding windows, on a simulated clock (no sleeping, no timing)."""

import random
from collections import deque

import pytest

from fs360.api.pacing import PACED_WITH, Pacer, SlidingWindow
from fs360.api.retry import Backoff
from fs360.config import DOCUMENTED_RATE_LIMITS
from fs360.errors import RateLimited, ServerError


class Clock:
    """A simulated clock; its `sleep` moves it forward and remembers each wait."""

    def __init__(self):
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self):
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


# --- backoff --------------------------------------------------------------------------------------

def test_backoff_doubles_to_a_cap_with_jitter():
    backoff = Backoff(base=0.5, cap=60.0, rng=random.Random(1))
    for attempt in range(1, 20):
        ceiling = min(60.0, 0.5 * 2 ** (attempt - 1))
        delays = [backoff.delay(attempt, ServerError()) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), attempt
        assert len(set(delays)) > 100, "no jitter"
    assert max(backoff.delay(50) for _ in range(100)) <= 60.0


def test_backoff_honours_retry_after():
    backoff = Backoff(base=0.5, cap=2.0, rng=random.Random(2))
    for retry_after in (1.0, 5.0, 120.0):
        delays = [backoff.delay(1, RateLimited(retry_after=retry_after)) for _ in range(100)]
        assert all(retry_after <= d <= retry_after * 1.1 + 1e-9 for d in delays)


def test_backoff_without_a_definite_wait_backs_off_like_a_server_error():
    """A 429 without a usable Retry-After must not retry every second forever."""
    backoff = Backoff(base=0.5, cap=60.0, rng=random.Random(3))
    for attempt in (1, 4, 8, 20):
        ceiling = min(60.0, 0.5 * 2 ** (attempt - 1))
        delays = [backoff.delay(attempt, RateLimited(retry_after=None)) for _ in range(100)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), attempt
    assert RateLimited().retry_after is None


# --- sliding windows ----------------------------------------------------------------------------------

def max_in_window(times: list[float], window: float) -> int:
    """The largest number of send times in any half-open window (t - window, t] (the server's)."""
    best, recent = 0, deque()
    for t in sorted(times):
        recent.append(t)
        while recent[0] <= t - window:
            recent.popleft()
        best = max(best, len(recent))
    return best


@pytest.mark.parametrize("endpoint", sorted(DOCUMENTED_RATE_LIMITS))
@pytest.mark.parametrize("pattern", ["greedy", "bursts"])
def test_window_never_passes_95_percent_in_any_window(endpoint, pattern):
    limit, window = DOCUMENTED_RATE_LIMITS[endpoint]
    clock = Clock()
    bucket = SlidingWindow(limit, window, clock=clock)
    rng = random.Random(f"{endpoint}/{pattern}")  # the same draws every run
    sends = []
    # Callers arrive (several at once, from many threads); each sends when its reserve() says.
    for _ in range(limit * 4):
        if pattern == "greedy":
            clock.now += rng.uniform(0, window / limit / 4)
        elif rng.random() < 0.02:
            clock.now += rng.uniform(0, window * 1.5)  # idle, then a burst
        sends.append(clock.now + bucket.reserve())
    assert max_in_window(sends, window) <= int(limit * 0.95)
    # ...and it does not starve: over the long run it uses most of the budget.
    if pattern == "greedy":
        assert max_in_window(sends, window) >= int(limit * 0.9)


def test_a_burst_uses_the_whole_budget_at_once_and_only_the_next_waits():
    """28 new folders open at once (95% of 30 an hour); the 29th waits for the first to age out."""
    clock = Clock()
    pacer = Pacer(DOCUMENTED_RATE_LIMITS, clock=clock, sleep=lambda s: None)
    assert [pacer.try_acquire("open_session") for _ in range(28)] == [0.0] * 28
    clock.now += 600
    assert pacer.try_acquire("open_session") == pytest.approx(3000.0, abs=0.01)
    assert pacer.try_acquire("open_session") == pytest.approx(3000.0, abs=0.01)  # nothing was booked by asking
    clock.now += 3000.01
    assert pacer.try_acquire("open_session") == 0.0
    # Other endpoints are not held up by one that is out of budget.
    assert pacer.try_acquire("put_file") == 0.0


def test_a_send_that_never_reached_the_server_gives_its_place_back():
    """Only requests that reached the server count: a refused connection's booking is returned."""
    clock = Clock()
    pacer = Pacer({"open_session": (30, 3600.0)}, clock=clock, sleep=lambda s: None)
    for _ in range(100):  # a server that is down: every try fails to connect
        wait, booking = pacer.try_acquire_booking("open_session")
        assert wait == 0.0
        pacer.unsent(booking)
    assert [pacer.try_acquire("open_session") for _ in range(28)] == [0.0] * 28
    assert pacer.try_acquire("open_session") > 0
    pacer.unsent(None)  # nothing booked (pacing off): nothing to give back


def test_pacer_sleeps_the_reserved_time_and_can_be_disabled():
    clock = Clock()
    pacer = Pacer({"put_file": (100, 60.0)}, sleep=clock.sleep, clock=clock)
    for _ in range(150):
        pacer.acquire("put_file")
    assert clock.slept and sum(clock.slept) > 0
    assert Pacer({"put_file": (1, 60.0)}, enabled=False, sleep=clock.sleep).acquire("put_file") == 0.0


def test_list_projects_draws_on_the_get_project_bucket():
    """GET /projects has no documented limit: it is paced with the project polls."""
    assert PACED_WITH["list_projects"] in DOCUMENTED_RATE_LIMITS
    clock = Clock()
    pacer = Pacer({"get_project": (2, 60.0)}, sleep=clock.sleep, clock=clock)
    pacer.acquire("get_project")
    before = clock.now
    pacer.acquire("list_projects")
    assert clock.now - before >= 60.0


def test_a_bwlimit_of_0_is_shown_as_off():
    """`fs360 set bwlimit=0` means no limit: the mount says "off", not "bwlimit 0"."""
    from fs360.engine.gate import TransferGate
    gate = TransferGate("5M")
    assert gate.bwlimit == "5M"
    for none in ("0", "off", "0k"):
        gate.set_bwlimit(none)
        assert gate.bwlimit == "off"
