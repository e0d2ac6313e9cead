"""The path model without FUSE: MountModel over a real Engine against a real emulator.

Index: semantics.md row -> test (unit tests here; `fuse:` = tests/fuse/...)

Sessions
  mkdir: local, POST /uploads only at the first ready file .... test_mkdir_is_local_until_a_file_is_ready
  rename (local, title default) .............................. test_rename_session_is_local
  rmdir ENOTEMPTY / discards + DELETE /uploads ................ test_rule_errno.py, test_unlink_server_held_then_rmdir_discards
  files or links at the root EPERM ........................... test_rule_errno.py (+ fuse:test_errno.py)
Files inside a session
  create/open/write/truncate/fallocate/O_APPEND/offsets ...... test_spool_serves_any_write_pattern
  last close -> pending -> complete .......................... test_close_makes_pending_then_complete
  reopen for write while pending cancels, re-queues ......... test_reopen_while_pending_cancels_and_requeues
  write/truncate/rename onto server-held EACCES .............. test_rule_errno.py::test_a_file_the_server_holds_is_eacces_to_change
  rename local-only (within, between, replace target) ........ test_rename_local_files
  unlink local-only cancels its upload ....................... test_unlink_pending_cancels
  unlink server-held: remembered, .create refused, EACCES ... test_unlink_server_held_then_rmdir_discards
  mkdir inside a session: a tree, any depth (issue 14) ...... test_tree_folders_behave_like_posix,
                                                                test_tree_files_wait_in_tree_and_survive_a_restart,
                                                                test_create_freezes_the_tree_and_uploads_one_archive,
                                                                test_rule_create.py (refusals at .create),
                                                                fuse:test_trees.py, integration:test_tree_engine.py
  chmod/chown/utimens remembered, survive restart ............ test_metadata_survives_restart
  read from spool, EACCES once dropped ....................... test_read_served_then_eacces_after_drop
  fsync ....................................................... test_spool_serves_any_write_pattern
  statfs = spool disk ........................................ test_statfs_is_spool_disk
  xattrs read-only, setxattr ENOTSUP ......................... test_xattrs
  dot-files / default patterns local; rename to visible ..... test_rule_names.py (+ fuse:test_names.py)
.create
  empty / JSON object / invalid -> EINVAL at close ........... test_rule_create.py (+ fuse:test_create.py)
  waits for every file, then POST /projects .................. fuse:test_create.py::test_create_with_json_options
  refused while the server holds a deleted file .............. test_unlink_server_held_then_rmdir_discards
  unlink .create before the request cancels .................. test_rule_create.py
  sealed: .create read-only, new files EACCES ................ test_rule_create.py
  sealed: unlink .create hides it, rm -r works (decision) .... test_rule_create.py
status / status.json
  EACCES for write, unlink no-op, stay listed ................ test_status_files_read_only
Errors a writing program sees
  ENOSPC spool full .......................................... test_rule_errno.py
  EFBIG (learned from 413 / configured) ...................... test_rule_errno.py (+ fuse:test_errno.py)
  EDQUOT session cap ......................................... test_rule_errno.py
  EPERM extension refused at create (learned from 415) ...... test_rule_errno.py (+ fuse:test_errno.py)
  EACCES sealed / server-held ................................ test_rule_create.py, test_rule_errno.py
  EPERM non-folder at root ................................... test_rule_errno.py
  ENAMETOOLONG > 255 bytes ................................... test_rule_names.py (+ fuse:test_names.py)
  EINVAL control chars / non-UTF-8 / bad .create ............. test_rule_names.py, test_rule_create.py
  EIO unexpected internal error (adapter wrapper) ............ test_translated_wrapper_eio_and_errnos
Unmount / restart
  unfinished uploads resume on a new mount ................... fuse:test_remount.py
  umount -l while writing: complete after the next mount ..... fuse:test_unfinished.py::test_lazy_unmount_while_writing
Issue 11: never upload what the writer did not finish
  failed write/truncate -> interrupted until rewritten ....... test_failed_write_interrupts_until_rewritten_whole,
                                                                test_failed_truncate_through_the_handle_interrupts,
                                                                fuse:test_unfinished.py::test_enospc_copy_is_interrupted
  a truncate keeps an interrupted file interrupted ........... test_an_interrupted_file_is_not_made_whole_by_truncating_it
  past the spool disk's size limit: EFBIG ..................... test_a_size_past_the_spool_disk_limit_is_efbig
  dying writer (signal / non-zero exit) -> interrupted ........ test_exit_reason_of_a_live_process_is_empty,
                                                                test_death_by_signal_right_after_a_close_interrupts_that_file,
                                                                fuse:test_unfinished.py::test_killed_writer_*
  identical re-copy of a held file: no PUT; different EACCES .. test_identical_rewrite_of_a_held_file_is_accepted_different_refused,
                                                                test_rename_of_a_scratch_copy_onto_a_held_file,
                                                                fuse:test_recopy.py
  tar -x / unzip -o again over a frozen tree (delete first) .. test_a_re_run_that_deletes_a_frozen_trees_file_first_brings_it_back_or_refuses_it,
                                                                test_a_frozen_trees_file_deleted_before_a_remount_comes_back_when_created_again,
                                                                fuse:test_trees.py::test_the_same_tar_x_or_unzip_o_again_into_a_frozen_tree_*
  deleted before any PUT: no tombstone ....................... test_deleted_before_any_put_leaves_no_trace
  deleted while its last PUT was under way: back once it ..... test_a_file_deleted_while_its_last_put_was_under_way_comes_back_once_that_put_completed_it,
    completed; cut midway, refused with why ................... test_a_file_deleted_midway_through_its_chunks_keeps_its_name_refused,
    created again identical before its answer: undone ........ test_a_re_run_before_the_answer_of_the_put_under_way_is_that_file_again,
                                                                test_a_put_under_way_that_fails_after_a_re_run_created_the_file_again_goes_on,
                                                                fuse:test_recopy.py::test_unzip_or_tar_again_while_the_files_put_is_under_way
  open-but-unlinked file through its handle .................. test_open_unlinked_file_works_through_its_handle,
                                                                fuse:test_unfinished.py::test_pjdfstest_unlink_14
  invalid .create stays visible in status ..................... test_rule_create.py
  status files report their size ............................. test_status_files_report_their_size,
                                                                fuse:test_attrs.py::test_status_files_copy_whole_and_ctime_follows_changes
  ctime; folder mtime/ctime follow its entries ............... test_ctime_and_folder_times_follow_changes
  unlink of an open status file / .create (no hard_remove) ... fuse:test_attrs.py::test_unlink_of_open_status_files_and_marker
  scratch dot-directories: local, journaled, rename in/out ... test_scratch_directories_are_local_and_survive_a_restart,
                                                                fuse:test_unfinished.py::test_rsync_partial_dir_resumes
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import threading

import mfusepy
import pytest
import xxhash

from fs360.errors import Fs360Error, TransportError
from fs360.engine.records import FileRecord
from fs360.fs.exits import Closer
from fs360.fs.content_check import LegacyDigest, content_stamp, is_identical_copy
from fs360.fs.fuse_ops import Fs360Operations, translated
from fs360.fs.model import MountModel
from tests.harness import request_count, wait_until
from tests.engine_helpers import file_state


# --- helpers ---------------------------------------------------------------------------------------

def errno_of(call, *args, **kwargs) -> int:
    with pytest.raises(Fs360Error) as info:
        call(*args, **kwargs)
    return info.value.errno


def write_file(model: MountModel, path: str, data: bytes, mode: int = 0o644) -> None:
    """Written by a writer that finished (as a WebDAV PUT does): the file is committed at once."""
    fh = model.create(path, mode, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    succeeded = False
    try:
        if data:
            model.write(fh, data, 0)
        succeeded = True
    finally:
        model.finish_writer(fh, succeeded)


def read_all(model: MountModel, path: str) -> bytes:
    fh = model.open(path, os.O_RDONLY)
    try:
        out, offset = b"", 0
        while chunk := model.read(fh, 65536, offset):
            out += chunk
            offset += len(chunk)
        return out
    finally:
        model.release(fh)


def names(model: MountModel, folder: str = "/") -> set[str]:
    return {name for name, _ in model.readdir(folder)}


def wait_state(model: MountModel, session: str, name: str, state: str, timeout: float = 30) -> None:
    wait_until(lambda: file_state(model, session, name) == state, timeout, 0.02, what=f"{name} to be {state}")


@pytest.fixture
def model(emulator, make_model):
    return make_model(emulator)


@pytest.fixture
def idle(emulator, make_model):
    """An engine that never uploads: for rules where the server does not matter."""
    return make_model(emulator, start=False)


# --- sessions ----------------------------------------------------------------------------------------

def test_mkdir_is_local_until_a_file_is_written(model, emulator):
    model.mkdir("/site", 0o755)
    model.mkdir("/empty", 0o755)
    assert {"site", "empty", "status"} <= names(model)
    fh = model.create("/site/a.jpg", 0o644, os.O_WRONLY)
    assert request_count(emulator, "POST open_session") == 0  # created, nothing written yet
    model.write(fh, b"x" * 10, 0)
    # Its first bytes open the folder's session (issue 21), before the file is closed.
    wait_until(lambda: request_count(emulator, "POST open_session") == 1, 30, 0.02, what="the session opened")
    model.release(fh)
    wait_state(model, "site", "a.jpg", "complete")
    assert request_count(emulator, "POST open_session") == 1  # one for "site", none for "empty"
    assert errno_of(model.mkdir, "/site", 0o755) == errno.EEXIST


def test_rename_session_is_local(model, emulator):
    model.mkdir("/New Folder", 0o755)
    write_file(model, "/New Folder/a.jpg", b"abc")
    model.rename("/New Folder", "/Survey 2024")
    assert "Survey 2024" in names(model) and "New Folder" not in names(model)
    wait_state(model, "Survey 2024", "a.jpg", "complete")
    assert {f["name"] for f in emulator.files()} == {"a.jpg"}


# --- trees (issue 14) --------------------------------------------------------------------------------

def test_tree_folders_behave_like_posix(idle):
    idle.mkdir("/s", 0o755)
    idle.mkdir("/s/Scans", 0o755)
    idle.mkdir("/s/Scans/Raw", 0o700)
    write_file(idle, "/s/Scans/Raw/a.e57", b"a")
    assert names(idle, "/s") == {"Scans", "status", "status.json"}
    assert names(idle, "/s/Scans") == {"Raw"}
    assert idle.getattr("/s/Scans/Raw")["st_mode"] & 0o7777 == 0o700
    assert errno_of(idle.mkdir, "/s/Scans", 0o755) == errno.EEXIST
    assert errno_of(idle.rmdir, "/s/Scans") == errno.ENOTEMPTY
    assert errno_of(idle.mkdir, "/s/nowhere/x", 0o755) == errno.ENOENT
    assert errno_of(idle.rename, "/s/Scans", "/s/Scans/Raw/inside") == errno.EINVAL
    idle.rename("/s/Scans", "/s/Photos")                       # the whole folder moves
    assert read_all(idle, "/s/Photos/Raw/a.e57") == b"a"
    assert file_state(idle, "s", "Photos/Raw/a.e57") == "in tree"
    idle.rename("/s/Photos/Raw/a.e57", "/s/a.e57")             # out of the tree: a file of its own
    assert file_state(idle, "s", "a.e57") == "pending"
    idle.rename("/s/a.e57", "/s/Photos/a.e57")                 # back in: waits for the archive again
    assert file_state(idle, "s", "Photos/a.e57") == "in tree"
    idle.rmdir("/s/Photos/Raw")
    assert names(idle, "/s/Photos") == {"a.e57"}


def test_a_refused_folder_move_leaves_the_empty_folder_it_would_replace(idle):
    # rename(2) onto an empty folder replaces it (POSIX), but only a move that is made: one refused
    # (into itself, in a frozen tree) removed the folder before its checks.
    idle.mkdir("/s", 0o755)
    for folder in ("A", "A/In", "B"):
        idle.mkdir(f"/s/{folder}", 0o755)
    assert errno_of(idle.rename, "/s/A", "/s/A/In") == errno.EINVAL
    write_file(idle, "/s/.create", b"")  # the tree is planned as the archive, with A/In/ and B/ in it
    assert errno_of(idle.rename, "/s/A", "/s/B") == errno.EACCES
    assert names(idle, "/s") == {"A", "B", ".create", "status", "status.json"}
    assert names(idle, "/s/A") == {"In"}


def test_tree_files_wait_in_tree_and_survive_a_restart(emulator, make_model):
    model = make_model(emulator)
    model.mkdir("/s", 0o755)
    model.mkdir("/s/Scans", 0o755)
    model.mkdir("/s/Scans/Empty", 0o755)
    model.mkdir("/s/Scans/.partial", 0o755)
    fh = model.create("/s/Scans/open.las", 0o644, os.O_WRONLY)
    model.write(fh, b"part", 0)
    assert file_state(model, "s", "Scans/open.las") == "writing"
    write_file(model, "/s/Scans/a.jpg", b"jpg")
    write_file(model, "/s/Scans/.partial/b.jpg", b"partial")
    write_file(model, "/s/top.jpg", b"top")
    wait_state(model, "s", "top.jpg", "complete")
    assert file_state(model, "s", "Scans/a.jpg") == "in tree"
    assert file_state(model, "s", "Scans/.partial/b.jpg") == "local"
    assert [f["name"] for f in emulator.files()] == ["top.jpg"]   # nothing of the tree before .create
    status = read_all(model, "/s/status").decode()
    assert "    Scans/open.las  writing" in status and "Scans/a.jpg" not in status
    model.finish_writer(fh, succeeded=True)
    model.engine.stop(5)

    again = make_model(emulator)  # the same cache dir: a remount
    assert names(again, "/s/Scans") == {"Empty", ".partial", "a.jpg", "open.las"}
    assert file_state(again, "s", "Scans/a.jpg") == "in tree"
    assert file_state(again, "s", "Scans/open.las") == "in tree"
    assert read_all(again, "/s/Scans/a.jpg") == b"jpg"
    status = json.loads(read_all(again, "/s/status.json"))
    assert status["tree"] == [{"entry": "Scans/", "files": 2, "size": 7, "archive": "s.zip"}]
    assert "  Scans/ 2 files, 7 B → in s.zip" in read_all(again, "/s/status").decode()


def planned_with_uploads_paused(model, folders: tuple[str, ...], files: dict[str, bytes]) -> None:
    """`folders` made and `files` written, then .create with uploads paused: the tree is frozen and
    its archive planned, not up yet (once the server holds the whole archive, its files may be
    deleted: test_rm_r_... in tests/fuse/test_trees.py)."""
    for folder in folders:
        model.mkdir(folder, 0o755)
    for path, data in files.items():
        write_file(model, path, data)
    model.engine.gate.set_paused(True)
    write_file(model, folders[0] + "/.create", b"")


def test_a_queued_file_moved_into_the_tree_takes_an_identical_re_copy_once_the_tree_is_frozen(model, emulator):
    """Its digest came with it: a pending top-level file moved into a folder of the tree, then
    .create; cp -a of the same folder again compares it and takes it (it was refused, EACCES, as a
    file of unknown content: its digest was dropped on the move, a long random run found)."""
    model.mkdir("/s", 0o755)
    model.mkdir("/s/sub", 0o755)
    model.engine.gate.set_paused(True)
    write_file(model, "/s/a.jpg", b"moved in")
    # Queued (a worker may have picked it and wait at the paused gate: uploading, nothing sent).
    wait_until(lambda: file_state(model, "s", "a.jpg") in ("pending", "uploading"), 30, 0.02, what="a.jpg queued")
    model.rename("/s/a.jpg", "/s/sub/a.jpg")
    write_file(model, "/s/.create", b"")
    fh = model.open("/s/sub/a.jpg", os.O_WRONLY | os.O_TRUNC)
    model.write(fh, b"moved in", 0)
    model.flush(fh)
    model.release(fh)
    with model.engine.lock:
        assert model.engine.registry.sessions["s"].refused_names == {}
    model.engine.gate.set_paused(False)
    wait_until(lambda: model.engine.registry.sessions["s"].project.state == "ready", 30, 0.05, what="the project")


def test_create_freezes_the_tree_and_uploads_one_archive(model, emulator):
    planned_with_uploads_paused(model, ("/Office scan", "/Office scan/Scans", "/Office scan/Scans/Empty"),
                                {"/Office scan/Scans/Фото 1.JPG": b"photo", "/Office scan/top.jpg": b"top"})
    # Frozen: the tree cannot change once it is planned as the archive.
    for call, args in ((model.mkdir, ("/Office scan/Scans/new", 0o755)),
                       (model.create, ("/Office scan/Scans/new.jpg", 0o644, os.O_WRONLY)),
                       (model.rmdir, ("/Office scan/Scans/Empty",)),
                       (model.rename, ("/Office scan/Scans", "/Office scan/Other")),
                       (model.truncate, ("/Office scan/Scans/Фото 1.JPG", 1, None))):
        assert errno_of(call, *args) == errno.EACCES, call
    # An unlink is not a change of the archive: it keeps the file, which the same content created
    # again brings back (tar -x again: test_a_re_run_that_deletes_a_frozen_trees_file_first_...).
    model.unlink("/Office scan/Scans/Фото 1.JPG")
    recreated(model, "/Office scan/Scans/Фото 1.JPG", b"photo")
    assert errno_of(model.create, "/Office scan/site.zip", 0o644, os.O_WRONLY) == errno.EPERM
    # rsync's way in: its scratch copy is refused as well (not listed: its name means nothing),
    # then the rename onto the final name; status names the final names (a hostile run found only
    # rsync's "Permission denied").
    assert errno_of(model.create, "/Office scan/Scans/.b.jpg.Xy12", 0o644, os.O_WRONLY) == errno.EACCES
    write_file(model, "/Office scan/.c.jpg.Xy12", b"c")
    assert errno_of(model.rename, "/Office scan/.c.jpg.Xy12", "/Office scan/Scans/c.jpg") == errno.EACCES
    with model.engine.lock:
        refused = dict(model.engine.registry.sessions["Office scan"].refused_names)
    assert {"Scans/new.jpg", "site.zip", "Scans/c.jpg"} <= set(refused), refused
    assert not any(".Xy12" in name for name in refused), refused
    assert "planned when .create was accepted" in refused["Scans/new.jpg"]
    assert refused["Scans/c.jpg"].startswith("not put in place: the tree goes up as Office_scan.zip")
    model.engine.gate.set_paused(False)
    wait_until(lambda: (model.engine.registry.sessions["Office scan"].project.state == "ready"), 30, 0.05,
               what="the project")
    files = {f["name"]: f for f in emulator.files()}
    assert set(files) == {"top.jpg", "Office_scan.zip"}
    archive = model.engine.registry.sessions["Office scan"].archive
    assert files["Office_scan.zip"]["sha256"] == archive.sha256
    record = model.engine.registry.sessions["Office scan"].project.record
    assert sorted(record["files"]) == ["Scans/Foto_1.jpg", "top.jpg"]


def test_an_identical_re_copy_of_a_frozen_trees_file_is_a_no_op_and_a_different_one_refused(model, emulator):
    """cp -a, tar -x (create onto the name) and a scratch copy renamed onto it (rsync) of the same
    content again: compared with the journaled digest, accepted, nothing changes; while the archive
    is planned but not up yet, and once the project is made (the spool copies dropped)."""
    planned_with_uploads_paused(model, ("/s", "/s/sub"), {"/s/sub/a.jpg": b"tree file", "/s/top.jpg": b"top"})
    session = model.engine.registry.sessions["s"]
    record = session.files["sub/a.jpg"]

    def rewrite(data: bytes, fh: int) -> None:
        try:
            model.write(fh, data, 0)
            model.flush(fh)
        finally:
            model.release(fh)

    def recopies(sealed: bool = False):
        rewrite(b"tree file", model.open("/s/sub/a.jpg", os.O_WRONLY | os.O_TRUNC))  # cp -a
        rewrite(b"tree file", model.create("/s/sub/a.jpg", 0o644, os.O_WRONLY | os.O_CREAT))  # tar -x
        model.utimens("/s/sub/a.jpg", 1_000_000_000)  # cp -a sets the source's time: kept
        assert record.mtime_ns == 1_000_000_000
        if not sealed:  # (a sealed session takes no scratch copy, as for the files the server holds)
            write_file(model, "/s/.a.jpg.Xy12", b"tree file")  # rsync's scratch copy
            model.rename("/s/.a.jpg.Xy12", "/s/sub/a.jpg")

    def refused(frozen_why: str, sealed: bool = False) -> None:
        fh = model.open("/s/sub/a.jpg", os.O_WRONLY | os.O_TRUNC)
        with pytest.raises(Fs360Error) as info:
            model.write(fh, b"tree fill", 0)  # refused at once while the spool copy is there to compare
            model.flush(fh)  # else by its digest, at close
        assert info.value.errno == errno.EACCES
        model.release(fh)
        if not sealed:
            write_file(model, "/s/.a.jpg.Xy12", b"other")
            assert errno_of(model.rename, "/s/.a.jpg.Xy12", "/s/sub/a.jpg") == errno.EACCES
            model.unlink("/s/.a.jpg.Xy12")
        assert frozen_why in record.last_error and "server already holds" not in record.last_error
        assert frozen_why in json.loads(read_all(model, "/s/status.json"))["refused_names"][-1]["reason"]
        assert record.size == len(b"tree file") and record.state == "in tree"

    recopies()
    assert session.files["sub/a.jpg"] is record and record.state == "in tree" and session.tree_frozen
    assert read_all(model, "/s/sub/a.jpg") == b"tree file"
    refused("the tree goes up as s.zip")
    model.engine.gate.set_paused(False)
    wait_until(lambda: session.project.state == "ready", 30, 0.05, what="the project")
    archived = {f["name"]: f["sha256"] for f in emulator.files()}
    assert set(archived) == {"top.jpg", "s.zip"} and archived["s.zip"] == session.archive.sha256
    wait_until(lambda: not model.engine.spool.exists(record.id), 30, 0.05, what="the spool copy dropped")
    sent = request_count(emulator, "PUT") + request_count(emulator, "POST")
    recopies(sealed=True)
    assert model.getattr("/s/sub/a.jpg")["st_size"] == len(b"tree file")
    refused("the project is created", sealed=True)
    assert request_count(emulator, "PUT") + request_count(emulator, "POST") == sent


def recreated(model: MountModel, path: str, data: bytes) -> None:
    """tar -x or unzip -o of a name they deleted just before: created anew, written, closed."""
    fh = model.create(path, 0o644, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        model.write(fh, data, 0)
        model.flush(fh)
    finally:
        model.release(fh)


def recreated_different(model: MountModel, path: str, data: bytes, at_once: bool) -> None:
    """The same with another content: refused at its first write while the spool copy is there to
    compare (`at_once`), else at its close (by the digest); the name is deleted again."""
    fh = model.create(path, 0o644, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        if at_once:
            assert errno_of(model.write, fh, data, 0) == errno.EACCES
        else:
            model.write(fh, data, 0)
        assert errno_of(model.flush, fh) == errno.EACCES
    finally:
        model.release(fh)
    assert path.rpartition("/")[2] not in names(model, path.rpartition("/")[0])


def planned_archive(model: MountModel, session: str) -> tuple[list, str]:
    """The tree's archive as planned: its members, and the sha256 of the bytes it will send."""
    with model.engine.lock:
        members = model.engine.tree.members_locked(model.engine.registry.sessions[session])
    return sorted(members, key=lambda m: m.path), model.engine.tree.sha256(tuple(members))


