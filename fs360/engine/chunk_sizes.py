"""How large each PUT of a file is: adaptive chunk sizes (issue 21 item 1).

A file's chunks start at the configured chunk size and double, up to the maximum,
while each PUT completes in under FAST_PUT seconds: the round trip every PUT waits
for (its answer, before the next chunk may go: one PUT per file in flight) is then a
large share of its time. A PUT slower than SLOW_PUT halves the next one (never below
the start): a failed large PUT costs its whole body again. A failed PUT ends the
attempt, and the next attempt starts again at the configured size.

A 413 that is not the API's (a proxy in front of the server refusing the body's
size, api.md Part C) teaches the mount a limit: the larger of half the refused size
and the largest body accepted below it; no PUT is larger from then on. The limit is
kept in the journal's meta table, with the API URL it was learned from: a remount
against the same server starts within it instead of paying a refused PUT again. It is
kept for a day (LIMIT_KEPT_SECONDS), then PUTs may grow past it again: the proxy may have
been set up anew, or the machine (a laptop) left the network whose proxy taught it; a
proxy that still refuses costs a few refused PUTs a day, each halving the body. Only a
limit confirmed by a PUT of its size is journaled: an outage of a proxy that refuses every
body halves the PUTs down to the smallest (where api/client.py makes the 413 an outage, held
behind one probe), and those guesses are dropped there.
"""

from __future__ import annotations

import logging
import threading
import time

from ..config import MIN_CHUNK_SIZE
from ..errors import NoSpace

log = logging.getLogger(__name__)

# A full-size PUT that took less than this doubles the next one; more than SLOW_PUT halves it.
# 2 s: 64 MiB at 200 Mbit/s takes 2.7 s, so a lone file reaches the maximum there; four files
# sharing the link stop at 16 MiB, where another file's PUT fills each one's round trip anyway.
FAST_PUT = 2.0
SLOW_PUT = 8.0
# The smallest body a proxy's 413 may shrink PUTs to: a 413 at this size is not about the size
# (api/client.py makes it an outage, held behind one probe).
MIN_BODY = MIN_CHUNK_SIZE
# The journal's meta key of the learned limit: {"api_url": ..., "limit": bytes}.
PROXY_LIMIT_KEY = "proxy_body_limit"
# How long a learned limit holds (wall-clock seconds, across remounts).
LIMIT_KEPT_SECONDS = 24 * 3600


