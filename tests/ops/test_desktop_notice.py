"""Desktop notices: notify-send when a project is ready or a file fails for good, only with a
session bus, never with --no-notify."""

from __future__ import annotations

import pytest

from tests.harness import fake_notify_send, notices, wait_until, write_marker, write_random

pytestmark = pytest.mark.fuse


def test_ready_project_and_rejected_file_are_announced(tmp_path, emulator, mount_factory):
    env, log = fake_notify_send(tmp_path)
    mount = mount_factory(emulator, env=env)
    session = mount.mountpoint / "Survey"
    session.mkdir()
    write_random(session / "a.jpg", 200_000)
    (mount.mountpoint / "Bad").mkdir()  # a rejected file holds its session's project back
    write_random(mount.mountpoint / "Bad" / "bad.bin", 1000)  # the emulator refuses .bin for good (415)
    wait_until(lambda: any("bad.bin was not uploaded" in n for n in notices(log)), 60, what="the failure notice")
    write_marker(session / ".create", b'{"title": "t"}')
    assert mount.wait_project("Survey")["state"] == "ready"
    wait_until(lambda: any("Survey is ready" in n for n in notices(log)), 30, what="the ready notice")
    assert sum("is ready" in n for n in notices(log)) == 1  # polled again and again, told once
    ready = [line for line in mount.log_path.read_text().splitlines() if "session 'Survey': project" in line
             and " is ready (1 file(s), 195.3 KiB): http" in line]
    assert len(ready) == 1, ready  # one INFO line per ready project, with its page
    assert all(emulator.api_key not in n for n in notices(log))


@pytest.mark.parametrize("case", ["no-notify", "no-bus"])
def test_silent_without_bus_or_with_no_notify(tmp_path, emulator, mount_factory, case):
    env, log = fake_notify_send(tmp_path)
    extra = []
    if case == "no-notify":
        extra = ["--no-notify"]
    else:
        env["DBUS_SESSION_BUS_ADDRESS"] = ""
    mount = mount_factory(emulator, env=env, extra_args=extra)
    session = mount.mountpoint / "Survey"
    session.mkdir()
    (mount.mountpoint / "Bad").mkdir()
    write_random(mount.mountpoint / "Bad" / "bad.bin", 1000)
    write_random(session / "a.jpg", 1000)
    write_marker(session / ".create", b"{}")
    assert mount.wait_project("Survey")["state"] == "ready"
    assert mount.wait_settled("Bad") == {"bad.bin": "rejected"}
    assert notices(log) == []


def test_refusals_share_a_notice_and_each_upload_has_its_log_line(tmp_path, emulator, mount_factory):
    from .common import harness_runtime, run_fs360
    env, log = fake_notify_send(tmp_path)
    mount = mount_factory(emulator, env=env)
    # Paused while the files are written, so the refusals come together when it resumes.
    assert run_fs360(tmp_path, "pause", str(mount.mountpoint), env=harness_runtime()).returncode == 0
    session = mount.mountpoint / "Bad"
    session.mkdir()
    for name in ("one.bin", "two.bin", "three.bin"):  # the emulator refuses .bin for good (415)
        write_random(session / name, 1000)
    write_random(session / "a.jpg", 100_000)
    assert run_fs360(tmp_path, "resume", str(mount.mountpoint), env=harness_runtime()).returncode == 0
    assert mount.wait_settled("Bad") == {"one.bin": "rejected", "two.bin": "rejected", "three.bin": "rejected",
                                         "a.jpg": "complete"}
    wait_until(lambda: sum(n.count(".bin") for n in notices(log) if "not uploaded" in n) >= 3, 30,
               what="the refusals told")
    told = [n for n in notices(log) if "not uploaded" in n]
    assert len(told) < 3, told  # not one notice per file
    assert any("3 files were not uploaded" in n for n in told) or len(told) == 2
    assert all("does not take .bin files" in n and "fs360 status --files" in n for n in told)
    lines = mount.log_path.read_text().splitlines()
    uploaded = [line for line in lines if " INFO " in line and "uploaded Bad/a.jpg: 97.7 KiB" in line]
    assert len(uploaded) == 1 and uploaded[0].endswith("/s"), uploaded


def test_a_notify_send_that_hangs_does_not_outlive_the_mount(tmp_path, emulator, mount_factory):
    """A notification service that never answers: the daemon is not held up, and at unmount the
    hung notify-send gets a few seconds, then is ended (it stayed for good)."""
    from pathlib import Path

    from tests.harness import pid_alive
    env, _ = fake_notify_send(tmp_path)
    script = tmp_path / "bin" / "notify-send"
    script.write_text("#!/bin/sh\nexec sleep 600\n")
    mount = mount_factory(emulator, env=env)
    (mount.mountpoint / "Bad").mkdir()
    write_random(mount.mountpoint / "Bad" / "bad.bin", 1000)  # the emulator refuses .bin for good (415)
    daemon = mount.pid

    def hung() -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and int((entry / "stat").read_text().rpartition(")")[2].split()[1]) == daemon \
                        and b"sleep" in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
        return found
    wait_until(hung, 60, what="the refusal's notify-send, hanging")
    pids = hung()
    mount.unmount()
    wait_until(lambda: not any(pid_alive(pid) for pid in pids), 30, what="the hung notify-send to be ended")
