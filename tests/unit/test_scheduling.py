"""The parallel run's scheduler (tests/scheduling.py), driven as xdist's controller drives it, over
simulated workers and a simulated clock: the long tests start first, never two on one worker,
every test runs once, and a module of long tests no longer makes the run as long as its sum."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from xdist.remote import Producer
from xdist.scheduler import LoadScopeScheduling

from tests.scheduling import LongestFirstScheduling


QUIET = Producer("test", enabled=False)


class FakeWorker:
    """What a scheduler sees of an xdist worker: the indices it was sent, and its shutdown."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.gateway = SimpleNamespace(id=name)
        self.sent: list[int] = []
        self.shutting_down = False

    def send_runtest_some(self, indices: list[int]) -> None:
        self.sent.extend(indices)

    def shutdown(self) -> None:
        self.shutting_down = True


def fake_config(workers: int, basetemp):
    option = SimpleNamespace(tx=[f"{workers}*popen"], dist="loadscope", loadscopereorder=False)
    return SimpleNamespace(option=option, getvalue=lambda name: getattr(option, name),
                           _tmp_path_factory=SimpleNamespace(getbasetemp=lambda: basetemp))


def simulate(scheduling_class, durations: dict[str, float], estimates: dict[str, float], workers: int,
             tmp_path, on_step=lambda sched: None) -> tuple[float, list[tuple[float, str, str]]]:
    """Runs the collection `durations` (node id: seconds, in collection order) on `workers`
    simulated workers as xdist's do (a worker starts a test once it holds the next one, or is
    told to shut down). Returns the run's length and each (start, worker, node id)."""
    (tmp_path / "slow-tests.json").write_text(json.dumps(estimates))
    collection = list(durations)
    sched = scheduling_class(fake_config(workers, tmp_path), QUIET)
    nodes = [FakeWorker(f"gw{i}") for i in range(workers)]
    for node in nodes:
        sched.add_node(node)
    for node in nodes:
        sched.add_node_collection(node, collection)
    sched.schedule()
    on_step(sched)
    now, started, running, done = 0.0, [], {}, {node: 0 for node in nodes}
    while True:
        for node in nodes:
            waiting = len(node.sent) - done[node]
            if node not in running and (waiting >= 2 or (waiting == 1 and node.shutting_down)):
                nodeid = collection[node.sent[done[node]]]
                running[node] = now + durations[nodeid]
                started.append((now, node.name, nodeid))
        if not running:
            break
        node = min(running, key=running.get)
        now = running.pop(node)
        sched.mark_test_complete(node, node.sent[done[node]])
        done[node] += 1
        on_step(sched)
    assert sched.tests_finished
    return now, started


# A module of three long tests, then five modules of five short ones.
DURATIONS = {f"tests/a.py::test_long[{s}]": float(s) for s in (30, 20, 10)}
DURATIONS |= {"tests/a.py::test_short_1": 1.0, "tests/a.py::test_short_2": 1.0}
DURATIONS |= {f"tests/{m}.py::test_{i}": 1.0 for m in "bcdef" for i in range(5)}
LONG = {nodeid: seconds for nodeid, seconds in DURATIONS.items() if seconds > 1}


def long_units_held(sched) -> list[int]:
    """For each worker, how many long tests it holds that have not finished."""
    return [sum(1 for unit in work.values() for nodeid, finished in unit.items() if nodeid in LONG and not finished)
            for work in sched.assigned_work.values()]


def test_the_long_tests_start_first_never_two_on_one_worker_and_every_test_runs_once(tmp_path):
    held = []
    length, started = simulate(LongestFirstScheduling, DURATIONS, LONG, 2, tmp_path,
                               on_step=lambda sched: held.extend(long_units_held(sched)))
    assert sorted(nodeid for _, _, nodeid in started) == sorted(DURATIONS)
    first = {worker: nodeid for _, worker, nodeid in reversed(started)}  # each worker's first test
    assert sorted(first.values()) == ["tests/a.py::test_long[20]", "tests/a.py::test_long[30]"]
    assert max(held) == 1
    # The ideal here: 30 s on one worker, 20 + 10 + the 27 one-second tests spread.
    assert length <= 45


def test_a_module_of_long_tests_no_longer_runs_on_one_worker(tmp_path):
    plain, _ = simulate(LoadScopeScheduling, DURATIONS, LONG, 2, tmp_path)
    ours, _ = simulate(LongestFirstScheduling, DURATIONS, LONG, 2, tmp_path)
    assert plain >= 62 and ours < plain  # loadscope: the whole module a.py on one worker


def test_without_the_estimates_it_schedules_as_loadscope(tmp_path):
    (tmp_path / "absent").mkdir()
    sched = LongestFirstScheduling(fake_config(2, tmp_path / "absent"), QUIET)
    sched.add_node(FakeWorker("gw0"))
    sched.add_node_collection(next(iter(sched.assigned_work)), list(DURATIONS))
    sched.numnodes = 1
    sched.schedule()
    assert sched.estimates == {}
    assert {sched._split_scope(nodeid) for nodeid in DURATIONS} == {f"tests/{m}.py" for m in "abcdef"}


@pytest.mark.parametrize("workers", [1, 3, 8])
def test_any_number_of_workers_runs_every_test_once(tmp_path, workers):
    _, started = simulate(LongestFirstScheduling, DURATIONS, LONG, workers, tmp_path)
    assert sorted(nodeid for _, _, nodeid in started) == sorted(DURATIONS)
