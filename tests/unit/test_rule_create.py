"""The `.create` rule, as one table against the path model (no FUSE): what a marker may hold,
how big it may be, which fields pass, what refuses it, how a rewrite or an unlink acts before
and after the project exists (doc/SEMANTICS.md "`.create`", "Trees", "After the project exists").

The same rule through a real mount with real programs: tests/fuse/test_create.py.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import sqlite3
import threading

import pytest

from fs360.errors import Fs360Error
from fs360.fs.exits import Closer
from fs360.fs.markers import MAX_CREATE_BYTES, REWRITE_REFUSAL
from fs360.fs.model import MountModel
from fs360.emulator.harness import EmulatorProcess
from tests.fed_writers import feed_writers
from tests.harness import wait_until
from tests.unit.test_model import errno_of, names, read_all, shell_redirect, wait_state, write_file


@pytest.fixture
def idle(server, make_model):
    """An engine that never uploads: the rule is decided at close(), before any request."""
    return make_model(server, start=False)


@pytest.fixture
def model(server, make_model):
    return make_model(server)


def write_marker(model: MountModel, session: str, text: bytes) -> int | None:
    """Writes .create as `cat > .create` would; returns the errno the write or the close gives
    (None: accepted). A text no ending could make a JSON object fails at its write."""
    fh = model.create(f"/{session}/.create", 0o644, os.O_WRONLY)
    try:
        if text:
            model.write(fh, text, 0)
        model.flush(fh)
        return None
    except Fs360Error as exc:
        return exc.errno
    finally:
        model.release(fh)


def projects_of(server: EmulatorProcess, model: MountModel, session: str) -> list[dict]:
    upload_id = model.engine.registry.sessions[session].upload_id
    return [p for p in server.projects() if upload_id is not None and p["upload_id"] == upload_id]


def witness_a_project_step(model: MountModel, server: EmulatorProcess) -> None:
    """Waits until the engine has run its project step since now: a new session's project
    is made (so a project that was not requested by then never will be)."""
    model.mkdir("/witness", 0o755)
    write_file(model, "/witness/w.jpg", b"w")
    assert write_marker(model, "witness", b"") is None
    wait_until(lambda: projects_of(server, model, "witness"), 30, 0.05, what="the witness's project")


# --- what a marker may hold ----------------------------------------------------------------------------

ACCEPTED = [
    # (marker bytes, the options the project is requested with)
    (b"", {}),
    (b"\n", {}),
    (b"{}", {}),
    (b'{"title": "T", "privacy_mode": 1}', {"title": "T", "privacy_mode": 1}),
    (b'{"privacy_mode": 0}', {"privacy_mode": 0}),
    (b'{"privacy_mode": 2}', {"privacy_mode": 2}),
    (b'{"title": "x", "coordinate_system": "EPSG:2056"}', {"title": "x", "coordinate_system": "EPSG:2056"}),
    (b'{"upload_id": "someone-else", "title": "x"}', {"title": "x"}),   # the mount names its session
    (b'{"title": "padded"}\0\0\n', {"title": "padded"}),                  # trailing NULs and blanks
]


@pytest.mark.parametrize("text, options", ACCEPTED, ids=[repr(t)[:40] for t, _ in ACCEPTED])
def test_accepted_markers_request_the_project_with_their_fields(idle, text, options):
    """An empty .create or a JSON object (upload_id dropped, privacy_mode 0-2) is accepted at close()."""
    idle.mkdir("/s", 0o755)
    assert write_marker(idle, "s", text) is None
    assert idle.engine.registry.sessions["s"].project.options == options
    assert ".create" in names(idle, "/s")
    assert read_all(idle, "/s/.create") == text  # as written: a re-run of the copy finds it done
    assert json.loads(read_all(idle, "/s/status.json"))["project"]["state"] == "waiting"


REFUSED = [
    # (marker bytes, what status keeps as the reason): refused at the write where no ending
    # could make a JSON object, else at close
    (b"{not json", "expected a field name in double quotes at line 1 column 2"),
    (b"not json", "must be a JSON object"),
    (b"{broken", "expected a field name in double quotes at line 1 column 2"),
    (b'{"a": 1', "invalid JSON at line 1 column 8"),
    (b"[1, 2]", "JSON object"),
    (b"[1, 2, 3]", "JSON object"),
    (b"42", "JSON object"),
    (b'"title"', "JSON object"),
    (b'"just a string"', "JSON object"),
    (b"\xff\xfe", "not UTF-8"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b"[" * 60000, "must be a JSON object"),
    (b'{"a": ' + b"[" * 30000, "nested too deep"),
    (b'{"privacy_mode": 7}', "privacy_mode must be 0, 1 or 2"),
    (b'{"privacy_mode": "1"}', "privacy_mode must be 0, 1 or 2"),
    (b'{"privacy_mode": true}', "privacy_mode must be 0, 1 or 2"),   # true == 1 in Python
    (b'{"privacy_mode": 1.0}', "privacy_mode must be 0, 1 or 2"),
    (b'{"title": 5}', "title must be text"),
    (b'{"title": "  "}', "title must be text"),
    (b'{"download_link": "ftp://example.com/a.zip"}', "download_link must be an http:// or https:// address"),
    (b'{"download_link": 5}', "download_link must be an http:// or https:// address"),
    # Numbers JSON cannot carry to the server (Python's json reads them): refused, never sent.
    (b'{"scale": 1e999}', "1e999 is not a number the server takes"),
    (b'{"scale": -1e999}', "-1e999 is not a number the server takes"),
    (b'{"scale": NaN}', "'N' is not a JSON value"),  # refused at the write already
    (b'{"a": [1, Infinity]}', "'I' is not a JSON value"),
]


@pytest.mark.parametrize("text, reason", REFUSED, ids=[repr(t)[:30] for t, _ in REFUSED])
def test_invalid_markers_fail_close_with_einval_and_stay_refused_in_status(idle, text, reason):
    """Not JSON, not an object, not UTF-8, too deep, or a bad privacy_mode: close() is EINVAL,
    nothing is requested, .create is not listed, and status keeps the reason."""
    idle.mkdir("/s", 0o755)
    write_file(idle, "/s/a.jpg", b"a")
    assert write_marker(idle, "s", text) == errno.EINVAL
    assert idle.engine.registry.sessions["s"].project is None
    project = json.loads(read_all(idle, "/s/status.json"))["project"]
    assert project["state"] == "refused" and reason in project["refused"], project
    assert f"project   refused: {project['refused']}" in read_all(idle, "/s/status").decode()
    assert ".create" not in names(idle, "/s")
    assert errno_of(idle.open, "/s/.create", os.O_RDONLY) == errno.ENOENT
    # The next valid marker clears the refusal.
    assert write_marker(idle, "s", b"") is None
    project = json.loads(read_all(idle, "/s/status.json"))["project"]
    assert project["state"] == "waiting" and "refused" not in project


def test_a_refused_marker_is_never_requested_once_its_files_complete(model, server):
    """A refused .create stays refused: the engine completes the files and never POSTs a project."""
    model.mkdir("/s", 0o755)
    write_file(model, "/s/a.jpg", b"a")
    assert write_marker(model, "s", b"{oops") == errno.EINVAL
    wait_state(model, "s", "a.jpg", "complete")
    witness_a_project_step(model, server)                   # a project step ran after it was complete
    assert projects_of(server, model, "s") == []
    assert model.engine.registry.sessions["s"].project is None


# --- size -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size, accepted", [(MAX_CREATE_BYTES, True), (MAX_CREATE_BYTES + 1, False),
                                            (80 * 1024, False)])
def test_a_marker_past_64_kib_fails_the_write_with_efbig_and_close_with_einval(idle, size, accepted):
    """Up to 64 KiB is read as JSON; one byte more fails that write (EFBIG) and the close (EINVAL)."""
    idle.mkdir("/s", 0o755)
    text = b'{"title": "' + b"x" * (size - 13) + b'"}'
    assert len(text) == size
    fh = idle.create("/s/.create", 0o644, os.O_WRONLY)
    if accepted:
        idle.write(fh, text, 0)
        idle.flush(fh)
    else:
        idle.write(fh, text[:1024], 0)                     # the start fits ...
        assert errno_of(idle.write, fh, text[1024:], 1024) == errno.EFBIG   # ... the rest does not
        assert errno_of(idle.flush, fh) == errno.EINVAL
    idle.release(fh)
    project = idle.engine.registry.sessions["s"].project
    assert (project is not None and project.state == "waiting") == accepted
    if not accepted:
        assert "not written whole" in json.loads(read_all(idle, "/s/status.json"))["project"]["refused"]


# --- rewrites ------------------------------------------------------------------------------------------------

def test_rewriting_the_marker_before_the_request_replaces_the_options(idle):
    """A second .create before the POST replaces the first one's options."""
    idle.mkdir("/s", 0o755)
    assert write_marker(idle, "s", b'{"title": "first"}') is None
    assert write_marker(idle, "s", b'{"title": "second", "privacy_mode": 0}') is None
    assert idle.engine.registry.sessions["s"].project.options == {"title": "second", "privacy_mode": 0}


