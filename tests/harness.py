"""Test helpers shared by every suite: a real mount driven over real HTTP.

`Mount` starts `fs360 mount` (the daemon, as a user would) against an emulator,
and at the end fails the test if the mount logged any ERROR or traceback that
the test did not declare expected (the ratarmount way: no silent errors).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from fs360.emulator.harness import EmulatorProcess

PYTHON = sys.executable
PJDFSTEST_MIRROR = Path("/work/.mirror/pjd+pjdfstest/repo")
XFSTESTS_MIRROR = Path("/work/.mirror/kdave+xfstests/repo")
DROP_CACHES = 'system("echo 3 > /proc/sys/vm/drop_caches")'
FAST_EMULATOR_ARGS = ["--processing-seconds", "0.3", "--no-rate-limits"]
# The retry timings of test mounts and engines (Settings fields; production: 0.5 s doubling up to
# 60 s, and 60 s of quiet after an abandoned PUT). A test that needs others passes its own.
FAST_TIMINGS = {"backoff_base": 0.05, "backoff_cap": 1.0, "abandoned_upload_quiet": 0.5}


def sha256_of(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_marker(path, text: bytes) -> None:
    """Writes a .create marker; raises what close() raises when the marker is refused."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        if text:
            os.write(fd, text)
    finally:
        os.close(fd)  # close() is where .create is accepted or refused


def write_random(path, size: int, seed: int | None = None, piece: int = 1024 * 1024) -> str:
    """Writes `size` pseudo-random bytes, one write() per `piece` bytes (odd sizes make unaligned
    writes); returns their sha256."""
    digest = hashlib.sha256()
    rng_block = hashlib.sha256(str(seed if seed is not None else path).encode()).digest() * (piece // 32 + 1)
    with open(path, "wb", buffering=0) as f:
        remaining, counter = size, 0
        while remaining:
            block = (counter.to_bytes(8, "little") + rng_block)[: min(remaining, piece)]
            view = memoryview(block)
            while view:
                view = view[f.write(view):]
            digest.update(block)
            remaining -= len(block)
            counter += 1
    return digest.hexdigest()


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """(cert, key) of a certificate for 127.0.0.1 made with the openssl CLI; skips the test
    where that cannot be done."""
    import pytest
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl CLI to make a self-signed certificate")
    cert, key = Path(folder) / "cert.pem", Path(folder) / "key.pem"
    made = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                           "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                           "-keyout", str(key), "-out", str(cert)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"openssl cannot make a certificate: {made.stderr[-300:]}")
    return cert, key


# What the API client reads of the environment once, when made: CA bundles and proxies.
CLIENT_ENVIRONMENT = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR", "HTTP_PROXY",
                      "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy")


def api_client_made_with(emulator, monkeypatch, env: dict | None = None, **settings):
    """An ApiClient of `emulator` made while the environment holds `env` and none of the machine's
    own CA bundle or proxy variables; the environment is put back at once (the client reads it
    when made)."""
    from fs360.api.client import ApiClient
    from fs360.config import Settings
    with monkeypatch.context() as patched:
        for name in CLIENT_ENVIRONMENT:
            patched.delenv(name, raising=False)
        for name, value in (env or {}).items():
            patched.setenv(name, value)
        return ApiClient(Settings(api_url=emulator.base_url, api_key=emulator.api_key, rate_limits_enabled=False,
                                  **settings))


def tls_emulator(folder: Path):
    """(certificate, EmulatorProcess not started) of an emulator answering https with a
    self-signed certificate for 127.0.0.1."""
    from fs360.emulator.harness import EmulatorProcess
    cert, key = self_signed_certificate(folder)
    return cert, EmulatorProcess(folder / "emu", args=["--no-rate-limits", "--tls-cert", str(cert),
                                                       "--tls-key", str(key)])


