"""Desktop notices: notify-send when a project is ready or a file fails for good, only with a
session bus, never with --no-notify."""

from __future__ import annotations

import os

import pytest

from tests.harness import write_marker, write_random, wait_until

pytestmark = pytest.mark.fuse


def fake_notify_send(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "notices.log"
    script = bin_dir / "notify-send"
    script.write_text(f'#!/bin/sh\nprintf "%s|" "$@" >> {log}\necho >> {log}\n')
    script.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "DBUS_SESSION_BUS_ADDRESS": "unix:path=/nonexistent"}, log


def notices(log) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


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
