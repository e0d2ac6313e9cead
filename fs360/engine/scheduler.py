"""The upload queue: which file a worker sends next, and when.

A due-time heap of (due, file id, generation) entries plus the set of files a
worker is sending now. An entry whose file changed since it was queued (a new
generation: written again, renamed, deleted) is dropped when it comes up, so
cancelling is just bumping the generation. A file whose previous upload is
still running is deferred, never handed to a second worker: one PUT per file in
flight.

It holds no lock of its own and reads no clock of its own: the engine calls it
with the state lock held and passes `now` (tests pass a fake clock).
"""

from __future__ import annotations

import heapq
import itertools
from typing import Callable


class Scheduler:
    def __init__(self):
        self._heap: list[tuple[float, int, int, int]] = []  # (due, seq, file id, generation)
        self._seq = itertools.count()
        self._busy: set[int] = set()      # files a worker is sending right now
        self._deferred: set[int] = set()  # came up while busy: queued again when that upload ends

    def add_locked(self, file_id: int, generation: int, due: float) -> None:
        heapq.heappush(self._heap, (due, next(self._seq), file_id, generation))

    def next_due_locked(self) -> float | None:
        """When the first entry is due (None when none is queued); stale entries count too, which
        only makes a waiter wake early and look again."""
        return self._heap[0][0] if self._heap else None

    def take_due_locked(self, now: float, runnable: Callable[[int, int], bool]) -> tuple[int | None, float | None]:
        """Pops the first due entry that is still `runnable(file_id, generation)` and marks it
        busy: (file id, None). Nothing due: (None, seconds until the next entry, or None)."""
        while self._heap:
            due, _, file_id, generation = self._heap[0]
            if due > now:
                return None, due - now
            heapq.heappop(self._heap)
            if not runnable(file_id, generation):
                continue  # stale: the file changed or went since it was queued
            if file_id in self._busy:
                self._deferred.add(file_id)
                continue
            self._busy.add(file_id)
            return file_id, None
        return None, None

    def finish_locked(self, file_id: int) -> bool:
        """A worker is done with `file_id`; True when it came up meanwhile and must be queued again."""
        self._busy.discard(file_id)
        if file_id in self._deferred:
            self._deferred.discard(file_id)
            return True
        return False

    def __len__(self) -> int:
        return len(self._heap)
