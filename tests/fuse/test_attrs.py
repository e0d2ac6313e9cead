"""Metadata through the kernel: touch, chmod, xattrs, and the listing's attributes."""

import errno
import json
import os
import shutil
import subprocess
import time

import pytest

from fs360.emulator.harness import EmulatorProcess
from tests.harness import FAST_EMULATOR_ARGS, Mount, write_random


@pytest.fixture(scope="module")
def mount(tmp_path_factory):
    """One mount for the module: its tests look at local behaviour, each in a session of its own
    (what they upload is theirs alone), so one start and one unmount serve them all. Its log is
    checked for errors at the end, as any mount's."""
    folder = tmp_path_factory.mktemp("attrs")
    with EmulatorProcess(folder / "emulator", args=FAST_EMULATOR_ARGS) as emulator, Mount(folder, emulator) as m:
        yield m


def test_touch_variants_and_chmod(tmp_path, mount):
    session = mount.mountpoint / "meta"
    session.mkdir()
    target = session / "a.jpg"
    write_random(target, 1000)
    subprocess.run(["touch", "-m", "-d", "2001-02-03 04:05:06.5 UTC", str(target)], check=True)
    assert os.stat(target).st_mtime_ns == 981173106_500000000
    subprocess.run(["touch", "-a", str(target)], check=True)   # UTIME_OMIT for mtime: unchanged
    assert os.stat(target).st_mtime_ns == 981173106_500000000
    before = time.time_ns()
    subprocess.run(["touch", str(target)], check=True)         # UTIME_NOW
    assert os.stat(target).st_mtime_ns >= before - 10**9
    os.chmod(target, 0o600)
    # The write bits show only while the file may still change (it may be complete by now: 0400).
    assert os.stat(target).st_mode & 0o7577 == 0o600 & 0o7577


def test_xattrs_through_the_kernel(tmp_path, mount):
    session = mount.mountpoint / "x"
    session.mkdir()
    target = session / "a.jpg"
    write_random(target, 5000)
    mount.wait_settled("x")
    assert os.getxattr(target, "user.fs360.state") == b"complete"
    assert os.getxattr(target, "user.fs360.received") == b"5000"
    assert os.getxattr(target, "user.fs360.error") == b""
    assert {"user.fs360.state", "user.fs360.received", "user.fs360.error"} <= set(os.listxattr(target))
    with pytest.raises(OSError) as info:
        os.setxattr(target, "user.fs360.state", b"x")
    assert info.value.errno == errno.ENOTSUP
    with pytest.raises(OSError) as info:
        os.getxattr(target, "user.other")
    assert info.value.errno == errno.ENODATA
    # No other namespace is supported: on ENOTSUP `ls -l` stops asking for ACLs and labels.
    for name in ("security.capability", "security.selinux", "system.posix_acl_access"):
        with pytest.raises(OSError) as info:
            os.getxattr(target, name)
        assert info.value.errno == errno.ENOTSUP, name
    # After a refused setxattr the kernel still asks for the own attributes.
    assert os.getxattr(target, "user.fs360.state") == b"complete"


def test_listing_attributes_match_stat(tmp_path, mount):
    """readdirplus hands the kernel the same attributes getattr gives."""
    session = mount.mountpoint / "ls"
    session.mkdir()
    for i in range(300):
        (session / f"f{i:03d}.part").write_bytes(b"x" * i)
    out = subprocess.run(["ls", "-ln", "--time-style=+%s", str(session)], check=True, capture_output=True,
                         text=True).stdout.splitlines()
    sizes = {line.split()[-1]: int(line.split()[4]) for line in out[1:]}
    assert {f"f{i:03d}.part": i for i in range(300)}.items() <= sizes.items()
    assert {"status", "status.json"} <= set(sizes)
    for entry in os.scandir(session):  # the attributes the listing handed over, not a fresh getattr
        assert entry.stat().st_size == sizes[entry.name]


