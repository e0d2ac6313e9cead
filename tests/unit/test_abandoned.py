"""One PUT per file after an abandoned one (engine/abandoned.py), on a simulated clock: the next
PUT waits for the quiet period, unless the server's `received` moved past where the abandoned
PUT began and then stopped moving."""

from __future__ import annotations

import pytest

from fs360.engine.abandoned import SETTLE_SECONDS, AbandonedPuts
from fs360.errors import HeldBack


class Clock:
    now = 100.0

    def __call__(self):
        return self.now


def test_a_received_that_never_moved_waits_the_quiet_period():
    clock = Clock()
    puts = AbandonedPuts(quiet=60.0, clock=clock)
    puts.check_locked(1, 0)  # nothing abandoned: goes
    puts.note_locked(1, offset=4096)
    for _ in range(3):  # the same answer, however often asked: it proves nothing
        clock.now += 5.0
        with pytest.raises(HeldBack) as info:
            puts.check_locked(1, 4096)
        assert "may still be reading it" in str(info.value)
    assert info.value.retry_after == pytest.approx(45.0)
    clock.now += 45.0
    puts.check_locked(1, 4096)
    puts.check_locked(1, 4096)  # and it is forgotten


def test_a_received_that_moved_and_stopped_goes_before_the_quiet_period():
    clock = Clock()
    puts = AbandonedPuts(quiet=60.0, clock=clock)
    puts.note_locked(7, offset=0)
    clock.now += 1.0
    with pytest.raises(HeldBack) as info:  # it moved: that PUT was still being read
        puts.check_locked(7, 2048)
    assert info.value.retry_after == SETTLE_SECONDS and "still arriving" in str(info.value)
    clock.now += SETTLE_SECONDS
    with pytest.raises(HeldBack):  # still moving
        puts.check_locked(7, 4096)
    clock.now += SETTLE_SECONDS
    puts.check_locked(7, 4096)  # moved past its start, then stood still: that PUT is over
    puts.note_locked(8, offset=0)
    puts.forget_locked(8)
    puts.check_locked(8, 0)
