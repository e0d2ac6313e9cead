"""Re-running a copy is a no-op (issue 11): the second run succeeds and sends no PUT.

The server can never replace a file, so rewriting a name it holds is accepted only with the
same bytes (compared by sha256, kept in the journal); different bytes are refused with the
reason in status.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.harness import assert_uploaded, make_sources, request_count

KiB = 1024
MiB = 1024 * 1024
SIZES = {"scan-1.e57": 2 * MiB + 11, "photo.jpg": 300 * KiB, "notes.las": 5}


def copy_with(tool: str, src, dest) -> subprocess.CompletedProcess:
    if tool == "rsync -r":
        cmd = ["rsync", "-r", f"{src}/", f"{dest}/"]
    elif tool == "cp -r":
        cmd = ["cp", "-r", f"{src}/.", f"{dest}/"]
    else:  # gio copy copies files, not trees: every file of the folder, into the folder
        cmd = ["gio", "copy", *sorted(str(p) for p in src.iterdir()), str(dest)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("tool", ["rsync -r", "cp -r", "gio copy"])
def test_the_same_copy_twice_sends_nothing_the_second_time(tool, tmp_path, mount, emulator):
    src = tmp_path / "src"
    expected = make_sources(src, SIZES)
    dest = mount.mountpoint / "site"
    dest.mkdir()
    first = copy_with(tool, src, dest)
    assert first.returncode == 0, first.stderr
    assert mount.wait_settled("site") == {name: "complete" for name in SIZES}
    puts = request_count(emulator, "PUT")
    second = copy_with(tool, src, dest)
    assert second.returncode == 0, second.stderr
    assert mount.wait_settled("site") == {name: "complete" for name in SIZES}
    assert request_count(emulator, "PUT") == puts
    assert_uploaded(emulator, mount.status_json("site")["upload_id"], expected)
    # No scratch copy (rsync's .name.XXXXXX, GIO's .goutputstream-*) is left behind.
    assert sorted(os.listdir(dest)) == sorted([*SIZES, "status", "status.json"])


@pytest.mark.parametrize("tool", ["rsync -r", "cp -r"])
def test_a_changed_file_is_refused_with_its_reason(tool, tmp_path, mount, emulator):
    src = tmp_path / "src"
    expected = make_sources(src, SIZES)
    dest = mount.mountpoint / "site"
    dest.mkdir()
    assert copy_with(tool, src, dest).returncode == 0
    mount.wait_settled("site")
    with open(src / "scan-1.e57", "r+b") as f:
        f.seek(MiB)
        f.write(b"changed")
    # Not the mtime the mount shows either (rsync -r compares size and mtime, to the second).
    os.utime(src / "scan-1.e57", (1_000_000_000, 1_000_000_000))
    again = copy_with(tool, src, dest)
    assert again.returncode != 0
    assert "Permission denied" in again.stderr, again.stderr
    info = {f["name"]: f for f in mount.status_json("site")["files"]}
    assert info["scan-1.e57"]["state"] == "complete"
    assert info["scan-1.e57"]["error"] == "the server already holds a different scan-1.e57; it cannot be replaced"
    assert "different scan-1.e57" in (mount.mountpoint / "site" / "status").read_text()
    assert_uploaded(emulator, mount.status_json("site")["upload_id"], expected)
    assert not any(name.startswith(".") for name in os.listdir(dest)), "a scratch copy was left behind"
