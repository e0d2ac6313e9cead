"""What `ls -l` and getfattr show: session folders carry their upload id and project page,
files that can no longer change show no write permission; no libfuse warning at start."""

from __future__ import annotations

import errno
import os
import stat
import subprocess

import pytest

from tests.harness import PYTHON, is_mounted, wait_until, write_marker, write_random

pytestmark = pytest.mark.fuse


def test_session_xattrs_and_read_only_modes(mount):
    session = mount.mountpoint / "Survey"
    session.mkdir()
    with pytest.raises(OSError) as raised:
        os.getxattr(session, "user.fs360.upload_id")
    assert raised.value.errno == errno.ENODATA  # no server session yet
    assert os.listxattr(session) == []
    write_random(session / "a.jpg", 100_000)
    (session / "notes.part").write_bytes(b"x")  # local scratch: never uploaded, always writable
    os.chmod(session / "notes.part", 0o644)
    mount.wait_settled("Survey")
    upload_id = mount.status_json("Survey")["upload_id"]
    assert os.getxattr(session, "user.fs360.upload_id").decode() == upload_id
    assert stat.S_IMODE(os.stat(session / "a.jpg").st_mode) == 0o444  # the server holds it: it cannot change
    assert stat.S_IMODE(os.stat(session / "notes.part").st_mode) == 0o644
    with pytest.raises(PermissionError):  # as the mode says (root passes the kernel's check: fs360 refuses)
        os.truncate(session / "a.jpg", 0)
    write_marker(session / ".create", b"{}")
    project = mount.wait_project("Survey")
    assert project["state"] == "ready"
    assert os.getxattr(session, "user.fs360.project_url").decode() == project["url"]
    assert sorted(os.listxattr(session)) == ["user.fs360.project_url", "user.fs360.upload_id"]


def test_no_libfuse_warning_at_start(tmp_path, emulator):
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    env = dict(os.environ, FS360_API_KEY=emulator.api_key)
    foreground = subprocess.Popen([PYTHON, "-m", "fs360.cli", "mount", "-f", str(mountpoint), "--api-url",
                                   emulator.base_url, "--cache-dir", str(tmp_path / "cache"), "--no-rate-limits"],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: is_mounted(mountpoint) and os.path.exists(mountpoint / "status"), 60, what="the mount")
    finally:
        foreground.terminate()
        _, stderr = foreground.communicate(timeout=60)
    assert "fs360: mounted" in stderr
    assert "Ignoring invalid max threads" not in stderr and "max threads" not in stderr, stderr