def test_a_refused_marker_can_be_written_again_by_open(idle):
    """After a refused .create the kernel may still cache its entry and send open(O_WRONLY), not create."""
    idle.mkdir("/s", 0o755)
    assert write_marker(idle, "s", b"{bad") == errno.EINVAL
    assert errno_of(idle.open, "/s/.create", os.O_RDONLY) == errno.ENOENT
    fh = idle.open("/s/.create", os.O_WRONLY | os.O_TRUNC)
    idle.write(fh, b'{"title": "again"}', 0)
    idle.flush(fh)
    idle.release(fh)
    assert idle.engine.registry.sessions["s"].project.options == {"title": "again"}


def test_touch_after_a_refused_marker_requests_the_project(idle):
    """`touch .create` on the cached entry of a refused marker opens it without O_TRUNC and
    writes nothing: opening an unlisted .create for writing creates it, an empty request."""
    idle.mkdir("/s", 0o755)
    assert write_marker(idle, "s", b"{bad") == errno.EINVAL
    fh = idle.open("/s/.create", os.O_WRONLY)
    idle.flush(fh)
    idle.release(fh)
    assert idle.engine.registry.sessions["s"].project.options == {}
    assert idle.engine.registry.sessions["s"].marker_refused == ""


def test_opening_a_requested_marker_without_writing_changes_nothing(idle):
    """An open for writing of a listed .create that writes nothing keeps its fields."""
    idle.mkdir("/s", 0o755)
    assert write_marker(idle, "s", b'{"title": "kept"}') is None
    fh = idle.open("/s/.create", os.O_WRONLY)
    idle.flush(fh)
    idle.release(fh)
    assert idle.engine.registry.sessions["s"].project.options == {"title": "kept"}


