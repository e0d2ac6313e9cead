"""systemd: sd_notify from `fs360 mount -f` (a fake notify socket), the unit, install-unit."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from fs360.systemd import Notifier, escape_path, unit_text
from tests.harness import PYTHON, FakeManager, is_mounted, write_random

from .common import fs360_env, run_fs360

pytestmark = pytest.mark.fuse


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_foreground_mount_speaks_sd_notify(tmp_path, emulator, abstract):
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    address = f"@fs360-test-{os.getpid()}-{time.monotonic_ns()}" if abstract else str(tmp_path / "notify")
    manager = FakeManager(address, mountpoint)
    env = fs360_env(tmp_path, FS360_API_KEY=emulator.api_key, NOTIFY_SOCKET=address)
    fg = subprocess.Popen([PYTHON, "-m", "fs360.cli", "mount", "-f", str(mountpoint), "--api-url", emulator.base_url,
                           "--cache-dir", str(tmp_path / "cache"), "--no-rate-limits", "--writeback-delay", "0.1"],
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        ready = manager.receive_until(lambda m: "READY=1" in m.split("\n"))
        assert manager.mounted_at_ready, "READY=1 came before the mount answered"
        assert f"MAINPID={fg.pid}" in ready
        (mountpoint / "s").mkdir()
        write_random(mountpoint / "s" / "a.jpg", 300_000)
        manager.receive_until(lambda m: m.startswith("STATUS=") and "1/1 complete" in m)
        fg.send_signal(signal.SIGTERM)
        manager.receive_until(lambda m: m == "STOPPING=1")
        assert fg.wait(60) == 0, fg.stderr.read()
        assert not is_mounted(mountpoint)
        status = [m for m in manager.messages if m.startswith("STATUS=")]
        assert all("\n" not in m for m in status)
        assert any("uploading" in m and "pending" in m and "failed" in m for m in status)
    finally:
        if fg.poll() is None:
            fg.kill()
            fg.wait()
        if is_mounted(mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)])
        manager.sock.close()


def test_a_failed_mount_never_says_ready(tmp_path, emulator):
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    manager = FakeManager(str(tmp_path / "notify"), mountpoint)
    result = subprocess.run([PYTHON, "-m", "fs360.cli", "mount", "-f", str(mountpoint), "--api-url",
                             emulator.base_url, "--cache-dir", str(tmp_path / "cache")],
                            env=fs360_env(tmp_path, FS360_API_KEY="sk_wrong", NOTIFY_SOCKET=str(tmp_path / "notify")),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "key was refused" in result.stderr
    manager.sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        manager.sock.recv(4096)
    manager.sock.close()


def test_notifier_without_socket_is_silent():
    assert not Notifier("")
    Notifier("").send("READY=1")  # nothing to send to, nothing raised


def test_unit_template_and_install_unit(tmp_path):
    text = unit_text()
    assert "Type=notify" in text and "mount -f %f" in text and "LoadCredential=fs360-api-key:" in text
    assert escape_path("/mnt/360") == "mnt-360"
    assert escape_path("/home/a b/my-scans") == "home-a\\x20b-my\\x2dscans"
    printed = run_fs360(tmp_path, "install-unit", "/mnt/360", "--print")
    assert printed.returncode == 0 and "fs360@mnt-360.service" in printed.stdout
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    log = tmp_path / "systemctl.log"
    (fake_bin / "systemctl").write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    (fake_bin / "systemctl").chmod(0o755)
    installed = run_fs360(tmp_path, "install-unit", "/mnt/360",
                          env={"PATH": f"{fake_bin}:{os.environ['PATH']}"})
    assert installed.returncode == 0, installed.stderr
    assert (tmp_path / "config" / "systemd" / "user" / "fs360@.service").read_text() == text
    assert "--user enable fs360@mnt-360.service" in log.read_text()
    missing = run_fs360(tmp_path, "install-unit", "/mnt/360", env={"PATH": str(tmp_path / "empty")})
    assert missing.returncode == 0 and "systemctl is missing: not enabled" in missing.stdout
    config = tmp_path / "other-config"
    config.mkdir()
    (config / "systemd").write_text("")  # a unit dir that cannot be made, even by root
    unwritable = run_fs360(tmp_path, "install-unit", "/mnt/360", env={"XDG_CONFIG_HOME": str(config)})
    assert unwritable.returncode != 0 and "Traceback" not in unwritable.stderr, unwritable.stderr
    assert unwritable.stderr.startswith(f"fs360: cannot write {config / 'systemd' / 'user'}: Not a directory")
    (config / "fs360").write_text("")  # nor can the config file be read
    unreadable = run_fs360(tmp_path, "install-unit", "/mnt/360", env={"XDG_CONFIG_HOME": str(config)})
    assert unreadable.stderr == f"fs360: cannot read the config file {config / 'fs360' / 'config.toml'}: Not a directory\n"


def test_the_unit_clears_a_dead_mount_names_its_documentation_and_the_configured_key(tmp_path):
    text = unit_text()
    assert "After=network-online.target" not in text and "Wants=network" not in text  # no such user unit
    assert "\nDocumentation=" in text and "loginctl enable-linger" in text
    assert "ExecStartPre=-" in text and " recover %f" in text  # releases a dead mount (fs360 recover)
    assert "LoadCredential=fs360-api-key:%E/fs360/api-key" in text
    key = tmp_path / "keys" / "360.key"
    key.parent.mkdir()
    key.write_text("sk_test\n")
    key.chmod(0o600)
    (tmp_path / "config" / "fs360").mkdir(parents=True)
    (tmp_path / "config" / "fs360" / "config.toml").write_text(f'api_key_file = "{key}"\n')
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "systemctl").write_text("#!/bin/sh\nexit 0\n")
    (fake_bin / "loginctl").write_text("#!/bin/sh\necho Linger=no\n")
    for tool in ("systemctl", "loginctl"):
        (fake_bin / tool).chmod(0o755)
    installed = run_fs360(tmp_path, "install-unit", "/mnt/360", env={"PATH": f"{fake_bin}:{os.environ['PATH']}"})
    assert installed.returncode == 0, installed.stderr
    unit = (tmp_path / "config" / "systemd" / "user" / "fs360@.service").read_text()
    assert f"LoadCredential=fs360-api-key:{key}\n" in unit
    assert f"the key is read from {key}" in installed.stdout
    assert "loginctl enable-linger $USER" in installed.stdout


def test_the_shipped_unit_is_the_generated_one():
    from pathlib import Path

    from fs360.systemd import PIPX_COMMAND
    shipped = Path(__file__).resolve().parents[2] / "contrib" / "fs360@.service"
    assert shipped.read_text() == unit_text(PIPX_COMMAND)
