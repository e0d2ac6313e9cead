"""The errno rule, as one table against the path model (no FUSE): which errno a program gets for
each refusal, as the model raises it (doc/SEMANTICS.md "Errors a writing program sees", "Caps",
"Extensions", "When the server may hold bytes"). The classes' own errno: tests/unit/test_errors.py;
names (EINVAL, ENAMETOOLONG): test_rule_names.py; `.create`: test_rule_create.py.

The same rule through a real mount with real programs: tests/fuse/test_errno.py.
"""

from __future__ import annotations

import errno
import os

import mfusepy
import pytest

from fs360.errors import Fs360Error
from fs360.fs.fuse_ops import Fs360Operations
from fs360.fs.model import MountModel
from tests.unit.test_model import errno_of, names, read_all, wait_state, write_file
from tests.engine_helpers import file_state

CAP = 100            # max_file_size of the table's mount
SESSION_CAP = 1000   # max_session_size
HUGE = 999_999_999_999_999_999   # past what the spool's filesystem allows


@pytest.fixture
def world(server, make_model) -> MountModel:
    """A mount that never uploads, with caps configured, holding:
    /s/a.jpg (pending), /s/Scans/t.jpg (a tree), /s/.partial/ (scratch dir), /other/o.jpg, /empty."""
    m = make_model(server, start=False, max_file_size=CAP, max_session_size=SESSION_CAP,
                   allowed_extensions=("jpg", "e57"))
    for folder in ("/s", "/s/Scans", "/s/.partial", "/other", "/empty"):
        m.mkdir(folder, 0o755)
    write_file(m, "/s/a.jpg", b"A")
    write_file(m, "/s/Scans/t.jpg", b"T")
    write_file(m, "/other/o.jpg", b"O")
    return m


def opened(m: MountModel, path: str, flags=os.O_WRONLY) -> int:
    return m.open(path, flags)


def created(m: MountModel, path: str) -> int:
    return m.create(path, 0o644, os.O_WRONLY)


