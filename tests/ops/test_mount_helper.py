"""fstab and mount(8): a real `mount -t fuse.fs360` through the installed helper, and `umount`.

libmount looks for helpers in /sbin only, and a test writes only inside its temporary dir: the
helper is installed under a prefix there, and mount(8) runs in a mount namespace of its own
whose /sbin is an overlay holding it. The test's dir is a shared mount, so the fuse mount made
in that namespace shows in the test's own (the overlay does not: / is private)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fs360 import control
from tests.harness import is_mounted, remote_files, wait_until, write_random

from .common import fs360_env, run_fs360

pytestmark = pytest.mark.fuse

SBIN = os.path.realpath("/sbin")  # /usr/sbin where /sbin is a link to it
WITH_PRIVATE_SBIN = ('mount -t overlay overlay -o lowerdir="$0",upperdir="$1",workdir="$2" "$0" && shift 2 '
                     '&& exec "$@"')


@pytest.fixture
def helper(tmp_path):
    if os.getuid() != 0 or not all(shutil.which(tool) for tool in ("mount", "umount", "unshare")):
        pytest.skip("needs root, mount(8) and unshare(1)")
    subprocess.run(["mount", "--bind", str(tmp_path), str(tmp_path)], check=True)
    subprocess.run(["mount", "--make-shared", str(tmp_path)], check=True)
    try:
        result = run_fs360(tmp_path, "install-helper", "--prefix", str(tmp_path / "root"))
        assert result.returncode == 0, result.stderr
        (tmp_path / "overlay-work").mkdir()
        yield tmp_path / "root" / "sbin" / "mount.fuse.fs360"
    finally:
        subprocess.run(["umount", "-l", str(tmp_path)], capture_output=True)


def mount8(tmp_path, *args) -> subprocess.CompletedProcess:
    """mount(8) with the test's helper in /sbin, in a mount namespace of its own."""
    command = ["unshare", "-m", "--propagation", "unchanged", "sh", "-c", WITH_PRIVATE_SBIN, SBIN,
               str(tmp_path / "root" / "sbin"), str(tmp_path / "overlay-work"), "mount", *args]
    return subprocess.run(command, env=fs360_env(tmp_path), capture_output=True, text=True, timeout=60)


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


def test_install_helper_keeps_another_installations_helper_without_force(tmp_path):
    prefix = tmp_path / "root"
    assert run_fs360(tmp_path, "install-helper", "--prefix", str(prefix)).returncode == 0
    helper = prefix / "sbin" / "mount.fuse.fs360"
    ours = helper.read_text()
    again = run_fs360(tmp_path, "install-helper", "--prefix", str(prefix))
    assert again.returncode == 0 and helper.read_text() == ours  # the same installation: rewritten as it was
    other = ours.replace(f"exec {sys.executable} ", "exec /opt/other/bin/python ")
    helper.write_text(other)
    refused = run_fs360(tmp_path, "install-helper", "--prefix", str(prefix))
    assert refused.returncode == 2
    assert "belongs to another fs360 installation (it runs /opt/other/bin/python); --force" in refused.stderr
    assert helper.read_text() == other
    helper.write_text("#!/bin/sh\nexec something-else\n")
    assert "is not fs360's helper" in run_fs360(tmp_path, "install-helper", "--prefix", str(prefix)).stderr
    forced = run_fs360(tmp_path, "install-helper", "--prefix", str(prefix), "--force")
    assert forced.returncode == 0 and helper.read_text() == ours
    assert os.access(helper, os.X_OK)


def test_a_bad_option_fails_the_mount_with_a_message(tmp_path, helper):
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    result = mount8(tmp_path, "-t", "fuse.fs360", "none", str(mountpoint), "-o", "colour=blue")
    assert result.returncode != 0
    assert "-o colour: unknown option" in result.stderr
    assert not is_mounted(mountpoint)
