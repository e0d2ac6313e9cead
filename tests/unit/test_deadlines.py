"""The one watchdog thread that cuts requests at their deadlines (api/transport.py).

It sleeps until the first deadline and is woken only when a request with a sooner one starts,
so the order in which requests start must not matter."""

import pytest

from fs360.api.transport import Deadline, _Watchdog
from tests.harness import wait_until


@pytest.fixture
def watchdog():
    """A watchdog of the test's own, its thread ended after the test."""
    own = _Watchdog()
    yield own
    own.stop()
    assert not own._thread or not own._thread.is_alive()


def asleep_until_later(watchdog):
    """Waits until the watchdog thread sleeps on its condition (until the only deadline it has)."""
    wait_until(lambda: watchdog._wake._waiters, 30, 0.01, what="the watchdog to sleep")


def test_a_sooner_deadline_watched_after_a_later_one_expires_first(watchdog):
    later, sooner = Deadline(3600.0), Deadline(0.05)
    watchdog.watch(later)
    asleep_until_later(watchdog)
    watchdog.watch(sooner)
    wait_until(lambda: sooner.expired, 30, 0.02, what="the sooner deadline to expire")
    assert not later.expired


def test_a_later_deadline_watched_after_a_sooner_one_still_expires(watchdog):
    sooner, later = Deadline(0.05), Deadline(0.2)
    watchdog.watch(sooner)
    watchdog.watch(later)
    wait_until(lambda: later.expired, 30, 0.02, what="the later deadline to expire")
    assert sooner.expired


def test_a_finished_request_is_never_cut(watchdog):
    finished, other = Deadline(0.05), Deadline(0.1)
    watchdog.watch(finished)
    finished.finish()
    watchdog.watch(other)
    wait_until(lambda: other.expired, 30, 0.02, what="the other deadline to expire")
    assert not finished.expired


def test_a_stopped_watchdog_leaves_no_thread_and_cuts_nothing_more(watchdog):
    pending = Deadline(3600.0)
    watchdog.watch(pending)
    asleep_until_later(watchdog)
    watchdog.stop()
    assert not watchdog._thread.is_alive()
    assert not pending.expired