# (id, the refused call on `world`, its errno)
TABLE = [
    # EFBIG: past the file cap, by write, truncate or fallocate; past what the spool's disk allows
    ("write past the cap", lambda m: m.write(created(m, "/s/b.jpg"), b"z" * (CAP + 1), 0), errno.EFBIG),
    ("write ending past the cap", lambda m: m.write(opened(m, "/s/a.jpg"), b"z", CAP), errno.EFBIG),
    ("ftruncate past the cap", lambda m: m.truncate(None, CAP + 1, created(m, "/s/b.jpg")), errno.EFBIG),
    ("truncate -s past the cap", lambda m: m.truncate("/s/a.jpg", CAP + 1), errno.EFBIG),
    ("fallocate past the cap", lambda m: m.fallocate(created(m, "/s/b.jpg"), 0, 0, CAP + 1), errno.EFBIG),
    ("truncate past the disk", lambda m: write_file(m, "/s/.partial/x", b"") or m.truncate("/s/.partial/x", HUGE),
     errno.EFBIG),
    ("write past the disk", lambda m: m.write(created(m, "/s/.scratch"), b"y", HUGE), errno.EFBIG),
    # EPERM: files and links outside a session, reserved names, moves across sessions, extensions
    ("create at the root", lambda m: created(m, "/file.jpg"), errno.EPERM),
    ("rename a file to the root", lambda m: m.rename("/s/a.jpg", "/a.jpg"), errno.EPERM),
    ("rename a file onto status", lambda m: m.rename("/s/a.jpg", "/s/status"), errno.EPERM),
    ("rename a file onto .create", lambda m: m.rename("/s/a.jpg", "/s/.create"), errno.EPERM),
    ("rename a session into a session", lambda m: m.rename("/empty", "/s/empty"), errno.EPERM),
    ("rename a session onto status", lambda m: m.rename("/empty", "/status"), errno.EPERM),
    ("rename status", lambda m: m.rename("/s/status", "/s/x.jpg"), errno.EPERM),
    ("mkdir of a trash folder at the root", lambda m: m.mkdir("/.Trash-1000", 0o700), errno.EPERM),
    ("mkdir of .Trash at the root", lambda m: m.mkdir("/.Trash", 0o1777), errno.EPERM),
    ("rename a session to a trash folder", lambda m: m.rename("/empty", "/.Trash-0"), errno.EPERM),
    ("rmdir of the mount", lambda m: m.rmdir("/"), errno.EPERM),
    ("create with a refused extension", lambda m: created(m, "/s/x.exe"), errno.EPERM),
    ("create with a refused extension, any case", lambda m: created(m, "/s/x.EXE"), errno.EPERM),
    ("rename to a refused extension", lambda m: m.rename("/s/a.jpg", "/s/a.exe"), errno.EPERM),
    ("rename scratch to a refused extension", lambda m: write_file(m, "/s/.n.exe", b"") or
     m.rename("/s/.n.exe", "/s/n.exe"), errno.EPERM),
    # EXDEV: a tree's folder moved out of its session is copied and deleted by mv, as between file systems
    ("rename a folder to another session", lambda m: m.rename("/s/Scans", "/other/Scans"), errno.EXDEV),
    ("rename a folder to the root", lambda m: m.rename("/s/Scans", "/Scans"), errno.EXDEV),
    # EACCES: status files are read-only
    ("open status for writing", lambda m: opened(m, "/s/status"), errno.EACCES),
    ("open status.json O_RDWR|O_TRUNC", lambda m: opened(m, "/s/status.json", os.O_RDWR | os.O_TRUNC),
     errno.EACCES),
    ("open the root status for writing", lambda m: opened(m, "/status"), errno.EACCES),
    ("truncate status", lambda m: m.truncate("/s/status", 0), errno.EACCES),
    ("create status", lambda m: created(m, "/s/status"), errno.EACCES),
    # ENOTEMPTY: POSIX for folders and sessions
    ("rmdir of a session with a file", lambda m: m.rmdir("/s"), errno.ENOTEMPTY),
    ("rmdir of a session with a scratch dir", lambda m: m.unlink("/other/o.jpg") or m.mkdir("/other/.tmp", 0o755)
     or m.rmdir("/other"), errno.ENOTEMPTY),
    ("rmdir of a tree folder with a file", lambda m: m.rmdir("/s/Scans"), errno.ENOTEMPTY),
    ("rename a session onto a non-empty one", lambda m: m.rename("/empty", "/other"), errno.ENOTEMPTY),
    ("rename a folder onto a non-empty one", lambda m: m.mkdir("/s/New", 0o755) or
     m.rename("/s/New", "/s/Scans"), errno.ENOTEMPTY),
    # EEXIST
    ("mkdir of an existing session", lambda m: m.mkdir("/s", 0o755), errno.EEXIST),
    ("mkdir of an existing folder", lambda m: m.mkdir("/s/Scans", 0o755), errno.EEXIST),
    ("mkdir over a file", lambda m: m.mkdir("/s/a.jpg", 0o755), errno.EEXIST),
    # ENOENT
    ("open a missing file", lambda m: opened(m, "/s/missing.jpg", os.O_RDONLY), errno.ENOENT),
    ("getattr of a missing file", lambda m: m.getattr("/s/missing.jpg"), errno.ENOENT),
    ("create in a missing folder", lambda m: created(m, "/s/nowhere/x.jpg"), errno.ENOENT),
    ("create in a missing scratch dir", lambda m: created(m, "/s/.nowhere/a.jpg"), errno.ENOENT),
    ("mkdir in a missing folder", lambda m: m.mkdir("/s/nowhere/x", 0o755), errno.ENOENT),
    ("unlink a missing file", lambda m: m.unlink("/s/missing.jpg"), errno.ENOENT),
    ("rmdir a missing folder", lambda m: m.rmdir("/s/missing"), errno.ENOENT),
    ("rename a missing file", lambda m: m.rename("/s/missing.jpg", "/s/b.jpg"), errno.ENOENT),
    ("read an unlisted .create", lambda m: opened(m, "/s/.create", os.O_RDONLY), errno.ENOENT),
    # EISDIR, ENOTDIR, EINVAL: POSIX
    ("create over a folder", lambda m: created(m, "/s/Scans"), errno.EISDIR),
    ("open a folder for writing", lambda m: opened(m, "/s/Scans"), errno.EISDIR),
    ("unlink a folder", lambda m: m.unlink("/s/Scans"), errno.EISDIR),
    ("rename a file onto a folder", lambda m: m.rename("/s/a.jpg", "/s/Scans"), errno.EISDIR),
    ("rmdir of a file", lambda m: m.rmdir("/s/a.jpg"), errno.ENOTDIR),
    ("readdir of a file", lambda m: m.readdir("/s/a.jpg"), errno.ENOTDIR),
    ("rename a folder onto a file", lambda m: m.rename("/s/Scans", "/s/a.jpg"), errno.ENOTDIR),
    ("rename a folder into itself", lambda m: m.mkdir("/s/Scans/Raw", 0o755) or
     m.rename("/s/Scans", "/s/Scans/Raw/inside"), errno.EINVAL),
    # ENODATA, ENOTSUP: only user.fs360.* exist, and they are read-only; other namespaces are not supported
    ("getxattr of another name", lambda m: m.getxattr("/s/a.jpg", "user.other"), errno.ENODATA),
    ("getxattr security.capability", lambda m: m.getxattr("/s/a.jpg", "security.capability"), errno.ENOTSUP),
    ("getxattr of an ACL", lambda m: m.getxattr("/s/a.jpg", "system.posix_acl_access"), errno.ENOTSUP),
    ("setxattr of fs360's", lambda m: m.setxattr("/s/a.jpg", "user.fs360.state", b"x", 0), errno.ENOTSUP),
    ("setxattr of another", lambda m: m.setxattr("/s/a.jpg", "user.mine", b"x", 0), errno.ENOTSUP),
    ("removexattr", lambda m: m.removexattr("/s/a.jpg", "user.fs360.state"), errno.ENOTSUP),
]


