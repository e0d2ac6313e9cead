"""Issue 14 in the engine, without FUSE: the tree's archive uploaded, a session lost mid-archive,
and `unlink .create` before any PUT."""

from __future__ import annotations

import errno
import hashlib
import os

import pytest

from fs360.errors import Fs360Error
from fs360.fs.model import MountModel
from tests.harness import wait_until
from tests.unit.test_model import read_all, write_file
from tests.engine_helpers import file_state

KiB = 1024
SLOW_PUTS = [{"endpoint": "put_file", "kind": "latency", "seconds": 0.2, "probability": 1}]


def make_tree(model: MountModel, session: str) -> None:
    model.mkdir(f"/{session}", 0o755)
    for folder in ("Scans", "Scans/Raw", "Scans/Empty", "Scans/.partial"):
        model.mkdir(f"/{session}/{folder}", 0o755)
    write_file(model, f"/{session}/Scans/scan 1.e57", os.urandom(300 * KiB))
    write_file(model, f"/{session}/Scans/Raw/zero.bin", b"")
    write_file(model, f"/{session}/Scans/.partial/half.e57", b"scratch")
    write_file(model, f"/{session}/top.jpg", b"top")


def archive_of(model: MountModel, session: str):
    return model.engine.registry.sessions[session].archive


def project_ready(model: MountModel, session: str) -> dict:
    def ready():
        project = model.engine.registry.sessions[session].project
        return project.record if project is not None and project.state == "ready" else None
    return wait_until(ready, 60, 0.05, what="the project")


def test_the_archive_goes_up_in_chunks_and_the_project_lists_its_files(emulator, make_model):
    model = make_model(emulator, chunk_size=64 * KiB)
    make_tree(model, "s")
    write_file(model, "/s/.create", b"")
    record = project_ready(model, "s")
    assert sorted(record["files"]) == ["Scans/Raw/zero.bin", "Scans/scan_1.e57", "top.jpg"]
    archive = archive_of(model, "s")
    (remote,) = [f for f in emulator.files() if f["name"] == "s.zip"]
    assert remote["complete"] and remote["sha256"] == archive.sha256 and remote["total"] == archive.size
    # The tree's spool files go with the project, as complete files' do.
    assert all(not model.engine.spool.exists(f.id) for f in model.engine.registry.sessions["s"].tree_files())


def test_a_session_lost_mid_archive_sends_the_archive_again(emulator, make_model):
    model = make_model(emulator, chunk_size=64 * KiB)
    make_tree(model, "s")
    wait_until(lambda: file_state(model, "s", "top.jpg") == "complete", 30, 0.05, what="top.jpg")
    emulator.set_faults(SLOW_PUTS)
    write_file(model, "/s/.create", b"")
    archive = archive_of(model, "s")
    wait_until(lambda: archive.server_received > 0, 30, 0.05, what="a chunk of the archive")
    lost = model.engine.registry.sessions["s"].upload_id
    emulator.expire(lost)
    emulator.clear_faults()
    record = project_ready(model, "s")
    assert model.engine.registry.sessions["s"].upload_id != lost
    assert sorted(record["files"]) == ["Scans/Raw/zero.bin", "Scans/scan_1.e57", "top.jpg"]


def test_unlink_create_before_any_put_unfreezes_the_tree(emulator, make_model):
    model = make_model(emulator, start=False)  # nothing is sent: the archive stays planned only
    make_tree(model, "s")
    write_file(model, "/s/.create", b"")
    assert archive_of(model, "s") is not None
    with pytest.raises(Fs360Error) as info:
        model.mkdir("/s/Scans/more", 0o755)
    assert info.value.errno == errno.EACCES
    model.unlink("/s/.create")
    assert archive_of(model, "s") is None
    model.mkdir("/s/Scans/more", 0o755)       # the tree may change again
    assert not any(row["archive"] for row in model.engine.journal.files())


def test_the_archive_is_what_the_tree_makes(emulator, make_model):
    """The archive's sha256 in status is the one of the bytes ArchiveReader makes of the tree."""
    from fs360.engine.archive import ArchiveReader
    model = make_model(emulator)
    make_tree(model, "s")
    with model.engine.lock:
        members = model.engine.tree.members_locked(model.engine.registry.sessions["s"])
    assert sorted(m.path for m in members) == ["Scans/Empty/", "Scans/Raw/zero.bin", "Scans/scan 1.e57"]
    with ArchiveReader(members) as reader:
        data = bytearray(reader.size)
        reader.read_at(0, data)
    write_file(model, "/s/.create", b"")
    project_ready(model, "s")
    assert archive_of(model, "s").sha256 == hashlib.sha256(data).hexdigest()