def test_a_marker_closed_by_a_dying_writer_is_not_a_request(idle, monkeypatch):
    """`> .create` killed before its JSON is written closes an empty, truncated marker: the close
    by a dying process is refused (EINVAL, in status), not taken as a request with defaults."""
    import signal
    from fs360.fs.exits import Closer
    dying = 4242
    idle.writers.identify = lambda pid: Closer(pid, "bash", signal.SIGKILL if pid == dying else None)
    idle.mkdir("/s", 0o755)
    fh = idle.create("/s/.create", 0o644, os.O_WRONLY)
    try:
        assert errno_of(idle.flush, fh, dying) == errno.EINVAL
    finally:
        idle.release(fh)
    session = idle.engine.registry.sessions["s"]
    assert session.project is None and "SIGKILL" in session.marker_refused
    fh = idle.create("/s/.create", 0o644, os.O_WRONLY)           # a living writer's is a request
    idle.flush(fh, os.getpid())
    idle.release(fh)
    assert session.project is not None and session.marker_refused == ""


# --- a scratch file renamed onto .create (rsync -a of a folder holding one) -----------------------------

def rename_onto_marker(model: MountModel, session: str, text: bytes, temp: str = ".create.Xy12ab") -> int | None:
    """rsync's way: writes `.create.XXXXXX`, closes it, renames it onto .create; the rename's
    errno (None: accepted)."""
    write_file(model, f"/{session}/{temp}", text)
    try:
        model.rename(f"/{session}/{temp}", f"/{session}/.create")
        return None
    except Fs360Error as exc:
        return exc.errno


@pytest.mark.parametrize("text, options", ACCEPTED, ids=[repr(t)[:40] for t, _ in ACCEPTED])
def test_a_scratch_file_renamed_onto_the_marker_requests_the_project_as_writing_it_does(idle, text, options):
    """The rename is .create written with the scratch file's content: the same options, and the
    scratch file is gone (rsync, tar, cp -r of one prepared folder all make its project)."""
    idle.mkdir("/s", 0o755)
    assert rename_onto_marker(idle, "s", text) is None
    assert idle.engine.registry.sessions["s"].project.options == options
    assert names(idle, "/s") == {".create", "status", "status.json"}


RENAMED_REFUSALS = REFUSED[:4] + REFUSED[-5:]


@pytest.mark.parametrize("text, reason", RENAMED_REFUSALS, ids=[repr(t)[:30] for t, _ in RENAMED_REFUSALS])
def test_a_scratch_file_renamed_onto_the_marker_is_refused_as_writing_it_is(idle, text, reason):
    """An invalid content fails the rename with EINVAL and the reason a written one gets in status;
    the scratch file stays (rsync removes its own), and nothing is requested."""
    idle.mkdir("/s", 0o755)
    assert rename_onto_marker(idle, "s", text) == errno.EINVAL
    session = idle.engine.registry.sessions["s"]
    assert session.project is None and reason in session.marker_refused, session.marker_refused
    assert ".create" not in names(idle, "/s") and ".create.Xy12ab" in names(idle, "/s")


def test_a_scratch_file_past_64_kib_renamed_onto_the_marker_is_efbig(idle):
    idle.mkdir("/s", 0o755)
    assert rename_onto_marker(idle, "s", b'{"title": "' + b"x" * MAX_CREATE_BYTES + b'"}') == errno.EFBIG
    session = idle.engine.registry.sessions["s"]
    assert session.project is None and "at most" in session.marker_refused


def test_an_uploadable_file_renamed_onto_the_marker_stays_refused(idle):
    """Only a scratch file becomes the marker: a file that goes to the server is the session's."""
    idle.mkdir("/s", 0o755)
    write_file(idle, "/s/opts.json", b"{}")
    assert errno_of(idle.rename, "/s/opts.json", "/s/.create") == errno.EPERM
    assert idle.engine.registry.sessions["s"].project is None


# --- a .create renamed into place: taken at its renamer's exit --------------------------------------------

RSYNC = 4_000_004


@pytest.fixture
def fed(idle):
    """`idle` with a renamer whose exit the test feeds (Writers.exited): rsync, as /proc tells it."""
    feed_writers(idle, lambda pid: Closer(pid, "rsync", None))
    return idle


def project_status(model: MountModel, session: str) -> dict | None:
    return json.loads(read_all(model, f"/{session}/status.json"))["project"]


