"""Scenario 1: many files through a server that fails 10-20 % of its requests."""

from __future__ import annotations

import collections

import pytest

from tests.harness import write_random

from .common import CHAOS, MiB, assert_accounted, pick, settle

# About 15 % of requests to each endpoint meet a fault (the latency modifier aside).
PUT_FAULTS = [
    # Sure to fire (the dice below may miss them when chunks grow and PUTs are fewer).
    {"endpoint": "put_file", "kind": "cut_body", "every": 15, "count": 2},
    {"endpoint": "put_file", "kind": "drop_response", "every": 17, "count": 2},
    {"endpoint": "put_file", "kind": "error_500", "probability": 0.03},
    {"endpoint": "put_file", "kind": "error_503", "probability": 0.03},
    {"endpoint": "put_file", "kind": "cut_body", "probability": 0.04},
    {"endpoint": "put_file", "kind": "drop_response", "probability": 0.04},
    {"endpoint": "put_file", "kind": "rate_limit_burst", "probability": 0.02, "burst": 3, "retry_after": 1},
]
OTHER_FAULTS = [
    {"endpoint": "*", "kind": "latency", "probability": 0.1, "seconds": 0.2},
    {"endpoint": "get_file", "kind": "error_502", "probability": 0.08},
    {"endpoint": "get_file", "kind": "drop_response", "probability": 0.07},
    {"endpoint": "open_session", "kind": "error_503", "probability": 0.15},
    {"endpoint": "create_project", "kind": "drop_response", "probability": 0.15},
    {"endpoint": "create_project", "kind": "error_500", "probability": 0.05},
    {"endpoint": "get_project", "kind": "error_503", "probability": 0.15},
]


@pytest.mark.slow(10)
def test_uploads_survive_a_faulty_server(tmp_path, emulator, mount_factory):
    small_files = pick(58, 297)
    big_files = pick(2, 3)
    big_size = pick(20 * MiB, 100 * MiB)
    emulator.set_faults(PUT_FAULTS + OTHER_FAULTS, seed=20240917)
    mount = mount_factory(emulator, extra_args=["--chunk-size", pick("4M", "8M"), "--workers", "4"])
    session = "faulty"
    (mount.mountpoint / session).mkdir()
    written = {}
    for i in range(big_files):
        name = f"cloud-{i}.e57"
        written[name] = write_random(mount.mountpoint / session / name, big_size + 4097 * i, seed=f"big{i}")
    for i in range(small_files):
        name = f"img-{i:03d}.jpg"
        size = 1 + (i * 37_813) % (600 * 1024)
        written[name] = write_random(mount.mountpoint / session / name, size, seed=f"small{i}")
    (mount.mountpoint / session / ".create").write_text('{"title": "through faults"}')

    states = settle(mount, session, timeout=pick(150, 1200))
    assert set(states) == set(written)
    project = mount.wait_project(session, timeout=pick(60, 300))

    fired = collections.Counter()
    for rule in emulator.faults()["rules"]:
        fired[(rule["endpoint"], rule["kind"])] += rule["fired"]
    emulator.clear_faults()
    assert_accounted(mount, emulator, {session: written})
    # Retryable faults only: every file must get there, and the project be made from all of them.
    assert states == {name: "complete" for name in written}, \
        {n: s for n, s in states.items() if s != "complete"}
    upload_id = mount.status_json(session)["upload_id"]
    assert project["state"] == "ready", project
    projects = [p for p in emulator.projects() if p["upload_id"] == upload_id]
    assert len(projects) == 1 and projects[0]["name"] == project["name"], projects
    # The faults did happen (else this test proves nothing).
    assert fired[("put_file", "cut_body")] and fired[("put_file", "drop_response")], fired
    if CHAOS:
        assert all(n > 0 for (ep, kind), n in fired.items() if ep == "put_file"), fired
