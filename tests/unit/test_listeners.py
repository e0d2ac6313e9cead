"""engine/progress.py: events reach every listener in the order emitted, a batch at a time on
their own thread; a listener that raises stops nothing; close() delivers what is queued."""

import threading
import time

from fs360.engine.progress import Listeners
from tests.harness import wait_until


def test_every_event_arrives_in_order_across_batches_and_close_delivers_the_rest():
    listeners = Listeners()
    got, failing_calls = [], []
    first_delivered = threading.Event()

    def record(event, at, n):
        got.append((event, n, at))
        first_delivered.set()

    def failing(event, at, n):
        failing_calls.append(n)
        raise RuntimeError("a listener's bug")

    listeners.add(record)
    listeners.add(failing)
    listeners.emit("bytes_sent", n=0)
    first_delivered.wait(30)  # the thread now rests after its first batch: the next ones queue up
    emitting_from = time.monotonic()
    for n in range(1, 500):
        listeners.emit("bytes_sent", n=n)
    emitted_by = time.monotonic()
    listeners.close()
    assert [n for _, n, _ in got] == list(range(500))
    assert failing_calls == list(range(500))
    times = [at for _, _, at in got]
    assert times == sorted(times)  # each event keeps the time it was emitted
    # ...not the time it was delivered: the first predates the others' emitting, none is later
    # than the last emit (most are delivered after it, a batch at a time).
    assert times[0] <= emitting_from and all(emitting_from <= at <= emitted_by for at in times[1:])


def test_events_emitted_while_the_thread_rests_are_delivered_without_close():
    listeners = Listeners()
    got = []
    listeners.add(lambda event, at, n: got.append(n))
    for n in range(3):
        listeners.emit("bytes_sent", n=n)
    wait_until(lambda: got == [0, 1, 2], 30, 0.01, what="the three events")
    listeners.emit("bytes_sent", n=3)
    wait_until(lambda: got == [0, 1, 2, 3], 30, 0.01, what="the fourth event")
    listeners.close()