def renamed_by_rsync_with_a_tree(model: MountModel) -> None:
    """rsync -a of a prepared folder: .create comes first (dot-names), renamed by rsync, then the
    tree's files and a top-level one."""
    model.mkdir("/s", 0o755)
    write_file(model, "/s/.create.Xy12ab", b'{"title": "T"}')
    model.rename("/s/.create.Xy12ab", "/s/.create", RSYNC)
    model.mkdir("/s/Scans", 0o755)
    write_file(model, "/s/Scans/scan.e57", b"scan")
    write_file(model, "/s/top.jpg", b"top")


def pending_note(model, session) -> str:
    """What status says the session's pending .create waits for ('' when none is pending)."""
    with model.engine.lock:
        return model.markers.pending_note_locked(session)


def test_a_create_renamed_by_a_program_is_pending_until_its_exit_0(fed):
    """Checked at the rename, taken at rsync's exit 0: meanwhile it is listed and readable, status
    says what it waits for, nothing is requested and the tree still takes files."""
    renamed_by_rsync_with_a_tree(fed)
    session = fed.engine.registry.sessions["s"]
    assert session.project is None and session.archive is None
    assert ".create" in names(fed, "/s") and read_all(fed, "/s/.create") == b'{"title": "T"}'
    pending = project_status(fed, "s")
    assert pending["state"] == "pending" and pending["pending"].startswith(
        ".create put here by rsync is taken when rsync exits successfully"), pending
    assert "project   pending: .create put here by rsync" in read_all(fed, "/s/status").decode()
    fed.writers.exited(RSYNC, 0)
    wait_until(lambda: session.project is not None and not pending_note(fed, session), 10, 0.02, what="the project")
    assert session.project.options == {"title": "T"}
    assert [m.path for m in fed.engine.tree.members_locked(session)] == ["Scans/scan.e57"]
    assert errno_of(write_file, fed, "/s/Scans/late.e57", b"late") == errno.EACCES  # frozen now


@pytest.mark.parametrize("status, reason", [
    (23 << 8, "rsync exited with status 23 (in rsync's manual: some files were not transferred) after it put "
              ".create here, so "
              ".create was not taken: the folder may be incomplete; copy it again, or write .create yourself "
              "once it is whole"),
    (signal.SIGINT, "rsync was killed by SIGINT after it put .create here"),
    (None, "rsync ended without the mount learning its exit status after it put .create here"),
], ids=["exit 23", "SIGINT", "unknown"])
def test_a_create_renamed_by_a_program_that_fails_is_not_taken(fed, status, reason):
    renamed_by_rsync_with_a_tree(fed)
    session = fed.engine.registry.sessions["s"]
    fed.writers.exited(RSYNC, status)
    wait_until(lambda: session.marker_refused, 10, 0.02, what="the refusal")
    assert session.marker_refused.startswith(reason), session.marker_refused
    assert session.project is None and session.archive is None and not pending_note(fed, session)
    assert ".create" not in names(fed, "/s")
    assert project_status(fed, "s")["state"] == "refused"
    write_file(fed, "/s/Scans/again.e57", b"again")  # the tree is not frozen


def test_an_invalid_create_renamed_by_a_program_fails_the_rename_at_once(fed):
    fed.mkdir("/s", 0o755)
    write_file(fed, "/s/.create.Xy12ab", b'{"title": 3}')
    assert errno_of(fed.rename, "/s/.create.Xy12ab", "/s/.create", RSYNC) == errno.EINVAL
    session = fed.engine.registry.sessions["s"]
    assert "title must be text" in session.marker_refused and not pending_note(fed, session)
    assert ".create" not in names(fed, "/s")


def test_unlink_of_a_pending_create_means_it_is_never_taken(fed):
    renamed_by_rsync_with_a_tree(fed)
    fed.unlink("/s/.create")
    session = fed.engine.registry.sessions["s"]
    assert ".create" not in names(fed, "/s")
    cancelled = project_status(fed, "s")
    assert cancelled["state"] == "cancelled" and "was removed before rsync exited, so it was not taken; write " \
        ".create again to request the project" in cancelled["cancelled"], cancelled
    fed.writers.exited(RSYNC, 0)
    witness_an_exit(fed)
    assert session.project is None


def test_a_create_written_meanwhile_replaces_a_pending_one(fed):
    """The one written (acted on at its close, as ever) is the user's latest word: the renamer's
    exit then takes nothing."""
    renamed_by_rsync_with_a_tree(fed)
    assert write_marker(fed, "s", b'{"title": "Mine"}') is None
    session = fed.engine.registry.sessions["s"]
    assert session.project.options == {"title": "Mine"} and not pending_note(fed, session)
    fed.unlink("/s/.create")  # cancels the request: a late take would make it again
    fed.writers.exited(RSYNC, 0)
    witness_an_exit(fed)
    assert session.project is None


