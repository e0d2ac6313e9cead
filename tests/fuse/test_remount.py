"""Unmount in the middle of uploads: the next mount on the same cache dir finishes them, and shows
the same entries under the same inode numbers."""

from __future__ import annotations

import os

from tests.harness import Mount, assert_uploaded, remote_files, wait_until, write_random

MiB = 1024 * 1024
SLOW_PUTS = [{"endpoint": "put_file", "kind": "latency", "seconds": 0.3, "probability": 1}]


def test_unmount_mid_upload_then_remount_finishes(tmp_path, emulator):
    cache = tmp_path / "cache"
    sources = {"big.e57": 12 * MiB + 5, "small.jpg": 200_000}
    emulator.set_faults(SLOW_PUTS)
    first = Mount(tmp_path, emulator, cache_dir=cache, extra_args=["--chunk-size", "1M", "--max-chunk-size", "1M"]).start()
    try:
        (first.mountpoint / "s").mkdir()
        expected = {name: write_random(first.mountpoint / "s" / name, size) for name, size in sources.items()}
        wait_until(lambda: remote_files(emulator).get("big.e57", {}).get("received", 0) > 0, 30,
                   what="the first chunk of big.e57")
    finally:
        first.unmount()
    first.assert_no_logged_errors()
    assert not remote_files(emulator)["big.e57"]["complete"]
    emulator.clear_faults()
    with Mount(tmp_path, emulator, cache_dir=cache) as second:
        assert second.wait_settled("s") == {name: "complete" for name in sources}
        assert_uploaded(emulator, second.status_json("s")["upload_id"], expected)
        # The spool still serves reads after the restart.
        assert (second.mountpoint / "s" / "small.jpg").stat().st_size == sources["small.jpg"]


def test_unmount_wait_waits_for_the_queue(tmp_path, emulator):
    emulator.set_faults(SLOW_PUTS)
    mount = Mount(tmp_path, emulator, extra_args=["--chunk-size", "1M", "--max-chunk-size", "1M"]).start()
    try:
        (mount.mountpoint / "w").mkdir()
        sha = write_random(mount.mountpoint / "w" / "scan.las", 6 * MiB + 1)
    finally:
        mount.unmount(wait=True, timeout=120)
    mount.assert_no_logged_errors()
    (remote,) = emulator.files()
    assert remote["name"] == "scan.las" and remote["complete"] and remote["sha256"] == sha
    assert_uploaded(emulator, remote["upload_id"], {"scan.las": sha})


def test_inode_numbers_survive_a_remount(tmp_path, emulator):
    """A file, a folder, a session and its status files keep their inode numbers across an
    unmount and a mount on the same cache dir (they are fs360's, from the journal's ids): asked
    for in the other order after the remount, where libfuse's own node numbers would follow the
    order of the lookups."""
    cache = tmp_path / "cache"
    first = Mount(tmp_path, emulator, cache_dir=cache).start()
    try:
        session = first.mountpoint / "inodes"
        session.mkdir()
        (session / "tree").mkdir()
        (session / "a.part").write_bytes(b"local")
        names = ["inodes", "inodes/tree", "inodes/a.part", "inodes/status", "inodes/status.json", "status"]
        before = {name: os.stat(first.mountpoint / name).st_ino for name in names}
    finally:
        first.unmount()
    with Mount(tmp_path, emulator, cache_dir=cache) as second:
        after = {name: os.stat(second.mountpoint / name).st_ino for name in reversed(names)}
    assert after == before


def test_a_remount_while_get_projects_fails_is_let_in_by_the_session_probe(tmp_path, profiled_emulator):
    """GET /projects is not in the API's guide (api.md Part C); the vendor's server answers it, and
    the key check at mount asks it first. While it fails with 503s, the probe the API documents (a
    made-up session, refused by the API) proves the key: the remount comes up and finishes what
    the first mount left, instead of failing after its three tries while uploads wait."""
    emulator = profiled_emulator
    cache = tmp_path / "cache"
    emulator.set_faults(SLOW_PUTS)
    first = Mount(tmp_path, emulator, cache_dir=cache,
                  extra_args=["--chunk-size", "1M", "--max-chunk-size", "1M"]).start()
    try:
        (first.mountpoint / "s").mkdir()
        expected = {"scan.las": write_random(first.mountpoint / "s" / "scan.las", 3 * MiB + 1)}
        wait_until(lambda: remote_files(emulator).get("scan.las", {}).get("received", 0) > 0, 30,
                   what="the first chunk of scan.las")
    finally:
        first.unmount()
    first.assert_no_logged_errors()
    emulator.set_faults([{"endpoint": "list_projects", "kind": "error_503", "probability": 1}])
    with Mount(tmp_path, emulator, cache_dir=cache) as second:
        assert second.wait_settled("s") == {"scan.las": "complete"}
        assert_uploaded(emulator, second.status_json("s")["upload_id"], expected)
    second.assert_no_logged_errors()
    fired = emulator.faults()["rules"][0]["fired"]
    assert fired >= 1 if emulator.profile == "vendor" else fired == 0  # the default serves no GET /projects