def test_a_re_run_that_deletes_a_frozen_trees_file_first_brings_it_back_or_refuses_it(model, emulator):
    """tar -x and unzip -o unlink a name they find, then create it. In a frozen tree the unlink
    succeeds and the archive keeps the file (and reads its spool copy); the same content created
    again is the tree's file again (no PUT), a different one is refused and the name deleted again,
    the archive untouched; while the archive is planned, and once the project is made."""
    planned_with_uploads_paused(model, ("/s", "/s/sub"),
                                {"/s/sub/a.jpg": b"tree file", "/s/sub/b.jpg": b"bee", "/s/top.jpg": b"top"})
    session = model.engine.registry.sessions["s"]
    record = session.files["sub/a.jpg"]
    members, sha256 = planned_archive(model, "s")
    model.unlink("/s/sub/a.jpg")
    assert names(model, "/s/sub") == {"b.jpg"} and [f.name for f in session.unlinked] == ["sub/a.jpg"]
    assert planned_archive(model, "s") == (members, sha256) and model.engine.spool.exists(record.id)
    assert json.loads(read_all(model, "/s/status.json"))["deleted_but_held_by_server"] == ["sub/a.jpg"]
    assert "deleted here but held by the server in the tree's archive" in read_all(model, "/s/status").decode()
    recreated(model, "/s/sub/a.jpg", b"tree file")
    assert session.files["sub/a.jpg"] is record and record.state == "in tree" and not session.unlinked
    assert read_all(model, "/s/sub/a.jpg") == b"tree file"
    model.unlink("/s/sub/b.jpg")
    recreated_different(model, "/s/sub/b.jpg", b"bex", at_once=True)
    assert [f.name for f in session.unlinked] == ["sub/b.jpg"]
    assert "not kept: not changed: the tree goes up as s.zip" in session.refused_names["sub/b.jpg"]
    assert planned_archive(model, "s") == (members, sha256)
    recreated(model, "/s/sub/b.jpg", b"bee")
    assert not session.unlinked
    model.engine.gate.set_paused(False)
    record_of_project = wait_until(lambda: session.project.state == "ready" and session.project.record, 30, 0.05,
                                   what="the project")
    assert sorted(record_of_project["files"]) == ["sub/a.jpg", "sub/b.jpg", "top.jpg"]
    archived = {f["name"]: f["sha256"] for f in emulator.files()}
    assert set(archived) == {"top.jpg", "s.zip"} and archived["s.zip"] == sha256
    wait_until(lambda: not model.engine.spool.exists(record.id), 30, 0.05, what="the spool copy dropped")
    sent = request_count(emulator, "PUT") + request_count(emulator, "POST")
    model.unlink("/s/sub/a.jpg")  # sealed: compared by the digest only, at the close
    recreated(model, "/s/sub/a.jpg", b"tree file")
    assert session.files["sub/a.jpg"] is record and not session.unlinked
    model.unlink("/s/sub/b.jpg")
    recreated_different(model, "/s/sub/b.jpg", b"bex", at_once=False)
    assert [f.name for f in session.unlinked] == ["sub/b.jpg"]
    assert request_count(emulator, "PUT") + request_count(emulator, "POST") == sent
    assert {f["name"]: f["sha256"] for f in emulator.files()} == archived