@pytest.mark.parametrize("meanwhile", ["unlinked", "replaced"])
def test_a_pending_create_unlinked_or_replaced_while_its_exit_takes_it_is_not_requested(fed, monkeypatch, meanwhile):
    """The renamer's exit takes .create without the state lock while it waits for the tree's writers:
    a .create unlinked or written by hand in that moment is the user's latest word. Before, the
    pending one was requested after all (a review's find)."""
    renamed_by_rsync_with_a_tree(fed)
    session = fed.engine.registry.sessions["s"]
    taking, go_on = threading.Event(), threading.Event()
    wait_for_tree = fed.engine.await_tree_commits

    def held_while_taking(*args):
        if threading.current_thread().name == "fs360-at-exit":
            taking.set()
            assert go_on.wait(10)
        wait_for_tree(*args)
    monkeypatch.setattr(fed.engine, "await_tree_commits", held_while_taking)
    fed.writers.exited(RSYNC, 0)
    assert taking.wait(10)
    if meanwhile == "unlinked":
        fed.unlink("/s/.create")
    else:
        assert write_marker(fed, "s", b'{"title": "Mine"}') is None
    go_on.set()
    for thread in threading.enumerate():
        if thread.name == "fs360-at-exit":
            thread.join(10)
    if meanwhile == "unlinked":
        assert session.project is None
    else:
        assert session.project.options == {"title": "Mine"}
    assert not pending_note(fed, session)


def test_a_second_rename_onto_a_pending_create_replaces_it(fed):
    renamed_by_rsync_with_a_tree(fed)
    write_file(fed, "/s/.create.Zz99zz", b'{"title": "Second"}')
    fed.rename("/s/.create.Zz99zz", "/s/.create", RSYNC)
    session = fed.engine.registry.sessions["s"]
    fed.writers.exited(RSYNC, 0)
    wait_until(lambda: session.project is not None and not pending_note(fed, session), 10, 0.02, what="the project")
    assert session.project.options == {"title": "Second"}


def test_a_pending_create_is_not_taken_after_a_restart(fed, server, make_model):
    """The mount stopped while rsync's exit was awaited: that exit is unknown, so the next mount
    does not take the marker (never act on an unknown outcome) and says why."""
    renamed_by_rsync_with_a_tree(fed)
    fed.engine.stop(5)
    again = make_model(server, start=False)
    session = again.engine.registry.sessions["s"]
    assert session.project is None and ".create" not in names(again, "/s")
    assert session.marker_refused.startswith("the mount stopped while it waited for rsync to end after rsync put "
                                             ".create here, so .create was not taken"), session.marker_refused
    assert project_status(again, "s")["state"] == "refused"
    assert again.engine.journal.get_meta("pending_markers") == {}


def test_a_renamer_whose_exit_cannot_be_told_takes_it_at_the_rename(fed):
    """No watch that reports exit statuses (old kernels' pidfd and /proc): taken at the rename, as
    it was before (a tree copied after it is then refused)."""
    fed.writers.watch.statuses_known = False
    fed.mkdir("/s", 0o755)
    write_file(fed, "/s/.create.Xy12ab", b"")
    fed.rename("/s/.create.Xy12ab", "/s/.create", RSYNC)
    assert fed.engine.registry.sessions["s"].project is not None


def tree_file_closed_by(model: MountModel, pid: int) -> None:
    """/s/Scans/scan.e57 written and closed by (fake) process `pid`: its exit awaited."""
    model.mkdir("/s", 0o755)
    model.mkdir("/s/Scans", 0o755)
    fh = model.create("/s/Scans/scan.e57", 0o644, os.O_WRONLY | os.O_CREAT)
    model.write(fh, b"scan", 0)
    model.flush(fh, pid)
    model.release(fh)


def test_a_renamer_whose_exit_cannot_be_told_declares_none_of_its_files_done(fed):
    """Taken at the rename, the .create must not commit the tree files rsync itself closed: they
    wait for rsync's exit (or the write-back delay) as any file does, and rsync may still fail.
    Meanwhile the rename is refused with the reason (a review found them committed, and queued,
    before rsync had ended)."""
    fed.writers.watch.statuses_known = False
    tree_file_closed_by(fed, RSYNC)
    write_file(fed, "/s/.create.Xy12ab", b"")
    assert errno_of(fed.rename, "/s/.create.Xy12ab", "/s/.create", RSYNC) == errno.EINVAL
    assert fed.getxattr("/s/Scans/scan.e57", "user.fs360.state") == b"closed"
    assert fed.engine.registry.sessions["s"].project is None


PROGRAM, HELPER = 4_000_020, 4_000_021  # a program, and a helper it forked (no exec) that writes and renames


def test_a_pending_create_taken_at_its_program_exit_leaves_a_running_helpers_files_waiting(idle):
    """The helper wrote a tree file and renamed .create into place; its program exits 0 while the
    helper still runs. Taking .create then must not declare the helper's file done: its exit
    decides too (the forked-helper rule). A review found .create's requester, the helper's
    family, committing it at the program's exit."""
    feed_writers(idle, lambda pid: Closer(PROGRAM, "python3", None, 7, helper=HELPER, helper_start=8)
                 if pid == HELPER else Closer(pid, "sh", None))
    tree_file_closed_by(idle, HELPER)
    fh = idle.create("/s/.create.Xy12ab", 0o644, os.O_WRONLY | os.O_CREAT)
    idle.flush(fh, HELPER)
    idle.release(fh)
    idle.rename("/s/.create.Xy12ab", "/s/.create", HELPER)
    session = idle.engine.registry.sessions["s"]
    assert pending_note(idle, session)
    idle.writers.exited(PROGRAM, 0)
    wait_until(lambda: not pending_note(idle, session), 30, 0.02, what="the pending .create settled")
    assert idle.getxattr("/s/Scans/scan.e57", "user.fs360.state") == b"closed"
    assert session.project is None


