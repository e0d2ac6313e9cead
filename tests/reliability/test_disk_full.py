"""Scenario 4: the spool's disk fills up."""

from __future__ import annotations

import errno
import os


from tests.harness import pid_alive, wait_until, write_random
from tests.ops.common import harness_runtime, run_fs360

from .common import MiB, assert_accounted, pick, run_bounded, settle


def test_spool_disk_full_gives_enospc_and_recovers(small_tmpfs, tmp_path, emulator, mount_factory):
    # Uploads paused: the first files stay unsent (unevictable) while the disk fills.
    mount = mount_factory(emulator, cache_dir=small_tmpfs / "cache")
    assert run_fs360(tmp_path, "pause", str(mount.mountpoint), env=harness_runtime()).returncode == 0
    session = "full"
    folder = mount.mountpoint / session
    folder.mkdir()
    written = {}
    for i in range(2):
        written[f"early-{i}.jpg"] = write_random(folder / f"early-{i}.jpg", 5 * MiB + i, seed=f"early{i}")

    # A writer that wants more than the disk has: ENOSPC, not EIO, not a hang.
    hog = folder / "hog.e57"
    block = os.urandom(MiB)
    fd = os.open(hog, os.O_WRONLY | os.O_CREAT, 0o644)
    error = None
    try:
        for _ in range(64):
            os.write(fd, block)
    except OSError as exc:
        error = exc
    finally:
        try:
            os.close(fd)
        except OSError as exc:
            error = error or exc
    assert error is not None, "64 MiB fit on a 32 MiB tmpfs?"
    assert error.errno == errno.ENOSPC, f"expected ENOSPC, got {error!r}"
    # The user cleans up the partial file at once.
    os.unlink(hog)

    # The daemon is up and answers.
    assert pid_alive(mount.pid)
    result = run_bounded(["ls", "-l", str(folder)], "ls while the disk is full")
    assert result.returncode == 0, result.stderr
    result = run_bounded(["cat", str(folder / "status")], "status while the disk is full")
    assert result.returncode == 0, result.stderr

    # Files written before the disk filled still complete.
    assert run_fs360(tmp_path, "resume", str(mount.mountpoint), env=harness_runtime()).returncode == 0
    wait_until(lambda: all(mount.file_states(session).get(n) == "complete" for n in written), pick(60, 120),
               0.2, what="the early files to complete")

    # Space is back: a new write of a size that did not fit before succeeds and uploads.
    written["after.jpg"] = write_random(folder / "after.jpg", 12 * MiB, seed="after")
    states = settle(mount, session)
    assert states == {n: "complete" for n in written}, states
    assert_accounted(mount, emulator, {session: written})
    assert pid_alive(mount.pid)


def test_a_write_that_finds_the_disk_full_makes_room_from_uploaded_files(small_tmpfs, emulator, mount_factory):
    """The spool copies of uploaded files are only kept while there is room: a write that finds the
    disk full drops them (oldest first) and goes on, whether its bytes go behind the writer
    (1 MiB writes, direct) or through the cache (odd pieces)."""
    mount = mount_factory(emulator, cache_dir=small_tmpfs / "cache")
    session = "room"
    folder = mount.mountpoint / session
    folder.mkdir()
    written = {}
    for i in range(2):  # 18 of the disk's 32 MiB held by uploaded files: more than half
        written[f"done-{i}.jpg"] = write_random(folder / f"done-{i}.jpg", 9 * MiB, seed=f"done{i}")
        wait_until(lambda: mount.file_states(session).get(f"done-{i}.jpg") == "complete", pick(60, 120), 0.1,
                   what=f"done-{i}.jpg to complete")
    # Each of these needs more than is free: without dropping an uploaded copy, ENOSPC.
    written["behind.jpg"] = write_random(folder / "behind.jpg", 14 * MiB, seed="behind")
    wait_until(lambda: mount.file_states(session).get("behind.jpg") == "complete", pick(60, 120), 0.1,
               what="behind.jpg to complete")
    # Unaligned writes of 4,000 bytes: every byte goes through the spool's cache, none direct.
    written["cached.jpg"] = write_random(folder / "cached.jpg", 14 * MiB, seed="cached", piece=4000)
    states = settle(mount, session)
    assert states == {name: "complete" for name in written}, states
    assert_accounted(mount, emulator, {session: written})
