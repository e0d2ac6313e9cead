"""Re-running a copy is a no-op (issue 11): the second run succeeds and sends no PUT.

The server can never replace a file, so rewriting a name it holds is accepted only with the
same bytes (compared by sha256, kept in the journal); different bytes are refused with the
reason in status.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest

from tests.harness import PausedWriter, assert_uploaded, make_sources, remote_files, request_count, wait_until

KiB = 1024


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

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


def test_unzip_o_of_a_changed_archive_says_which_file_was_not_kept(tmp_path, mount, emulator):
    """`unzip -o` deletes each file before it writes it again: a file whose new content differs
    from the server's is not kept, and its name leaves the folder. Status must say why under
    `refused`, not only list it as deleted here (the user deleted nothing)."""
    import zipfile
    dest = mount.mountpoint / "site"
    dest.mkdir()
    for archive, changed in (("a.zip", b"first"), ("b.zip", b"other")):
        with zipfile.ZipFile(tmp_path / archive, "w") as z:
            z.writestr("same.jpg", b"s" * 5000)
            z.writestr("f3.jpg", changed * 1000)
    subprocess.run(["unzip", "-q", str(tmp_path / "a.zip"), "-d", str(dest)], check=True, timeout=60)
    assert mount.wait_settled("site") == {"same.jpg": "complete", "f3.jpg": "complete"}
    upload_id = mount.status_json("site")["upload_id"]
    subprocess.run(["unzip", "-q", "-o", str(tmp_path / "b.zip"), "-d", str(dest)], timeout=60)
    refused = {r["name"]: r["reason"] for r in mount.status_json("site")["refused_names"]}
    assert refused == {"f3.jpg": "not kept: the server already holds a different f3.jpg; it cannot be replaced; "
                                 "copy the new content under another name, or into a new folder"}
    assert "refused   f3.jpg: not kept" in (dest / "status").read_text()
    remote = remote_files(emulator, upload_id)
    assert set(remote) == {"same.jpg", "f3.jpg"}
    assert_uploaded(emulator, upload_id, {"same.jpg": sha256_of(b"s" * 5000), "f3.jpg": sha256_of(b"first" * 1000)})


def test_a_deleted_file_appended_to_again_with_the_same_bytes_is_the_servers_file(mount, emulator):
    """A re-run that deletes first and appends (`rm f; … >> f`): the new file starts empty, so the
    appends are compared from its first byte, whatever size the kernel took from the listing
    (the server's file's)."""
    dest = mount.mountpoint / "site"
    dest.mkdir()
    (dest / "notes.las").write_bytes(b"abc")
    assert mount.wait_settled("site") == {"notes.las": "complete"}
    puts = request_count(emulator, "PUT")
    (dest / "notes.las").unlink()
    with open(dest / "notes.las", "ab") as f:
        f.write(b"a")
        f.flush()
        os.stat(dest / "notes.las")  # the kernel's size of it is the listed one again
        f.write(b"bc")
    assert mount.wait_settled("site") == {"notes.las": "complete"}
    assert mount.status_json("site")["deleted_but_held_by_server"] == []
    assert request_count(emulator, "PUT") == puts


def test_a_project_waits_for_a_deleted_file_written_again_until_its_writer_is_done(mount, emulator):
    """`tar -x` run again (it deletes each file, then writes it) while `.create` is dropped in: the
    project waits until the re-copy is known to be the server's file, at the writer's close."""
    dest = mount.mountpoint / "site"
    dest.mkdir()
    (dest / "notes.las").write_bytes(b"abc")
    assert mount.wait_settled("site") == {"notes.las": "complete"}
    (dest / "notes.las").unlink()
    writer = subprocess.Popen(
        [sys.executable, "-c", "import sys\nwith open(sys.argv[1], 'wb') as f:\n"
         "    f.write(b'ab'); f.flush(); print('half', flush=True); sys.stdin.readline(); f.write(b'c')",
         str(dest / "notes.las")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline() == "half\n"
        (dest / ".create").write_text("{}")
        def looked_at():
            project = mount.status_json("site")["project"]
            return project if project and (project["waiting_for"] or project["state"] != "waiting") else None
        project = wait_until(looked_at, 30, 0.05, what="the project to be looked at")
        assert project["state"] == "waiting" and "notes.las" in project["waiting_for"], project
        assert request_count(emulator, "POST create_project") == 0
        writer.stdin.write("\n")
        writer.stdin.close()
        assert writer.wait(30) == 0
    finally:
        writer.kill()
        writer.wait()
    assert mount.wait_project("site")["state"] == "ready"
    assert mount.file_states("site") == {"notes.las": "complete"}


@pytest.mark.parametrize("tool", ["unzip", "tar"])
def test_unzip_or_tar_again_while_the_files_put_is_under_way(tool, tmp_path, profiled_emulator, mount_factory):
    """`unzip -o` or GNU `tar -x` run again while the file's one whole-file PUT is under way (its
    answer trickles, so it comes after the re-run deleted the file and created it again): the same
    file coming back undoes the deletion, so the re-run exits 0 and that PUT's answer completes the
    file; the same re-run once more is a no-op, and `.create` makes the project with no other PUT.
    (Every ordering of the answer, the re-creation's close and a failed PUT: tests/unit/test_model.py.)"""
    import tarfile
    import zipfile
    emulator = profiled_emulator
    data = os.urandom(300 * KiB)
    (tmp_path / "top.jpg").write_bytes(data)
    with zipfile.ZipFile(tmp_path / "t.zip", "w") as z:
        z.write(tmp_path / "top.jpg", "top.jpg")
    with tarfile.open(tmp_path / "t.tar", "w") as t:
        t.add(tmp_path / "top.jpg", "top.jpg")
    mount = mount_factory(emulator)
    dest = mount.mountpoint / "site"
    dest.mkdir()
    cmd = (["unzip", "-o", "-q", str(tmp_path / "t.zip"), "-d", str(dest)] if tool == "unzip"
           else ["tar", "-C", str(dest), "-xf", str(tmp_path / "t.tar")])
    emulator.set_faults([{"endpoint": "put_file", "kind": "trickle", "seconds": 6.0}])
    assert subprocess.run(cmd, capture_output=True, timeout=60).returncode == 0

    def on_server():
        return next((f for f in emulator.files() if f["name"] == "top.jpg" and f["complete"]), None)
    wait_until(on_server, 30, 0.02, what="the server to hold top.jpg whole, its answer still on the way")
    during = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert during.returncode == 0, during.stderr
    assert mount.wait_settled("site") == {"top.jpg": "complete"}
    emulator.clear_faults()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert mount.wait_settled("site") == {"top.jpg": "complete"}
    status = mount.status_json("site")
    assert status["deleted_but_held_by_server"] == [] and status["refused_names"] == []
    (dest / ".create").write_text("{}")
    assert mount.wait_project("site")["state"] == "ready"
    assert request_count(emulator, "PUT") == 1
    assert_uploaded(emulator, mount.status_json("site")["upload_id"], {"top.jpg": sha256_of(data)})


@pytest.mark.parametrize("first_ends", ["differs", "killed"])
def test_an_overlapping_re_run_leaves_the_file_the_later_one_brought_back(first_ends, tmp_path, mount, emulator):
    """Writer A deletes f and creates it again (a re-run, still writing), then cp --remove-destination
    deletes A's f and creates it again with the same content, exit 0. A's differing bytes (EACCES
    to A), or A killed, concern the f cp deleted: cp's f stays, the server's, and nothing is refused
    (A's close deleted it again; a hostile round found it with a real cp)."""
    data = os.urandom(300 * KiB)
    (tmp_path / "f.jpg").write_bytes(data)
    session = mount.mountpoint / "site"
    session.mkdir()
    subprocess.run(["cp", str(tmp_path / "f.jpg"), str(session / "f.jpg")], check=True)
    assert mount.wait_settled("site") == {"f.jpg": "complete"}
    (session / "f.jpg").unlink()
    first = PausedWriter(session / "f.jpg", data[:100 * KiB])  # A: created again, writing, paused
    copied = subprocess.run(["cp", "--remove-destination", str(tmp_path / "f.jpg"), str(session / "f.jpg")],
                            capture_output=True, text=True, timeout=60)
    assert copied.returncode == 0, copied.stderr
    if first_ends == "differs":
        assert first.finish(b"\0" + data[100 * KiB + 1:]) != 0  # refused: EACCES at its differing write
    else:
        first.process.kill()
        first.process.wait(60)
    assert mount.wait_settled("site") == {"f.jpg": "complete"}
    status = mount.status_json("site")
    assert status["refused_names"] == [] and status["deleted_but_held_by_server"] == []
    assert_uploaded(emulator, status["upload_id"], {"f.jpg": sha256_of(data)})