def test_a_frozen_trees_file_deleted_before_a_remount_comes_back_when_created_again(emulator, make_model):
    """tar -x cut off between its unlink and its create, and the mount restarted: the file is still
    deleted here and still in the archive (its spool copy kept), the project waits for it; created
    again identical it is back, different it is refused; the archive sent is the one planned."""
    model = make_model(emulator)
    planned_with_uploads_paused(model, ("/s", "/s/sub"),
                                {"/s/sub/a.jpg": b"tree file", "/s/sub/b.jpg": b"bee", "/s/top.jpg": b"top"})
    members, sha256 = planned_archive(model, "s")
    model.unlink("/s/sub/a.jpg")
    model.unlink("/s/sub/b.jpg")
    model.engine.stop(5)

    again = make_model(emulator, start=False)  # the same cache dir: a remount; nothing is sent yet
    session = again.engine.registry.sessions["s"]
    assert sorted(f.name for f in session.unlinked) == ["sub/a.jpg", "sub/b.jpg"] and names(again, "/s/sub") == set()
    assert planned_archive(again, "s") == (members, sha256)
    assert json.loads(read_all(again, "/s/status.json"))["deleted_but_held_by_server"] == ["sub/a.jpg", "sub/b.jpg"]
    recreated(again, "/s/sub/a.jpg", b"tree file")
    recreated_different(again, "/s/sub/b.jpg", b"bex", at_once=True)
    assert file_state(again, "s", "sub/a.jpg") == "in tree" and [f.name for f in session.unlinked] == ["sub/b.jpg"]
    again.engine.start()
    wait_until(lambda: session.archive.state == "complete", 30, 0.05, what="the archive on the server")
    assert session.project.state == "waiting" and "sub/b.jpg" in again.engine.projects.blocking_reason_locked(session)
    recreated(again, "/s/sub/b.jpg", b"bee")
    record = wait_until(lambda: session.project.state == "ready" and session.project.record, 30, 0.05,
                        what="the project")
    assert sorted(record["files"]) == ["sub/a.jpg", "sub/b.jpg", "top.jpg"]
    assert {f["name"]: f["sha256"] for f in emulator.files()}["s.zip"] == sha256


# --- files ---------------------------------------------------------------------------------------------

def test_spool_serves_any_write_pattern(idle):
    idle.mkdir("/s", 0o755)
    fh = idle.create("/s/f.las", 0o644, os.O_RDWR)
    idle.write(fh, b"world", 6)            # a hole first
    idle.write(fh, b"hello ", 0)
    idle.fallocate(fh, 0, 0, 20)
    idle.truncate("/s/f.las", 11, fh)
    idle.fsync(fh, False)
    idle.release(fh)
    fh = idle.open("/s/f.las", os.O_WRONLY | os.O_APPEND)
    idle.write(fh, b"!", 0)                 # O_APPEND: at the end whatever the offset
    idle.release(fh)
    assert read_all(idle, "/s/f.las") == b"hello world!"
    assert idle.getattr("/s/f.las")["st_size"] == 12
    idle.truncate("/s/f.las", 5)            # truncate -s, no writer open
    assert read_all(idle, "/s/f.las") == b"hello"
    # By an unknown process (no flush says who): only the write-back delay commits it.
    assert file_state(idle, "s", "f.las") == "closed"


