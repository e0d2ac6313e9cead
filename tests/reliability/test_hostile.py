"""Scenario 7: hostile input through the mount."""

from __future__ import annotations

import errno
import os
import threading

import pytest

from tests.harness import write_marker, write_random

from .common import KiB, MiB, assert_accounted, pick, settle


def _errno_of(action) -> int | None:
    try:
        action()
    except OSError as exc:
        return exc.errno
    return None


def _create_bytes(path: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, b"x")
    finally:
        os.close(fd)


def test_hostile_names(tmp_path, emulator, mount_factory):
    mount = mount_factory(emulator)
    session = "names"
    folder = mount.mountpoint / session
    folder.mkdir()
    written = {}
    longest = "a" * 251 + ".jpg"                   # 255 bytes
    longest_utf8 = "é" * 125 + "a.jpg"             # 255 bytes, 2-byte characters
    assert len(longest.encode()) == len(longest_utf8.encode()) == 255
    for name in (longest, longest_utf8):
        written[name] = write_random(folder / name, 10_000, seed=name)

    too_long = "b" * 252 + ".jpg"                  # 256 bytes
    assert _errno_of(lambda: (folder / too_long).write_bytes(b"x")) == errno.ENAMETOOLONG
    too_long_utf8 = "é" * 126 + ".jpg"             # 256 bytes
    assert _errno_of(lambda: (folder / too_long_utf8).write_bytes(b"x")) == errno.ENAMETOOLONG

    for bad in ("tab\there.jpg", "new\nline.jpg", "bell\x07.jpg", "del\x7f.jpg", "esc\x1b[31m.jpg"):
        assert _errno_of(lambda: (folder / bad).write_bytes(b"x")) == errno.EINVAL, repr(bad)
    assert _errno_of(lambda: (folder / "\x01\x02").write_bytes(b"x")) == errno.EINVAL
    # Names that the server's flattening would leave empty go under names of their own.
    for odd in ("\\.jpg", "\\\\.jpg", "\u0085.jpg"):
        written[odd] = write_random(folder / odd, 2000, seed=odd)
    # Non-UTF-8 bytes, through a bytes path.
    base = os.fsencode(folder)
    for raw in (b"\xff\xfe.jpg", b"caf\xe9.jpg", b"\xc3(.jpg"):
        assert _errno_of(lambda: _create_bytes(base + b"/" + raw)) == errno.EINVAL, raw
    # Same rules for a rename onto a bad name.
    ok = folder / "fine.jpg"
    written["fine.jpg"] = write_random(ok, 1000, seed="fine")
    assert _errno_of(lambda: os.rename(ok, folder / "bad\x01.jpg")) == errno.EINVAL
    assert _errno_of(lambda: os.rename(ok, folder / ("c" * 256))) == errno.ENAMETOOLONG

    settle(mount, session)
    names = set(os.listdir(folder)) - {"status", "status.json"}
    assert names == set(written), names
    assert_accounted(mount, emulator, {session: written})
    assert mount.file_states(session) == {n: "complete" for n in written}
    server_names = {f["name"]: f["server_name"] for f in mount.status_json(session)["files"]}
    assert {server_names[odd] for odd in ("\\.jpg", "\\\\.jpg", "\u0085.jpg")} == {"file.jpg", "file_2.jpg",
                                                                                "file_3.jpg"}


BAD_MARKERS = [b"{not json", b"[1, 2, 3]", b'"a string"', b"\xff\xfe{}", b'{"privacy_mode": 7}']


def _write_marker(marker, content: bytes) -> int | None:
    """Writes .create; returns the errno it was refused with (None when accepted)."""
    return _errno_of(lambda: write_marker(marker, content))


