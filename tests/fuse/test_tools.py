"""Real tools on a real mount: every file lands complete, under the name the user gave it.

For each tool the emulator must end up holding exactly the expected names (no
rsync `.name.XXXXXX`, no GIO `.goutputstream-*`, no `*.part`), each complete with
the sha256 of its source, and the mount must log no error.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

from tests.harness import (PausedWriter, assert_uploaded, make_sources, request_count, sha256_of, wait_until,
                           write_random)
from tests.ops.common import harness_runtime, run_fs360

KiB = 1024
MiB = 1024 * 1024


def all_remote_names(emulator) -> set[str]:
    return {f["name"] for f in emulator.files()}


def settle_and_check(mount, emulator, session: str, expected: dict[str, str]) -> str:
    """Waits for the session, then checks the server holds exactly `expected` (name -> sha256)."""
    states = mount.wait_settled(session)
    assert states == {name: "complete" for name in expected}, states
    upload_id = mount.status_json(session)["upload_id"]
    assert upload_id, "the session never opened on the server"
    assert_uploaded(emulator, upload_id, expected)
    # No temporary or scratch name reached the server in any session either.
    assert all_remote_names(emulator) == set(expected), sorted(all_remote_names(emulator))
    return upload_id


def run(*cmd, **kwargs):
    return subprocess.run(list(cmd), check=True, capture_output=True, text=True, timeout=60, **kwargs)


def test_cp_one_file_cp_r_folder_and_cp_a_attributes(tmp_path, mount, emulator):
    src = tmp_path / "src"
    # One file beyond the 8 MiB chunk size goes through chunked PUTs.
    expected = make_sources(src, {"big.e57": 9 * MiB + 123, "a.jpg": 300 * KiB, "b.las": 1 * MiB + 1})
    (mount.mountpoint / "one").mkdir()
    run("cp", str(src / "big.e57"), str(mount.mountpoint / "one") + "/")
    settle_and_check(mount, emulator, "one", {"big.e57": expected["big.e57"]})
    # Files advertise a 1 MiB I/O size, so cp writes in 1 MiB requests.
    assert os.stat(mount.mountpoint / "one" / "big.e57").st_blksize == MiB

    run("cp", "-r", str(src), str(mount.mountpoint / "tree"))
    tree_id = mount.wait_settled("tree") and mount.status_json("tree")["upload_id"]
    assert_uploaded(emulator, tree_id, expected)

    os.chmod(src / "a.jpg", 0o640)
    os.utime(src / "a.jpg", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    (mount.mountpoint / "kept").mkdir()
    run("cp", "-a", str(src / "a.jpg"), str(mount.mountpoint / "kept" / "a.jpg"))
    st = os.stat(mount.mountpoint / "kept" / "a.jpg")
    assert st.st_mode & 0o7777 == 0o640
    assert st.st_mtime_ns == 1_600_000_000_123_456_789
    kept_id = mount.wait_settled("kept") and mount.status_json("kept")["upload_id"]
    assert_uploaded(emulator, kept_id, {"a.jpg": expected["a.jpg"]})
    # Still remembered once the upload is complete.
    st = os.stat(mount.mountpoint / "kept" / "a.jpg")
    assert (st.st_mode & 0o7777, st.st_mtime_ns) == (0o640, 1_600_000_000_123_456_789)
    assert all_remote_names(emulator) == set(expected)


def test_rsync_a_temp_file_rename_and_rerun_sends_nothing(tmp_path, mount, emulator):
    src = tmp_path / "src"
    expected = make_sources(src, {"s1.las": 2 * MiB + 5, "s2.jpg": 40 * KiB, "s3.e57": 700 * KiB})
    (mount.mountpoint / "site").mkdir()
    run("rsync", "-a", f"{src}/", f"{mount.mountpoint}/site/")
    settle_and_check(mount, emulator, "site", expected)
    for name in expected:
        assert os.stat(mount.mountpoint / "site" / name).st_mtime_ns // 10**9 == \
            os.stat(src / name).st_mtime_ns // 10**9

    puts = request_count(emulator, "PUT ")
    result = run("rsync", "-a", "--itemize-changes", "--stats", f"{src}/", f"{mount.mountpoint}/site/")
    assert "Number of regular files transferred: 0" in result.stdout, result.stdout
    assert not [line for line in result.stdout.splitlines() if line.startswith((">f", "<f", "cf"))], result.stdout
    assert request_count(emulator, "PUT ") == puts
    assert mount.wait_settled("site") == {name: "complete" for name in expected}


def test_rsync_inplace(tmp_path, mount, emulator):
    src = tmp_path / "src"
    expected = make_sources(src, {"in1.las": 3 * MiB, "in2.ply": 10 * KiB})
    (mount.mountpoint / "inplace").mkdir()
    run("rsync", "-a", "--inplace", f"{src}/", f"{mount.mountpoint}/inplace/")
    settle_and_check(mount, emulator, "inplace", expected)


def test_tar_extract_flat(tmp_path, mount, emulator):
    src = tmp_path / "src"
    expected = make_sources(src, {"t1.jpg": 200 * KiB, "t2.obj": 1 * MiB + 7, "t3.xyz": 5})
    archive = tmp_path / "flat.tar"
    with tarfile.open(archive, "w") as tar:
        for name in expected:
            tar.add(src / name, arcname=name)
    (mount.mountpoint / "tar").mkdir()
    run("tar", "-xf", str(archive), "-C", str(mount.mountpoint / "tar"))
    settle_and_check(mount, emulator, "tar", expected)


def test_unzip_flat_members(tmp_path, mount, emulator):
    src = tmp_path / "src"
    expected = make_sources(src, {"z1.png": 123 * KiB, "z2.las": 2 * MiB})
    archive = tmp_path / "flat.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for name in expected:
            z.write(src / name, arcname=name)
    (mount.mountpoint / "zip").mkdir()
    run("unzip", "-q", str(archive), "-d", str(mount.mountpoint / "zip"))
    settle_and_check(mount, emulator, "zip", expected)


def test_dd_conv_fsync(tmp_path, mount, emulator):
    src = tmp_path / "dd.las"
    sha = write_random(src, 5 * MiB + 333)
    (mount.mountpoint / "dd").mkdir()
    run("dd", f"if={src}", f"of={mount.mountpoint}/dd/dd.las", "bs=1M", "conv=fsync", "status=none")
    settle_and_check(mount, emulator, "dd", {"dd.las": sha})


def test_gio_copy_new_file(tmp_path, mount, emulator):
    src = tmp_path / "g.jpg"
    sha = write_random(src, 600 * KiB)
    (mount.mountpoint / "gio").mkdir()
    run("gio", "copy", str(src), str(mount.mountpoint / "gio" / "g.jpg"), env=dict(os.environ, GIO_USE_VFS="local"))
    settle_and_check(mount, emulator, "gio", {"g.jpg": sha})


@pytest.mark.skipif(shutil.which("gio") is None, reason="gio is not installed (package libglib2.0-bin)")
def test_gio_trash_finds_no_trash_folder_and_makes_no_session(tmp_path, mount, emulator):
    """`gio trash` (Nautilus' Delete) makes `.Trash-$uid` at the mount's root: it would be an
    upload session, and moving a file the server holds into it fails with EACCES. The mkdir is
    refused, so GIO reports no trash here (Nautilus then offers to delete for good) and the
    file stays where it was, untouched; `gio remove` deletes it."""
    src = tmp_path / "t.jpg"
    sha = write_random(src, 200 * KiB)
    (mount.mountpoint / "trash").mkdir()
    run("cp", str(src), str(mount.mountpoint / "trash") + "/")
    upload_id = settle_and_check(mount, emulator, "trash", {"t.jpg": sha})
    env = dict(os.environ, GIO_USE_VFS="local")
    trashed = subprocess.run(["gio", "trash", str(mount.mountpoint / "trash" / "t.jpg")],
                             capture_output=True, text=True, timeout=60, env=env)
    assert trashed.returncode != 0 and "trash" in trashed.stderr.lower(), trashed
    assert sorted(os.listdir(mount.mountpoint)) == ["status", "trash"]
    for name in (".Trash", ".Trash-0", f".Trash-{os.getuid()}", ".Trash-1000"):
        made = subprocess.run(["mkdir", str(mount.mountpoint / name)], capture_output=True, text=True, timeout=60)
        assert made.returncode != 0 and "Operation not permitted" in made.stderr, (name, made)
    assert mount.file_states("trash") == {"t.jpg": "complete"}
    run("gio", "remove", str(mount.mountpoint / "trash" / "t.jpg"), env=env)
    assert mount.file_states("trash") == {}
    assert_uploaded(emulator, upload_id, {"t.jpg": sha})


def test_gio_copy_replaces_a_queued_file(tmp_path, mount_factory, emulator):
    """gio opens the target and writes it again (or renames .goutputstream-XXXXXX over it):
    a file queued but not sent yet is replaced, and only the last version goes out. Uploads
    are paused meanwhile, so the first version is certain to be still unsent."""
    mount = mount_factory(emulator)
    first, second = tmp_path / "v1.jpg", tmp_path / "v2.jpg"
    write_random(first, 100 * KiB, seed=1)
    sha2 = write_random(second, 150 * KiB, seed=2)
    env = dict(os.environ, GIO_USE_VFS="local")
    (mount.mountpoint / "gio").mkdir()
    target = mount.mountpoint / "gio" / "photo.jpg"
    assert run_fs360(tmp_path, "pause", str(mount.mountpoint), env=harness_runtime()).returncode == 0
    run("gio", "copy", str(first), str(target), env=env)
    wait_until(lambda: mount.file_states("gio") == {"photo.jpg": "uploading"}, 30,
               what="the first version to wait at the paused gate")
    run("gio", "copy", str(second), str(target), env=env)
    assert sha256_of(target) == sha2
    assert run_fs360(tmp_path, "resume", str(mount.mountpoint), env=harness_runtime()).returncode == 0
    settle_and_check(mount, emulator, "gio", {"photo.jpg": sha2})
    # The first version never went out: one whole-file PUT in all.
    assert [f["put_count"] for f in emulator.files()] == [1]


def test_shutil_copytree_creates_the_session(tmp_path, mount, emulator):
    src = tmp_path / "survey"
    expected = make_sources(src, {"p1.jpg": 64 * KiB, "p2.jpg": 65 * KiB, "cloud.laz": 1 * MiB + 3})
    shutil.copytree(src, mount.mountpoint / "survey")
    settle_and_check(mount, emulator, "survey", expected)
    for name in expected:
        assert os.stat(mount.mountpoint / "survey" / name).st_mtime_ns == os.stat(src / name).st_mtime_ns


def test_shell_redirection_truncate_append_and_cat(tmp_path, mount_factory, emulator):
    """`>`, `>>` and `cat a b >` into the mount. `>>` reopens a closed file, which works until its
    upload begins: uploads are paused during the script, so none can begin in between."""
    mount = mount_factory(emulator)
    assert run_fs360(tmp_path, "pause", str(mount.mountpoint), env=harness_runtime()).returncode == 0
    a, b = tmp_path / "a.xyz", tmp_path / "b.xyz"
    a.write_bytes(b"1 2 3\n" * 1000)
    b.write_bytes(b"4 5 6\n" * 2000)
    (mount.mountpoint / "sh").mkdir()
    script = ('set -e; cd "$1"; echo hello > note.xyz; echo world >> note.xyz; '
              'cat "$2" "$3" > both.xyz; echo first > over.xyz; echo second > over.xyz')
    run("bash", "-c", script, "sh", str(mount.mountpoint / "sh"), str(a), str(b))
    both = tmp_path / "both"
    both.write_bytes(a.read_bytes() + b.read_bytes())
    note = tmp_path / "note"
    note.write_bytes(b"hello\nworld\n")
    over = tmp_path / "over"
    over.write_bytes(b"second\n")
    assert (mount.mountpoint / "sh" / "note.xyz").read_bytes() == b"hello\nworld\n"
    assert run_fs360(tmp_path, "resume", str(mount.mountpoint), env=harness_runtime()).returncode == 0
    settle_and_check(mount, emulator, "sh", {"note.xyz": sha256_of(note), "both.xyz": sha256_of(both),
                                             "over.xyz": sha256_of(over)})


@pytest.mark.parametrize("tool", ["cp", "rsync"])
def test_scratch_names_never_reach_the_server(tmp_path, mount, emulator, tool):
    """Dot-files and *.part / *.tmp / *~ copied in stay local; the rest uploads."""
    src = tmp_path / "src"
    expected = make_sources(src, {"real.jpg": 10 * KiB})
    make_sources(src, {".hidden.jpg": 10, "partial.jpg.part": 10, "scratch.tmp": 10, "backup.jpg~": 10})
    (mount.mountpoint / "mixed").mkdir()
    if tool == "cp":
        run("cp", "-r", f"{src}/.", f"{mount.mountpoint}/mixed/")
    else:
        run("rsync", "-a", f"{src}/", f"{mount.mountpoint}/mixed/")
    states = mount.wait_settled("mixed")
    assert states["real.jpg"] == "complete"
    assert {name: s for name, s in states.items() if name != "real.jpg"} == {
        ".hidden.jpg": "local", "partial.jpg.part": "local", "scratch.tmp": "local", "backup.jpg~": "local"}
    assert_uploaded(emulator, mount.status_json("mixed")["upload_id"], expected)


def test_truncate_from_another_program_while_a_writer_has_writes_behind(tmp_path, mount_factory, emulator):
    """`truncate -s` by path, from its own process, while the writer of the file holds it open
    with direct writes still possibly behind it, then writes on past the cut: the server holds
    what a local file system would (the data up to the cut, zeros, the later data), nothing else."""
    mount = mount_factory(emulator)
    (mount.mountpoint / "s").mkdir()
    path = mount.mountpoint / "s" / "scan.e57"
    first, later = os.urandom(8 * MiB), os.urandom(2 * MiB)
    # 8 MiB in 1 MiB writes (direct, behind the writer), then 2 MiB more where it stands (8 MiB on).
    writer = PausedWriter(path, first)
    subprocess.run(["truncate", "-s", str(3 * MiB), str(path)], check=True)
    assert writer.finish(later) == 0
    expected = first[:3 * MiB] + bytes(5 * MiB) + later
    assert path.read_bytes() == expected
    assert mount.wait_settled("s") == {"scan.e57": "complete"}
    assert_uploaded(emulator, mount.status_json("s")["upload_id"], {"scan.e57": hashlib.sha256(expected).hexdigest()})


def test_sed_i_works_once_the_server_taught_its_extensions(tmp_path, mount_factory, emulator):
    """`sed -i` writes its copy as sedXXXXXX (no extension) beside the file, then renames it over
    the file. Once a 415 taught the mount the allowed extensions, that create was refused (EPERM,
    "couldn't open temporary file"), and a 'refused sedXXXXXX' line stayed in status."""
    mount = mount_factory(emulator)
    session = mount.mountpoint / "s"
    session.mkdir()
    (session / "bad.foo").write_bytes(b"not a type the server takes")
    wait_until(lambda: mount.file_states("s").get("bad.foo") == "rejected", what="the 415")
    assert run_fs360(tmp_path, "pause", str(mount.mountpoint), env=harness_runtime()).returncode == 0
    (session / "pts.xyz").write_bytes(b"1 2 5\n3 4 5\n")
    sed = subprocess.run(["sed", "-i", "s/5/FIVE/", str(session / "pts.xyz")], capture_output=True, text=True)
    assert sed.returncode == 0, sed.stderr
    assert run_fs360(tmp_path, "resume", str(mount.mountpoint), env=harness_runtime()).returncode == 0
    wait_until(lambda: mount.file_states("s").get("pts.xyz") == "complete", what="pts.xyz up")
    assert mount.status_json("s")["refused_names"] == []
    assert_uploaded(emulator, mount.status_json("s")["upload_id"],
                    {"pts.xyz": hashlib.sha256(b"1 2 FIVE\n3 4 FIVE\n").hexdigest()})


@pytest.mark.skipif(not shutil.which("zip") or not shutil.which("perl"), reason="needs zip and perl")
def test_in_place_editors_work_once_the_server_taught_its_extensions(tmp_path, mount_factory, emulator):
    """zip, perl -i and Python's tempfile write beside the target under a random name with no
    extension (ziXXXXXX, XXXXXXXX, tmpXXXXXXXX), then rename it to the target's name. Once a 415
    taught the mount the allowed extensions, that create was refused (EPERM) and each tool failed
    (a hostile run). A user's file whose name merely looks like one (sedan.jpg) still goes up."""
    mount = mount_factory(emulator)
    session = mount.mountpoint / "s"
    session.mkdir()
    (session / "bad.foo").write_bytes(b"not a type the server takes")
    wait_until(lambda: mount.file_states("s").get("bad.foo") == "rejected", what="the 415")
    src = tmp_path / "src"
    sources = make_sources(src, {"a.jpg": 3000, "sedan.jpg": 2000})
    # Paused: pts.xyz must still be the mount's to change when perl renames its copy over it.
    assert run_fs360(tmp_path, "pause", str(mount.mountpoint), env=harness_runtime()).returncode == 0
    (session / "pts.xyz").write_bytes(b"1 2 5\n")
    perl = subprocess.run(["perl", "-pi", "-e", "s/5/FIVE/", str(session / "pts.xyz")], capture_output=True, text=True)
    assert perl.returncode == 0, perl.stderr
    zipped = subprocess.run(["zip", "-q", "-j", str(session / "a.zip"), str(src / "a.jpg")],
                            capture_output=True, text=True)
    assert zipped.returncode == 0, zipped.stdout + zipped.stderr
    atomic = subprocess.run([sys.executable, "-c", """if True:
        import os, sys, tempfile
        with tempfile.NamedTemporaryFile(dir=sys.argv[1], delete=False) as f:
            f.write(b"written then renamed")
        os.replace(f.name, os.path.join(sys.argv[1], "atomic.xyz"))""", str(session)], capture_output=True, text=True)
    assert atomic.returncode == 0, atomic.stderr
    shutil.copy(src / "sedan.jpg", session / "sedan.jpg")
    assert run_fs360(tmp_path, "resume", str(mount.mountpoint), env=harness_runtime()).returncode == 0
    expected = {"pts.xyz": hashlib.sha256(b"1 2 FIVE\n").hexdigest(),
                "a.zip": sha256_of(session / "a.zip"),
                "atomic.xyz": hashlib.sha256(b"written then renamed").hexdigest(),
                "sedan.jpg": sources["sedan.jpg"]}
    wait_until(lambda: all(mount.file_states("s").get(name) == "complete" for name in expected), what="all up")
    assert mount.status_json("s")["refused_names"] == []
    assert_uploaded(emulator, mount.status_json("s")["upload_id"], expected)


def test_a_link_cp_a_cannot_make_is_named_in_status(tmp_path, mount_factory, emulator):
    """The server takes regular files only: a symbolic link is refused (EPERM), and `cp -a` of a
    folder holding one fails, which holds every file it copied. Status names the link and says
    how to copy without it (a hostile run found only cp's "Operation not permitted")."""
    mount = mount_factory(emulator)
    src = tmp_path / "src"
    make_sources(src, {"a.jpg": 5000})
    (src / "latest.jpg").symlink_to("a.jpg")
    (mount.mountpoint / "s").mkdir()
    cp = subprocess.run(["cp", "-a", f"{src}/.", str(mount.mountpoint / "s")], capture_output=True, text=True)
    assert cp.returncode == 1 and "Operation not permitted" in cp.stderr
    refused = {r["name"]: r["reason"] for r in mount.status_json("s")["refused_names"]}
    assert refused == {"latest.jpg": "not made: the server takes regular files only, not symbolic links; copy the "
                                     "folder without them, or with `cp -rL` / `rsync -rL`, which copy what the links "
                                     "point to"}
    assert mount.wait_settled("s") == {"a.jpg": "held"}  # cp failed: its files wait for the user
    cp_l = subprocess.run(["cp", "-rL", f"{src}/.", str(mount.mountpoint / "t")], capture_output=True, text=True)
    assert cp_l.returncode == 0, cp_l.stderr
    assert mount.wait_settled("t") == {"a.jpg": "complete", "latest.jpg": "complete"}
