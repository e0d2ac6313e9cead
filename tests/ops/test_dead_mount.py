"""The mountpoint before a mount (issue 20): a dead mount left by `kill -9` is released and
mounted again, a non-empty folder is refused unless asked, a server that never answers is
reported within the start-up check's deadline, and a mount libfuse refuses says why."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess

import pytest

from fs360.config import Settings
from tests.harness import PYTHON, assert_uploaded, is_mounted, pid_alive, remote_files, wait_until, write_random

from .common import fs360_env, harness_runtime, run_fs360

pytestmark = pytest.mark.fuse
MiB = 1024 * 1024


def dead(path) -> bool:
    try:
        os.statvfs(path)  # always asked of the daemon (a stat may come from the kernel's cache)
    except OSError as exc:
        return exc.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    return False


def kill_daemon(mount) -> None:
    """kill -9, and nothing else: the mount stays behind, dead (ENOTCONN)."""
    pid = mount.pid
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not pid_alive(pid), 10, what="the daemon to die")
    assert dead(mount.mountpoint), "kill -9 should leave a dead mount behind"


def test_kill_9_then_mount_on_the_same_mountpoint_goes_on(tmp_path, emulator, mount_factory):
    mount = mount_factory(emulator, extra_args=["--chunk-size", "256k", "--bwlimit", "256k"])
    (mount.mountpoint / "scan").mkdir()
    sha = write_random(mount.mountpoint / "scan" / "cloud.e57", 4 * MiB, seed="dead")
    wait_until(lambda: remote_files(emulator).get("cloud.e57", {}).get("received", 0) > 0, 60, 0.05,
               what="the upload to start")
    kill_daemon(mount)

    again = subprocess.run(mount.command(), env=dict(os.environ, FS360_API_KEY=emulator.api_key),
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert f"released the dead mount at {mount.mountpoint}" in again.stderr
    assert is_mounted(mount.mountpoint) and not dead(mount.mountpoint)
    lifted = run_fs360(tmp_path, "set", str(mount.mountpoint), "bwlimit=off", env=harness_runtime())
    assert lifted.returncode == 0, lifted.stderr
    assert mount.wait_settled("scan", timeout=60) == {"cloud.e57": "complete"}
    assert_uploaded(emulator, None, {"cloud.e57": sha})


def test_recover_releases_a_dead_mount_and_leaves_a_live_one(tmp_path, emulator, mount_factory):
    """What the unit's ExecStartPre runs before each (re)start."""
    mount = mount_factory(emulator)
    live = run_fs360(tmp_path, "recover", str(mount.mountpoint))
    assert live.returncode == 0 and "not a dead mount" in live.stdout
    typo = run_fs360(tmp_path, "recover", str(tmp_path / "no-such-mount"))
    assert typo.returncode == 2 and typo.stderr == f"fs360: {tmp_path / 'no-such-mount'} does not exist\n"
    assert is_mounted(mount.mountpoint) and not dead(mount.mountpoint)
    kill_daemon(mount)
    released = run_fs360(tmp_path, "recover", str(mount.mountpoint))
    assert released.returncode == 0, released.stderr
    assert "released the dead mount" in released.stdout
    assert not is_mounted(mount.mountpoint) and not dead(mount.mountpoint)


