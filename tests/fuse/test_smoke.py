"""The shortest real path: cp into a mount, the file complete on the server."""

import shutil
import subprocess

from tests.harness import assert_uploaded, write_random


def test_cp_one_file_reaches_the_server(tmp_path, mount, emulator):
    source = tmp_path / "scan.e57"
    sha = write_random(source, 3 * 1024 * 1024 + 17)
    (mount.mountpoint / "site").mkdir()
    subprocess.run(["cp", str(source), str(mount.mountpoint / "site")], check=True)
    assert mount.wait_settled("site") == {"scan.e57": "complete"}
    upload_id = mount.status_json("site")["upload_id"]
    assert_uploaded(emulator, upload_id, {"scan.e57": sha})
    # Read back from the spool while it still holds the data.
    assert (mount.mountpoint / "site" / "scan.e57").read_bytes() == source.read_bytes()
    shutil.rmtree(mount.mountpoint / "site")
    assert not (mount.mountpoint / "site").exists()