def test_inode_numbers_are_distinct_and_follow_an_entry_through_renames(tmp_path, mount):
    """Every entry has its own inode number, the same from stat and from a listing, kept when the
    entry is renamed (within its folder, into a sub-folder and back, into another session): the
    numbers are fs360's (use_ino), not libfuse's node ids, which change when it forgets a node."""
    first, second = mount.mountpoint / "inodes", mount.mountpoint / "inodes2"
    first.mkdir()
    second.mkdir()
    (first / "sub").mkdir()
    for name in ("a.part", "b.part"):
        (first / name).write_bytes(b"x")
    paths = [mount.mountpoint, mount.mountpoint / "status", first, second, first / "sub", first / "status",
             first / "status.json", second / "status", first / "a.part", first / "b.part"]
    numbers = {path: os.stat(path).st_ino for path in paths}
    assert len(set(numbers.values())) == len(paths) and 0 not in numbers.values()
    listed = {entry.name: entry.inode() for entry in os.scandir(first)}
    assert {name: listed[name] for name in ("sub", "status", "status.json", "a.part", "b.part")} == \
        {path.name: number for path, number in numbers.items() if path.parent == first}
    moves = [first / "a.part", first / "c.part", first / "sub" / "c.part", first / "a.part", second / "a.part"]
    for old, new in zip(moves, moves[1:]):
        os.rename(old, new)
        assert os.stat(new).st_ino == numbers[first / "a.part"], new
    os.rename(first / "sub", first / "sub2")
    assert os.stat(first / "sub2").st_ino == numbers[first / "sub"]


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_ls_l_asks_one_file_for_acls_and_labels_not_each(tmp_path, mount):
    """ENOTSUP for security.* and system.*: `ls -l` then asks no other file of the listing."""
    session = mount.mountpoint / "xattr-ls"
    session.mkdir()
    for i in range(50):
        (session / f"f{i:02d}.part").write_bytes(b"x")
    counts = tmp_path / "strace.txt"
    subprocess.run(["strace", "-f", "-c", "-o", str(counts), "-e", "trace=getxattr,lgetxattr", "ls", "-l",
                    str(session)], check=True, stdout=subprocess.DEVNULL)
    calls = {line.split()[-1]: int(line.split()[3]) for line in counts.read_text().splitlines()
             if line.split() and line.split()[-1] in ("getxattr", "lgetxattr")}
    if not calls:
        pytest.skip("this ls asks no file for ACLs or labels: nothing to count")
    assert calls and max(calls.values()) <= 2, calls


def test_status_files_copy_whole_and_ctime_follows_changes(tmp_path, mount):
    session = mount.mountpoint / "st"
    session.mkdir()
    target = session / "a.jpg"
    write_random(target, 1000)
    mount.wait_settled("st")
    # Copy tools trust the size getattr gives: it is the real one.
    subprocess.run(["rsync", str(session / "status.json"), str(tmp_path / "copy.json")], check=True)
    assert json.loads((tmp_path / "copy.json").read_text())["session"] == "st"
    subprocess.run(["cp", str(session / "status"), str(tmp_path / "copy.txt")], check=True)
    assert (tmp_path / "copy.txt").read_text().startswith("session   st\n")
    # ctime moves with chmod and rename; the folder's mtime and ctime with its entries.
    before = time.time_ns()
    os.chmod(target, 0o600)
    assert os.stat(target).st_ctime_ns >= before
    scratch = session / ".draft"
    scratch.write_bytes(b"x")
    folder_before, file_before = os.stat(session), os.stat(scratch)
    os.rename(scratch, session / ".draft2")
    folder_after = os.stat(session)
    assert os.stat(session / ".draft2").st_ctime_ns > file_before.st_ctime_ns
    assert folder_after.st_mtime_ns > folder_before.st_mtime_ns
    assert folder_after.st_ctime_ns > folder_before.st_ctime_ns


def test_unlink_of_open_status_files_and_marker(tmp_path, mount):
    """libfuse renames an open file it is asked to unlink (no hard_remove): status files and
    .create follow their unlink rules all the same."""
    session = mount.mountpoint / "open"
    session.mkdir()
    with open(session / "status", "rb") as status, open(mount.mountpoint / "status", "rb"):
        os.unlink(session / "status")            # a no-op that succeeds
        os.unlink(mount.mountpoint / "status")
        assert status.read().startswith(b"session   open")
    write_random(session / "a.jpg", 100)
    with open(session / ".create", "wb"):
        pass
    with open(session / ".create", "rb"):
        os.unlink(session / ".create")           # cancels the request
    assert mount.status_json("open")["project"]["state"] == "cancelled"
    assert sorted(os.listdir(session)) == ["a.jpg", "status", "status.json"]
