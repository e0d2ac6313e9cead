"""The daemon's process life: settings as JSON, the key out of every daemon's env and argv,
the lock file, zombies."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from fs360 import control
from fs360.config import Settings
from tests.harness import PYTHON, is_mounted, wait_until

from .common import fs360_env, proc_bytes, run_fs360

pytestmark = pytest.mark.fuse


def _changed(value):
    """A value of the same kind that differs from `value`."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 7
    if isinstance(value, float):
        return value + 0.25
    if isinstance(value, str):
        return value + "-x"
    if isinstance(value, Path):
        return value / "elsewhere"
    if isinstance(value, tuple):
        return value + ("extra",)
    if isinstance(value, dict):
        return {"put_file": (5, 2.5)}
    if value is None:
        return "/etc/ssl/ca.pem"
    raise AssertionError(f"no test value for {value!r}: teach _changed this type")


def test_every_settings_field_survives_the_json_round_trip():
    default = Settings()
    changed = Settings(**{f.name: _changed(getattr(default, f.name)) for f in dataclasses.fields(Settings)})
    for f in dataclasses.fields(Settings):
        assert getattr(changed, f.name) != getattr(default, f.name), f.name
    again = Settings.from_json(changed.to_json())
    assert again == changed
    assert isinstance(again.cache_dir, Path) and isinstance(again.local_only_patterns, tuple)
    with pytest.raises(ValueError, match="unknown settings: nope"):
        Settings.from_json(json.dumps({"nope": 1}))


def _assert_key_hidden(pid: int, key: str) -> None:
    assert key.encode() not in proc_bytes(pid, "environ"), f"the key is in /proc/{pid}/environ"
    assert key.encode() not in proc_bytes(pid, "cmdline"), f"the key is in /proc/{pid}/cmdline"


def test_background_daemon_has_no_key_and_gets_new_options(tmp_path, emulator):
    mountpoint, cache = tmp_path / "mnt", tmp_path / "cache"
    mountpoint.mkdir()
    result = run_fs360(tmp_path, "mount", str(mountpoint), "--api-url", emulator.base_url, "--cache-dir", str(cache),
                       "--no-rate-limits", "--bwlimit", "7M", "--privacy", "link",
                       env={"FS360_API_KEY": emulator.api_key})
    assert result.returncode == 0, result.stderr
    try:
        pid = int((cache / "lock").read_text())
        _assert_key_hidden(pid, emulator.api_key)
        # An option added after the argv rebuild went away reaches the daemon.
        shown = run_fs360(tmp_path, "set", str(mountpoint), "bwlimit=7M")
        assert shown.returncode == 0, shown.stderr
        assert "bwlimit 7M" in shown.stdout
    finally:
        assert run_fs360(tmp_path, "unmount", str(mountpoint)).returncode == 0
    assert not is_mounted(mountpoint)


def test_foreground_serving_process_has_no_key_and_sigterm_unmounts(tmp_path, emulator):
    mountpoint, cache = tmp_path / "mnt", tmp_path / "cache"
    mountpoint.mkdir()
    env = fs360_env(tmp_path, FS360_API_KEY=emulator.api_key)
    fg = subprocess.Popen([PYTHON, "-m", "fs360.cli", "mount", "-f", str(mountpoint), "--api-url", emulator.base_url,
                           "--cache-dir", str(cache), "--no-rate-limits"], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: is_mounted(mountpoint), 30, what="the foreground mount")
        pid = int((cache / "lock").read_text())
        assert pid != fg.pid
        _assert_key_hidden(pid, emulator.api_key)
        (mountpoint / "s").mkdir()
        fg.send_signal(signal.SIGTERM)
        assert fg.wait(60) == 0, fg.stderr.read()
        assert not is_mounted(mountpoint)
        assert not control.pid_running(pid)
    finally:
        if fg.poll() is None:
            fg.kill()
        if is_mounted(mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)])


def test_a_refused_second_mount_keeps_the_daemons_pid_in_the_lock(tmp_path, emulator, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))  # where run_fs360's daemons register
    first, second, cache = tmp_path / "one", tmp_path / "two", tmp_path / "cache"
    first.mkdir()
    second.mkdir()
    env = {"FS360_API_KEY": emulator.api_key}
    assert run_fs360(tmp_path, "mount", str(first), "--api-url", emulator.base_url, "--cache-dir", str(cache),
                     env=env).returncode == 0
    try:
        pid = (cache / "lock").read_text()
        refused = run_fs360(tmp_path, "mount", str(second), "--api-url", emulator.base_url, "--cache-dir",
                            str(cache), env=env)
        assert refused.returncode == 2 and "another fs360 mount" in refused.stderr
        assert (cache / "lock").read_text() == pid
        assert control.daemon_pid(str(first)) == int(pid)
    finally:
        assert run_fs360(tmp_path, "unmount", str(first)).returncode == 0
    assert not control.pid_running(int(pid))


def test_a_zombie_counts_as_gone(tmp_path):
    child = subprocess.Popen([PYTHON, "-c", "pass"])
    try:
        def zombie():
            with open(f"/proc/{child.pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] == "Z"
        wait_until(zombie, 30, 0.02, what="the child to exit")
        os.kill(child.pid, 0)  # it still has a pid: a signal test alone would wait on it
        assert not control.pid_running(child.pid)
        assert control.pid_running(os.getpid())
    finally:
        child.wait()
