"""One PUT per file, even after a stall: files whose last PUT fs360 abandoned.

A PUT given up without an answer (a timeout, its deadline, a send that stalled, a
PUT cut mid-body) may still be in the server's hands: over a stalled
link the reset that ends it is lost too, and the server then waits for the rest of
that body until its own idle timeout. A second PUT of the same file meanwhile would be
two at once. So before a file's next PUT, once the server was asked where the file
stands (every retry asks), it goes only if

  - the quiet period has passed since the abandonment (`Settings.abandoned_upload_quiet`,
    the server's idle timeout: 60 s), or
  - the server's `received` moved past where the abandoned PUT began (that PUT was
    read to its end) and then stopped moving, two looks apart;

otherwise it waits (HeldBack, with the reason), and asks again. A `received` that never
moved proves nothing: a server still waiting for the abandoned body shows the same.

Memory only: a daemon that ends takes its connections with it (they end with a reset,
api/transport.py). Needs the engine's state lock held.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..errors import HeldBack

# How soon a file whose `received` moved after an abandoned PUT looks again (its second look).
SETTLE_SECONDS = 1.0


@dataclass
class _Abandoned:
    at: float               # monotonic time of the abandonment
    offset: int             # the server's `received` when that PUT began
    seen: int | None = None  # `received` at the last look since


class AbandonedPuts:
    def __init__(self, quiet: float, clock=time.monotonic, wall=time.time):
        self._quiet = quiet
        self._clock = clock
        self._wall = wall
        self._files: dict[int, _Abandoned] = {}

    def note_locked(self, file_id: int, offset: int) -> None:
        """A PUT of the file, begun at `offset`, was abandoned now."""
        self._files[file_id] = _Abandoned(self._clock(), offset)

    def forget_locked(self, file_id: int) -> None:
        self._files.pop(file_id, None)

    def check_locked(self, file_id: int, received: int) -> None:
        """The server says the file holds `received` bytes: returns when its next PUT may go,
        else raises HeldBack (the reason, and when to look again)."""
        abandoned = self._files.get(file_id)
        if abandoned is None:
            return
        elapsed = self._clock() - abandoned.at
        previous, abandoned.seen = abandoned.seen, received
        if elapsed >= self._quiet or (received != abandoned.offset and previous == received):
            del self._files[file_id]
            return
        if received != abandoned.offset:
            raise HeldBack("an earlier PUT of this file, given up without an answer, is still arriving at the "
                           "server: the next one waits until it has ended", retry_after=SETTLE_SECONDS)
        ends = time.strftime("%H:%M:%S", time.localtime(self._wall() + self._quiet - elapsed))
        raise HeldBack(f"an earlier PUT of this file was given up without an answer and the server may still be "
                       f"reading it: the next one waits until it has surely ended ({ends}), so that the server "
                       f"never gets two at once", retry_after=self._quiet - elapsed)