@pytest.mark.parametrize("action, number", [(a, n) for _, a, n in TABLE], ids=[i for i, _, _ in TABLE])
def test_errno_of_each_refusal(world, action, number):
    """Each refused operation raises the errno the contract gives it, and changes nothing listed."""
    before = {folder: names(world, folder) for folder in ("/", "/s", "/s/Scans", "/other", "/empty")}
    with pytest.raises(Fs360Error) as info:
        action(world)
    assert info.value.errno == number, info.value
    assert read_all(world, "/s/a.jpg") == b"A"              # a.jpg is as it was
    assert names(world) == before["/"]
    assert names(world, "/s/Scans") >= {"t.jpg"}


def test_what_the_caps_and_checks_leave_alone(world):
    """Up to the caps is fine; scratch files are neither capped nor checked; a failed write leaves the
    file interrupted; an emptied session folder can go."""
    fh = created(world, "/s/full.jpg")
    world.write(fh, b"y" * CAP, 0)                          # exactly the cap
    world.finish_writer(fh, succeeded=True)
    assert file_state(world, "s", "full.jpg") == "pending"
    write_file(world, "/s/.scratch.exe", b"z" * (CAP + 1))  # local: no cap, no extension check
    assert file_state(world, "s", ".scratch.exe") == "local"
    fh = opened(world, "/s/a.jpg")
    assert errno_of(world.write, fh, b"y", HUGE) == errno.EFBIG
    world.release(fh)
    assert file_state(world, "s", "a.jpg") == "interrupted"
    assert "EFBIG" in world.getxattr("/s/a.jpg", "user.fs360.error").decode()
    for name in ("a.jpg", "full.jpg", ".scratch.exe"):
        world.unlink(f"/s/{name}")
    world.unlink("/s/Scans/t.jpg")
    for folder in ("/s/Scans", "/s/.partial", "/s"):
        world.rmdir(folder)
    for path in ("/other/status", "/other/status.json", "/status"):
        world.unlink(path)                                   # a no-op that succeeds (rm -r)
    world.unlink("/other/o.jpg")
    world.rmdir("/other")                                    # status files do not hold it
    assert names(world) == {"empty", "status"}


def test_edquot_past_the_session_cap(server, make_model):
    """A write that would take the session past its cap: EDQUOT (up to it is fine)."""
    model = make_model(server, start=False, max_session_size=SESSION_CAP)
    model.mkdir("/s", 0o755)
    write_file(model, "/s/a.jpg", b"a" * 600)
    fh = model.create("/s/b.jpg", 0o644, os.O_WRONLY)
    model.write(fh, b"b" * 400, 0)
    assert errno_of(model.write, fh, b"b", 400) == errno.EDQUOT
    model.release(fh)