def witness_an_exit(model: MountModel) -> None:
    """Waits until the exit watch ran every action of the exits fed before (one more is fed after them)."""
    done = threading.Event()
    witness = Closer(4_000_999, "witness", None)
    assert model.writers.at_exit(witness, lambda failure: done.set())
    model.writers.exited(witness.tgid, 0)
    assert done.wait(10)


# --- refusals at .create (trees) --------------------------------------------------------------------------

def tree_next_to_an_archive(model):
    write_file(model, "/s/Scans/a.jpg", b"a")
    write_file(model, "/s/site.zip", b"PK")
    return lambda: model.unlink("/s/site.zip")


def tree_file_still_written(model):
    fh = model.create("/s/Scans/a.jpg", 0o644, os.O_WRONLY)
    model.write(fh, b"a", 0)
    return lambda: model.finish_writer(fh, succeeded=True)


def archive_over_the_file_cap(model):
    write_file(model, "/s/Scans/a.jpg", b"a")
    model.engine.registry.caps.file_cap = 50                        # smaller than any archive's records

    def lift():
        model.engine.registry.caps.file_cap = 0
    return lift


TREE_REFUSALS = [
    (tree_next_to_an_archive, "already has an archive (site.zip)"),
    (tree_file_still_written, "Scans/a.jpg: still being written"),
    (archive_over_the_file_cap, "up to 50 bytes"),
]


def renamed_marker(model):
    """rsync's way (rename_onto_marker), raising the refusal."""
    write_file(model, "/s/.create.Xy12ab", b"")
    model.rename("/s/.create.Xy12ab", "/s/.create")


@pytest.mark.parametrize("made_by", ["written", "renamed"])
@pytest.mark.parametrize("setup, reason", TREE_REFUSALS, ids=[s.__name__ for s, _ in TREE_REFUSALS])
def test_create_refuses_a_tree_it_cannot_send_with_einval(idle, setup, reason, made_by):
    """A tree next to a top-level archive, with a file still open, or larger than the cap: EINVAL
    with the reason in status; once the cause is gone the same marker is accepted. A scratch file
    renamed onto .create (rsync) is refused and accepted alike."""
    make = (lambda: write_file(idle, "/s/.create", b"")) if made_by == "written" else (lambda: renamed_marker(idle))
    idle.mkdir("/s", 0o755)
    idle.mkdir("/s/Scans", 0o755)
    undo = setup(idle)
    with pytest.raises(Fs360Error) as info:
        make()
    assert info.value.errno == errno.EINVAL and reason in str(info.value)
    assert reason in idle.engine.registry.sessions["s"].marker_refused
    undo()
    make()
    assert idle.engine.registry.sessions["s"].archive is not None


# --- a re-run of the same copy: .create reads back as written, and takes the same bytes again ------------

SOURCE_MTIME = 1_600_000_000_123_456_789   # the source's mtime, as cp -a, tar and rsync set it


def rewrite_marker(model: MountModel, session: str, text: bytes, mtime_ns: int | None = None,
                   times_after_close: bool = False) -> int | None:
    """cp -a (times set on the open file) or tar -x (by name, after close) over an existing
    .create: open(O_WRONLY|O_TRUNC), write, set the time; the errno of the first step refused."""
    path = f"/{session}/.create"
    try:
        fh = model.open(path, os.O_WRONLY | os.O_TRUNC)
    except Fs360Error as exc:
        return exc.errno
    try:
        if text:
            model.write(fh, text, 0)
        if mtime_ns is not None and not times_after_close:
            model.utimens(path, mtime_ns)
        model.flush(fh)
    except Fs360Error as exc:
        return exc.errno
    finally:
        model.release(fh)
    if mtime_ns is not None and times_after_close:
        model.utimens(path, mtime_ns)
    return None


def created_project(model: MountModel, text: bytes) -> None:
    model.mkdir("/s", 0o755)
    write_file(model, "/s/a.jpg", b"a")
    assert write_marker(model, "s", text) is None
    wait_until(lambda: model.engine.registry.sessions["s"].sealed, 30, 0.05, what="the project")


def test_create_reads_back_its_bytes_with_the_time_it_was_written_or_given(idle):
    """Its size and bytes are the ones written, its mtime the write's, or the one a utimens gave it."""
    idle.mkdir("/s", 0o755)
    before = idle.getattr("/s")["st_mtime"]
    assert write_marker(idle, "s", b'{"title":"T"}\n') is None
    attrs = idle.getattr("/s/.create")
    assert read_all(idle, "/s/.create") == b'{"title":"T"}\n' and attrs["st_size"] == 14
    assert attrs["st_mtime"] >= before
    idle.utimens("/s/.create", SOURCE_MTIME)
    assert idle.getattr("/s/.create")["st_mtime"] == SOURCE_MTIME