class PausedWriter:
    """A real program writing `path`: it writes `first` in 1 MiB writes and waits, the file open;
    `finish(later)` has it write `later` where it stands, close the file and exit 0."""

    SCRIPT = ("import os, sys\n"
              "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)\n"
              "first = sys.stdin.buffer.read(int(sys.argv[2]))\n"
              "for at in range(0, len(first), 1 << 20): os.write(fd, first[at:at + (1 << 20)])\n"
              "print('written', flush=True); sys.stdin.buffer.readline()\n"
              "os.write(fd, sys.stdin.buffer.read()); os.close(fd)")

    def __init__(self, path, first: bytes):
        self.process = subprocess.Popen([sys.executable, "-c", self.SCRIPT, str(path), str(len(first))],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.process.stdin.write(first)
        self.process.stdin.flush()
        assert self.process.stdout.readline().strip() == b"written"

    def finish(self, later: bytes, timeout: float = 60) -> int:
        self.process.stdin.write(b"go\n" + later)
        self.process.stdin.close()
        return self.process.wait(timeout)


def wait_until(predicate, timeout: float = 60.0, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def mounts() -> list[tuple[str, str]]:
    """(mount point, file system type) of every mount of this machine, from /proc/mounts."""
    with open("/proc/mounts") as f:
        return [(fields[1], fields[2]) for fields in (line.split() for line in f) if len(fields) > 2]


def is_mounted(mountpoint) -> bool:
    return any(point == str(mountpoint) for point, _ in mounts())


def fuse_mounts_under(directory) -> list[str]:
    """The FUSE mounts at or below `directory`."""
    prefix = str(directory).rstrip("/") + "/"
    return [point for point, kind in mounts() if kind.startswith("fuse") and (point + "/").startswith(prefix)]


class Mount:
    """A real fs360 mount in its own daemon process."""

    def __init__(self, tmp_path: Path, emulator: EmulatorProcess, *, extra_args=(), writeback_delay=0.3,
                 name="mnt", cache_dir: Path | None = None, env=None):
        self.mountpoint = tmp_path / name
        self.mountpoint.mkdir(exist_ok=True)
        self.cache_dir = cache_dir or tmp_path / f"{name}-cache"
        self.emulator = emulator
        self.extra_args = list(extra_args)
        self.writeback_delay = writeback_delay
        self.env = env
        # Log lines (regexes) a test expects to see at ERROR level.
        self.expected_errors: list[str] = []
        self._log_offset = 0

    @property
    def log_path(self) -> Path:
        return self.cache_dir / "fs360.log"

    def command(self) -> list[str]:
        cmd = [PYTHON, "-m", "fs360.cli", "mount", str(self.mountpoint), "--api-url", self.emulator.base_url,
               "--cache-dir", str(self.cache_dir), "--writeback-delay", str(self.writeback_delay),
               "--poll-interval", "0.3", "--log-level", "debug", "--no-rate-limits",
               *(f"--timing={name}={seconds}" for name, seconds in FAST_TIMINGS.items()), *self.extra_args]
        return cmd

    def start(self) -> "Mount":
        env = dict(os.environ, FS360_API_KEY=self.emulator.api_key)
        if self.env:
            env.update(self.env)
        result = subprocess.run(self.command(), env=env, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise AssertionError(f"mount failed ({result.returncode}): {result.stderr}{result.stdout}")
        assert is_mounted(self.mountpoint), "fs360 mount returned 0 but nothing is mounted"
        return self

    @property
    def pid(self) -> int:
        return int((self.cache_dir / "lock").read_text().strip())

    def unmount(self, wait: bool = False, timeout: float = 120) -> None:
        if not is_mounted(self.mountpoint):
            return
        cmd = [PYTHON, "-m", "fs360.cli", "unmount", str(self.mountpoint)]
        if wait:
            cmd += ["--wait", "--timeout", str(timeout)]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 60)
        # 3: unmounted after --wait, with files that need the user (refused, interrupted, ...).
        if result.returncode not in (0, 3) or is_mounted(self.mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], capture_output=True)
            raise AssertionError(f"unmount failed: {result.stderr}")

    def kill(self) -> None:
        """SIGKILL the daemon, as a crash would, and clear the dead mount."""
        pid = self.pid
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not pid_alive(pid), 10, what="the daemon to die")
        subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], capture_output=True)
        wait_until(lambda: not is_mounted(self.mountpoint), 10, what="the dead mount to go")

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()
        if exc[0] is None:
            self.assert_no_logged_errors()

    def close(self) -> None:
        """Unmounts as `fs360 unmount` does (fusermount3 -u, then the daemon's exit), without the
        start-up of a Python process at each test's end: that command has tests of its own.
        Whatever fails, nothing stays mounted."""
        try:
            if is_mounted(self.mountpoint):
                pid = self.pid
                result = subprocess.run(["fusermount3", "-u", str(self.mountpoint)], capture_output=True, text=True)
                if result.returncode != 0:
                    raise AssertionError(f"unmount failed: {result.stderr}")
                wait_until(lambda: not pid_alive(pid), 60, 0.05, what="the daemon to exit after its unmount")
        finally:
            if is_mounted(self.mountpoint):
                subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], capture_output=True)

    def logged_errors(self) -> list[str]:
        if not self.log_path.exists():
            return []
        lines = self.log_path.read_text(errors="replace").splitlines()
        bad = [line for line in lines if " ERROR " in line or " CRITICAL " in line or line.startswith("Traceback")]
        return [line for line in bad if not any(re.search(p, line) for p in self.expected_errors)]

    def assert_no_logged_errors(self) -> None:
        errors = self.logged_errors()
        assert not errors, "the mount logged errors:\n" + "\n".join(errors[:20])

    # --- reading the mount's own view ---------------------------------------------------------

    def status_json(self, session: str) -> dict:
        with open(self.mountpoint / session / "status.json", encoding="utf-8", errors="surrogateescape") as f:
            return json.load(f)

    def file_states(self, session: str) -> dict[str, str]:
        return {f["name"]: f["state"] for f in self.status_json(session)["files"]}

    def wait_settled(self, session: str, timeout: float = 120) -> dict[str, str]:
        """Waits until no file of the session is writing, pending or uploading."""
        def settled():
            states = self.file_states(session)
            if all(s in ("complete", "rejected", "local", "lost", "interrupted", "held") for s in states.values()):
                return states or {"": ""}
            return None
        return wait_until(settled, timeout, 0.2, what=f"session {session} to settle")

    def wait_project(self, session: str, timeout: float = 120) -> dict:
        def ready():
            project = self.status_json(session)["project"]
            return project if project and project["state"] in ("ready", "failed") else None
        return wait_until(ready, timeout, 0.2, what=f"the project of {session}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def remote_files(emulator: EmulatorProcess, upload_id: str | None = None) -> dict[str, dict]:
    """The emulator's files by name (of one session, or of all when there is one)."""
    files = emulator.files()
    if upload_id is not None:
        files = [f for f in files if f["upload_id"] == upload_id]
    return {f["name"]: f for f in files}


def assert_uploaded(emulator: EmulatorProcess, upload_id: str | None, expected: dict[str, str]) -> dict[str, dict]:
    """Every name complete on the emulator with the expected sha256, nothing else there (in that
    session, or anywhere when upload_id is None), no name twice, and no protocol violation."""
    files = [f for f in emulator.files() if upload_id is None or f["upload_id"] == upload_id]
    remote = {f["name"]: f for f in files}
    assert len(remote) == len(files), f"a name reached the server twice: {sorted(f['name'] for f in files)}"
    for name, sha in expected.items():
        assert name in remote, f"{name!r} never reached the server (it has {sorted(remote)[:20]})"
        assert remote[name]["complete"], f"{name!r} is incomplete on the server: {remote[name]}"
        assert remote[name]["sha256"] == sha, f"{name!r} differs on the server"
    extra = set(remote) - set(expected)
    assert not extra, f"unexpected names reached the server: {sorted(extra)[:20]}"
    assert emulator.violations() == [], f"protocol violations: {emulator.violations()[:5]}"
    return remote


def make_sources(directory, sizes: dict[str, int]) -> dict[str, str]:
    """Pseudo-random files (the same bytes every run); returns name -> sha256."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    return {name: write_random(Path(directory) / name, size, seed=name) for name, size in sizes.items()}


def request_count(emulator: EmulatorProcess, prefix: str = "") -> int:
    """Requests the emulator counted whose "METHOD endpoint status" key starts with `prefix`."""
    return sum(n for key, n in emulator.stats()["requests"].items() if key.startswith(prefix))


def unpacked_for_build(source: Path, directory: Path, *paths: str) -> Path | None:
    """`paths` (all when none) of the HEAD of git dir `source`, unpacked into a fresh
    `directory`.building, where a build is made and then renamed to `directory` (which so holds
    a whole build or nothing); None where the source or gcc is missing."""
    if not source.is_dir() or shutil.which("gcc") is None:
        return None
    work = directory.with_name(directory.name + ".building")
    shutil.rmtree(work, ignore_errors=True)  # a build cut short before
    work.mkdir()
    archive = subprocess.run(["git", "--git-dir", str(source), "archive", "HEAD", *paths], capture_output=True,
                             check=True)
    subprocess.run(["tar", "-x", "-C", str(work)], input=archive.stdout, check=True)
    return work


def build_fsx(directory: Path) -> Path | None:
    """xfstests' fsx (ltp/fsx.c: random reads, writes, mapped reads and writes, truncates,
    fallocate's modes and copy_file_range on one file, each read checked against its own model)
    built from its source (a git dir of an xfstests tree) without autotools, in `directory`
    (made here); the path of the binary, or None where the source or gcc is missing."""
    work = unpacked_for_build(Path(os.environ.get("XFSTESTS_GIT_DIR", XFSTESTS_MIRROR)), directory,
                              "ltp/fsx.c", "src/global.h", "src/statx.h")
    if work is None:
        return None
    (work / "src" / "config.h").touch()  # what autoconf would find: the HAVE_ flags below
    # fsx's close-and-reopen (-c) drops the whole machine's caches each time (`echo 3 >
    # /proc/sys/vm/drop_caches`): a machine-wide write no test may make, and in the suite it made
    # every other test's caches cold at once. The close and the reopen stay; the drop goes.
    source_file = work / "ltp" / "fsx.c"
    text = source_file.read_text()
    assert DROP_CACHES in text, "fsx's close-and-reopen changed upstream: re-check what it does"
    source_file.write_text(text.replace(DROP_CACHES, "0"))
    have = ["SYS_TYPES_H", "SYS_STAT_H", "SYS_STATVFS_H", "SYS_TIME_H", "SYS_IOCTL_H", "SYS_WAIT_H", "MALLOC_H",
            "DIRENT_H", "STDLIB_H", "UNISTD_H", "ERRNO_H", "STRING_H", "SYS_FCNTL_H", "TIME_H", "ERR_H",
            "LINUX_FALLOC_H", "COPY_FILE_RANGE"]
    subprocess.run(["gcc", "-O1", "-D_GNU_SOURCE", "-include", "getopt.h", "-include", "assert.h", "-include",
                    "sys/param.h", *(f"-DHAVE_{h}" for h in have), "-Isrc", "-o", "fsx", "ltp/fsx.c"],
                   cwd=work, check=True, capture_output=True)
    work.rename(directory)
    return directory / "fsx"


def build_pjdfstest(directory: Path) -> Path | None:
    """pjdfstest built from its source (a git dir of pjd/pjdfstest), without autotools, in
    `directory` (made here; None where the source or gcc is missing)."""
    work = unpacked_for_build(Path(os.environ.get("PJDFSTEST_GIT_DIR", PJDFSTEST_MIRROR)), directory)
    if work is None:
        return None
    (work / "config.h").touch()
    have = ["FCHMODAT", "FCHOWNAT", "FSTATAT", "LINKAT", "MKDIRAT", "MKFIFOAT", "MKNODAT", "OPENAT",
            "POSIX_FALLOCATE", "RENAMEAT", "SYMLINKAT", "UNLINKAT", "UTIMENSAT", "STRUCT_STAT_ST_ATIM",
            "STRUCT_STAT_ST_MTIM", "STRUCT_STAT_ST_CTIM", "SYS_SYSMACROS_H"]
    subprocess.run(["gcc", "-O1", "-I.", "-D_GNU_SOURCE", *(f"-DHAVE_{h}" for h in have), "-o", "pjdfstest",
                    "pjdfstest.c"], cwd=work, check=True, capture_output=True)
    work.rename(directory)
    return directory


# --- what a daemon tells its surroundings: systemd and the desktop ---------------------------------

class FakeManager:
    """The manager's end of $NOTIFY_SOCKET: records each datagram, and whether the mount
    was up when READY=1 came (`mountpoint` None: a WebDAV server, nothing mounted)."""

    def __init__(self, address: str, mountpoint):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.mountpoint = mountpoint
        self.messages: list[str] = []
        self.mounted_at_ready = None

    def receive_until(self, predicate, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                message = self.sock.recv(4096).decode()
            except socket.timeout:
                break
            self.messages.append(message)
            if "READY=1" in message.split("\n") and self.mounted_at_ready is None and self.mountpoint is not None:
                self.mounted_at_ready = is_mounted(self.mountpoint) and os.listdir(self.mountpoint) is not None
            if predicate(message):
                return message
        raise AssertionError(f"no such notification; got {self.messages}")


def fake_notify_send(tmp_path):
    """(env, log): a notify-send on PATH that appends its arguments to `log`, and a session bus."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "notices.log"
    script = bin_dir / "notify-send"
    script.write_text(f'#!/bin/sh\nprintf "%s|" "$@" >> {log}\necho >> {log}\n')
    script.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "DBUS_SESSION_BUS_ADDRESS": "unix:path=/nonexistent"}, log


def notices(log) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []
