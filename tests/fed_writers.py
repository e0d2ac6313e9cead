"""Writers fed to the path model by a test: who closed a file and how it exited, as /proc and
the exit watch would report them in a mount, so that no real process has to die."""

from __future__ import annotations

from typing import Callable

from fs360.fs.exits import Closer


class FedWatch:
    """Stands in for the pidfd / netlink watch: every process may be watched; the test feeds the
    exits through `Writers.exited`."""
    kind = "fed by the test"
    statuses_known = True

    def watch(self, tgid: int) -> bool:
        return True

    def stop(self) -> None:
        pass


def feed_writers(model, identify: Callable[[int], Closer | None]) -> None:
    """`identify(pid)` says who each closing task is; exits are fed with model.writers.exited."""
    model.writers.identify = identify
    model.writers.still_there = lambda pid, start: True  # any process whose exit is not fed yet
    model.writers.watch = FedWatch()