def test_only_a_write_with_a_run_to_go_direct_opens_the_direct_descriptor(idle, monkeypatch):
    """A small file never opens its spool file O_DIRECT (an open and a close per file); a large
    one opens it once, at its first write past the cached head, whatever the writes after."""
    spool = idle.engine.spool
    if not spool.direct:
        pytest.skip("this spool's file system refuses O_DIRECT")
    opened = []
    real = spool.open_direct
    monkeypatch.setattr(spool, "open_direct", lambda *a: opened.append(a) or real(*a))
    idle.mkdir("/s", 0o755)
    write_file(idle, "/s/small.jpg", os.urandom(100 * 1024))
    assert opened == []
    data = os.urandom(4 * 1024 * 1024)
    fh = idle.create("/s/large.e57", 0o644, os.O_WRONLY)
    for offset in range(0, len(data), 1024 * 1024):
        assert idle.write(fh, data[offset:offset + 1024 * 1024], offset) == 1024 * 1024
    idle.release(fh)
    assert len(opened) == 1
    assert read_all(idle, "/s/large.e57") == data


def test_a_failed_write_behind_is_told_to_the_files_other_writer_too(idle, monkeypatch):
    """Writer A's large write goes behind it and fails; writer B, which wrote nothing direct, has
    the file open too: B's next fsync fails with that errno, as SEMANTICS says of the file's next
    write, fsync, truncate or close (told once), and the file ends interrupted."""
    spool = idle.engine.spool
    if not spool.direct:
        pytest.skip("this spool's file system refuses O_DIRECT")
    real_write = spool.behind._write
    failures = [OSError(errno.EIO, "injected")]

    def failing_once(*args):
        if failures:
            raise failures.pop()
        return real_write(*args)
    monkeypatch.setattr(spool.behind, "_write", failing_once)
    idle.mkdir("/s", 0o755)
    a = idle.create("/s/f.e57", 0o644, os.O_WRONLY)
    b = idle.open("/s/f.e57", os.O_RDWR)
    # The cached head, then one run of one buffer behind: the write returns before it fails.
    idle.write(a, os.urandom(128 * 1024 + 1024 * 1024), 0)
    assert errno_of(idle.fsync, b, False) == errno.EIO
    idle.release(b)
    idle.release(a)
    assert file_state(idle, "s", "f.e57") == "interrupted"


def test_a_write_racing_its_handles_release_never_lands_in_another_file(idle):
    """A WebDAV PUT thread still writing as the daemon stops (release_all): its handle was
    released, and the descriptor numbers it held went to the next file opened. Its late write
    fails instead of landing in that file (FUSE sends no write after a release)."""
    idle.mkdir("/s", 0o755)
    fh = idle.create("/s/late.jpg", 0o644, os.O_WRONLY)
    late = idle._handles.get(fh)  # what the writing thread holds
    idle.write(fh, b"first", 0)
    idle.release(fh, at_unmount=True)
    write_file(idle, "/s/next.jpg", b"n" * 10)
    other = idle.create("/s/other.jpg", 0o644, os.O_WRONLY)  # likely the released number again
    with pytest.raises(OSError):
        idle.files.write(late, b"LATE" * 40_000, 0)
    idle.release(other)
    assert read_all(idle, "/s/next.jpg") == b"n" * 10
    assert read_all(idle, "/s/other.jpg") == b""


def test_a_release_waits_for_a_write_already_using_the_handles_descriptors(idle, monkeypatch):
    """The same race one step later: the PUT thread's write has read the handle's descriptor and
    waits inside the spool (behind the file's writes) when release_all comes. The release waits
    for that write, so the descriptor is closed only once it is done, and the next file opened
    never gets the late bytes."""
    spool = idle.engine.spool
    idle.mkdir("/s", 0o755)
    fh = idle.create("/s/late.jpg", 0o644, os.O_WRONLY)
    late = idle._handles.get(fh)
    inside, go_on = threading.Event(), threading.Event()
    real_write_cached = spool._write_cached

    def paused(file_id, fd, data, offset):
        if file_id == late.record.id and not inside.is_set():
            inside.set()
            go_on.wait(30)
        return real_write_cached(file_id, fd, data, offset)
    monkeypatch.setattr(spool, "_write_cached", paused)
    writer = threading.Thread(target=idle.write, args=(fh, b"LATE", 0))
    writer.start()
    assert inside.wait(30)
    releaser = threading.Thread(target=idle.release, args=(fh,), kwargs=dict(at_unmount=True))
    releaser.start()
    other = idle.create("/s/other.jpg", 0o644, os.O_WRONLY)
    idle.write(other, b"o" * 10, 0)
    go_on.set()
    writer.join(30)
    releaser.join(30)
    idle.release(other)
    assert read_all(idle, "/s/other.jpg") == b"o" * 10


def test_a_file_deleted_before_its_first_large_write_takes_it_through_the_cache(idle, monkeypatch):
    """Its spool path is gone when the direct descriptor would be opened: the writer's writes
    still succeed, as they would on a local file deleted while open."""
    idle.mkdir("/s", 0o755)
    fh = idle.create("/s/large.e57", 0o644, os.O_RDWR)
    idle.write(fh, b"x" * 1000, 0)
    idle.unlink("/s/large.e57")
    data = os.urandom(2 * 1024 * 1024)
    for offset in range(0, len(data), 1024 * 1024):
        assert idle.write(fh, data[offset:offset + 1024 * 1024], offset) == 1024 * 1024
    assert idle.read(fh, len(data), 0) == data
    idle.release(fh)
    assert "large.e57" not in names(idle, "/s")


def test_close_makes_pending_then_complete(model, emulator):
    model.mkdir("/s", 0o755)
    fh = model.create("/s/a.jpg", 0o644, os.O_WRONLY)
    model.write(fh, b"data", 0)
    assert file_state(model, "s", "a.jpg") == "writing"
    model.release(fh)
    # No flush said who wrote it: the (short) write-back delay commits it.
    assert file_state(model, "s", "a.jpg") in ("closed", "pending", "uploading", "complete")
    wait_state(model, "s", "a.jpg", "complete")
    assert model.getxattr("/s/a.jpg", "user.fs360.received") == b"4"


def test_reopen_while_pending_cancels_and_requeues(emulator, make_model):
    model = make_model(emulator, start=False)  # nothing goes out before the reopen
    model.mkdir("/s", 0o755)
    write_file(model, "/s/a.jpg", b"first")
    assert file_state(model, "s", "a.jpg") == "pending"
    fh = model.open("/s/a.jpg", os.O_WRONLY | os.O_TRUNC)
    assert file_state(model, "s", "a.jpg") == "writing"
    model.write(fh, b"second version", 0)
    model.release(fh)
    model.engine.start()
    wait_state(model, "s", "a.jpg", "complete")
    (remote,) = emulator.files()
    assert remote["total"] == len(b"second version") and remote["put_count"] == 1


def test_rename_local_files(idle):
    idle.mkdir("/s", 0o755)
    idle.mkdir("/t", 0o755)
    write_file(idle, "/s/a.jpg", b"A")
    write_file(idle, "/s/b.jpg", b"B")
    idle.rename("/s/a.jpg", "/s/c.jpg")
    assert names(idle, "/s") >= {"c.jpg", "b.jpg"} and "a.jpg" not in names(idle, "/s")
    idle.rename("/s/c.jpg", "/t/c.jpg")
    assert "c.jpg" in names(idle, "/t") and "c.jpg" not in names(idle, "/s")
    idle.rename("/t/c.jpg", "/s/b.jpg")      # replaces a local-only target (POSIX)
    assert read_all(idle, "/s/b.jpg") == b"A"
    assert "c.jpg" not in names(idle, "/t")


def test_unlink_pending_cancels(emulator, make_model):
    model = make_model(emulator, start=False)  # nothing goes out before the unlink
    model.mkdir("/s", 0o755)
    write_file(model, "/s/a.jpg", b"gone")
    write_file(model, "/s/b.jpg", b"kept")
    model.unlink("/s/a.jpg")
    assert "a.jpg" not in names(model, "/s")
    model.engine.start()
    wait_state(model, "s", "b.jpg", "complete")
    assert {f["name"] for f in emulator.files()} == {"b.jpg"}


def test_unlink_server_held_then_rmdir_discards(model, emulator):
    model.mkdir("/s", 0o755)
    write_file(model, "/s/a.jpg", b"held")
    wait_state(model, "s", "a.jpg", "complete")
    upload_id = model.engine.registry.sessions["s"].upload_id
    model.unlink("/s/a.jpg")
    assert "a.jpg" not in names(model, "/s")
    # Another content under its name (the spool copy is gone: compared by sha256 at the close):
    # refused, and deleted again.
    fh = model.create("/s/a.jpg", 0o644, os.O_WRONLY)
    model.write(fh, b"else", 0)
    assert errno_of(model.flush, fh) == errno.EACCES
    model.release(fh)
    assert "a.jpg" not in names(model, "/s")
    status = json.loads(read_all(model, "/s/status.json"))
    assert status["deleted_but_held_by_server"] == ["a.jpg"]
    text = read_all(model, "/s/status").decode()
    assert "a.jpg" in text and "remove the folder" in text
    # .create is accepted but not acted on while the server holds the deleted file.
    write_file(model, "/s/.create", b"")
    wait_until(lambda: "a.jpg" in (model.engine.registry.sessions["s"].notice or ""), 10, 0.05, what="the notice")
    assert request_count(emulator, "POST create_project") == 0
    assert "a.jpg" in json.loads(read_all(model, "/s/status.json"))["project"]["waiting_for"]
    model.unlink("/s/.create")
    model.rmdir("/s")
    assert "s" not in names(model)
    wait_until(lambda: request_count(emulator, "DELETE delete_session 200") == 1, 10, 0.05, what="DELETE /uploads")
    assert upload_id not in {f["upload_id"] for f in emulator.files()}