def test_an_archive_the_server_refuses_says_how_to_go_on(emulator_factory, make_model):
    """A 413 for the archive (the server's cap was not known at .create): the project waits with the
    reason, and `rm .create` unfreezes the tree, since the server holds nothing of the archive."""
    emulator = emulator_factory("--processing-seconds", "1", "--no-rate-limits", "--max-file-size", "200000")
    model = make_model(emulator)
    model.mkdir("/s", 0o755)
    model.mkdir("/s/Scans", 0o755)
    write_file(model, "/s/Scans/a.e57", os.urandom(150_000))
    write_file(model, "/s/Scans/b.e57", os.urandom(150_000))
    write_file(model, "/s/.create", b"")
    session = model.engine.registry.sessions["s"]
    wait_until(lambda: session.archive.state == "rejected", 30, 0.05, what="the archive to be refused")
    wait_until(lambda: "remove .create, change the tree" in session.notice, 30, 0.05, what="the reason")
    model.unlink("/s/.create")
    model.unlink("/s/Scans/b.e57")
    write_file(model, "/s/.create", b"")        # the cap is known now; the smaller tree fits
    assert sorted(project_ready(model, "s")["files"]) == ["Scans/a.e57"]


def archive_on_the_server_with_the_project_held_back(model):
    """Session s's tree (make_tree) up as its archive, the project held back by a file still open."""
    make_tree(model, "s")
    still_open = model.create("/s/open.jpg", 0o644, os.O_WRONLY | os.O_CREAT)
    write_file(model, "/s/.create", b"")
    archive = archive_of(model, "s")
    wait_until(lambda: archive.state == "complete", 30, 0.05, what="the archive on the server")
    return archive, still_open


def lose_the_session(emulator, model) -> None:
    session = model.engine.registry.sessions["s"]
    lost = session.upload_id
    emulator.expire(lost)
    model.engine.session_lost(session, lost)


def test_a_session_lost_after_a_tree_file_was_deleted_never_sends_another_archive(emulator, make_model):
    """Once the server holds the archive, a tree file may be deleted (it is remembered, as any
    file the server holds). If the server then loses the session, the archive cannot be made again
    as .create planned it: it is `lost` with the way out, never sent without the file (another
    archive under the folder's archive name). `unlink .create` then plans it anew."""
    model = make_model(emulator, chunk_size=64 * KiB)
    archive, still_open = archive_on_the_server_with_the_project_held_back(model)
    model.unlink("/s/Scans/scan 1.e57")
    assert [f.name for f in model.engine.registry.sessions["s"].unlinked] == ["Scans/scan 1.e57"]
    lose_the_session(emulator, model)
    assert archive.state == "lost" and "remove .create to plan it anew" in archive.last_error
    model.write(still_open, b"open", 0)
    model.finish_writer(still_open, True)
    model.unlink("/s/.create")
    assert archive_of(model, "s") is None
    model.mkdir("/s/Scans/more", 0o755)  # the tree may change again
    write_file(model, "/s/.create", b"")
    record = project_ready(model, "s")
    assert sorted(record["files"]) == ["Scans/Raw/zero.bin", "open.jpg", "top.jpg"]


def test_a_session_lost_after_a_tree_folder_was_removed_never_sends_another_archive(emulator, make_model):
    """The same for an emptied folder removed once the server holds the archive: the archive as
    planned holds it, so it is `lost` with the way out, not `rejected` with "the tree makes N bytes
    now" (found by the model-based random test)."""
    model = make_model(emulator)
    archive, still_open = archive_on_the_server_with_the_project_held_back(model)
    model.rmdir("/s/Scans/Empty")
    lose_the_session(emulator, model)
    assert archive.state == "lost" and "remove .create to plan it anew" in archive.last_error
    model.release(still_open)


def test_rm_of_a_tree_file_while_the_archive_is_not_up_says_why_in_status(emulator, make_model):
    """`rm` of a frozen tree's file succeeds (tar -x and unzip -o unlink before they create), but
    the archive planned at .create keeps it: status says so, and that the project waits for it
    to be created again (or the folder to be removed)."""
    model = make_model(emulator, start=False)  # nothing is sent: the archive stays planned only
    make_tree(model, "s")
    write_file(model, "/s/.create", b"")
    model.unlink("/s/Scans/scan 1.e57")
    status = read_all(model, "/s/status").decode()
    assert ("held      deleted here but held by the server in the tree's archive (as planned at .create, sent "
            "or not yet: it cannot change, and the project waits; create them again with the same content, as a "
            "re-run of the same tar -x or unzip -o does, or remove the folder to discard the session): "
            "Scans/scan 1.e57") \
        in status, status
    assert "  Scans/ 2 files, " in status, status  # still in the archive
    session = model.engine.registry.sessions["s"]
    assert "Scans/scan 1.e57" in model.engine.projects.blocking_reason_locked(session)