def test_the_session_cap_counts_every_listed_file_as_it_changes(server, make_model):
    """The cap is checked against a sum kept as sizes change (never summed at each write): other
    writers' growth, renames in, out and to scratch names, deletions and truncates all count."""
    model = make_model(server, start=False, max_session_size=SESSION_CAP)
    for folder in ("/s", "/t"):
        model.mkdir(folder, 0o755)
    b = model.create("/s/b.jpg", 0o644, os.O_WRONLY)
    c = model.create("/s/c.jpg", 0o644, os.O_WRONLY)
    model.write(b, b"b" * 100, 0)
    model.write(c, b"c" * 300, 0)                               # another writer, at the same time
    assert errno_of(model.write, b, b"b", 700) == errno.EDQUOT  # 701 + 300 > 1000
    assert model.write(b, b"b" * 600, 100) == 600               # 700 + 300: exactly the cap
    model.release(c)
    model.rename("/s/c.jpg", "/s/.c.jpg.tmp")                   # scratch: no longer counted
    assert model.write(b, b"b" * 300, 700) == 300
    model.rename("/s/.c.jpg.tmp", "/s/c.jpg")                   # counted again: over the cap now
    assert errno_of(model.write, b, b"b", 1000) == errno.EDQUOT
    model.rename("/s/c.jpg", "/t/c.jpg")                        # moved to another session
    model.truncate(None, 200, b)
    d = model.create("/t/d.jpg", 0o644, os.O_WRONLY)
    model.write(d, b"d" * 600, 0)
    assert errno_of(model.truncate, "/t/c.jpg", 401) == errno.EDQUOT  # 600 + 401 in /t
    model.truncate("/t/c.jpg", 400)
    model.release(d)
    model.unlink("/t/d.jpg")                                    # nothing of it was sent: gone
    model.truncate("/t/c.jpg", 1000)
    assert errno_of(model.write, b, b"b", 1000) == errno.EDQUOT
    assert model.write(b, b"b" * 800, 200) == 800
    model.release(b)
    engine = model.engine
    with engine.lock:
        assert {s.name: s.listed_bytes for s in engine.registry.sessions.values()} == {"s": 1000, "t": 1000}


def test_links_and_device_nodes_are_eperm_through_the_adapter(world):
    """symlink, link and mknod: EPERM (the FUSE adapter answers them)."""
    ops = Fs360Operations(world)
    for call, args in ((ops.symlink, ("/link", "/s")), (ops.symlink, ("/s/link.jpg", "/etc/passwd")),
                       (ops.link, ("/hard", "/s")), (ops.link, ("/s/hard.jpg", "/s/a.jpg")),
                       (ops.mknod, ("/node", 0, 0)), (ops.mknod, ("/s/node", 0, 0))):
        with pytest.raises(mfusepy.FuseOSError) as info:
            call(*args)
        assert info.value.errno == errno.EPERM, (call, args)
    world.mkdir("/s/.git", 0o755)
    with pytest.raises(mfusepy.FuseOSError) as info:
        ops.symlink("/s/.git/probe", "target")  # git init's check, in a scratch folder
    assert info.value.errno == errno.EPERM
    with world.engine.lock:
        refused = world.engine.registry.sessions["s"].refused_names
    assert "link.jpg" in str(refused) and ".git/probe" not in str(refused)


# --- held files: once a PUT may have gone out ------------------------------------------------------------

HELD = [
    ("write other bytes", lambda m: m.write(opened(m, "/s/a.jpg"), b"x", 1)),
    ("write other bytes, O_RDWR", lambda m: m.write(opened(m, "/s/a.jpg", os.O_RDWR), b"x", 1)),
    ("truncate", lambda m: m.truncate("/s/a.jpg", 0)),
    ("rename within the session", lambda m: m.rename("/s/a.jpg", "/s/b.jpg")),
    ("rename to another session", lambda m: m.rename("/s/a.jpg", "/t/a.jpg")),
    ("rename a local file onto it", lambda m: write_file(m, "/s/new.jpg", b"zz") or m.rename("/s/new.jpg",
                                                                                           "/s/a.jpg")),
    ("rename a different scratch copy onto it", lambda m: write_file(m, "/s/.a.jpg.X1", b"abd") or
     m.rename("/s/.a.jpg.X1", "/s/a.jpg")),
    ("re-create its name after unlink, other bytes", lambda m: m.unlink("/s/a.jpg") or write_file(m, "/s/a.jpg",
                                                                                                   b"abd")),
]


