"""fstab and mount(8): a real `mount -t fuse.fs360` through the installed helper, and `umount`."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from fs360 import control
from tests.harness import is_mounted, remote_files, wait_until, write_random

from .common import fs360_env, run_fs360

pytestmark = pytest.mark.fuse

HELPER = Path("/sbin/mount.fuse.fs360")  # libmount looks for helpers in /sbin only


@pytest.fixture
def sbin_held():
    """The helper is one file in /sbin for the whole machine: a test that installs it holds a lock
    on /sbin itself until it has put back what was there, so parallel tests (xdist workers, other
    runs of the suite) take turns."""
    fd = os.open(HELPER.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


@pytest.fixture
def helper(tmp_path, sbin_held):
    if os.getuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount(8)")
    backup = None
    if HELPER.exists():
        backup = tmp_path / "helper.backup"
        shutil.copy2(HELPER, backup)
    result = run_fs360(tmp_path, "install-helper")
    assert result.returncode == 0, result.stderr
    yield HELPER
    if backup:
        shutil.copy2(backup, HELPER)
    else:
        HELPER.unlink(missing_ok=True)


def mount8(tmp_path, *args) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], env=fs360_env(tmp_path), capture_output=True, text=True, timeout=60)


def key_file(tmp_path, key) -> Path:
    path = tmp_path / "api-key"
    path.write_text(key)
    path.chmod(0o600)
    return path


def test_mount_t_fuse_fs360_and_umount(tmp_path, emulator, helper, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    assert "fs360.cli mount-helper" in helper.read_text() and os.access(helper, os.X_OK)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    key = key_file(tmp_path, emulator.api_key)
    options = (f"api_url={emulator.base_url},api_key_file={key},cache_dir={tmp_path / 'cache'},no_rate_limits,"
               "writeback_delay=0.1,allow_other,_netdev,nofail,noauto,x-systemd.automount,defaults")
    result = mount8(tmp_path, "-t", "fuse.fs360", "none", str(mountpoint), "-o", options)
    assert result.returncode == 0, result.stderr + result.stdout
    try:
        line = next(line for line in Path("/proc/mounts").read_text().splitlines() if f" {mountpoint} " in line)
        assert " fuse.fs360 " in line and "allow_other" in line
        pid = control.daemon_pid(str(mountpoint))
        assert pid and emulator.api_key.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
        (mountpoint / "s").mkdir()
        sha = write_random(mountpoint / "s" / "a.jpg", 100_000)
        wait_until(lambda: remote_files(emulator).get("a.jpg", {}).get("complete"), 60, what="the upload")
        assert remote_files(emulator)["a.jpg"]["sha256"] == sha
    finally:
        umounted = subprocess.run(["umount", str(mountpoint)], capture_output=True, text=True)
    assert umounted.returncode == 0, umounted.stderr
    assert not is_mounted(mountpoint)
    wait_until(lambda: not control.pid_running(pid), 30, what="the daemon to exit after umount")


def test_an_fstab_line(tmp_path, emulator, helper, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    key = key_file(tmp_path, emulator.api_key)
    fstab = tmp_path / "fstab"
    fstab.write_text(f"none {mountpoint} fuse.fs360 api_url={emulator.base_url},api_key_file={key},"
                     f"cache_dir={tmp_path / 'cache'},_netdev,nofail 0 0\n")
    result = mount8(tmp_path, "--fstab", str(fstab), str(mountpoint))
    assert result.returncode == 0, result.stderr + result.stdout
    try:
        assert is_mounted(mountpoint)
        assert "status" in os.listdir(mountpoint)
    finally:
        umounted = subprocess.run(["umount", str(mountpoint)], capture_output=True, text=True)
    assert umounted.returncode == 0, umounted.stderr
    assert not is_mounted(mountpoint)


def test_a_bad_option_fails_the_mount_with_a_message(tmp_path, helper):
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    result = mount8(tmp_path, "-t", "fuse.fs360", "none", str(mountpoint), "-o", "colour=blue")
    assert result.returncode != 0
    assert "-o colour: unknown option" in result.stderr
    assert not is_mounted(mountpoint)
