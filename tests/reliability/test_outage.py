"""Scenario 3: the server goes away for a while; uploads pause and resume by themselves."""

from __future__ import annotations

import time

import pytest

from tests.harness import pid_alive, remote_files, wait_until, write_random

from .common import MiB, assert_accounted, pick, run_bounded, settle


@pytest.mark.slow(8)
def test_server_down_then_back_uploads_resume_mount_stays_responsive(tmp_path, emulator_factory, mount_factory):
    emulator = emulator_factory("--processing-seconds", "1", "--no-rate-limits")
    down_for = pick(3.0, 30.0)  # test mounts retry within a second (FAST_TIMINGS)
    emulator.set_faults([{"endpoint": "put_file", "kind": "latency", "seconds": 0.1}])
    mount = mount_factory(emulator, extra_args=["--chunk-size", "1M", "--max-chunk-size", "1M"])
    session = "outage"
    (mount.mountpoint / session).mkdir()
    written = {}
    for i in range(pick(6, 20)):
        name = f"scan-{i:02d}.ply"
        written[name] = write_random(mount.mountpoint / session / name, pick(6 * MiB, 24 * MiB) + i, seed=f"out{i}")
    wait_until(lambda: any(0 < f["received"] < f["total"] for f in remote_files(emulator).values()), 30, 0.05,
               what="an upload in progress")

    violations_before = emulator.violations()
    emulator.stop()
    started = time.monotonic()
    saw_failed_with_reason = False
    probes = 0
    # A file written while the server is away is staged like any other.
    name = "during-outage.jpg"
    written[name] = write_random(mount.mountpoint / session / name, 300 * 1024, seed="during")
    # Probe for the whole outage, and at least five rounds however slow the machine is.
    while probes < 5 or time.monotonic() - started < down_for:
        result = run_bounded(["ls", "-la", str(mount.mountpoint / session)], "ls of the session")
        assert result.returncode == 0, result.stderr
        assert name.encode() in result.stdout
        result = run_bounded(["cat", str(mount.mountpoint / session / "status")], "reading status")
        assert result.returncode == 0 and b"session" in result.stdout, result.stderr
        result = run_bounded(["cat", str(mount.mountpoint / "status")], "reading the root status")
        assert result.returncode == 0, result.stderr
        result = run_bounded(["stat", str(mount.mountpoint / session / name)], "stat of a file")
        assert result.returncode == 0, result.stderr
        status = mount.status_json(session)
        if any(f["state"] == "failed" and f["error"] for f in status["files"]):
            saw_failed_with_reason = True
        assert not any(f["state"] == "complete" for f in status["files"] if f["name"] == name)
        probes += 1
        time.sleep(0.25)  # a user's pace between probes; the outage's length is what bounds the loop
    if not saw_failed_with_reason:
        wait_until(lambda: any(f["state"] == "failed" and f["error"] for f in mount.status_json(session)["files"]),
                   down_for, 0.2, what="status to show a failed file with its reason while the server is down")
    assert pid_alive(mount.pid)

    emulator.start()  # same data dir, same port
    states = settle(mount, session, timeout=pick(120, 400))
    assert states == {n: "complete" for n in written}, states
    emulator.clear_faults()
    assert_accounted(mount, emulator, {session: written}, violations_before=violations_before)