@pytest.mark.parametrize("action", [a for _, a in HELD], ids=[i for i, _ in HELD])
def test_a_file_the_server_holds_is_eacces_to_change(server, make_model, action):
    """Write, truncate, rename of (or onto) a held file, and its name after unlink: EACCES; the
    server's copy is untouched and still readable."""
    m = make_model(server)
    m.mkdir("/s", 0o755)
    m.mkdir("/t", 0o755)
    write_file(m, "/s/a.jpg", b"abc")
    wait_state(m, "s", "a.jpg", "complete")
    upload_id = m.engine.registry.sessions["s"].upload_id

    def held_a_jpg():
        # Only a.jpg's row: a file the action writes (new.jpg) may upload meanwhile, as it should.
        (row,) = [f for f in server.files() if f["upload_id"] == upload_id and f["name"] == "a.jpg"]
        return row["total"], row["sha256"], row["put_count"], row["overwritten_bytes"]

    before = held_a_jpg()
    with pytest.raises(Fs360Error) as info:
        action(m)
    assert info.value.errno == errno.EACCES, info.value
    assert held_a_jpg() == before and before[0] == 3
    # Nothing else went up in its place (new.jpg, written by one action, may go under its own name).
    assert {f["name"] for f in server.files() if f["upload_id"] == upload_id} <= {"a.jpg", "new.jpg"}
    if "a.jpg" in names(m, "/s"):
        assert read_all(m, "/s/a.jpg") == b"abc"


# --- caps and extensions learned from the server ------------------------------------------------------------

def test_efbig_learned_from_413(emulator_factory, make_model):
    """A 413 teaches the file cap: the file is rejected with its reason, the next write past it EFBIG."""
    emulator = emulator_factory("--no-rate-limits", "--max-file-size", "1000")
    model = make_model(emulator)
    model.mkdir("/s", 0o755)
    write_file(model, "/s/huge.jpg", b"x" * 2000)
    wait_state(model, "s", "huge.jpg", "rejected")
    assert model.engine.registry.caps.file_cap == 1000
    assert model.getxattr("/s/huge.jpg", "user.fs360.error")  # the reason is shown
    fh = model.create("/s/next.jpg", 0o644, os.O_WRONLY)
    model.write(fh, b"y" * 1000, 0)  # up to the cap is fine
    assert errno_of(model.write, fh, b"y", 1000) == errno.EFBIG
    model.release(fh)
    fh = model.create("/s/third.jpg", 0o644, os.O_WRONLY)
    assert errno_of(model.truncate, "/s/third.jpg", 1001, fh) == errno.EFBIG
    assert errno_of(model.fallocate, fh, 0, 0, 1001) == errno.EFBIG
    model.release(fh)


def test_eperm_extension_learned_from_415(server, make_model):
    """A 415 teaches the refused extension and the allowed list: create or rename to others is EPERM."""
    model = make_model(server)
    model.mkdir("/s", 0o755)
    write_file(model, "/s/notes.docx", b"refused")
    wait_state(model, "s", "notes.docx", "rejected")
    assert "docx" in model.engine.registry.caps.refused_extensions
    assert errno_of(model.create, "/s/other.docx", 0o644, os.O_WRONLY) == errno.EPERM
    assert errno_of(model.create, "/s/other.DOCX", 0o644, os.O_WRONLY) == errno.EPERM
    # The 415 also taught the allowed list: another unknown extension is refused too.
    assert errno_of(model.create, "/s/x.exe", 0o644, os.O_WRONLY) == errno.EPERM
    # The rejected file goes, and its name cannot come back with the refused extension.
    model.unlink("/s/notes.docx")
    assert errno_of(model.create, "/s/notes.docx", 0o644, os.O_WRONLY) == errno.EPERM
    write_file(model, "/s/fine.jpg", b"ok")
    write_file(model, "/s/.scratch.docx", b"local scratch is never checked")
    # Renaming scratch to a refused name is refused too.
    assert errno_of(model.rename, "/s/.scratch.docx", "/s/scratch.docx") == errno.EPERM


def test_enospc_on_a_full_spool(tmpfs, server, make_model):
    """A write the spool's disk cannot take: ENOSPC; the close is still journaled (interrupted)."""
    spool_disk = tmpfs("2m")
    model = make_model(server, start=False, cache_dir=spool_disk / "cache")
    model.mkdir("/s", 0o755)
    fh = model.create("/s/big.las", 0o644, os.O_WRONLY)
    block = b"\0" * (256 * 1024)
    with pytest.raises(Fs360Error) as info:
        for i in range(16):
            model.write(fh, block, i * len(block))
    assert info.value.errno == errno.ENOSPC
    # The journal shares the full disk: its reserve lets the close still be recorded. The
    # file is short of what was written: it is interrupted, never uploaded.
    model.release(fh)
    rows = {row["name"]: (row["state"], row["last_error"]) for row in model.engine.journal.files()}
    assert list(rows) == ["big.las"]
    state, reason = rows["big.las"]
    assert state == "interrupted" and "ENOSPC" in reason, rows
    model.engine.stop(5)
