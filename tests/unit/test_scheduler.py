"""The scheduler alone, on a fake clock: due times, stale entries, one upload per file."""

import threading

import pytest

from fs360.engine.locking import LockReentered, StateLock
from fs360.engine.scheduler import Scheduler


class Files:
    """Stands in for the registry: file id -> current generation (absent: deleted)."""

    def __init__(self, **generations):
        self.generations = {int(k[1:]): v for k, v in generations.items()}

    def runnable(self, file_id, generation):
        return self.generations.get(file_id) == generation


def test_nothing_comes_up_before_it_is_due_and_the_wait_is_exact():
    """An entry comes up at its due time, not before; until then the wait until it is given."""
    scheduler, files = Scheduler(), Files(f1=0)
    scheduler.add_locked(1, 0, due=100.0)
    assert scheduler.take_due_locked(99.5, files.runnable) == (None, 0.5)
    assert scheduler.take_due_locked(100.0, files.runnable) == (1, None)
    assert scheduler.take_due_locked(100.0, files.runnable) == (None, None)  # empty: wait for a wake-up


def test_files_come_up_in_due_order_whatever_order_they_were_queued():
    """The earliest due first; equal due times in the order they were queued."""
    scheduler, files = Scheduler(), Files(f1=0, f2=0, f3=0)
    scheduler.add_locked(3, 0, due=30.0)
    scheduler.add_locked(1, 0, due=10.0)
    scheduler.add_locked(2, 0, due=10.0)
    taken = [scheduler.take_due_locked(50.0, files.runnable)[0] for _ in range(3)]
    assert taken == [1, 2, 3]


def test_an_entry_of_an_older_generation_or_a_deleted_file_is_dropped():
    """A file written again, renamed or deleted since it was queued is not sent for that entry."""
    scheduler, files = Scheduler(), Files(f1=2, f2=0)
    scheduler.add_locked(1, 1, due=0.0)   # queued before the file changed again
    scheduler.add_locked(9, 0, due=0.0)   # the file was deleted
    scheduler.add_locked(2, 0, due=5.0)
    assert scheduler.take_due_locked(1.0, files.runnable) == (None, 4.0)
    assert len(scheduler) == 1


def test_a_file_being_sent_is_never_handed_to_a_second_worker():
    """A file due again while its upload runs is deferred, then queued again when that upload ends."""
    scheduler, files = Scheduler(), Files(f1=0, f2=0)
    scheduler.add_locked(1, 0, due=0.0)
    assert scheduler.take_due_locked(0.0, files.runnable) == (1, None)
    scheduler.add_locked(1, 0, due=1.0)  # due again (a rename, a retry) while a worker sends it
    scheduler.add_locked(2, 0, due=1.0)
    assert scheduler.take_due_locked(2.0, files.runnable) == (2, None)  # file 1 was skipped, not taken
    assert scheduler.finish_locked(1) is True    # it came up meanwhile: the engine queues it again
    assert scheduler.finish_locked(2) is False
    assert scheduler.finish_locked(1) is False  # done for good: nothing deferred any more


def test_the_state_lock_refuses_to_be_taken_twice_by_one_thread():
    """A second acquire by the holder raises at once (an RLock would hide it, a Lock would hang)."""
    lock = StateLock()
    with lock:
        assert lock.held()
        with pytest.raises(LockReentered):
            lock.acquire()
        lock.assert_held()
    assert not lock.held()
    with pytest.raises(AssertionError):
        lock.assert_held()


def lock_held_here(lock: StateLock) -> bool:
    try:
        lock.assert_not_held()
    except AssertionError:
        return True
    return False


def test_the_state_lock_tells_slow_work_that_it_is_held():
    """`assert_not_held` guards work that may read a whole file (the content digest)."""
    lock = StateLock()
    lock.assert_not_held()
    with lock:
        with pytest.raises(AssertionError, match="must not be held"):
            lock.assert_not_held()
        failed = []
        other = threading.Thread(target=lambda: failed.append(lock_held_here(lock)))  # its work may go on
        other.start()
        other.join()
        assert failed == [False]
    lock.assert_not_held()


def test_a_condition_wait_on_the_state_lock_keeps_its_owner_right():
    """Waiting on a condition releases the lock for other threads and takes it back after."""
    lock = StateLock()
    ready = threading.Condition(lock)
    seen = []

    def other():
        with lock:
            seen.append(lock.held())
            ready.notify()

    with lock:
        thread = threading.Thread(target=other)
        thread.start()
        assert ready.wait_for(lambda: seen, timeout=10)
        assert lock.held()
    thread.join(10)
    assert seen == [True]