class ChunkSizes:
    """The mount's chunk sizes: the settings, and the body limit a proxy taught. Shared by the
    workers (its lock is a leaf lock)."""

    def __init__(self, start: int, maximum: int, clock=time.monotonic, wall_clock=time.time):
        self.start = start
        self.maximum = max(start, maximum)  # growth never shrinks the start size
        self.clock = clock
        self.wall_clock = wall_clock
        self._lock = threading.Lock()
        self._limit = 0  # the largest body a proxy lets through (0: none refused so far)
        self._learned_at = 0.0  # when (wall clock) the proxy taught it
        # The limit a PUT of its size confirmed (or a remount read), with its time: what the
        # journal keeps. The halvings on the way down are guesses until one is accepted: a
        # proxy that refuses every body for a while (an outage) must not leave 64 KiB PUTs.
        self._confirmed = (0, 0.0)
        self._largest_accepted = 0
        self._journal = None
        self._api_url = ""

    def remember_in(self, journal, api_url: str) -> None:
        """Keeps what a proxy teaches in `journal`, and starts from what it kept for `api_url`
        (a limit learned in front of another server says nothing of this one)."""
        kept = journal.get_meta(PROXY_LIMIT_KEY) or {}
        self._journal, self._api_url = journal, api_url
        if kept.get("api_url") == api_url and int(kept.get("limit") or 0) >= MIN_BODY:
            self._limit = int(kept["limit"])
            self._learned_at = float(kept.get("learned_at") or self.wall_clock())
            self._confirmed = (self._limit, self._learned_at)
            if not kept.get("learned_at"):
                # Kept by a build that journaled no time: it counts from now, journaled as such
                # (else every remount would count it from now again, and it would never expire).
                self._keep()

    @property
    def limit(self) -> int:
        """The largest PUT body of this mount (the maximum, or what a proxy taught)."""
        return min(self.learned_limit or self.maximum, self.maximum)

    def _limit_locked(self) -> int:
        return min(self._limit or self.maximum, self.maximum)

    @property
    def learned_limit(self) -> int | None:
        """The body limit a proxy taught within the last day (None: none)."""
        self._forget_if_old()
        return self._limit or None

    def _forget_if_old(self) -> None:
        if self._limit and self.wall_clock() - self._learned_at >= LIMIT_KEPT_SECONDS:
            with self._lock:
                if self._limit and self.wall_clock() - self._learned_at >= LIMIT_KEPT_SECONDS:
                    log.info("the proxy's body limit of %d bytes was learned a day ago: PUTs may grow past it "
                             "again", self._limit)
                    self._limit, self._confirmed = 0, (0, 0.0)

    def accepted(self, nbytes: int) -> None:
        """A PUT of `nbytes` was accepted; one of the limit's size confirms it (journaled)."""
        confirms = self._limit and nbytes >= self._limit and self._confirmed[0] != self._limit
        if nbytes > self._largest_accepted or confirms:
            with self._lock:
                self._largest_accepted = max(self._largest_accepted, nbytes)
                if self._limit and nbytes >= self._limit:
                    self._confirmed = (self._limit, self._learned_at)
            if confirms:
                self._keep()

    def refused(self, nbytes: int) -> bool:
        """A proxy refused a body of `nbytes` (413): whether a smaller one may be tried. At the
        smallest body the proxy refuses every body (an outage, api/client.py): the halvings that
        led there were not about the size, and the confirmed limit holds again."""
        self._forget_if_old()  # a new limit is learned from this refusal, not from a stale one
        with self._lock:
            if nbytes <= MIN_BODY:
                self._limit, self._learned_at = self._confirmed
                return False
            below = self._largest_accepted if self._largest_accepted < nbytes else 0
            self._limit = min(self._limit_locked(), max(nbytes // 2, below, MIN_BODY))
            self._learned_at = self.wall_clock()
        return True

    def _keep(self) -> None:
        """Journals the confirmed limit (off the leaf lock). It only shrinks: whichever worker
        writes last, it writes again until what it wrote is the current one."""
        if self._journal is None:
            return
        kept = None
        while kept != self._confirmed[0]:
            kept, learned_at = self._confirmed
            try:
                self._journal.set_meta(PROXY_LIMIT_KEY, {"api_url": self._api_url, "limit": kept,
                                                         "learned_at": learned_at})
            except NoSpace:
                log.warning("the cache disk is full: the proxy's body limit (%d bytes) is kept in memory only",
                            kept)
                return

    def for_file(self) -> "FileChunks":
        return FileChunks(self)


class FileChunks:
    """One attempt's chunk sizes: `size` for the next PUT; `put_starts()` and `put_done(n)` around
    each one that the server accepted."""

    def __init__(self, sizes: ChunkSizes):
        self._sizes = sizes
        self._size = sizes.start
        self._started = 0.0

    @property
    def size(self) -> int:
        return min(self._size, self._sizes.limit)

    @property
    def limit(self) -> int:
        """The largest PUT body of this mount."""
        return self._sizes.limit

    @property
    def smallest(self) -> int:
        """The smallest size this attempt's PUTs may have (a proxy's limit may be below the start)."""
        return min(self._sizes.start, self._sizes.limit)

    def put_starts(self) -> None:
        self._started = self._sizes.clock()

    def put_done(self, nbytes: int) -> None:
        """The PUT of `nbytes` started last was accepted: the next size follows from its time.
        A shorter PUT than the size (the file's end) says nothing about larger ones."""
        took = self._sizes.clock() - self._started
        self._sizes.accepted(nbytes)
        if nbytes < self.size:
            return
        if took < FAST_PUT:
            self._size = min(self.size * 2, self._sizes.maximum)
        elif took > SLOW_PUT:
            self._size = max(self.size // 2, self.smallest)

    def refused(self, nbytes: int) -> bool:
        """A proxy's 413 for `nbytes`: whether a smaller PUT may be tried at once."""
        return self._sizes.refused(nbytes)
