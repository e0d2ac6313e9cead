"""What is sent is checked, on a real mount: a spool file changed behind fs360's back after
`cp` closed it is never completed on the server, and the user sees why in `status`, in
`user.fs360.error` and in the log."""

from __future__ import annotations

import os
import subprocess

from tests.harness import make_sources, wait_until
from tests.ops.common import harness_runtime, run_fs360

MiB = 1024 * 1024
REASON = "no longer matches the file as it was written"


def test_a_spool_file_changed_behind_the_mounts_back_is_never_completed(tmp_path, emulator, mount_factory):
    mount = mount_factory(emulator, extra_args=["--chunk-size", "1M", "--max-chunk-size", "1M"])
    mount.expected_errors.append(REASON)  # logged at ERROR: that is the point
    make_sources(tmp_path / "src", {"scan.e57": 3 * MiB + 5})
    (mount.mountpoint / "s").mkdir()
    # Paused: the file is queued (its sha256 journaled) and waits before its first PUT.
    assert run_fs360(tmp_path, "pause", str(mount.mountpoint), env=harness_runtime()).returncode == 0
    subprocess.run(["cp", str(tmp_path / "src" / "scan.e57"), str(mount.mountpoint / "s")], check=True)
    wait_until(lambda: mount.file_states("s").get("scan.e57") in ("pending", "uploading"), 30,
               what="cp's file to be queued")
    (spool,) = (mount.cache_dir / "spool").iterdir()
    with open(spool, "r+b") as f:  # another program writes in fs360's cache
        f.seek(2 * MiB + 10)
        f.write(b"changed")
    assert run_fs360(tmp_path, "resume", str(mount.mountpoint), env=harness_runtime()).returncode == 0

    assert mount.wait_settled("s") == {"scan.e57": "rejected"}
    error = os.getxattr(mount.mountpoint / "s" / "scan.e57", "user.fs360.error").decode()
    assert REASON in error and "copy the file again into a new folder" in error
    status = (mount.mountpoint / "s" / "status").read_text()
    assert REASON in status
    assert any(REASON in line and " ERROR " in line for line in mount.log_path.read_text().splitlines())
    (remote,) = emulator.files()
    assert remote["received"] == 3 * MiB and not remote["complete"], remote  # the last chunk never went
