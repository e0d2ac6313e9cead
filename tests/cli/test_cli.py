"""The `fs360` command as a user runs it: mount errors at once, --local, status, unmount --wait, demo."""

import os
import subprocess
import threading
import time

import pytest

from fs360 import cli
import signal
from pathlib import Path

from tests.harness import PYTHON, is_mounted, pid_alive, wait_until, write_random

pytestmark = pytest.mark.fuse


def run_fs360(*args, env=None, timeout=120):
    full_env = dict(os.environ)
    for name in ("FS360_API_KEY", "API_KEY"):
        full_env.pop(name, None)
    full_env.update(env or {})
    return subprocess.run([PYTHON, "-m", "fs360.cli", *args], env=full_env, capture_output=True, text=True,
                          timeout=timeout)


def test_a_wrong_key_is_reported_before_mount_returns(tmp_path, emulator):
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    result = run_fs360("mount", str(mountpoint), "--api-url", emulator.base_url, "--cache-dir",
                       str(tmp_path / "cache"), env={"FS360_API_KEY": "sk_wrong_key"})
    assert result.returncode == 2
    assert "key was refused" in result.stderr
    assert "Traceback" not in result.stderr
    assert "sk_wrong_key" not in result.stderr
    assert not is_mounted(mountpoint)


@pytest.mark.parametrize("key,said", [
    ("sk_copied\u200b", "not ASCII (U+200B) at position 10"),  # a zero-width space from a web page
    ("sk_two\nlines", "a control character"),
    ("sk_with space", "a space at position 8"),
    ("sk_" + "x" * 50_000, "the API key is 50,003 characters long: no key is"),  # a wrong file as the key file
])
def test_a_key_no_request_can_carry_is_named_before_mount_returns(tmp_path, emulator, key, said):
    """Before, a non-ASCII character ended the daemon with a bare 'exited (1)', and a control
    character got the key refused by the server for a reason the user could not see."""
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    before = sum(emulator.stats()["requests"].values())
    result = run_fs360("mount", str(mountpoint), "--api-url", emulator.base_url, "--cache-dir",
                       str(tmp_path / "cache"), env={"FS360_API_KEY": key})
    assert result.returncode == 2
    assert said in result.stderr and "copy the key again" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and key not in result.stderr
    assert not is_mounted(mountpoint)
    assert sum(emulator.stats()["requests"].values()) == before  # refused before any request carried it


def test_a_wrong_url_is_reported_before_mount_returns(tmp_path, emulator):
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    result = run_fs360("mount", str(mountpoint), "--api-url", emulator.root_url + "/not-the-api",
                       "--cache-dir", str(tmp_path / "cache"), env={"FS360_API_KEY": emulator.api_key})
    assert result.returncode == 2
    assert "does not answer like the 360-for-you API" in result.stderr
    assert not is_mounted(mountpoint)
    # Nothing listens there: a connection error, reported as such.
    result = run_fs360("mount", str(mountpoint), "--api-url", "http://127.0.0.1:9/api/v1",
                       "--cache-dir", str(tmp_path / "cache"), env={"FS360_API_KEY": emulator.api_key})
    assert result.returncode == 2
    assert "cannot reach 127.0.0.1:9: connection refused" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_no_key_at_all_is_a_clear_error(tmp_path):
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    result = run_fs360("mount", str(mountpoint), "--api-url", "http://127.0.0.1:9/api/v1")
    assert result.returncode == 2
    assert "no API key" in result.stderr


def test_the_key_file_option_is_read_and_not_passed_on(tmp_path, emulator):
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    key_file = tmp_path / "key"
    key_file.write_text(emulator.api_key + "\n")
    key_file.chmod(0o600)
    cache = tmp_path / "cache"
    result = run_fs360("mount", str(mountpoint), "--api-url", emulator.base_url, "--cache-dir", str(cache),
                       "--api-key-file", str(key_file), "--no-rate-limits")
    assert result.returncode == 0, result.stderr
    try:
        pid = int((cache / "lock").read_text())
        cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
        assert emulator.api_key.encode() not in cmdline
        assert b"--api-key-file" not in cmdline
    finally:
        assert run_fs360("unmount", str(mountpoint)).returncode == 0
    assert not is_mounted(mountpoint)


