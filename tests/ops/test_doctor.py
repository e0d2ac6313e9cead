"""`fs360 doctor`: one line per check, the fix for each failure, exit 1 when any fails."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from tests.harness import pid_alive, wait_until

from .common import harness_runtime, run_fs360


def lines_of(result) -> dict[str, str]:
    out = {}
    for line in result.stdout.splitlines():
        verdict, _, rest = line.partition(" ")
        name = rest.split(":", 1)[0].strip()
        out[name] = line
    return out


def test_a_healthy_setup(tmp_path, emulator):
    (tmp_path / "mnt").mkdir()
    result = run_fs360(tmp_path, "doctor", str(tmp_path / "mnt"), "--api-url", emulator.base_url, "--cache-dir",
                       str(tmp_path / "cache"), env={"FS360_API_KEY": emulator.api_key})
    assert result.returncode == 0, result.stdout + result.stderr
    checks = lines_of(result)
    for name in ("config", "/dev/fuse", "fusermount3", "dead mounts", "cache dir", "key", "clock"):
        assert checks[name].startswith("ok"), checks
    assert f"no config file at {tmp_path}/config/fs360/config.toml" in checks["config"]
    assert "within" in checks["clock"] and "of the server" in checks["clock"]  # the emulator's Date
    assert emulator.api_key not in result.stdout
    (tmp_path / "config" / "fs360").mkdir(parents=True)
    (tmp_path / "config" / "fs360" / "config.toml").write_text(f'api_url = "{emulator.base_url}"\n')
    result = run_fs360(tmp_path, "doctor", str(tmp_path / "mnt"), "--cache-dir", str(tmp_path / "cache"),
                       env={"FS360_API_KEY": emulator.api_key})
    assert lines_of(result)["config"] == f"ok   config: read {tmp_path}/config/fs360/config.toml"
    assert result.returncode == 0, result.stdout


def test_every_check_runs_past_a_bad_option(tmp_path, emulator):
    result = run_fs360(tmp_path, "doctor", "--api-url", emulator.base_url, "--cache-dir", str(tmp_path / "cache"),
                       "-o", "no_such_option=1", env={"FS360_API_KEY": emulator.api_key})
    assert result.returncode == 1
    checks = lines_of(result)
    assert checks["settings"].startswith("FAIL") and "no_such_option" in checks["settings"]
    for name in ("config", "/dev/fuse", "fusermount3", "cache dir", "clock"):
        assert checks[name].startswith("ok"), checks


@pytest.mark.fuse
def test_a_dead_mount_is_found_with_its_fix(tmp_path, emulator, mount_factory):
    mount = mount_factory(emulator)
    pid = mount.pid
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not pid_alive(pid), 10, what="the daemon to die")
    try:
        result = run_fs360(tmp_path, "doctor", str(mount.mountpoint), "--api-url", emulator.base_url,
                           "--cache-dir", str(tmp_path / "other-cache"), env={"FS360_API_KEY": emulator.api_key,
                                                                              **harness_runtime()})
        checks = lines_of(result)
        assert result.returncode == 1
        assert checks["dead mounts"] == (f"FAIL dead mounts: {mount.mountpoint} (its daemon is gone) -> fix: "
                                         f"fusermount3 -uz {mount.mountpoint}, then mount it again (unfinished "
                                         f"uploads resume)")
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mount.mountpoint)], capture_output=True)


def test_a_bad_key_and_an_unwritable_cache_dir(tmp_path, emulator):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = run_fs360(tmp_path, "doctor", "--api-url", emulator.base_url, "--cache-dir", str(blocker / "cache"),
                       env={"FS360_API_KEY": "sk_wrong"})
    assert result.returncode == 1
    checks = lines_of(result)
    assert checks["cache dir"].startswith("FAIL") and "fix:" in checks["cache dir"]
    assert checks["key"].startswith("FAIL") and "refused" in checks["key"] and "fix:" in checks["key"]
    assert checks["clock"].startswith("ok")
    assert "sk_wrong" not in result.stdout


def test_a_key_no_request_can_carry_is_a_failed_check_not_a_traceback(tmp_path, emulator):
    result = run_fs360(tmp_path, "doctor", "--api-url", emulator.base_url, "--cache-dir", str(tmp_path / "cache"),
                       env={"FS360_API_KEY": "sk_copied\u200b"})
    assert result.returncode == 1
    checks = lines_of(result)
    assert checks["key"].startswith("FAIL") and "U+200B" in checks["key"] and "fix:" in checks["key"]
    assert "Traceback" not in result.stdout + result.stderr


def test_a_wrong_url(tmp_path, emulator):
    result = run_fs360(tmp_path, "doctor", "--api-url", "http://127.0.0.1:9/api/v1", "--cache-dir",
                       str(tmp_path / "cache"), env={"FS360_API_KEY": emulator.api_key})
    assert result.returncode == 1
    checks = lines_of(result)
    assert checks["key"].startswith("FAIL") and "connection refused" in checks["key"]
    assert checks["clock"].startswith("FAIL") and "fix:" in checks["clock"]
    assert checks["cache dir"].startswith("ok")


def test_no_key_and_allow_other(tmp_path):
    result = run_fs360(tmp_path, "doctor", "--api-url", "http://127.0.0.1:9/api/v1", "-o", "allow_other")
    assert result.returncode == 1
    assert "FAIL settings: no API key" in result.stdout


def test_clock_skew_is_measured_from_the_date_header(tmp_path):
    import email.utils
    import http.server
    import threading
    import time

    from fs360.config import Settings
    from fs360.doctor import _clock

    offset = {"seconds": 0.0}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response_only(404)
            self.send_header("Date", email.utils.formatdate(time.time() + offset["seconds"], usegmt=True))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        settings = Settings(api_url=f"http://127.0.0.1:{server.server_address[1]}/api/v1")
        assert _clock(settings).ok
        offset["seconds"] = -600
        skewed = _clock(settings)
        assert not skewed.ok and "ntp" in skewed.fix
        # The Date header counts whole seconds.
        assert skewed.detail in ("local clock is +600 s off the server's", "local clock is +601 s off the server's")
    finally:
        server.shutdown()
        server.server_close()
