"""Scenario 8: the key stays secret, the mount stays private, TLS is verified."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import stat
import subprocess
import tempfile
import urllib.request
from pathlib import Path

import pytest

from fs360.emulator.harness import EmulatorProcess
from tests.harness import PYTHON, Mount, self_signed_certificate, write_random

from .common import MiB, assert_accounted, settle

KEY = "sk_test_SECRET_abc123"


def _fs360_cmdlines() -> list[tuple[int, bytes]]:
    """(pid, command line) of every process running fs360's code (daemon, embedded
    emulator), not the test's emulator; read once, as such a process may exit any time."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"fs360.cli" in cmd or (b"fs360.emulator" in cmd and b"--key" not in cmd and b"/cache" in cmd):
            found.append((int(entry.name), cmd))
    return found


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().split(")")[-1].split()[1]) == pid:
                    out.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    return out


def _files_holding(root: Path, needle: bytes) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file():
            try:
                if needle in path.read_bytes():
                    hits.append(str(path))
            except OSError:
                continue
    return hits


@pytest.mark.slow(5)
def test_key_never_leaks(tmp_path, mount_factory):
    emulator = EmulatorProcess(tmp_path / "emu", args=["--processing-seconds", "1", "--no-rate-limits", "--key", KEY],
                               key=KEY)
    emulator.start()
    try:
        # Errors and retries too: error paths are where keys leak.
        emulator.set_faults([{"endpoint": "put_file", "kind": "error_500", "count": 2},
                             {"endpoint": "put_file", "kind": "cut_body", "count": 1},
                             {"endpoint": "get_file", "kind": "html_error", "count": 1}])
        mount = mount_factory(emulator, env={"FS360_API_KEY": KEY})  # the harness logs at debug level
        session = "secret"
        (mount.mountpoint / session).mkdir()
        written = {f"f{i}.jpg": write_random(mount.mountpoint / session / f"f{i}.jpg", MiB + i, seed=f"k{i}")
                   for i in range(4)}
        (mount.mountpoint / session / ".create").write_text("{}")
        settle(mount, session)
        mount.wait_project(session)
        assert_accounted(mount, emulator, {session: written})

        needle = KEY.encode()
        for name in ("status", "status.json"):
            assert needle not in (mount.mountpoint / session / name).read_bytes()
        assert needle not in (mount.mountpoint / "status").read_bytes()
        for attr in ("user.fs360.state", "user.fs360.error"):
            assert needle not in os.getxattr(mount.mountpoint / session / "f0.jpg", attr)
        render = subprocess.run([PYTHON, "-m", "fs360.cli", "status", str(mount.mountpoint)], capture_output=True)
        assert render.returncode == 0 and needle not in render.stdout + render.stderr

        daemon = mount.pid
        for pid in [daemon, *_children(daemon)]:
            assert needle not in Path(f"/proc/{pid}/cmdline").read_bytes(), f"the key is on pid {pid}'s command line"
        for pid, cmd in _fs360_cmdlines():
            assert needle not in cmd, f"the key is on pid {pid}'s command line"

        mount.unmount()
        assert mount.log_path.stat().st_size > 10_000, "the debug log is suspiciously small"
        assert not _files_holding(mount.cache_dir, needle), "the key is stored in the cache dir"

        # Private: the cache dir, the spool and the journal.
        assert stat.S_IMODE(mount.cache_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE((mount.cache_dir / "spool").stat().st_mode) == 0o700
        assert stat.S_IMODE((mount.cache_dir / "journal.sqlite").stat().st_mode) == 0o600
        assert stat.S_IMODE(mount.log_path.stat().st_mode) & 0o077 == 0
    finally:
        emulator.stop()


def test_the_log_masks_the_key_in_tracebacks_too(tmp_path):
    """Defence in depth: no path puts the key into an exception, but should one, the log file
    masks it in the traceback (formatted after the handlers' filters ran: it went out unmasked)."""
    import logging

    from fs360.config import Settings
    from fs360.daemon import setup_logging
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    settings = Settings(api_url="https://127.0.0.1:9/api/v1", api_key=KEY, cache_dir=tmp_path / "cache")
    try:
        setup_logging(settings, "info", to_stderr=False)
        try:
            raise ValueError(f"a header carried Bearer {KEY}")
        except ValueError:
            logging.getLogger("fs360.test").exception("something failed")
        for handler in root.handlers:
            handler.flush()
    finally:
        for handler in root.handlers[:]:
            root.removeHandler(handler)
            handler.close()
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
    text = settings.log_path.read_text()
    assert "something failed" in text and "a header carried Bearer ***" in text
    assert KEY not in text


def test_key_not_on_command_lines_with_the_embedded_emulator(tmp_path):
    mountpoint = tmp_path / "local"
    mountpoint.mkdir()
    cache = tmp_path / "local-cache"
    env = dict(os.environ)
    env.pop("FS360_API_KEY", None)
    result = subprocess.run([PYTHON, "-m", "fs360.cli", "mount", str(mountpoint), "--local", "--cache-dir", str(cache),
                             "--log-level", "debug"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    try:
        daemon = int((cache / "lock").read_text().strip())
        pids = [daemon, *_children(daemon)]
        assert len(pids) >= 2, "no embedded emulator process found"
        for pid in pids:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            assert b"sk_local_demo" not in cmd and b"sk_" not in cmd, cmd
    finally:
        subprocess.run([PYTHON, "-m", "fs360.cli", "unmount", str(mountpoint)], capture_output=True, timeout=90)
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)


def _as_nobody(cmd: list[str]) -> subprocess.CompletedProcess:
    def drop():
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
    return subprocess.run(cmd, capture_output=True, preexec_fn=drop, timeout=10)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another uid")
@pytest.mark.parametrize("allow_other", [False, True])
def test_other_users_cannot_see_the_mount(tmp_path, emulator, mount_factory, allow_other):
    # A place uid 65534 can reach (pytest's tmp_path is 0700), so a refusal can only come from FUSE.
    public = Path(tempfile.mkdtemp(prefix="fs360-public-"))
    try:
        os.chmod(public, 0o755)
        args = ["-o", "allow_other"] if allow_other else []
        mount = Mount(public, emulator, cache_dir=tmp_path / "cache", extra_args=args).start()
        try:
            session = mount.mountpoint / "private"
            session.mkdir(mode=0o755)
            write_random(session / "doc.jpg", 1000, seed="doc")
            (public / "control").mkdir()
            # Control: this uid can list an ordinary directory in the same place.
            assert _as_nobody(["ls", str(public / "control")]).returncode == 0
            listing = _as_nobody(["ls", str(mount.mountpoint)])
            reading = _as_nobody(["cat", str(session / "status")])
            if allow_other:
                assert listing.returncode == 0 and b"private" in listing.stdout, listing.stderr
                assert reading.returncode == 0, reading.stderr
            else:
                assert listing.returncode != 0 and b"private" not in listing.stdout
                assert b"ermission denied" in listing.stderr, listing.stderr
                assert reading.returncode != 0 and reading.stdout == b""
            mount.wait_settled("private")
            mount.close()
            mount.assert_no_logged_errors()
        finally:
            mount.close()  # a failed body keeps its own failure: no log check here
    finally:
        shutil.rmtree(public, ignore_errors=True)


def _emulator_call(emulator: EmulatorProcess, cafile: str, path: str):
    context = ssl.create_default_context(cafile=cafile)
    with urllib.request.urlopen(emulator.root_url + "/_emulator" + path, context=context, timeout=30) as r:
        return json.loads(r.read())


@pytest.mark.slow(6)
def test_tls_is_verified(tmp_path, mount_factory):
    cert, key = self_signed_certificate(tmp_path)
    emulator = EmulatorProcess(tmp_path / "emu", args=["--processing-seconds", "1", "--no-rate-limits",
                                                        "--tls-cert", str(cert), "--tls-key", str(key)])
    emulator.start()
    try:
        assert emulator.base_url.startswith("https://")
        refused = Mount(tmp_path, emulator, name="untrusted")
        env = dict(os.environ, FS360_API_KEY=emulator.api_key)
        result = subprocess.run(refused.command(), env=env, capture_output=True, text=True, timeout=60)
        try:
            assert result.returncode != 0, "mounted against an untrusted certificate"
            message = result.stderr + result.stdout
            assert "Traceback" not in message, message
            assert "TLS" in message or "certificate" in message.lower(), message
        finally:
            subprocess.run(["fusermount3", "-u", "-z", str(refused.mountpoint)], capture_output=True)

        mount = mount_factory(emulator, name="trusted", extra_args=["--ca-bundle", str(cert)])
        (mount.mountpoint / "tls").mkdir()
        sha = write_random(mount.mountpoint / "tls" / "a.jpg", 300_000, seed="tls")
        assert settle(mount, "tls") == {"a.jpg": "complete"}
        remote = [f for f in _emulator_call(emulator, str(cert), "/files") if f["name"] == "a.jpg"]
        assert len(remote) == 1 and remote[0]["complete"] and remote[0]["sha256"] == sha, remote
        assert _emulator_call(emulator, str(cert), "/violations") == []
    finally:
        emulator.stop()