def test_unmount_of_a_dead_mount_a_program_holds_says_what_to_do(tmp_path, emulator, mount_factory):
    """It said only fusermount3's "Device or resource busy"."""
    mount = mount_factory(emulator)
    (mount.mountpoint / "s").mkdir()
    holder = subprocess.Popen(["sh", "-c", 'exec 3>"$1"; echo open; read line', "sh",
                               str(mount.mountpoint / "s" / "open.jpg")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        kill_daemon(mount)
        refused = run_fs360(tmp_path, "unmount", str(mount.mountpoint), env=harness_runtime())
        assert refused.returncode == 2
        assert refused.stderr.startswith(f"fs360: the daemon of {mount.mountpoint} is gone (killed?) and a program "
                                         f"still has a file open there"), refused.stderr
        assert f"run fs360 recover {mount.mountpoint}" in refused.stderr
    finally:
        holder.kill()
        holder.wait()
    assert run_fs360(tmp_path, "recover", str(mount.mountpoint)).returncode == 0
    assert not is_mounted(mount.mountpoint)


def test_a_non_empty_mountpoint_is_refused_unless_asked(tmp_path, emulator):
    mountpoint = tmp_path / "full"
    mountpoint.mkdir()
    (mountpoint / "kept.txt").write_text("hidden while mounted")
    args = ["mount", str(mountpoint), "--api-url", emulator.base_url, "--cache-dir", str(tmp_path / "cache"),
            "--no-rate-limits"]
    env = {"FS360_API_KEY": emulator.api_key}
    refused = run_fs360(tmp_path, *args, env=env)
    assert refused.returncode == 2
    assert refused.stderr.splitlines() == [f"fs360: {mountpoint} is not empty (1 entries): the mount would hide "
                                           f"them; use an empty folder, or --allow-non-empty"]
    assert not is_mounted(mountpoint)
    asked = run_fs360(tmp_path, *args, "--allow-non-empty", env=env)
    assert asked.returncode == 0, asked.stderr
    try:
        assert is_mounted(mountpoint)
    finally:
        assert run_fs360(tmp_path, "unmount", str(mountpoint)).returncode == 0
    assert (mountpoint / "kept.txt").read_text() == "hidden while mounted"


def test_a_missing_mountpoint_says_so(tmp_path):
    result = run_fs360(tmp_path, "mount", str(tmp_path / "nowhere"), env={"FS360_API_KEY": "sk_x"})
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"fs360: {tmp_path / 'nowhere'} does not exist: make it first "
                                          f"(mkdir -p {tmp_path / 'nowhere'})"]


def test_a_server_that_never_answers_is_reported_within_the_start_up_deadline(tmp_path):
    """The server accepts connections (the kernel's backlog) and never says a word: the mount is
    refused with the cause before systemd's 90 s start limit (it was silent for 92 s). Here the
    check's deadline is 4 s (the default's 25 s is the same path, waited out)."""
    assert Settings().credential_check_deadline < 30
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/api/v1"
        (tmp_path / "mnt").mkdir()
        # The timeout only guards against a hang: the mount must end by itself, with the reason.
        result = run_fs360(tmp_path, "mount", str(tmp_path / "mnt"), "--api-url", url, "--cache-dir",
                           str(tmp_path / "cache"), "--timing", "credential_check_deadline=4",
                           env={"FS360_API_KEY": "sk_x"}, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "did not answer" in lines[0], result.stderr
    assert not is_mounted(tmp_path / "mnt")


@pytest.mark.skipif(os.getuid() != 0 or not (shutil.which("unshare") and shutil.which("setpriv")),
                    reason="needs root, unshare and setpriv to take /dev/fuse away")
def test_no_access_to_dev_fuse_is_said_in_one_line_and_doctor_knows(tmp_path, emulator):
    """Today's user without access to /dev/fuse read "mounting ... failed: 4". Here /dev/fuse is
    an unreadable file in a mount namespace of the test's own, and the process runs without the
    capabilities that would let root open it anyway."""
    blocked = tmp_path / "no-fuse"
    blocked.write_bytes(b"")
    blocked.chmod(0)
    (tmp_path / "mnt").mkdir()

    def without_dev_fuse(*args) -> subprocess.CompletedProcess:
        script = (f'mount --bind "{blocked}" /dev/fuse && exec setpriv --bounding-set=-dac_override,'
                  f'-dac_read_search --inh-caps=-dac_override,-dac_read_search "$@"')
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                               PYTHON, "-m", "fs360.cli", *args],
                              env=fs360_env(tmp_path, FS360_API_KEY=emulator.api_key),
                              capture_output=True, text=True, timeout=60)

    mounted = without_dev_fuse("mount", str(tmp_path / "mnt"), "--api-url", emulator.base_url,
                               "--cache-dir", str(tmp_path / "cache"), "--no-rate-limits")
    assert mounted.returncode != 0
    assert mounted.stderr.splitlines() == [
        f"fs360: cannot mount {tmp_path / 'mnt'}: /dev/fuse: not readable and writable by you; "
        f"fix: chmod 666 /dev/fuse (as root; in a container: --device /dev/fuse)"], mounted.stderr
    assert not is_mounted(tmp_path / "mnt")
    doctor = without_dev_fuse("doctor", "--api-url", emulator.base_url, "--cache-dir", str(tmp_path / "cache"))
    assert doctor.returncode == 1
    assert "FAIL /dev/fuse: not readable and writable by you -> fix: chmod 666 /dev/fuse" in doctor.stdout
