"""Scenario 2: SIGKILL the daemon during uploads, mount again on the same cache dir."""

from __future__ import annotations

import pytest

from fs360 import control
from tests.harness import remote_files, wait_until, write_random

from .common import MiB, assert_accounted, pick, settle

CHUNK = MiB


@pytest.mark.slow(9)
def test_daemon_killed_three_times_resumes_from_the_server(tmp_path, emulator, mount_factory):
    files = pick(8, 12)
    size = pick(10 * MiB, 48 * MiB)
    kills = pick(3, 6)
    # Slow every PUT a little so that each kill lands mid-upload.
    emulator.set_faults([{"endpoint": "put_file", "kind": "latency", "seconds": pick(0.12, 0.05)}])
    cache_dir = tmp_path / "kill-cache"
    args = ["--chunk-size", "1M", "--max-chunk-size", "1M", "--workers", "4"]
    mount = mount_factory(emulator, cache_dir=cache_dir, extra_args=args)
    # Nothing goes up before every file is written: on a loaded machine the writing took longer
    # than the uploads, and the kills found little or nothing left to interrupt.
    control.request(str(mount.mountpoint), {"cmd": "pause"})
    session = "crashy"
    (mount.mountpoint / session).mkdir()
    written = {}
    for i in range(files):
        name = f"part-{i:02d}.las"
        written[name] = write_random(mount.mountpoint / session / name, size + 1000 * i, seed=f"kill{i}")
    # close() returns before the kernel's RELEASE reaches the daemon: wait until every file is queued.
    wait_until(lambda: "writing" not in mount.file_states(session).values(), 20, what="all files queued")
    assert remote_files(emulator) == {}
    control.request(str(mount.mountpoint), {"cmd": "resume"})

    interrupted_by = {name: 0 for name in written}   # kills that caught the file half-sent
    received_total = 0
    for kill in range(kills):
        def progressed_mid_file():
            remote = remote_files(emulator)
            total = sum(f["received"] for f in remote.values())
            partial = [n for n, f in remote.items() if 0 < f["received"] < f["total"]]
            return partial if total >= received_total + 2 * CHUNK and partial else None
        wait_until(progressed_mid_file, 60, 0.05, what=f"uploads to progress before kill {kill + 1}")
        mount.kill()
        remote = remote_files(emulator)
        for name, f in remote.items():
            if 0 < f["received"] < f["total"]:
                interrupted_by[name] += 1
        received_total = sum(f["received"] for f in remote.values())
        assert received_total < sum(f["total"] for f in remote.values()) or len(remote) < files, \
            "everything was uploaded before the kill: the scenario tests nothing"
        mount = mount_factory(emulator, cache_dir=cache_dir, extra_args=args)

    assert sum(interrupted_by.values()) >= kills, interrupted_by
    states = settle(mount, session, timeout=pick(120, 600))
    assert states == {name: "complete" for name in written}, states
    emulator.clear_faults()
    assert_accounted(mount, emulator, {session: written})

    upload_id = mount.status_json(session)["upload_id"]
    remote = remote_files(emulator, upload_id)
    over = {name: (remote[name]["overwritten_bytes"], interrupted_by[name]) for name in written
            if remote[name]["overwritten_bytes"] > CHUNK * interrupted_by[name]}
    assert not over, f"re-sent more than one chunk per interrupted file per kill: {over} (bytes, kills)"
    # One server session for all of it: the restarts resumed it, never opened another.
    assert {f["upload_id"] for f in emulator.files()} == {upload_id}
