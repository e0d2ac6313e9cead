"""Scenario 6: the server session expires mid-upload."""

from __future__ import annotations

from tests.harness import remote_files, wait_until, write_random

from .common import MiB, assert_accounted, pick, settle


def test_session_expiry_mid_upload_resends_everything_and_creates_the_project(tmp_path, profiled_emulator,
                                                                              mount_factory):
    emulator = profiled_emulator
    emulator.set_faults([{"endpoint": "put_file", "kind": "latency", "seconds": 0.1}])
    mount = mount_factory(emulator, extra_args=["--chunk-size", "1M", "--max-chunk-size", "1M"])
    session = "expiring"
    (mount.mountpoint / session).mkdir()
    written = {}
    for i in range(pick(3, 10)):
        name = f"small-{i}.jpg"
        written[name] = write_random(mount.mountpoint / session / name, 100_000 + i, seed=f"s{i}")
    for i in range(pick(3, 6)):
        name = f"big-{i}.e57"
        written[name] = write_random(mount.mountpoint / session / name, pick(6 * MiB, 30 * MiB) + i, seed=f"b{i}")
    (mount.mountpoint / session / ".create").write_text('{"title": "after expiry"}')

    # Expire once some files are complete and some are half-way.
    def midway():
        remote = remote_files(emulator)
        done = [f for f in remote.values() if f["complete"]]
        partial = [f for f in remote.values() if 0 < f["received"] < f["total"]]
        return done and partial
    wait_until(midway, 60, 0.05, what="some files complete and some half-sent")
    old_id = mount.status_json(session)["upload_id"]
    assert old_id
    emulator.expire(old_id)

    states = settle(mount, session, timeout=pick(120, 400))
    assert states == {n: "complete" for n in written}, states
    project = mount.wait_project(session, timeout=pick(60, 200))
    emulator.clear_faults()
    new_id = mount.status_json(session)["upload_id"]
    assert new_id and new_id != old_id, "no new upload session was opened"
    # Every file, including those complete in the dead session, was sent again to the new one.
    assert_accounted(mount, emulator, {session: written})
    assert set(remote_files(emulator, new_id)) == set(written)
    assert project["state"] == "ready", project
    made = [p for p in emulator.projects() if p["upload_id"] == new_id]
    assert len(made) == 1 and made[0]["name"] == project["name"], emulator.projects()
    assert not [p for p in emulator.projects() if p["upload_id"] == old_id]