@pytest.mark.slow(8)
def test_local_mount_status_and_unmount_wait(tmp_path):
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    cache = tmp_path / "cache"
    # A real key exported for other mounts is not the embedded emulator's (it was sent, and refused).
    result = run_fs360("mount", "--local", str(mountpoint), "--cache-dir", str(cache), "--writeback-delay", "0.2",
                       "--emulator-arg=--processing-seconds=1", env={"FS360_API_KEY": "sk_live_someone_real"})
    assert result.returncode == 0, result.stderr
    try:
        session = mountpoint / "Survey"
        session.mkdir()
        write_random(session / "a.jpg", 3 * 1024 * 1024)
        write_random(session / "b.las", 100_000)
        shown = run_fs360("status", str(mountpoint))
        assert shown.returncode == 0
        assert "Survey" in shown.stdout
        shown = run_fs360("status", "--files", str(mountpoint))
        assert shown.returncode == 0
        assert "Survey/a.jpg" in shown.stdout and "Survey/b.las" in shown.stdout
        waited = run_fs360("unmount", "--wait", str(mountpoint))
        assert waited.returncode == 0, waited.stderr
        assert "0 file(s) to go" in waited.stderr
        assert "2/2 file(s) on the server" in waited.stderr
        assert not is_mounted(mountpoint)
    finally:
        if is_mounted(mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)])
    # The files were complete before --wait returned: a new mount shows them so.
    result = run_fs360("mount", "--local", str(mountpoint), "--cache-dir", str(cache))
    assert result.returncode == 0, result.stderr
    try:
        import json
        snap = json.loads((mountpoint / "Survey" / "status.json").read_text())
        assert {f["name"]: f["state"] for f in snap["files"]} == {"a.jpg": "complete", "b.las": "complete"}
    finally:
        assert run_fs360("unmount", str(mountpoint)).returncode == 0


@pytest.mark.parametrize("args, said", [
    (["status", "--interval", "2"], "--interval goes with --watch"),
    (["status", "--files"], "--files goes with a MOUNTPOINT"),
    (["unmount", "--timeout", "5", "/mnt"], "--timeout goes with --wait"),
])
def test_an_option_without_the_one_it_goes_with_is_refused(args, said):
    """Each was ignored without a word."""
    result = run_fs360(*args)
    assert result.returncode == 2 and result.stderr.startswith(f"fs360: {said}"), result.stderr


@pytest.mark.parametrize("args, said", [
    (["status", "--watch", "--interval", "-1"], "argument --interval: -1 seconds: give a number of seconds from 0.1 up"),
    (["status", "--watch", "--interval", "0"], "argument --interval: 0 seconds: give a number of seconds from 0.1 up"),
    (["unmount", "--wait", "--timeout", "nan", "/mnt"], "argument --timeout: nan seconds: give a number of seconds "
                                                        "from 0 up"),
])
def test_a_number_of_seconds_out_of_range_is_one_line(args, said):
    result = run_fs360(*args)
    assert result.returncode == 2 and result.stderr.startswith(f"fs360: {said}"), result.stderr
    assert len(result.stderr.splitlines()) == 1


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def test_a_cache_dir_inside_a_mount_is_refused_in_words(tmp_path):
    """Inside its own mountpoint the daemon would wait on its own mount for ever (a hang that only
    kill -9 ended); inside another fs360 mount that mount took its files for uploads."""
    first, second = tmp_path / "one", tmp_path / "two"
    first.mkdir()
    second.mkdir()
    refused = run_fs360("mount", "--local", str(first), "--cache-dir", str(first / "cache"), timeout=60)
    assert refused.returncode == 2 and not is_mounted(first)
    assert refused.stderr.startswith(f"fs360: the cache dir {first / 'cache'} is inside the mountpoint {first}"), \
        refused.stderr
    assert run_fs360("mount", "--local", str(first), "--cache-dir", str(tmp_path / "cache")).returncode == 0
    try:
        (first / "Survey").mkdir()
        refused = run_fs360("mount", "--local", str(second), "--cache-dir", str(first / "Survey" / "cache"),
                            timeout=60)
        assert refused.returncode == 2 and not is_mounted(second)
        assert f"is inside the fs360 mount {first}, which would take its files for uploads" in refused.stderr
    finally:
        assert run_fs360("unmount", str(first)).returncode == 0