@pytest.mark.parametrize("times_after_close", [False, True], ids=["cp -a", "tar -x"])
def test_the_same_bytes_written_again_after_the_project_change_nothing(model, server, times_after_close):
    """cp -a, tar -x of the same folder again: .create opened with O_TRUNC, the same bytes
    written, the source's time set: accepted once the project is created (sealed, 0444), the
    project untouched, the time kept. Different bytes: EACCES at the first different write (a
    shell ignores close's error) or, shorter, at close; the reason in status; nothing kept."""
    text = b'{"title": "kept"}\n'
    created_project(model, text)
    session = model.engine.registry.sessions["s"]
    project = session.project
    assert rewrite_marker(model, "s", text, SOURCE_MTIME, times_after_close) is None
    assert session.project is project and project.options == {"title": "kept"}
    attrs = model.getattr("/s/.create")
    assert (attrs["st_size"], attrs["st_mtime"], attrs["st_mode"] & 0o777) == (len(text), SOURCE_MTIME, 0o444)
    assert ".create" not in dict(session.refused_names)
    assert rewrite_marker(model, "s", text) is None                     # without a time: it keeps the one it had
    assert model.getattr("/s/.create")["st_mtime"] == SOURCE_MTIME

    assert rewrite_marker(model, "s", b'{"title": "else"}\n', SOURCE_MTIME + 10**9) == errno.EACCES
    assert rewrite_marker(model, "s", text[:5], SOURCE_MTIME + 10**9) == errno.EACCES   # refused at close
    assert rewrite_marker(model, "s", text + b" ") == errno.EACCES
    assert read_all(model, "/s/.create") == text
    assert model.getattr("/s/.create")["st_mtime"] == SOURCE_MTIME
    refused = json.loads(read_all(model, "/s/status.json"))["refused_names"]
    assert {"name": ".create", "reason": REWRITE_REFUSAL} in refused, refused
    assert "refused   .create: " + REWRITE_REFUSAL in read_all(model, "/s/status").decode()
    assert session.project is project and len(projects_of(server, model, "s")) == 1


def test_the_same_bytes_echoed_again_by_a_shell_after_the_project_change_nothing(model, server):
    """`echo '{}' > S/.create` again (a script re-run): the shell's first close comes before echo
    writes, with nothing written yet. Before, that close was taken for a .create cut short: echo
    then failed with EACCES although its bytes were the same (a hostile round's find)."""
    text = b'{"title": "kept"}\n'
    created_project(model, text)
    session = model.engine.registry.sessions["s"]
    project = session.project
    assert shell_redirect(model, "/s/.create", text) is None
    assert ".create" not in dict(session.refused_names) and read_all(model, "/s/.create") == text
    # Truncated and never written (`: > .create`): nothing changes, the refusal is in status.
    assert shell_redirect(model, "/s/.create", b"") is None
    assert {"name": ".create", "reason": REWRITE_REFUSAL} in \
        json.loads(read_all(model, "/s/status.json"))["refused_names"]
    assert shell_redirect(model, "/s/.create", b'{"title": "else"}\n') == errno.EACCES
    assert read_all(model, "/s/.create") == text
    assert session.project is project and len(projects_of(server, model, "s")) == 1


def test_a_read_only_create_takes_a_time_and_keeps_it(model):
    """touch, or rsync's time fix of a skipped file: utimens on the read-only .create is kept."""
    created_project(model, b"")
    model.utimens("/s/.create", SOURCE_MTIME)
    assert model.getattr("/s/.create")["st_mtime"] == SOURCE_MTIME
    assert rewrite_marker(model, "s", b"") is None  # `touch`: open O_WRONLY, nothing written


def test_a_renamed_create_reads_back_the_scratch_files_bytes_and_time(fed):
    """rsync sets the time of its `.create.XXXXXX` before the rename: pending and taken, .create
    reads back those bytes with that time (so rsync's next quick check skips it)."""
    fed.mkdir("/s", 0o755)
    write_file(fed, "/s/.create.Xy12ab", b'{"title":"T"}\n')
    fed.utimens("/s/.create.Xy12ab", SOURCE_MTIME)
    fed.rename("/s/.create.Xy12ab", "/s/.create", RSYNC)
    for _ in ("pending", "taken"):
        attrs = fed.getattr("/s/.create")
        assert (attrs["st_size"], attrs["st_mtime"]) == (14, SOURCE_MTIME)
        assert read_all(fed, "/s/.create") == b'{"title":"T"}\n'
        fed.writers.exited(RSYNC, 0)
        session = fed.engine.registry.sessions["s"]
        wait_until(lambda: session.project is not None and not pending_note(fed, session), 10, 0.02, what="the project")


