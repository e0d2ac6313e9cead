"""Scenario 5: a server that answers nonsense now and then."""

from __future__ import annotations

import pytest

from tests.harness import pid_alive, request_count, write_random

from .common import MiB, assert_accounted, pick, settle

MALFORMED = [
    {"endpoint": "put_file", "kind": "invalid_json", "count": 2},
    {"endpoint": "put_file", "kind": "html_error", "count": 2},
    {"endpoint": "put_file", "kind": "received_gt_total", "count": 2},
    {"endpoint": "put_file", "kind": "missing_fields", "count": 2},
    {"endpoint": "put_file", "kind": "trickle", "count": 2, "seconds": 2.0},
    {"endpoint": "get_file", "kind": "received_gt_total", "count": 1},
    {"endpoint": "get_file", "kind": "missing_fields", "count": 1},
    {"endpoint": "get_file", "kind": "invalid_json", "count": 1},
    {"endpoint": "get_file", "kind": "trickle", "count": 1, "seconds": 2.0},
    {"endpoint": "open_session", "kind": "missing_fields", "count": 1},
    {"endpoint": "open_session", "kind": "html_error", "count": 1},
]


@pytest.mark.slow(10)
def test_malformed_responses_neither_crash_nor_spin(tmp_path, emulator, mount_factory):
    emulator.set_faults(MALFORMED, seed=7)
    mount = mount_factory(emulator, extra_args=["--chunk-size", "1M", "--max-chunk-size", "1M"])
    session = "garbled"
    (mount.mountpoint / session).mkdir()
    written = {}
    for i in range(5):
        name = f"photo-{i}.jpg"
        written[name] = write_random(mount.mountpoint / session / name, 200_000 + 999 * i, seed=f"m{i}")
    written["tile.laz"] = write_random(mount.mountpoint / session / "tile.laz", 3 * MiB + 5, seed="laz")

    states = settle(mount, session, timeout=pick(120, 300))
    fired = {(r["endpoint"], r["kind"]): r["fired"] for r in emulator.faults()["rules"]}
    assert_accounted(mount, emulator, {session: written})
    assert pid_alive(mount.pid), "the daemon died"
    # Every malformed answer is retryable: each file ends complete after backoff.
    assert states == {n: "complete" for n in written}, mount.status_json(session)["files"]
    assert all(fired.values()), f"some faults never fired, the test proves less than it says: {fired}"

    # Bounded: 6 files (4 PUTs for the chunked one), 17 faults, each costing at most a GET and a PUT.
    requests = request_count(emulator)
    assert requests < 60, f"{requests} requests for 6 files: {emulator.stats()['requests']}"
    # Nothing spins once the work is done: a whole later upload (a witness session, opened and
    # sent after the others settled) costs its own two requests and not one more.
    before = dict(emulator.stats()["requests"])
    (mount.mountpoint / "witness").mkdir()
    write_random(mount.mountpoint / "witness" / "w.jpg", 1000, seed="witness")
    assert settle(mount, "witness") == {"w.jpg": "complete"}
    after = emulator.stats()["requests"]
    grown = {key: n - before.get(key, 0) for key, n in after.items() if n != before.get(key, 0)}
    assert sorted(grown) == ["POST open_session 201", "PUT put_file 200"] and set(grown.values()) == {1}, grown