def test_the_embedded_emulator_ends_with_its_daemon_killed(tmp_path):
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    cache = tmp_path / "cache"
    assert run_fs360("mount", "--local", str(mountpoint), "--cache-dir", str(cache)).returncode == 0
    daemon = int((cache / "lock").read_text().strip())
    emulators = [pid for pid in children_of(daemon) if b"fs360.emulator" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(emulators) == 1
    try:
        os.kill(daemon, signal.SIGKILL)
        wait_until(lambda: not pid_alive(emulators[0]), 30, what="the embedded emulator to end with its daemon")
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)
        for pid in emulators:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_ctrl_c_while_the_mount_starts_leaves_no_mount_behind(tmp_path, emulator):
    """Ctrl-C on `fs360 mount` while it waits on a slow server: the daemon (in a session of its
    own, which the terminal's SIGINT does not reach) went on and mounted ten seconds later."""
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    cache = tmp_path / "cache"
    emulator.set_faults([{"endpoint": "*", "kind": "latency", "seconds": 20.0}])  # (the SIGINT comes well within it)
    env = dict(os.environ, FS360_API_KEY=emulator.api_key)
    mount = subprocess.Popen([PYTHON, "-m", "fs360.cli", "mount", str(mountpoint), "--api-url", emulator.base_url,
                              "--cache-dir", str(cache)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        wait_until(lambda: (cache / "lock").exists() and (cache / "lock").read_text().strip(), 30, 0.05,
                   what="the daemon to start")
        daemon = int((cache / "lock").read_text().strip())
        mount.send_signal(signal.SIGINT)
        assert mount.wait(60) == 130
        assert f"fs360: interrupted: {mountpoint} was not started" in mount.stderr.read()
        wait_until(lambda: not pid_alive(daemon), 30, what="the daemon to end")
        emulator.clear_faults()
        assert not is_mounted(mountpoint)
    finally:
        if mount.poll() is None:
            mount.kill()
        if is_mounted(mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)


def test_a_dashboard_port_taken_is_said_when_the_mount_is_made(tmp_path):
    """The mount works without its dashboard; that was said only in the log, and `fs360 web` later."""
    import socket
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_fs360("mount", "--local", str(mountpoint), "--cache-dir", str(tmp_path / "cache"),
                           "--web-address", f"127.0.0.1:{port}")
    try:
        assert result.returncode == 0, result.stderr
        assert f"fs360: no dashboard: cannot listen on 127.0.0.1:{port} (Address already in use); the mount works " \
               f"without it" in result.stderr
    finally:
        assert run_fs360("unmount", str(mountpoint)).returncode == 0


def test_two_mounts_at_once_on_one_mountpoint_make_one(tmp_path):
    """Each with its own cache dir, both found the folder free and stacked two mounts: unmounting
    the top one then showed the other's sessions, with no daemon answering for them."""
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("FS360_API_KEY", "API_KEY")}
    both = [subprocess.Popen([PYTHON, "-m", "fs360.cli", "mount", "--local", str(mountpoint), "--cache-dir",
                              str(tmp_path / f"cache{n}")], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for n in (1, 2)]
    try:
        codes = [process.wait(120) for process in both]
        outputs = [process.stderr.read() for process in both]
        assert sorted(codes) == [0, 2], outputs
        refused = outputs[codes.index(2)]
        assert ("another fs360 mount is being made at" in refused or "mounted meanwhile" in refused
                or "is already a mount point" in refused), refused
        assert sum(1 for line in Path("/proc/mounts").read_text().splitlines()
                   if line.split()[1] == str(mountpoint)) == 1
    finally:
        for _ in range(3):  # (two, stacked, before)
            if is_mounted(mountpoint):
                subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)


def test_a_second_mount_on_the_same_cache_dir_is_refused(tmp_path, emulator):
    first, second = tmp_path / "one", tmp_path / "two"
    first.mkdir()
    second.mkdir()
    cache = tmp_path / "cache"
    env = {"FS360_API_KEY": emulator.api_key}
    assert run_fs360("mount", str(first), "--api-url", emulator.base_url, "--cache-dir", str(cache),
                     env=env).returncode == 0
    try:
        result = run_fs360("mount", str(second), "--api-url", emulator.base_url, "--cache-dir", str(cache), env=env)
        assert result.returncode == 2
        assert "another fs360 mount or WebDAV server uses the cache dir" in result.stderr
        assert not is_mounted(second)
    finally:
        run_fs360("unmount", str(first))


@pytest.mark.slow(10)
def test_demo_runs_to_a_ready_project():
    result = run_fs360("demo", timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "demo complete: the project is ready" in result.stdout
    assert "the tree went up as one archive" in result.stdout


# --- unmount: a daemon that takes a while to end ------------------------------------------------

def test_unmount_says_why_it_waits_for_a_daemon_ending_its_uploads(capsys):
    """A stalled PUT keeps the unmounted daemon up to its deadline: the user is told so at once,
    not left with a silent prompt for half a minute. Here the daemon is a real process that ends
    when the test lets it."""
    daemon = subprocess.Popen(["sleep", "600"])
    said = []
    try:
        waiter = threading.Thread(target=lambda: said.append(cli._wait_for_daemon(daemon.pid, "/mnt/x", quiet=0.05)))
        waiter.start()
        out = ""
        while "uploads in flight are ending" not in out:
            assert waiter.is_alive(), "it stopped waiting for a daemon that still runs"
            out += capsys.readouterr().err
            time.sleep(0.02)
    finally:
        daemon.kill()
        daemon.wait()
    waiter.join(30)
    assert said == [True]
    err = out + capsys.readouterr().err
    assert err.splitlines() == ["fs360: /mnt/x is unmounted; its uploads in flight are ending (each stops after "
                                "the piece it is sending, within about half a minute); what is not sent waits "
                                "for the next mount"]


def test_unmount_says_what_to_do_about_a_daemon_that_does_not_end(capsys):
    daemon = subprocess.Popen(["sleep", "600"])
    try:
        assert cli._wait_for_daemon(daemon.pid, "/mnt/x", quiet=0.05, timeout=1.0) is False
    finally:
        daemon.kill()
        daemon.wait()
    last = capsys.readouterr().err.splitlines()[-1]
    assert last == (f"fs360: the daemon (pid {daemon.pid}) has not ended after 1 s; nothing is lost: every "
                    f"unfinished upload waits in its journal for the next mount; `kill {daemon.pid}` ends it")


def test_unmount_says_nothing_more_of_a_daemon_that_ended(capsys):
    daemon = subprocess.Popen(["true"])
    daemon.wait()
    assert cli._wait_for_daemon(daemon.pid, "/mnt/x") is True
    assert capsys.readouterr().err == ""