def test_invalid_and_huge_create_markers(tmp_path, emulator, mount_factory):
    mount = mount_factory(emulator)
    written = {}
    for i, bad in enumerate(BAD_MARKERS):
        session = f"bad-{i}"
        (mount.mountpoint / session).mkdir()
        written[session] = {"one.jpg": write_random(mount.mountpoint / session / "one.jpg", 5000, seed=f"o{i}")}
        assert _write_marker(mount.mountpoint / session / ".create", bad) == errno.EINVAL, bad
        assert not_accepted(mount.status_json(session)["project"]), f"{bad!r} was accepted"

    # A valid marker still works.
    session = "good"
    (mount.mountpoint / session).mkdir()
    written[session] = {"one.jpg": write_random(mount.mountpoint / session / "one.jpg", 5000, seed="good")}
    assert _write_marker(mount.mountpoint / session / ".create", b'{"title": "good one", "privacy_mode": 1}') is None
    for name in written:
        settle(mount, name)
    project = mount.wait_project("good")
    assert project["state"] == "ready", project
    assert_accounted(mount, emulator, written)
    assert all(not_accepted(mount.status_json(f"bad-{i}")["project"]) for i in range(len(BAD_MARKERS)))


def not_accepted(project: dict | None) -> bool:
    """No project was requested; a refused marker stays visible with its reason (issue 11)."""
    return project is None or (project["state"] == "refused" and bool(project["refused"]))


