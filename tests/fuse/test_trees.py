"""Issue 14: a folder tree copied into a session goes up as one archive when .create is accepted.

Real programs (cp -r, rsync -a) on a real mount against the emulator; the project's file list
is checked against the tree's mapped paths (`archive_names`, what ArchiveReader.names gives).
ZIP64: `--zip64-archives` makes the mount write the archive in ZIP64 form without 4 GiB of
data; the archive module's own tests read a sparse file over 4 GiB around the boundary.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from fs360.engine.archive import ArchiveMember, ArchiveReader, archive_names
from fs360.engine.journal import RESERVE_BYTES
from tests.harness import make_sources, remote_files, request_count, wait_until, write_marker
from tests.ops.common import harness_runtime, run_fs360

MiB = 1024 * 1024
SESSION = "Office scan"
ARCHIVE = "Office_scan.zip"
# Three levels, spaces, non-ASCII names, a 0-byte file; "Empty Folder" is made empty below.
TREE = {
    "Scans/scan 1.e57": 3 * MiB + 17,
    "Scans/Фото 1.JPG": 1 * MiB,
    "Scans/Raw/empty.bin": 0,
    "Scans/Raw/deep file.txt": 100,
    "Panoramas/pano été.jpg": 2 * MiB + 3,
}
TOP_LEVEL = {"top.jpg": 50_000}
SLOW_PUTS = [{"endpoint": "put_file", "kind": "latency", "seconds": 0.3, "probability": 1}]


def make_tree(root: Path) -> Path:
    """The scan folder to copy: the tree, a top-level file and an empty folder."""
    folder = root / SESSION
    for path, size in TREE.items():
        make_sources((folder / path).parent, {Path(path).name: size})
    make_sources(folder, TOP_LEVEL)
    (folder / "Empty Folder").mkdir()
    return folder


def tree_paths() -> list[str]:
    return list(TREE) + ["Empty Folder/"]


def expected_project_files() -> list[str]:
    """What the server's ready record lists: the archive's files (not its folders) and the
    top-level files."""
    mapped = archive_names(tree_paths())
    return sorted([name for name in mapped.values() if not name.endswith("/")] + list(TOP_LEVEL))


def archive_entry(mount, session: str = SESSION) -> dict:
    (entry,) = [f for f in mount.status_json(session)["files"] if f.get("archive")]
    return entry


def disk_usage(path: Path) -> int:
    return sum(os.lstat(os.path.join(d, f)).st_blocks * 512 for d, _, files in os.walk(path) for f in files)


def check_project(mount, emulator) -> None:
    project = mount.wait_project(SESSION)
    assert project["state"] == "ready", project
    assert sorted(project["record"]["files"]) == expected_project_files()
    entry = archive_entry(mount)
    assert entry["state"] == "complete" and entry["server_name"] == ARCHIVE
    remote = remote_files(emulator)
    assert set(remote) == {ARCHIVE, *TOP_LEVEL}
    assert remote[ARCHIVE]["complete"] and remote[ARCHIVE]["sha256"] == entry["sha256"]
    assert emulator.violations() == []


def test_cp_r_of_a_tree_then_create_uploads_one_archive(tmp_path, profiled_emulator, mount_factory):
    emulator = profiled_emulator
    mount = mount_factory(emulator)
    source = make_tree(tmp_path / "src")
    subprocess.run(["cp", "-r", str(source), str(mount.mountpoint)], check=True)
    session = mount.mountpoint / SESSION
    assert sorted(p.name for p in (session / "Scans").iterdir()) == ["Raw", "scan 1.e57", "Фото 1.JPG"]
    assert (session / "Scans/Raw/deep file.txt").read_bytes() == (source / "Scans/Raw/deep file.txt").read_bytes()
    wait_until(lambda: mount.file_states(SESSION).get("top.jpg") == "complete", 60, what="top.jpg")
    tree_files = mount.status_json(SESSION)["tree_files"]
    assert {f["name"]: f["state"] for f in tree_files} == {path: "in tree" for path in TREE}
    assert set(mount.file_states(SESSION)) == {"top.jpg"}     # the tree's files are no uploads of their own
    # Nothing of the tree is uploaded before .create.
    assert set(remote_files(emulator)) == {"top.jpg"}
    status = (session / "status").read_text()
    assert f"Scans/ 4 files, 4.0 MiB → in {ARCHIVE}" in status
    assert f"Panoramas/ 1 file, 2.0 MiB → in {ARCHIVE}" in status
    assert f"Empty Folder/ 0 files, 0 B → in {ARCHIVE}" in status

    write_marker(session / ".create", b"")
    check_project(mount, emulator)


def archive_of(source: Path, zip64: bool) -> str:
    """sha256 of the archive of the source tree, built here: fs360's is deterministic, so the one it
    uploaded from its spool must be byte for byte this one."""
    members = [ArchiveMember(path, source / path, (source / path).stat().st_size) for path in TREE]
    members.append(ArchiveMember("Empty Folder/"))
    digest = hashlib.sha256()
    with ArchiveReader(members, force_zip64=zip64) as reader:
        block = bytearray(MiB)
        offset = 0
        while offset < reader.size:
            n = reader.read_at(offset, block)
            digest.update(memoryview(block)[:n])
            offset += n
        assert reader.zip64 == zip64
    return digest.hexdigest()


@pytest.mark.parametrize("zip64", [False, True], ids=["zip", "zip64"])
def test_rsync_a_of_a_tree_then_create(tmp_path, emulator, mount_factory, zip64):
    mount = mount_factory(emulator, extra_args=["--zip64-archives"] if zip64 else [])
    source = make_tree(tmp_path / "src")
    subprocess.run(["rsync", "-a", str(source), str(mount.mountpoint)], check=True)
    session = mount.mountpoint / SESSION
    # A second run finds everything in place (sizes and mtimes kept) and copies nothing.
    rerun = subprocess.run(["rsync", "-a", "--itemize-changes", str(source), str(mount.mountpoint)],
                           check=True, capture_output=True, text=True)
    assert not [line for line in rerun.stdout.splitlines() if line.startswith(">f")], rerun.stdout
    assert (session / "Empty Folder").is_dir()
    write_marker(session / ".create", b"")
    check_project(mount, emulator)
    assert archive_entry(mount)["sha256"] == archive_of(source, zip64)
    # The project is made: the tree is sealed with the session.
    with pytest.raises(PermissionError):
        (session / "Scans" / "late.jpg").write_bytes(b"late")


def test_a_killed_daemon_resumes_the_archive_with_at_most_one_chunk_again(tmp_path, emulator, mount_factory):
    cache = tmp_path / "cache"
    chunk = 1 * MiB
    args = ["--chunk-size", "1M", "--max-chunk-size", "1M"]
    first = mount_factory(emulator, cache_dir=cache, extra_args=args)
    source = make_tree(tmp_path / "src")
    subprocess.run(["cp", "-r", str(source), str(first.mountpoint)], check=True)
    wait_until(lambda: first.file_states(SESSION).get("top.jpg") == "complete", 60, what="top.jpg")
    emulator.set_faults(SLOW_PUTS)
    write_marker(first.mountpoint / SESSION / ".create", b"")
    wait_until(lambda: remote_files(emulator).get(ARCHIVE, {}).get("received", 0) > chunk, 60,
               what="two chunks of the archive")
    tree_bytes = sum(TREE.values()) + sum(TOP_LEVEL.values())
    # The archive is read from the spooled tree: no second copy of it on disk.
    assert disk_usage(cache) < tree_bytes + RESERVE_BYTES + MiB
    first.kill()
    assert not remote_files(emulator)[ARCHIVE]["complete"]
    emulator.clear_faults()

    second = mount_factory(emulator, cache_dir=cache, extra_args=args)
    check_project(second, emulator)
    assert remote_files(emulator)[ARCHIVE]["overwritten_bytes"] <= chunk


def test_a_tree_next_to_an_archive_refuses_create_with_the_reason(tmp_path, emulator, mount_factory):
    mount = mount_factory(emulator)
    session = mount.mountpoint / "site"
    (session / "Scans").mkdir(parents=True)
    (session / "Scans" / "a.jpg").write_bytes(b"a")
    (session / "site.zip").write_bytes(b"PK\x05\x06" + bytes(18))
    with pytest.raises(OSError) as info:
        write_marker(session / ".create", b"")
    assert info.value.errno == errno.EINVAL
    reason = "this folder already has an archive (site.zip); the server takes one: remove one of them"
    assert reason in (session / "status").read_text()
    assert reason in mount.status_json("site")["project"]["refused"]
    assert ".create" not in os.listdir(session)
    # Without the tree (rm -r of a folder works like anywhere), the one archive is accepted.
    shutil.rmtree(session / "Scans")
    assert sorted(os.listdir(session)) == ["site.zip", "status", "status.json"]
    write_marker(session / ".create", b"")
    assert mount.wait_project("site")["state"] == "ready"


def test_rm_r_discards_a_session_whose_archive_the_server_holds(tmp_path, profiled_emulator, mount_factory):
    """The archive went up, then the account refused the project (a plan's limit). A tree file
    deleted then is the server's as any file it holds: remembered, and the project waits for
    good. `rm -r` of the folder discards the session (spec: rmdir), as it would without a tree;
    before, each tree file was EACCES and the folder could not be removed at all."""
    emulator = profiled_emulator
    mount = mount_factory(emulator)
    session = mount.mountpoint / "Plan limit"
    make_sources(session / "d", {"a.jpg": 50_000, "b.jpg": 20_000})
    wait_until(lambda: {f["state"] for f in mount.status_json("Plan limit")["tree_files"]} == {"in tree"},
               what="the tree's files whole")
    emulator.set_account(403, "project_limit_reached", endpoints=["create_project"])
    write_marker(session / ".create", b"")
    wait_until(lambda: request_count(emulator, "POST create_project 403") >= 1, what="the project refused")
    assert archive_entry(mount, "Plan limit")["state"] == "complete"

    subprocess.run(["rm", str(session / "d" / "a.jpg")], check=True)
    status = (session / "status").read_text()
    assert "deleted here but held by the server" in status and "d/a.jpg" in status

    subprocess.run(["rm", "-r", str(session)], check=True)
    assert not session.exists()
    emulator.clear_account()
    wait_until(lambda: request_count(emulator, "DELETE delete_session 2") == 1,
               what="the server session deleted")
    assert request_count(emulator, "POST create_project 2") == 0
    assert emulator.violations() == []


def test_rm_r_of_a_made_projects_folder_with_a_tree(tmp_path, emulator, mount_factory):
    """Tidying up after the project is made: `rm -r` of its folder works with a tree in it too,
    and sends no DELETE (the project's input is the server session)."""
    mount = mount_factory(emulator)
    session = mount.mountpoint / "Done"
    make_sources(session / "d" / "e", {"a.jpg": 30_000})
    make_sources(session, {"top.jpg": 10_000})
    wait_until(lambda: {f["state"] for f in mount.status_json("Done")["tree_files"]} == {"in tree"},
               what="the tree's file whole")
    write_marker(session / ".create", b"")
    assert mount.wait_project("Done")["state"] == "ready"
    kept = mount.status_json("Done")["upload_id"]
    subprocess.run(["rm", "-r", str(session)], check=True)
    assert not session.exists()
    # A folder discarded after it, without a project, gets its DELETE: once that one is served, the
    # made project's server session must still hold its files (its DELETE would have gone first).
    other = mount.mountpoint / "Discarded"
    make_sources(other, {"c.jpg": 10_000})
    wait_until(lambda: mount.file_states("Discarded").get("c.jpg") == "complete", what="c.jpg")
    subprocess.run(["rm", "-r", str(other)], check=True)
    wait_until(lambda: request_count(emulator, "DELETE delete_session 2") == 1, what="the other folder's DELETE")
    assert set(remote_files(emulator, kept)) == {"top.jpg", "Done.zip"}


def test_the_same_cp_a_again_after_the_project_is_a_no_op_and_a_change_in_the_tree_refused(
        tmp_path, profiled_emulator, mount_factory):
    """Hostile run h1b g: `cp -a` of a prepared folder (a tree and .create) made the project; the
    same `cp -a` again failed on every tree file (frozen, sealed) though nothing had changed. Its
    files are compared with their journaled digests now (their spool copies are gone by then)."""
    emulator = profiled_emulator
    mount = mount_factory(emulator)
    prepared, session = tmp_path / "prepared", mount.mountpoint / "S"
    make_sources(prepared, {"top.jpg": 20_000})
    make_sources(prepared / "sub" / "deep", {"a.e57": 300_000, "b.jpg": 0})
    (prepared / ".create").write_bytes(b"")
    copy = ["cp", "-a", f"{prepared}/.", f"{session}/"]
    subprocess.run(copy, check=True, timeout=120)
    assert mount.wait_project("S")["state"] == "ready"
    assert set(remote_files(emulator)) == {"top.jpg", "S.zip"}
    sent = {method: request_count(emulator, method) for method in ("PUT", "POST")}

    again = subprocess.run(copy, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert {method: request_count(emulator, method) for method in sent} == sent
    assert (session / "sub/deep/a.e57").stat().st_mtime_ns == (prepared / "sub/deep/a.e57").stat().st_mtime_ns

    (prepared / "sub/deep/a.e57").write_bytes(b"changed")
    changed = subprocess.run(copy, capture_output=True, text=True, timeout=120)
    assert changed.returncode == 1 and "sub/deep/a.e57" in changed.stderr, changed.stderr
    assert "Permission denied" in changed.stderr and changed.stderr.count("\n") == 1, changed.stderr
    why = os.getxattr(session / "sub/deep/a.e57", "user.fs360.error").decode()
    assert why.startswith("not changed: the project is created"), why
    assert "refused   sub/deep/a.e57: not changed: the project is created" in (session / "status").read_text()
    assert {method: request_count(emulator, method) for method in sent} == sent
    assert (session / "sub/deep/a.e57").stat().st_size == 300_000
    assert emulator.violations() == []


def packed(tool: str, source: Path, archive: Path) -> Path:
    """`source`'s content as a tar (GNU tar) or a zip (its folders as entries too, as zip -r makes)."""
    if tool == "tar":
        subprocess.run(["tar", "-cf", str(archive), "-C", str(source), "."], check=True)
        return archive
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(source.rglob("*")):
            z.write(path, path.relative_to(source).as_posix() + ("/" if path.is_dir() else ""))
    return archive


def extraction(tool: str, archive: Path, folder: Path) -> list[str]:
    return ["tar", "-xf", str(archive), "-C", str(folder)] if tool == "tar" \
        else ["unzip", "-o", "-q", str(archive), "-d", str(folder)]


@pytest.mark.parametrize("tool", ["tar", "unzip"])
def test_the_same_tar_x_or_unzip_o_again_into_a_frozen_tree_is_a_no_op_and_a_change_refused(
        tool, tmp_path, profiled_emulator, mount_factory):
    """GNU tar and unzip -o delete a name they find, then create it. Into a session whose tree is
    frozen (its archive planned, then up with the project made) the same extraction again failed on
    every tree file; now it exits 0 and nothing reaches the server. A changed tree file is refused
    (the server unchanged) and listed as deleted here, kept in the archive; the same again brings it back."""
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")
    emulator = profiled_emulator
    mount = mount_factory(emulator)
    prepared, session = tmp_path / "prepared", mount.mountpoint / "S"
    make_sources(prepared, {"top.jpg": 20_000})
    make_sources(prepared / "sub" / "deep", {"a.e57": 300_000, "b.jpg": 0})
    same = extraction(tool, packed(tool, prepared, tmp_path / f"same.{tool}"), session)
    original = (prepared / "sub/deep/a.e57").read_bytes()
    session.mkdir()
    subprocess.run(same, check=True, timeout=120)
    wait_until(lambda: mount.file_states("S") == {"top.jpg": "complete"}, 60, what="top.jpg on the server")
    assert run_fs360(tmp_path, "pause", str(mount.mountpoint), env=harness_runtime()).returncode == 0
    write_marker(session / ".create", b"")
    assert archive_entry(mount, "S")["sent"] == 0  # planned, nothing of it sent

    def run(command) -> subprocess.CompletedProcess:
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    def unchanged() -> None:
        status = mount.status_json("S")
        assert {f["name"]: f["state"] for f in status["tree_files"]} == \
            {"sub/deep/a.e57": "in tree", "sub/deep/b.jpg": "in tree"}
        assert status["deleted_but_held_by_server"] == [] and mount.file_states("S")["top.jpg"] == "complete"
        assert status["sealed"] or (session / "sub/deep/a.e57").read_bytes() == original

    def changed_is_refused(content: bytes, name: str, why: str) -> subprocess.CompletedProcess:
        (prepared / "sub/deep/a.e57").write_bytes(content)
        changed = run(extraction(tool, packed(tool, prepared, tmp_path / name), session))
        (prepared / "sub/deep/a.e57").write_bytes(original)
        status = mount.status_json("S")
        assert status["deleted_but_held_by_server"] == ["sub/deep/a.e57"], changed.stderr
        refused = {r["name"]: r["reason"] for r in status["refused_names"]}
        assert refused["sub/deep/a.e57"].startswith(f"not kept: not changed: {why}"), refused
        assert "deleted here but held by the server in the tree's archive" in (session / "status").read_text()
        # The name left the folder at the release: the kernel's entry of it lasts its attr_timeout
        # (1 s), and an unzip -o meanwhile fails to delete it ("cannot delete old").
        wait_until(lambda: not os.path.lexists(session / "sub/deep/a.e57"), 10, what="the kernel to forget it")
        return changed

    planned = run(same)
    assert planned.returncode == 0, planned.stderr
    unchanged()
    # The spool copy is there: the first differing write is refused, and both programs say so.
    changed = changed_is_refused(bytes(300_000), "zeros." + tool, "the tree goes up as S.zip")
    assert changed.returncode != 0 and "sub/deep/a.e57" in changed.stderr, changed.stderr
    assert "b.jpg" not in changed.stderr and "top.jpg" not in changed.stderr, changed.stderr
    assert archive_entry(mount, "S")["sent"] == 0
    planned = run(same)
    assert planned.returncode == 0, planned.stderr
    unchanged()
    assert run_fs360(tmp_path, "resume", str(mount.mountpoint), env=harness_runtime()).returncode == 0
    assert mount.wait_project("S")["state"] == "ready"
    remote = remote_files(emulator)
    assert set(remote) == {"top.jpg", "S.zip"} and remote["S.zip"]["sha256"] == archive_entry(mount, "S")["sha256"]
    assert sorted(mount.status_json("S")["project"]["record"]["files"]) == ["sub/deep/a.e57", "sub/deep/b.jpg",
                                                                            "top.jpg"]
    sent = {method: request_count(emulator, method) for method in ("PUT", "POST")}

    made = run(same)  # sealed, the spool copies dropped: compared by the journaled digests
    assert made.returncode == 0, made.stderr
    unchanged()
    assert {method: request_count(emulator, method) for method in sent} == sent
    # Only the digest can tell now, at the close: tar says so; unzip does not look at what close()
    # returns (doc/SEMANTICS.md "Trees"), but the file is not kept either.
    changed = changed_is_refused(b"changed", "changed." + tool, "the project is created")
    if tool == "tar":
        assert changed.returncode != 0 and "sub/deep/a.e57" in changed.stderr, changed.stderr
    again = run(same)  # the same content again: it is the tree's file again
    assert again.returncode == 0, again.stderr
    unchanged()
    assert {method: request_count(emulator, method) for method in sent} == sent
    assert remote_files(emulator) == remote
    assert emulator.violations() == []


def test_mv_of_a_tree_folder_to_another_session_copies_it_there(tmp_path, profiled_emulator, mount_factory):
    """`mv S/t X/t` of a tree's folder: EXDEV, so mv copies it into X and deletes it from S, as
    between file systems (it was EPERM, "Operation not permitted", the reason only in the log). The
    copies are X's tree, uploaded in X's archive at its .create; nothing of them goes to S."""
    emulator = profiled_emulator
    mount = mount_factory(emulator)
    source = make_tree(tmp_path / "src")
    subprocess.run(["cp", "-r", str(source), str(mount.mountpoint)], check=True)
    session, other = mount.mountpoint / SESSION, mount.mountpoint / "X"
    other.mkdir()
    moved = subprocess.run(["mv", str(session / "Scans"), str(other / "Scans")], capture_output=True, text=True)
    assert moved.returncode == 0 and moved.stderr == "", moved
    assert not (session / "Scans").exists()
    for path in TREE:
        if path.startswith("Scans/"):
            assert (other / path).read_bytes() == (source / path).read_bytes(), path
    assert {f["name"] for f in mount.status_json("X")["tree_files"]} == {p for p in TREE if p.startswith("Scans/")}
    assert {f["name"] for f in mount.status_json(SESSION)["tree_files"]} == {p for p in TREE if p.startswith("Panoramas/")}
    assert mount.status_json(SESSION)["refused_names"] == []
    write_marker(other / ".create", b"")
    project = mount.wait_project("X")
    assert project["state"] == "ready", project
    assert sorted(project["record"]["files"]) == sorted(
        name for path, name in archive_names([p for p in TREE if p.startswith("Scans/")]).items())
    assert "X.zip" in remote_files(emulator) and emulator.violations() == []
