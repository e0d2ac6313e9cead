"""The engine's state lock: a plain lock that knows its owner.

A re-entrant lock hides calls that take the lock twice, and with them work done
under the lock that nobody meant to do there. This one is a plain `Lock`; taking
it again from the thread that holds it raises at once (instead of deadlocking),
and `assert_held()` lets `_locked` helpers check their caller.
"""

from __future__ import annotations

import threading


class LockReentered(RuntimeError):
    pass


class StateLock:
    def __init__(self):
        self._lock = threading.Lock()
        self._owner: int | None = None

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        me = threading.get_ident()
        if self._owner == me:
            raise LockReentered("the engine's state lock is already held by this thread")
        if not self._lock.acquire(blocking, timeout):
            return False
        self._owner = me
        return True

    def release(self) -> None:
        self._owner = None
        self._lock.release()

    __enter__ = acquire

    def __exit__(self, *exc) -> None:
        self.release()

    def held(self) -> bool:
        """Whether the calling thread holds it."""
        return self._owner == threading.get_ident()

    def assert_held(self) -> None:
        if self._owner != threading.get_ident():
            raise AssertionError("the engine's state lock must be held here")

    def assert_not_held(self) -> None:
        """For work that may be slow (reading a whole file): FUSE callbacks wait on the lock."""
        if self._owner == threading.get_ident():
            raise AssertionError("the engine's state lock must not be held here")

    # threading.Condition asks these of its lock (see Condition.__init__), so waits on a
    # condition of this lock keep the owner right.
    def _is_owned(self) -> bool:
        return self.held()

    def _release_save(self):
        self.release()

    def _acquire_restore(self, _state) -> None:
        self.acquire()