def test_huge_create_marker_is_refused(tmp_path, emulator, mount_factory):
    mount = mount_factory(emulator)
    written = {}
    session = "huge"
    (mount.mountpoint / session).mkdir()
    written[session] = {"one.jpg": write_random(mount.mountpoint / session / "one.jpg", 5000, seed="huge")}
    fd = os.open(mount.mountpoint / session / ".create", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        huge = b'{"title": "' + b"x" * (80 * KiB) + b'"}'
        assert _errno_of(lambda: os.write(fd, huge)) == errno.EFBIG
    finally:
        _errno_of(lambda: os.close(fd))
    assert not_accepted(mount.status_json(session)["project"]), "a huge .create was accepted"
    settle(mount, session)
    assert_accounted(mount, emulator, written)
    assert not_accepted(mount.status_json(session)["project"]), "a huge .create was accepted after all"


def test_create_marker_fixed_right_after_a_refused_one(tmp_path, emulator, mount_factory):
    mount = mount_factory(emulator)
    session = "retry"
    (mount.mountpoint / session).mkdir()
    written = {session: {"one.jpg": write_random(mount.mountpoint / session / "one.jpg", 5000, seed="r")}}
    marker = mount.mountpoint / session / ".create"
    assert _write_marker(marker, b"{oops") == errno.EINVAL
    # The user fixes it at once, as `echo '{}' > .create` would.
    assert _write_marker(marker, b'{"title": "fixed"}') is None
    settle(mount, session)
    assert mount.wait_project(session)["state"] == "ready"
    assert_accounted(mount, emulator, written)


def test_file_cap_learned_from_413(tmp_path, emulator_factory, mount_factory):
    cap = 2 * MiB
    emulator = emulator_factory("--processing-seconds", "1", "--no-rate-limits", "--max-file-size", str(cap))
    mount = mount_factory(emulator)
    session = "capped"
    folder = mount.mountpoint / session
    folder.mkdir()
    written = {"small.jpg": write_random(folder / "small.jpg", 100_000, seed="small")}
    written["first-big.e57"] = write_random(folder / "first-big.e57", cap + MiB, seed="big1")
    settle(mount, session)
    entry = {f["name"]: f for f in mount.status_json(session)["files"]}["first-big.e57"]
    assert entry["state"] == "rejected" and entry["error"], entry

    # The cap is known now: growing a file past it is EFBIG at write time, before anything is sent.
    second = folder / "second-big.e57"
    block = os.urandom(512 * KiB)
    fd = os.open(second, os.O_WRONLY | os.O_CREAT, 0o644)
    sent = 0
    try:
        error = None
        try:
            for _ in range(8):
                sent += os.write(fd, block)
        except OSError as exc:
            error = exc
    finally:
        os.close(fd)
    assert error is not None and error.errno == errno.EFBIG, error
    assert sent <= cap
    assert _errno_of(lambda: os.truncate(second, cap + 1)) == errno.EFBIG
    # What was written (up to the cap) is not what the writer meant: interrupted, never uploaded.
    written["second-big.e57"] = write_random_prefix(block, sent)
    settle(mount, session)
    assert_accounted(mount, emulator, {session: written})
    states = mount.file_states(session)
    assert states["small.jpg"] == "complete" and states["second-big.e57"] == "interrupted", states
    assert "second-big.e57" not in {f["name"] for f in emulator.files()}


def write_random_prefix(block: bytes, size: int) -> str:
    import hashlib
    digest = hashlib.sha256()
    left = size
    while left:
        piece = block[: min(left, len(block))]
        digest.update(piece)
        left -= len(piece)
    return digest.hexdigest()


def test_extension_refused_by_415_is_eperm_at_create(tmp_path, emulator_factory, mount_factory):
    emulator = emulator_factory("--processing-seconds", "1", "--no-rate-limits", "--allowed-extensions", "jpg,e57")
    mount = mount_factory(emulator)
    session = "exts"
    folder = mount.mountpoint / session
    folder.mkdir()
    written = {"ok.jpg": write_random(folder / "ok.jpg", 5000, seed="ok"),
               "notes.txt": write_random(folder / "notes.txt", 5000, seed="txt")}
    settle(mount, session)
    entry = {f["name"]: f for f in mount.status_json(session)["files"]}["notes.txt"]
    assert entry["state"] == "rejected" and entry["error"], entry
    assert_accounted(mount, emulator, {session: written})

    # Learned: a new file with that extension is refused at create, as is one outside the allowed list.
    assert _errno_of(lambda: (folder / "more.txt").write_bytes(b"x")) == errno.EPERM
    assert _errno_of(lambda: (folder / "model.ifc").write_bytes(b"x")) == errno.EPERM
    # The rejected file goes, and its name cannot come back with the refused extension.
    os.unlink(folder / "notes.txt")
    assert _errno_of(lambda: (folder / "notes.txt").write_bytes(b"x")) == errno.EPERM
    # Allowed ones still work.
    del written["notes.txt"]
    written["ok2.JPG"] = write_random(folder / "ok2.JPG", 5000, seed="ok2")
    settle(mount, session)
    assert_accounted(mount, emulator, {session: written})
    assert set(mount.file_states(session)) == set(written)


def test_fifty_concurrent_writers(tmp_path, emulator, mount_factory):
    writers = pick(50, 200)
    mount = mount_factory(emulator)
    session = "crowd"
    folder = mount.mountpoint / session
    folder.mkdir()
    written: dict[str, str] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(writers)

    def writer(i: int) -> None:
        name = f"w-{i:03d}.jpg"
        try:
            start.wait(30)
            sha = write_random(folder / name, 64 * KiB + 4099 * i, seed=f"w{i}")
            with lock:
                written[name] = sha
        except BaseException as exc:  # noqa: BLE001 - reported below
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a writer hangs"
    assert not errors, errors[:5]
    assert len(written) == writers
    states = settle(mount, session, timeout=pick(120, 300))
    assert states == {n: "complete" for n in written}, {n: s for n, s in states.items() if s != "complete"}
    assert_accounted(mount, emulator, {session: written})


@pytest.mark.parametrize("where", ["root", "nested"])
def test_no_files_at_the_root_and_no_links(tmp_path, emulator, mount_factory, where):
    """Folders may nest inside a session (a tree, sent as one archive), links never."""
    mount = mount_factory(emulator)
    (mount.mountpoint / "s").mkdir()
    if where == "root":
        assert _errno_of(lambda: (mount.mountpoint / "loose.jpg").write_bytes(b"x")) == errno.EPERM
        assert _errno_of(lambda: os.symlink("/etc/passwd", mount.mountpoint / "link")) == errno.EPERM
    else:
        (mount.mountpoint / "s" / "sub").mkdir()
        assert _errno_of(lambda: os.symlink("/etc/passwd", mount.mountpoint / "s" / "link.jpg")) == errno.EPERM
        assert _errno_of(lambda: os.symlink("/etc/passwd", mount.mountpoint / "s" / "sub" / "l.jpg")) == errno.EPERM


def test_refused_operations_log_no_traceback_at_debug(tmp_path, emulator, mount_factory):
    mount = mount_factory(emulator)  # the harness's default: --log-level debug
    (mount.mountpoint / "s").mkdir()
    assert _errno_of(lambda: (mount.mountpoint / "loose.jpg").write_bytes(b"x")) == errno.EPERM
    assert _errno_of(lambda: (mount.mountpoint / "s" / "bad\x01.jpg").write_bytes(b"x")) == errno.EINVAL
    mount.unmount()
    mount.assert_no_logged_errors()
