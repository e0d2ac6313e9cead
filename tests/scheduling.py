"""The order of a parallel run: the longest tests first, each on a worker of its own.

A test marked `slow(seconds)` (an estimate of its run time here) is a work unit by itself; every
other test goes with its module (so a module's emulator serves all its tests), as under xdist's
`loadscope`. The long tests are handed out first, longest first, then the modules, heaviest first
(one second a test), so the long tests overlap the many short ones instead of running alone at
the end. A worker that holds a long test not yet finished gets the shortest unit left (a worker
runs a test once it has the next one), so two long ones never queue behind each other, nor a big
module behind a long test, while another worker runs out of work.

The workers collect, the controller schedules: each worker writes the estimates of the tests it
collected to a file the controller names (the same file from each: written whole, then renamed
into place), and the controller reads it once every collection is in.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from xdist.scheduler import LoadScopeScheduling

# What an unmarked test weighs in its module's estimate (a mount test takes about this long).
UNMARKED_SECONDS = 1.0
# What a test marked `slow` without an estimate weighs.
UNSTATED_SLOW_SECONDS = 10.0
ESTIMATES_KEY = "fs360_estimates_file"


def estimated_seconds(item: pytest.Item) -> float | None:
    """The seconds of a test's `slow(seconds)` marker; None for a test without one."""
    marker = item.get_closest_marker("slow")
    if marker is None:
        return None
    return float(marker.args[0]) if marker.args else UNSTATED_SLOW_SECONDS


def longest_first(items: list[pytest.Item]) -> None:
    """Sorts the marked tests first, longest first (stable: the order stays otherwise): a run
    without the scheduler below (serial, or another --dist) also starts them early."""
    items.sort(key=lambda item: -(estimated_seconds(item) or 0.0))


def estimates_file(config: pytest.Config) -> Path:
    """The controller's file of estimates, in its base temporary dir (pytest cleans it up)."""
    return config._tmp_path_factory.getbasetemp() / "slow-tests.json"


def share_estimates(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In a worker: writes {node id: seconds} of the marked tests where the controller reads it."""
    target = getattr(config, "workerinput", {}).get(ESTIMATES_KEY)
    if target is None:
        return
    estimates = {item.nodeid: seconds for item in items if (seconds := estimated_seconds(item)) is not None}
    partial = Path(f"{target}.{os.getpid()}")
    partial.write_text(json.dumps(estimates))
    os.replace(partial, target)


class LongestFirstScheduling(LoadScopeScheduling):
    """`loadscope` with the marked tests as units of their own, handed out as described above."""

    def __init__(self, config: pytest.Config, log=None) -> None:
        super().__init__(config, log)
        self.estimates: dict[str, float] = {}
        self.source = estimates_file(config)

    def schedule(self) -> None:
        if self.collection is None:
            # Every worker has collected (and so written the file) before this first call.
            try:
                self.estimates = json.loads(self.source.read_text())
            except (OSError, ValueError):
                self.estimates = {}  # plain loadscope: slower, never wrong
        super().schedule()

    def _split_scope(self, nodeid: str) -> str:
        return nodeid if nodeid in self.estimates else super()._split_scope(nodeid)

    def _rank(self, scope: str) -> tuple[bool, float]:
        """The long tests first, longest first; then the modules, heaviest first (a stable sort)."""
        unit = self.workqueue[scope]
        return not self._is_long(unit), -sum(self.estimates.get(nodeid, UNMARKED_SECONDS) for nodeid in unit)

    def _is_long(self, unit: dict[str, bool]) -> bool:
        return len(unit) == 1 and next(iter(unit)) in self.estimates

    def _assign_work_unit(self, node) -> None:
        holds_long = any(self._is_long(unit) and not all(unit.values())
                         for unit in self.assigned_work.get(node, {}).values())
        ranked = sorted(self.workqueue, key=self._rank)
        short = [scope for scope in ranked if not self._is_long(self.workqueue[scope])]
        chosen = short[-1] if holds_long and short else ranked[0]
        self.workqueue.move_to_end(chosen, last=False)
        super()._assign_work_unit(node)