def test_a_deleted_file_the_server_holds_comes_back_when_copied_again_identical(model, emulator):
    """tar -x, unzip -o, cp --remove-destination, install: a re-run unlinks, then creates the same
    content again. The server's file is listed again: no PUT, complete, .create not blocked."""
    model.mkdir("/s", 0o755)
    write_file(model, "/s/a.jpg", b"held")
    wait_state(model, "s", "a.jpg", "complete")
    puts = request_count(emulator, "PUT")
    model.unlink("/s/a.jpg")
    fh = model.create("/s/a.jpg", 0o600, os.O_WRONLY | os.O_EXCL)
    model.write(fh, b"he", 0)
    model.write(fh, b"ld", 2)
    model.flush(fh)
    model.release(fh)
    assert names(model, "/s") == {"a.jpg", "status", "status.json"}
    assert file_state(model, "s", "a.jpg") == "complete"
    assert json.loads(read_all(model, "/s/status.json"))["deleted_but_held_by_server"] == []
    write_file(model, "/s/.create", b"")
    wait_until(lambda: model.engine.registry.sessions["s"].project.state in ("created", "ready"), 20, 0.05,
               what="the project")
    assert request_count(emulator, "PUT") == puts


@pytest.mark.parametrize("first_ends", ["different", "cut-short"])
def test_an_overlapping_re_creation_decides_nothing_of_the_file_a_later_one_revived(model, emulator, first_ends):
    """Two re-runs overlap: A unlinks a.jpg and creates it again (a revival compare), then B
    unlinks A's a.jpg and creates it again identical (cp --remove-destination), and is done. A's
    later differing write, or its close cut short (killed), concerns the file B deleted: B's a.jpg stays listed and
    the server's, with nothing refused (A's close deleted it again, a hostile round found)."""
    model.mkdir("/s", 0o755)
    write_file(model, "/s/a.jpg", b"held content")
    wait_state(model, "s", "a.jpg", "complete")
    model.unlink("/s/a.jpg")
    first = model.create("/s/a.jpg", 0o644, os.O_WRONLY | os.O_TRUNC)
    model.write(first, b"held", 0)
    model.unlink("/s/a.jpg")
    recreated(model, "/s/a.jpg", b"held content")
    assert file_state(model, "s", "a.jpg") == "complete"
    if first_ends == "different":
        model.write(first, b"!", 4)  # (no spool copy left to compare with: known different at the close)
    model.release(first)
    assert "a.jpg" in names(model, "/s") and file_state(model, "s", "a.jpg") == "complete"
    status = json.loads(read_all(model, "/s/status.json"))
    assert status["refused_names"] == [] and status["deleted_but_held_by_server"] == []


def server_file(emulator, name: str) -> dict | None:
    return next((f for f in emulator.files() if f["name"] == name), None)


def deleted_while_sent(model: MountModel, emulator, data: bytes, trickle: float, key: str) -> FileRecord:
    """/s/a.jpg written, then deleted once the server's `key` of it is set ("complete": the whole
    file; "received": its first chunk) while the PUT's answer still trickles in: its record."""
    model.mkdir("/s", 0o755)
    emulator.set_faults([{"endpoint": "put_file", "kind": "trickle", "seconds": trickle}])
    write_file(model, "/s/a.jpg", data)
    wait_until(lambda: (server_file(emulator, "a.jpg") or {}).get(key), 20, 0.02,
               what=f"the server's {key} of a.jpg, its answer still on the way")
    model.unlink("/s/a.jpg")
    with model.engine.lock:
        return next(f for f in model.engine.registry.sessions["s"].unlinked if f.name == "a.jpg")


def test_a_file_deleted_while_its_last_put_was_under_way_comes_back_once_that_put_completed_it(model, emulator):
    """unzip -o, tar -x again while the file's one whole-file PUT is under way: the unlink stops
    its upload, but that PUT goes on and completes it. Its answer (trickled, so it comes after the
    unlink) says complete, and what it sent was the file's spool copy with its journaled digest:
    the deleted file is complete, so the same content created again is the server's file again
    (no PUT), and .create goes on. (Created again before that answer: see HeldPut's tests.)"""
    data = os.urandom(300_000)
    record = deleted_while_sent(model, emulator, data, 3.0, "complete")
    wait_until(lambda: record.state == "complete", 20, 0.05, what="the PUT's answer to complete the deleted file")
    assert record.unlinked and record.server_received == len(data)
    assert "a.jpg" not in names(model, "/s")
    emulator.clear_faults()
    puts = request_count(emulator, "PUT")
    # A different content is never taken for it (first law); the same content is.
    recreated_different(model, "/s/a.jpg", os.urandom(len(data)), at_once=False)
    recreated(model, "/s/a.jpg", data)
    assert file_state(model, "s", "a.jpg") == "complete"
    status = json.loads(read_all(model, "/s/status.json"))
    assert status["deleted_but_held_by_server"] == []
    write_file(model, "/s/.create", b"")
    wait_until(lambda: model.engine.registry.sessions["s"].project.state in ("created", "ready"), 20, 0.05,
               what="the project")
    assert request_count(emulator, "PUT") == puts
    assert server_file(emulator, "a.jpg")["sha256"] == hashlib.sha256(data).hexdigest()


class HeldPut:
    """The engine's first PUT, held in flight until `end()`: it reaches the server and its answer
    is held ("answer"), or the server does the work and the answer never comes ("lost": the
    connection is reset), or the server never gets it ("cut"). `reached` is set once it is on its
    way (for "answer" and "lost": once the server holds what it sent)."""

    def __init__(self, model: MountModel, outcome: str):
        client = model.engine.transfer.client
        self._real, self._outcome = client.put, outcome
        self.reached, self._ended, self._taken = threading.Event(), threading.Event(), False
        client.put = self

    def __call__(self, *args, **kwargs):
        if self._taken:
            return self._real(*args, **kwargs)
        self._taken = True
        progress = None if self._outcome == "cut" else self._real(*args, **kwargs)
        self.reached.set()
        self._ended.wait(60)
        if self._outcome != "answer":
            raise TransportError("the connection was reset")
        return progress

    def end(self) -> None:
        self._ended.set()


def deleted_while_held(model: MountModel, data: bytes, outcome: str) -> tuple[HeldPut, FileRecord]:
    """/s/a.jpg written, then deleted while its one whole-file PUT is held in flight: the held PUT
    and the file's record."""
    model.mkdir("/s", 0o755)
    held = HeldPut(model, outcome)
    write_file(model, "/s/a.jpg", data)
    wait_until(held.reached.is_set, 20, 0.02, what="the PUT of a.jpg to be under way")
    model.unlink("/s/a.jpg")
    with model.engine.lock:
        return held, next(f for f in model.engine.registry.sessions["s"].unlinked if f.name == "a.jpg")


def project_made_of_that_one_put(model: MountModel, emulator, data: bytes) -> None:
    """`.create` makes the project, and the server holds a.jpg as written, sent by one PUT."""
    write_file(model, "/s/.create", b"")
    wait_until(lambda: model.engine.registry.sessions["s"].project.state in ("created", "ready"), 20, 0.05,
               what="the project")
    assert request_count(emulator, "PUT") == 1
    assert server_file(emulator, "a.jpg")["sha256"] == hashlib.sha256(data).hexdigest()
    assert [f["name"] for f in emulator.files()] == ["a.jpg"]


