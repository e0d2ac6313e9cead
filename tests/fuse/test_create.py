"""`.create` through a real mount: the project request, its validation, cancelling, sealing."""

from __future__ import annotations

import errno
import json
import os
import urllib.request

import pytest

from tests.harness import wait_until, write_marker, write_random


def server_project(emulator, name: str) -> dict:
    request = urllib.request.Request(f"{emulator.base_url}/projects/{name}",
                                     headers={"Authorization": f"Bearer {emulator.api_key}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def test_empty_create_makes_the_project_and_seals(tmp_path, mount_factory, profiled_emulator):
    """On both profiles: the vendor's server makes a project public when privacy_mode is absent,
    so fs360 must send its private default."""
    emulator = profiled_emulator
    mount = mount_factory(emulator)
    session = mount.mountpoint / "Plain Title"
    session.mkdir()
    write_random(session / "a.jpg", 20_000)
    (session / ".create").touch()
    project = mount.wait_project("Plain Title")
    assert project["state"] == "ready" and project["status"] == 100
    (remote,) = emulator.projects()
    assert remote["title"] == "Plain Title" and remote["status"] == 100
    record = server_project(emulator, project["name"])
    assert record["title"] == "Plain Title" and record["privacy_mode"] == 2
    assert project["privacy_mode"] == 2 and project["url"].startswith(emulator.root_url + "/projects/")
    # Sealed: no new file, .create read-only.
    with pytest.raises(PermissionError):
        (session / "b.jpg").write_bytes(b"late")
    with pytest.raises(PermissionError):
        open(session / ".create", "w").close()
    assert os.stat(session / ".create").st_mode & 0o777 == 0o444


def test_create_with_json_options(tmp_path, mount_factory, profiled_emulator):
    emulator = profiled_emulator
    mount = mount_factory(emulator)
    session = mount.mountpoint / "folder"
    session.mkdir()
    write_random(session / "cloud.las", 3 * 1024 * 1024)
    write_marker(session / ".create", json.dumps({"title": "Bridge survey", "privacy_mode": 1}).encode())
    assert json.loads((session / ".create").read_text()) == {"title": "Bridge survey", "privacy_mode": 1}
    project = mount.wait_project("folder")
    assert project["status"] == 100 and project["url"]
    record = server_project(emulator, project["name"])
    assert record["status"] == 100
    assert record["title"] == "Bridge survey"
    assert record["privacy_mode"] == 1
    assert [p["title"] for p in emulator.projects()] == ["Bridge survey"]


@pytest.mark.parametrize("text", [b"{broken", b"[1, 2]", b'"just a string"'])
def test_invalid_create_fails_close_with_einval(tmp_path, mount, emulator, text):
    session = mount.mountpoint / "bad"
    session.mkdir()
    write_random(session / "a.jpg", 1000)
    fd = os.open(session / ".create", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, text)
    with pytest.raises(OSError) as info:
        os.close(fd)
    assert info.value.errno == errno.EINVAL
    assert ".create" not in os.listdir(session)
    # The refusal stays visible until a valid marker is written (the shell ignores close()).
    project = mount.status_json("bad")["project"]
    assert project["state"] == "refused" and project["refused"], project
    assert f"project   refused: {project['refused']}" in (session / "status").read_text()
    write_marker(session / ".create", b"")
    project = mount.wait_project("bad")
    assert project["state"] == "ready" and "refused" not in project


def test_unlink_create_before_the_request_cancels_it(tmp_path, mount_factory, emulator):
    mount = mount_factory(emulator, writeback_delay=2.0)
    cancelled, control = mount.mountpoint / "cancelled", mount.mountpoint / "control"
    cancelled.mkdir()
    control.mkdir()
    write_random(cancelled / "a.jpg", 5000)       # pending: the request must wait for it
    write_marker(cancelled / ".create", b"")
    assert mount.status_json("cancelled")["project"]["state"] == "waiting"
    os.unlink(cancelled / ".create")
    assert ".create" not in os.listdir(cancelled)
    assert mount.status_json("cancelled")["project"] is None
    # A second session's project is the witness that the engine has run its project step since.
    write_random(control / "b.jpg", 5000)
    write_marker(control / ".create", b"")
    mount.wait_project("control")
    mount.wait_settled("cancelled")
    wait_until(lambda: mount.status_json("control")["project"]["status"] == 100, 30, what="control project")
    assert [p["upload_id"] for p in emulator.projects()] == [mount.status_json("control")["upload_id"]]
    assert mount.status_json("cancelled")["project"] is None
    # The folder can still take files: it is not sealed.
    (cancelled / "c.jpg").write_bytes(b"more")