def test_the_bytes_and_time_of_create_survive_a_restart_and_an_older_journal_reads_back_its_fields(
        model, server, make_model):
    """The journal keeps them (projects.marker, marker_mtime_ns); a project an older fs360 requested
    (those columns added empty) reads back its fields rendered, with the folder's time, as then."""
    text = b'{"title":"kept"}'
    created_project(model, text)
    model.utimens("/s/.create", SOURCE_MTIME)
    model.engine.stop(5)
    again = make_model(server, start=False)
    attrs = again.getattr("/s/.create")
    assert read_all(again, "/s/.create") == text and (attrs["st_size"], attrs["st_mtime"]) == (16, SOURCE_MTIME)
    assert rewrite_marker(again, "s", text) is None
    journal_path = again.engine.settings.journal_path
    again.engine.stop(5)
    with contextlib.closing(sqlite3.connect(str(journal_path))) as db:
        db.execute("ALTER TABLE projects DROP COLUMN marker")
        db.execute("ALTER TABLE projects DROP COLUMN marker_mtime_ns")
        db.commit()
    older = make_model(server, start=False)
    assert read_all(older, "/s/.create") == b'{"title": "kept"}\n'
    assert older.getattr("/s/.create")["st_mtime"] == older.getattr("/s")["st_mtime"]


# --- unlink before and after the request ------------------------------------------------------------------

def test_unlink_before_the_request_cancels_it_for_good(model, server):
    """rm .create while its files are not done: no project is ever requested, the folder stays open."""
    model.mkdir("/cancelled", 0o755)
    fh = model.create("/cancelled/a.jpg", 0o644, os.O_WRONLY)   # held open: the request must wait
    model.write(fh, b"a" * 5000, 0)
    assert write_marker(model, "cancelled", b"") is None
    assert json.loads(read_all(model, "/cancelled/status.json"))["project"]["state"] == "waiting"
    # rsync -a --delete of a source without .create removes it: status says so, and what to do.
    model.writers.identify = lambda pid: Closer(pid, "rsync", None)
    model.unlink("/cancelled/.create", 4242)
    assert ".create" not in names(model, "/cancelled")
    assert model.engine.registry.sessions["cancelled"].project is None
    model.release(fh)
    wait_state(model, "cancelled", "a.jpg", "complete")
    witness_a_project_step(model, server)                   # a project step ran after it was complete
    assert projects_of(server, model, "cancelled") == []
    project = json.loads(read_all(model, "/cancelled/status.json"))["project"]
    assert project["state"] == "cancelled" and project["name"] is None
    assert project["cancelled"].startswith("the project request was cancelled because .create was removed by "
                                           "rsync before the request was sent; write .create again to request "
                                           "the project (rsync --delete removes it")
    assert f"project   cancelled: {project['cancelled']}\n" in read_all(model, "/cancelled/status").decode()
    assert "project request cancelled (.create removed)" in read_all(model, "/status").decode()
    write_file(model, "/cancelled/c.jpg", b"more")           # not sealed
    assert write_marker(model, "cancelled", b"") is None     # written again: requested, the note gone
    assert json.loads(read_all(model, "/cancelled/status.json"))["project"]["state"] in ("waiting", "created", "ready")
    assert "project   cancelled" not in read_all(model, "/cancelled/status").decode()


def test_after_the_project_the_session_is_sealed_and_unlink_only_hides_the_marker(server, make_model):
    """Once created: new files, renames and .create writes are EACCES, .create is 0444; unlinking it
    hides it (rm -r works), across a restart, and the project stays (one POST)."""
    model = make_model(server)
    model.mkdir("/s", 0o755)
    write_file(model, "/s/a.jpg", b"x")
    assert write_marker(model, "s", b'{"title": "kept"}') is None
    wait_until(lambda: model.engine.registry.sessions["s"].sealed, 30, 0.05, what="the project")
    assert errno_of(model.create, "/s/b.jpg", 0o644, os.O_WRONLY) == errno.EACCES
    assert errno_of(model.create, "/s/.dotfile", 0o644, os.O_WRONLY) == errno.EACCES
    assert rewrite_marker(model, "s", b'{"title": "other"}') == errno.EACCES
    assert errno_of(model.rename, "/s/a.jpg", "/s/c.jpg") == errno.EACCES
    assert model.getattr("/s/.create")["st_mode"] & 0o777 == 0o444
    assert dict(model.readdir("/s"))[".create"]["st_mode"] & 0o777 == 0o444
    assert read_all(model, "/s/.create") == b'{"title": "kept"}'
    upload_id = model.engine.registry.sessions["s"].upload_id
    (project,) = projects_of(server, model, "s")
    assert project["title"] == "kept"
    model.unlink("/s/.create")
    assert ".create" not in names(model, "/s")
    assert errno_of(model.rmdir, "/s") == errno.ENOTEMPTY   # a.jpg is still listed
    model.engine.stop(5)

    again = make_model(server, start=False)                 # the same cache dir: a remount
    assert ".create" not in names(again, "/s")
    assert again.engine.registry.sessions["s"].project.state in ("created", "ready")
    again.unlink("/s/a.jpg")
    again.rmdir("/s")
    assert "s" not in names(again)
    assert [p["upload_id"] for p in server.projects()].count(upload_id) == 1