@pytest.mark.parametrize("answer_first", [False, True], ids=["answer-after-the-close", "answer-before-the-close"])
def test_a_re_run_before_the_answer_of_the_put_under_way_is_that_file_again(model, emulator, answer_first):
    """unzip -o, tar -x run again while the file's one PUT is under way: they delete it and create it
    again before that PUT's answer. The same content is the same file coming back: the deletion is
    undone, and the PUT's answer (before or after the re-creation's close) completes it, listed, no
    other PUT. A different content is refused at its first write (the spool copy is kept for that
    PUT), a re-creation cut short is not taken for it either (its writer killed): both leave it
    deleted, still awaiting that answer."""
    data = os.urandom(300_000)
    held, record = deleted_while_held(model, data, "answer")
    recreated_different(model, "/s/a.jpg", os.urandom(len(data)), at_once=True)
    fh = model.create("/s/a.jpg", 0o644, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    model.write(fh, data[:1000], 0)
    model.release(fh)                            # no flush: its writer died mid-write
    assert "a.jpg" not in names(model, "/s") and record.unlinked and record.state == "uploading"
    fh = model.create("/s/a.jpg", 0o644, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    model.write(fh, data, 0)
    assert file_state(model, "s", "a.jpg") == "uploading"
    if answer_first:
        held.end()
        wait_state(model, "s", "a.jpg", "complete")
    model.flush(fh)
    model.release(fh)
    held.end()
    wait_state(model, "s", "a.jpg", "complete")
    assert not record.unlinked and json.loads(read_all(model, "/s/status.json"))["deleted_but_held_by_server"] == []
    project_made_of_that_one_put(model, emulator, data)


@pytest.mark.parametrize("outcome", ["lost", "cut"])
@pytest.mark.parametrize("ends_before_the_close", [False, True], ids=["ends-after-the-close", "ends-before-the-close"])
def test_a_put_under_way_that_fails_after_a_re_run_created_the_file_again_goes_on(model, emulator, outcome,
                                                                                   ends_before_the_close):
    """The PUT under way at the deletion ends without completing the file (its answer lost, or cut
    before the server took it) once the same content was created again: the upload goes on from
    where the server stands, as if never deleted (the spool copy was kept for it), never while the
    re-creation is still compared; in the end the server holds the file once, as written."""
    data = os.urandom(300_000)
    held, record = deleted_while_held(model, data, outcome)
    fh = model.create("/s/a.jpg", 0o644, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    model.write(fh, data, 0)
    if ends_before_the_close:
        held.end()
        # That attempt is over: queued again, but not sent while the re-creation is compared.
        wait_until(lambda: record.state == "pending", 20, 0.02, what="the failed PUT's attempt to end")
        assert request_count(emulator, "PUT") == (0 if outcome == "cut" else 1)
    model.flush(fh)
    model.release(fh)
    held.end()
    wait_state(model, "s", "a.jpg", "complete")
    project_made_of_that_one_put(model, emulator, data)


def test_a_file_deleted_midway_through_its_chunks_keeps_its_name_refused(make_model, emulator):
    """A chunked upload stopped by the unlink: the server holds part of the file, which it can
    neither finish nor drop. Its name stays refused, and the refusal says why and what to do."""
    chunk = 64 * 1024
    model = make_model(emulator, chunk_size=chunk, max_chunk_size=chunk, workers=1)
    record = deleted_while_sent(model, emulator, os.urandom(4 * chunk), 1.0, "received")
    wait_until(lambda: record.server_received == (server_file(emulator, "a.jpg") or {}).get("received"), 20, 0.05,
               what="the chunk under way to be answered")
    assert not server_file(emulator, "a.jpg")["complete"] and record.state != "complete"
    assert errno_of(model.create, "/s/a.jpg", 0o644, os.O_WRONLY | os.O_CREAT | os.O_EXCL) == errno.EACCES
    text = read_all(model, "/s/status").decode()
    assert "the server holds part of 'a.jpg'" in text and "remove the folder" in text


def test_metadata_survives_restart(emulator, make_model):
    model = make_model(emulator, start=False)
    model.mkdir("/s", 0o755)
    write_file(model, "/s/a.jpg", b"meta")
    model.chmod("/s/a.jpg", 0o600)
    model.chown("/s/a.jpg", 1234, 5678)
    model.utimens("/s/a.jpg", 1_500_000_000_000_000_001)
    model.engine.stop(5)
    again = make_model(emulator, start=False)
    attrs = again.getattr("/s/a.jpg")
    assert attrs["st_mode"] & 0o7777 == 0o600
    assert (attrs["st_uid"], attrs["st_gid"]) == (1234, 5678)
    assert attrs["st_mtime"] == 1_500_000_000_000_000_001
    assert attrs["st_size"] == 4


def test_read_served_then_eacces_after_drop(model):
    model.mkdir("/s", 0o755)
    write_file(model, "/s/a.jpg", b"spooled")
    wait_state(model, "s", "a.jpg", "complete")
    assert read_all(model, "/s/a.jpg") == b"spooled"
    with model.engine.lock:
        model.engine.registry.drop_spool_locked(model.engine.registry.sessions["s"].files["a.jpg"])
    assert errno_of(model.open, "/s/a.jpg", os.O_RDONLY) == errno.EACCES
    assert model.getattr("/s/a.jpg")["st_size"] == 7  # still listed with its size


def test_statfs_is_spool_disk(idle):
    st = os.statvfs(idle.engine.settings.spool_dir)
    got = idle.statfs()
    assert (got["f_blocks"], got["f_frsize"]) == (st.f_blocks, st.f_frsize)
    assert abs(got["f_bavail"] - st.f_bavail) < 1024


def test_xattrs(model):
    model.mkdir("/s", 0o755)
    write_file(model, "/s/a.jpg", b"xattr")
    wait_state(model, "s", "a.jpg", "complete")
    assert set(model.listxattr("/s/a.jpg")) == {"user.fs360.state", "user.fs360.received", "user.fs360.error",
                                                "user.fs360.server_name"}
    assert model.getxattr("/s/a.jpg", "user.fs360.state") == b"complete"
    assert model.getxattr("/s/a.jpg", "user.fs360.server_name") == b"a.jpg"
    assert model.getxattr("/s/a.jpg", "user.fs360.received") == b"5"
    assert model.getxattr("/s/a.jpg", "user.fs360.error") == b""
    assert errno_of(model.getxattr, "/s/a.jpg", "user.other") == errno.ENODATA
    assert errno_of(model.setxattr, "/s/a.jpg", "user.fs360.state", b"x", 0) == errno.ENOTSUP
    assert errno_of(model.setxattr, "/s/a.jpg", "user.mine", b"x", 0) == errno.ENOTSUP
    assert errno_of(model.removexattr, "/s/a.jpg", "user.fs360.state") == errno.ENOTSUP


# --- status files -------------------------------------------------------------------------------------------

def test_status_files_read_only(idle):
    idle.mkdir("/s", 0o755)
    for path in ("/status", "/s/status", "/s/status.json"):
        assert errno_of(idle.open, path, os.O_WRONLY) == errno.EACCES
        assert errno_of(idle.open, path, os.O_RDWR | os.O_TRUNC) == errno.EACCES
        assert errno_of(idle.truncate, path, 0) == errno.EACCES
        idle.unlink(path)  # a no-op that succeeds
    assert errno_of(idle.create, "/s/status", 0o644, os.O_WRONLY) == errno.EACCES
    assert {"status", "status.json"} <= names(idle, "/s")
    assert "status" in names(idle)
    assert json.loads(read_all(idle, "/s/status.json"))["session"] == "s"
    assert read_all(idle, "/s/status").startswith(b"session   s")
    idle.rmdir("/s")  # status files do not make a folder non-empty


# --- the FUSE adapter ------------------------------------------------------------------------------------------


def test_status_files_open_with_direct_io_and_without_flush(idle):
    """A status file is read to EOF (direct_io) and its close sends no FLUSH (noflush: nothing
    to settle, one round trip fewer per read); a file's close still reaches flush."""
    ops = Fs360Operations(idle)
    idle.mkdir("/s", 0o755)
    write_file(idle, "/s/a.jpg", b"x")
    for path, direct_io, noflush in (("/s/status", 1, 1), ("/status", 1, 1), ("/s/a.jpg", 0, 0)):
        fi = mfusepy.fuse_file_info(flags=os.O_RDONLY)
        ops.open(path, fi)
        assert (fi.direct_io, fi.noflush) == (direct_io, noflush), path
        ops.release(path, fi)


def test_getattr_answers_a_missing_name_enoent_without_raising_and_fills_the_stat_of_others(idle, monkeypatch):
    """Fs360Fuse.fgetattr, as libfuse calls it (a path, a struct stat to fill, no file info): a
    missing name is -ENOENT with no exception made (every name cp creates is looked up twice
    first); a file's stat is filled; a missing folder on the way is still an answer, not a bug."""
    from fs360.fs.mfusepy_overrides import Fs360Fuse
    fuse = object.__new__(Fs360Fuse)  # its libfuse side is not started: only the callback is driven
    fuse.operations, fuse.raw_fi, fuse.encoding, fuse.errors, fuse.use_ns = \
        Fs360Operations(idle), True, "utf-8", "surrogateescape", True
    idle.mkdir("/s", 0o755)
    write_file(idle, "/s/a.jpg", b"x" * 1234)
    raised = []
    real_init = mfusepy.FuseOSError.__init__
    monkeypatch.setattr(mfusepy.FuseOSError, "__init__", lambda self, *a: raised.append(a) or real_init(self, *a))
    buf = mfusepy.c_stat()
    assert fuse.fgetattr(b"/s/new.jpg", ctypes.pointer(buf), None) == -errno.ENOENT
    assert raised == []
    assert fuse.fgetattr(b"/s/a.jpg", ctypes.pointer(buf), None) == 0
    assert (buf.st_size, stat.S_ISREG(buf.st_mode)) == (1234, True)
    with pytest.raises(mfusepy.FuseOSError) as missing_folder:
        fuse.operations.attributes("/nowhere/a.jpg")
    assert missing_folder.value.errno == errno.ENOENT


def test_translated_wrapper_eio_and_errnos(caplog):
    class Ops:
        @translated
        def boom(self, path):
            raise RuntimeError("a bug")

        @translated
        def denied(self, path):
            from fs360.errors import AccessDenied
            raise AccessDenied("no")

        @translated
        def disk(self, path):
            raise OSError(errno.ENOSPC, "full")

    with caplog.at_level(logging.ERROR, logger="fs360.fs.fuse_ops"):
        with pytest.raises(mfusepy.FuseOSError) as info:
            Ops().boom("/s/a.jpg")
    assert info.value.errno == errno.EIO
    assert any("a bug" in (r.exc_text or "") or "RuntimeError" in (r.exc_text or "") or r.exc_info
               for r in caplog.records)
    with pytest.raises(mfusepy.FuseOSError) as info:
        Ops().denied("/x")
    assert info.value.errno == errno.EACCES
    with pytest.raises(mfusepy.FuseOSError) as info:
        Ops().disk("/x")
    assert info.value.errno == errno.ENOSPC


def test_listing_gives_the_attributes_getattr_gives(idle):
    """The kernel caches what a listing hands over (readdirplus): `ls -l` and `stat`
    must show the same, the virtual entries included."""
    idle.mkdir("/s", 0o755)
    write_file(idle, "/s/a.jpg", b"abc")
    write_file(idle, "/s/.create", b'{"title": "t"}')
    listed = dict(idle.readdir("/s"))
    assert {"status", "status.json", ".create", "a.jpg"} <= set(listed)
    for name, attrs in listed.items():
        assert attrs == idle.getattr(f"/s/{name}"), name


# --- issue 11: never upload what the writer did not finish; re-copies are no-ops -------------------

def test_failed_write_interrupts_until_rewritten_whole(emulator, make_model):
    model = make_model(emulator, max_file_size=100)
    model.mkdir("/s", 0o755)
    fh = model.create("/s/a.jpg", 0o644, os.O_WRONLY)
    model.write(fh, b"x" * 60, 0)
    assert errno_of(model.write, fh, b"x" * 60, 60) == errno.EFBIG
    model.flush(fh)
    model.release(fh)
    assert file_state(model, "s", "a.jpg") == "interrupted"
    assert "EFBIG" in model.getxattr("/s/a.jpg", "user.fs360.error").decode()
    # Appending does not make a partial file whole, unless its writer is known to exit 0 ...
    fh = model.open("/s/a.jpg", os.O_WRONLY | os.O_APPEND)
    model.write(fh, b"y", 0)
    model.release(fh)
    wait_state(model, "s", "a.jpg", "interrupted")
    # ... rewriting it from 0 does.
    write_file(model, "/s/a.jpg", b"z" * 50)
    wait_state(model, "s", "a.jpg", "complete")
    assert {f["name"]: f["total"] for f in emulator.files()} == {"a.jpg": 50}


def test_failed_truncate_through_the_handle_interrupts(idle):
    idle.engine.registry.caps.file_cap = 10
    idle.mkdir("/s", 0o755)
    fh = idle.create("/s/a.jpg", 0o644, os.O_WRONLY)
    idle.write(fh, b"abc", 0)
    assert errno_of(idle.truncate, None, 11, fh) == errno.EFBIG
    idle.release(fh)
    assert file_state(idle, "s", "a.jpg") == "interrupted"


def test_a_live_process_is_never_taken_for_a_dying_writer():
    # (the dying case needs a real close by an exiting task: tests/fuse/test_unfinished.py)
    from fs360.fs.exits import closer_of, dying_reason
    me = closer_of(threading.get_native_id())  # a thread's task belongs to its process
    assert (me.tgid, me.exiting_status, dying_reason(me)) == (os.getpid(), None, "")
    assert closer_of(2**22 + 12345) is None and dying_reason(None) == ""  # no such process


# A program that forks a helper (no exec: rsync's receiver) and starts itself again with one more
# argument (an exec: a program of its own), then prints their pids and waits.
HELPER_AND_CHILD = """
import os, subprocess, sys, time
if sys.argv[1:]:
    time.sleep(60)
helper = os.fork()
if helper == 0:
    time.sleep(60)
    os._exit(0)
own_code = open("/proc/self/cmdline", "rb").read().split(b"\\0")[2]
child = subprocess.Popen([sys.executable, "-c", own_code, "again"])
print(helper, child.pid, flush=True)
time.sleep(60)
"""


def test_a_forked_helper_is_its_parents_program_and_an_exec_with_one_more_argument_its_own():
    """closer_of: the helper's exit is its parent's (with the parent's start time); a child whose
    command line is the parent's plus one argument runs a program of its own, though no more of
    its command line than the parent's is read."""
    from fs360.fs.exits import closer_of
    parent = subprocess.Popen([sys.executable, "-c", HELPER_AND_CHILD], stdout=subprocess.PIPE)
    pids = [parent.pid]
    try:
        helper, child = map(int, parent.stdout.readline().split())
        pids += [helper, child]
        program = closer_of(parent.pid)
        assert program.tgid == parent.pid and program.start > 0
        from fs360.engine.processes import started_at
        assert closer_of(helper) == Closer(parent.pid, program.name, None, program.start, helper, started_at(helper))
        assert closer_of(child).tgid == child
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        parent.wait()
        parent.stdout.close()


def test_identical_rewrite_of_a_held_file_is_accepted_different_refused(model, emulator):
    model.mkdir("/s", 0o755)
    write_file(model, "/s/scan.e57", b"abc" * 1000)
    wait_state(model, "s", "scan.e57", "complete")
    puts = request_count(emulator, "PUT")
    # cp again: O_TRUNC + the same bytes + close.
    write_file(model, "/s/scan.e57", b"abc" * 1000)
    assert file_state(model, "s", "scan.e57") == "complete"
    # A different write is refused at once while the spool copy exists ...
    fh = model.open("/s/scan.e57", os.O_WRONLY | os.O_TRUNC)
    assert errno_of(model.write, fh, b"abd", 0) == errno.EACCES
    assert errno_of(model.flush, fh) == errno.EACCES
    model.release(fh)
    reason = model.getxattr("/s/scan.e57", "user.fs360.error").decode()
    assert reason == "the server already holds a different scan.e57; it cannot be replaced"
    # ... and a shorter one at close.
    fh = model.open("/s/scan.e57", os.O_WRONLY | os.O_TRUNC)
    model.write(fh, b"abc", 0)
    assert errno_of(model.flush, fh) == errno.EACCES
    model.release(fh)
    # Once the spool copy is gone, the journal's sha256 still decides.
    with model.engine.lock:
        model.engine.registry.drop_spool_locked(model.engine.registry.sessions["s"].files["scan.e57"])
    write_file(model, "/s/scan.e57", b"abc" * 1000)
    fh = model.open("/s/scan.e57", os.O_WRONLY | os.O_TRUNC)
    model.write(fh, b"abc" * 999 + b"abd", 0)
    assert errno_of(model.flush, fh) == errno.EACCES
    model.release(fh)
    assert request_count(emulator, "PUT") == puts
    assert read_all(model, "/s/status.json")  # still renders
    # The server holds the first content, whose identity digest the journal keeps.
    held = model.engine.registry.sessions["s"].files["scan.e57"]
    assert [f["sha256"] for f in emulator.files()] == [hashlib.sha256(b"abc" * 1000).hexdigest()]
    assert held.sha256 == "xxh3-128:" + xxhash.xxh3_128(b"abc" * 1000).hexdigest()


def shell_redirect(model: MountModel, path: str, data: bytes, create: bool = False) -> int | None:
    """`cat x > f` (or dd of=f): the shell opens f with O_TRUNC, dup()s the descriptor and closes
    the first before cat writes through the second, which closes last; the errno of the first
    step refused."""
    try:
        fh = (model.create(path, 0o644, os.O_WRONLY | os.O_CREAT | os.O_TRUNC) if create
              else model.open(path, os.O_WRONLY | os.O_TRUNC))
    except Fs360Error as exc:
        return exc.errno
    try:
        model.flush(fh)
        if data:
            model.write(fh, data, 0)
        model.flush(fh)
    except Fs360Error as exc:
        return exc.errno
    finally:
        model.release(fh)
    return None


def test_an_identical_rewrite_by_shell_redirection_is_accepted(model, emulator):
    """`cat x > f`, `dd if=x of=f` again over a file the server holds, or after `rm f`: the first
    close comes before any write. It was taken for a rewrite cut short, so the write got EACCES
    and status said the server holds a different file (a hostile round's find)."""
    model.mkdir("/s", 0o755)
    write_file(model, "/s/a.jpg", b"held" * 100)
    wait_state(model, "s", "a.jpg", "complete")
    puts = request_count(emulator, "PUT")
    assert shell_redirect(model, "/s/a.jpg", b"held" * 100) is None
    assert file_state(model, "s", "a.jpg") == "complete"
    assert model.getxattr("/s/a.jpg", "user.fs360.error") == b""
    assert shell_redirect(model, "/s/a.jpg", b"else" * 100) == errno.EACCES
    # Cut and never written again (`: > f`): the server's file stays, status says why.
    model.unlink("/s/a.jpg")
    assert shell_redirect(model, "/s/a.jpg", b"held" * 100, create=True) is None   # rm f; cat x > f
    assert file_state(model, "s", "a.jpg") == "complete"
    assert json.loads(read_all(model, "/s/status.json"))["deleted_but_held_by_server"] == []
    write_file(model, "/s/b.jpg", b"other")
    wait_state(model, "s", "b.jpg", "complete")
    assert shell_redirect(model, "/s/b.jpg", b"") is None
    assert read_all(model, "/s/b.jpg") == b"other" and file_state(model, "s", "b.jpg") == "complete"
    assert "different b.jpg" in model.getxattr("/s/b.jpg", "user.fs360.error").decode()
    assert request_count(emulator, "PUT") == puts + 1


def test_rename_of_a_scratch_copy_onto_a_held_file(model, emulator):
    """rsync -r (no -t) again: a `.name.XXXXXX` copy renamed onto the name the server holds."""
    model.mkdir("/s", 0o755)
    write_file(model, "/s/a.las", b"same")
    wait_state(model, "s", "a.las", "complete")
    puts = request_count(emulator, "PUT")
    write_file(model, "/s/.a.las.Xy12", b"same", mode=0o600)
    model.rename("/s/.a.las.Xy12", "/s/a.las")
    assert names(model, "/s") == {"a.las", "status", "status.json"}
    assert file_state(model, "s", "a.las") == "complete"
    # Takes the copy's mode, shown without write permission: the server holds the file.
    assert model.getattr("/s/a.las")["st_mode"] & 0o777 == 0o400
    write_file(model, "/s/.a.las.Zz34", b"diff")
    assert errno_of(model.rename, "/s/.a.las.Zz34", "/s/a.las") == errno.EACCES
    assert "different a.las" in model.getxattr("/s/a.las", "user.fs360.error").decode()
    assert request_count(emulator, "PUT") == puts


def test_a_sha256_journaled_by_an_earlier_build_still_compares_re_copies(model, emulator):
    """Journals from before the identity hash hold a plain sha256: re-copies are compared by it."""
    model.mkdir("/s", 0o755)
    write_file(model, "/s/a.las", b"same" * 100)
    wait_state(model, "s", "a.las", "complete")
    held = model.engine.registry.sessions["s"].files["a.las"]
    with model.engine.lock:
        model.engine.registry.set_file_attrs_locked(held, sha256=hashlib.sha256(b"same" * 100).hexdigest())
        model.engine.registry.drop_spool_locked(held)  # so the rewrite is compared by its digest alone
    puts = request_count(emulator, "PUT")
    write_file(model, "/s/a.las", b"same" * 100)
    write_file(model, "/s/.a.las.Xy12", b"same" * 100)
    model.rename("/s/.a.las.Xy12", "/s/a.las")
    assert file_state(model, "s", "a.las") == "complete"
    write_file(model, "/s/.a.las.Zz34", b"diff" * 100)
    assert errno_of(model.rename, "/s/.a.las.Zz34", "/s/a.las") == errno.EACCES
    fh = model.open("/s/a.las", os.O_WRONLY | os.O_TRUNC)
    model.write(fh, b"diff" * 100, 0)
    assert errno_of(model.flush, fh) == errno.EACCES
    model.release(fh)
    assert request_count(emulator, "PUT") == puts


def test_an_earlier_builds_sha256_of_a_copy_counts_only_for_the_bytes_it_read():
    """The copy's sha256 is read off the lock before its rename: a write since (another size or
    mtime) makes it stale, and the copy is then not identical."""
    data = b"same" * 100
    held = FileRecord(id=1, session_id=1, name="a.las", mode=0o644, mtime_ns=1, size=len(data),
                      state="complete", upload_id="u1", sha256=hashlib.sha256(data).hexdigest())
    copy = FileRecord(id=2, session_id=1, name=".a.las.Xy12", mode=0o600, mtime_ns=5, size=len(data),
                      state="local", local_only=True)
    read = LegacyDigest(hashlib.sha256(data).hexdigest(), content_stamp(copy))
    assert is_identical_copy(None, copy, held, read)
    assert not is_identical_copy(None, copy, held, None)
    copy.mtime_ns = 6  # written again (the same size) after the read
    assert not is_identical_copy(None, copy, held, read)


def test_deleted_before_any_put_leaves_no_trace(emulator, make_model):
    """A worker picked the file up but is still opening the session: nothing was sent."""
    emulator.set_faults([{"endpoint": "open_session", "kind": "latency", "seconds": 2.0}])
    model = make_model(emulator)
    model.mkdir("/s", 0o755)
    write_file(model, "/s/a.jpg", b"x")
    wait_state(model, "s", "a.jpg", "uploading")
    model.unlink("/s/a.jpg")
    session = model.engine.registry.sessions["s"]
    assert session.unlinked == []
    write_file(model, "/s/a.jpg", b"again")  # the name is free
    wait_state(model, "s", "a.jpg", "complete")
    assert {f["name"]: f["total"] for f in emulator.files()} == {"a.jpg": 5}


def test_open_unlinked_file_works_through_its_handle(idle):
    """pjdfstest unlink/14: fstat, ftruncate, read, write of a file unlinked while open."""
    idle.mkdir("/s", 0o755)
    fh = idle.create("/s/a.jpg", 0o644, os.O_RDWR)
    idle.write(fh, b"Hello, World!", 0)
    idle.rename("/s/a.jpg", "/s/.fuse_hidden0000000100000001")  # what libfuse does on unlink
    assert names(idle, "/s") == {"status", "status.json"}
    assert idle.getattr(None, fh)["st_nlink"] == 0
    assert idle.getattr("/s/.fuse_hidden0000000100000001")["st_size"] == 13
    idle.truncate(None, 5, fh)
    idle.write(fh, b"!", 5)
    assert idle.read(fh, 100, 0) == b"Hello!"
    idle.release(fh)
    idle.unlink("/s/.fuse_hidden0000000100000001")
    idle.rmdir("/s")
    assert idle.engine.journal.files() == []


def test_status_files_report_their_size(idle):
    idle.mkdir("/s", 0o755)
    write_file(idle, "/s/a.jpg", b"x")
    for path in ("/status", "/s/status", "/s/status.json"):
        assert idle.getattr(path)["st_size"] == len(read_all(idle, path)) > 0


def test_a_listing_builds_one_status_for_both_status_files(idle, monkeypatch):
    from fs360.fs import status
    idle.mkdir("/s", 0o755)
    write_file(idle, "/s/a.jpg", b"x")
    built, snapshot_of = [], status.snapshot_of
    monkeypatch.setattr(status, "snapshot_of", lambda *args: built.append(1) or snapshot_of(*args))
    listed = dict(idle.readdir("/s"))
    assert len(built) == 1
    assert listed["status"]["st_size"] == len(read_all(idle, "/s/status"))
    assert listed["status.json"]["st_size"] == len(read_all(idle, "/s/status.json"))


def test_a_settled_status_keeps_its_render_until_its_state_changes(idle, monkeypatch):
    """Past STATUS_SIZE_TTL a listing renders a session's status again only if what it shows
    changed (its size is then still the real one); an open always renders."""
    from fs360.fs import status
    monkeypatch.setattr(status, "STATUS_SIZE_TTL", 0)
    idle.mkdir("/s", 0o755)
    write_file(idle, "/s/a.jpg", b"x")
    built, snapshot_of = [], status.snapshot_of
    monkeypatch.setattr(status, "snapshot_of", lambda *args: built.append(1) or snapshot_of(*args))
    idle.readdir("/s")
    idle.readdir("/s")
    assert len(built) == 1  # pending, nothing moves: the same render
    write_file(idle, "/s/b.jpg", b"yy")
    listed = dict(idle.readdir("/s"))
    assert len(built) == 2
    assert listed["status.json"]["st_size"] == len(read_all(idle, "/s/status.json"))
    assert listed["status"]["st_size"] == len(read_all(idle, "/s/status"))
    assert len(built) == 4  # each open rendered


def test_ctime_and_folder_times_follow_changes(idle):
    idle.mkdir("/s", 0o755)
    before = idle.getattr("/s")
    write_file(idle, "/s/a.jpg", b"x")
    after = idle.getattr("/s")
    assert after["st_mtime"] > before["st_mtime"] and after["st_ctime"] > before["st_ctime"]
    idle.utimens("/s/a.jpg", 1_000_000_000)
    ctime = idle.getattr("/s/a.jpg")["st_ctime"]
    assert ctime > 1_000_000_000
    idle.chmod("/s/a.jpg", 0o600)
    assert idle.getattr("/s/a.jpg")["st_ctime"] > ctime
    idle.rename("/s/a.jpg", "/s/b.jpg")
    renamed = idle.getattr("/s")
    assert renamed["st_mtime"] > after["st_mtime"]
    idle.unlink("/s/b.jpg")
    assert idle.getattr("/s")["st_mtime"] > renamed["st_mtime"]


def test_scratch_directories_are_local_and_survive_a_restart(emulator, make_model, settings_for):
    model = make_model(emulator)
    model.mkdir("/s", 0o755)
    model.mkdir("/s/.rsync-partial", 0o700)
    model.mkdir("/s/.rsync-partial/deeper", 0o755)                   # any depth below a scratch dir
    assert errno_of(model.create, "/s/.nowhere/a.jpg", 0o644, os.O_WRONLY) == errno.ENOENT
    write_file(model, "/s/.rsync-partial/video.mp4", b"partial")
    write_file(model, "/s/.rsync-partial/deeper/x.las", b"x")
    write_file(model, "/s/other.jpg", b"o")
    assert names(model, "/s") == {".rsync-partial", "other.jpg", "status", "status.json"}
    assert names(model, "/s/.rsync-partial") == {"video.mp4", "deeper"}
    assert model.getattr("/s/.rsync-partial")["st_mode"] & 0o7777 == 0o700
    assert file_state(model, "s", ".rsync-partial/video.mp4") == "local"
    assert errno_of(model.rmdir, "/s/.rsync-partial") == errno.ENOTEMPTY
    assert errno_of(model.rmdir, "/s") == errno.ENOTEMPTY
    # Out of the scratch dir to a visible name: uploaded; into it: local.
    model.rename("/s/.rsync-partial/video.mp4", "/s/video.mp4")
    wait_state(model, "s", "video.mp4", "complete")
    wait_state(model, "s", "other.jpg", "complete")
    write_file(model, "/s/late.jpg", b"l")
    model.rename("/s/late.jpg", "/s/.rsync-partial/late.jpg")
    assert file_state(model, "s", ".rsync-partial/late.jpg") == "local"
    model.rename("/s/.rsync-partial", "/s/.kept")
    assert names(model, "/s/.kept/deeper") == {"x.las"}
    model.engine.stop(5)

    again = make_model(emulator)  # the same cache dir: a remount
    assert names(again, "/s") == {".kept", "video.mp4", "other.jpg", "status", "status.json"}
    assert read_all(again, "/s/.kept/deeper/x.las") == b"x"
    for path in ("/s/.kept/deeper/x.las", "/s/.kept/late.jpg"):
        again.unlink(path)
    again.rmdir("/s/.kept/deeper")
    again.rmdir("/s/.kept")
    assert again.engine.journal.dirs() == []
    assert {f["name"] for f in emulator.files()} == {"video.mp4", "other.jpg"}


def test_an_interrupted_file_is_not_made_whole_by_truncating_it(idle):
    idle.engine.registry.caps.file_cap = 10
    idle.mkdir("/s", 0o755)
    fh = idle.create("/s/a.jpg", 0o644, os.O_WRONLY)
    idle.write(fh, b"abcdef", 0)
    assert errno_of(idle.write, fh, b"x" * 10, 6) == errno.EFBIG
    idle.release(fh)
    idle.truncate("/s/a.jpg", 3)                 # truncate -s 3: still a part of what was meant
    assert file_state(idle, "s", "a.jpg") == "interrupted"
    idle.truncate("/s/a.jpg", 0)                 # emptied: a new, whole (empty) content
    assert file_state(idle, "s", "a.jpg") == "closed"  # by an unknown process: the delay commits it


def test_a_size_past_the_spool_disk_limit_is_efbig(idle):
    idle.mkdir("/s", 0o755)
    write_file(idle, "/s/a.las", b"x")
    assert errno_of(idle.truncate, "/s/a.las", 999_999_999_999_999_999) == errno.EFBIG
    fh = idle.open("/s/a.las", os.O_WRONLY)
    assert errno_of(idle.write, fh, b"y", 999_999_999_999_999_999) == errno.EFBIG
    idle.release(fh)
    assert file_state(idle, "s", "a.las") == "interrupted"


def test_a_mount_ending_with_files_open_uploads_only_those_their_writers_closed(idle):
    """DESTROY with handles whose RELEASE never came: a file whose writer had closed it (a FLUSH,
    as before a lazy unmount) is whole and queued; one still being written when the mount ended
    (SIGTERM, a shutdown) is interrupted, never uploaded; so is one written again after a flush."""
    idle.mkdir("/s", 0o755)
    handles = {}
    for name in ("closed.jpg", "open.jpg", "reopened.jpg"):
        handles[name] = idle.create(f"/s/{name}", 0o644, os.O_WRONLY)
        idle.write(handles[name], b"part", 0)
    idle.flush(handles["closed.jpg"])
    idle.flush(handles["reopened.jpg"])
    idle.write(handles["reopened.jpg"], b"more", 4)  # the same descriptor, dup'd before the close
    idle.release_all()
    # closed.jpg's writer is unknown here (no pid): the write-back delay commits it.
    assert {n: file_state(idle, "s", n) for n in handles} == {
        "closed.jpg": "closed", "open.jpg": "interrupted", "reopened.jpg": "interrupted"}
    assert "mount stopped" in idle.getxattr("/s/open.jpg", "user.fs360.error").decode()
