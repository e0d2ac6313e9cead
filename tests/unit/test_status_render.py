"""The status files from a session's capture (fs/status.py): what the text shows of a large
session, and that status.json keeps every file. The capture is plain data, copied under the
state lock; these tests make it from real records without an engine."""

from __future__ import annotations

import json

from fs360.engine.records import COMPLETE, FAILED, PENDING, UPLOADING, FileRecord
from fs360.fs import status


def capture_of(records: list[FileRecord]) -> dict:
    return {
        "now": 1_700_000_000.0, "session": "scans", "id": 1, "upload_id": "u1", "expires_at": None,
        "sealed": False, "files": [status._FILE_FIELDS(r) for r in records], "unlinked": [],
        "refused_names": [], "tree_members": [], "archive_name": None, "tree_files": [], "project": None,
        "notice": "", "marker_refused": "", "api_url": "http://127.0.0.1:1", "default_privacy": 2,
        "paused": False, "held_back": [],
    }


def records(complete: int, pending: int = 0, failed: int = 0) -> list[FileRecord]:
    made = []
    for index, state in enumerate([COMPLETE] * complete + [PENDING] * pending + [FAILED] * failed):
        record = FileRecord(id=index, session_id=1, name=f"scan_{index}.jpg", mode=0o644, mtime_ns=0, size=10,
                            state=state, server_received=10 if state == COMPLETE else 0)
        record.server_name = record.name
        record.last_error = "the server did not answer; it is tried again" if state == FAILED else ""
        made.append(record)
    return made


def test_a_large_session_lists_what_is_not_complete_and_counts_the_rest():
    many = status.TEXT_LISTS_COMPLETE_UP_TO
    snapshot = status.snapshot_of(capture_of(records(many, pending=2, failed=1)))
    text = status.render_text(snapshot).decode()
    assert f"({many:,} complete files not listed here: status.json lists every file)" in text
    listed = [line.split()[0] for line in text.splitlines() if line.startswith("  scan_")]
    assert listed == [f"scan_{many}.jpg", f"scan_{many + 1}.jpg", f"scan_{many + 2}.jpg"]
    assert "the server did not answer" in text
    assert f"files     {many}/{many + 3} complete" in text
    assert len(json.loads(status.render_json(snapshot))["files"]) == many + 3


def test_a_session_up_to_the_limit_lists_every_file_in_natural_order():
    count = status.TEXT_LISTS_COMPLETE_UP_TO
    text = status.render_text(status.snapshot_of(capture_of(records(count - 1, pending=1)))).decode()
    listed = [line.split()[0] for line in text.splitlines() if line.startswith("  scan_")]
    assert listed == [f"scan_{i}.jpg" for i in range(count)]
    assert "not listed" not in text


def test_status_json_is_indented_with_one_line_per_file():
    snapshot = status.snapshot_of(capture_of(records(3, pending=1)))
    text = status.render_json(snapshot).decode()
    assert json.loads(text) == json.loads(json.dumps(snapshot))
    file_lines = [line for line in text.splitlines() if line.lstrip().startswith('{"name": ')]
    assert [json.loads(line.strip().rstrip(","))["name"] for line in file_lines] == \
        [f"scan_{i}.jpg" for i in range(4)]
    assert '\n  "session": "scans",\n' in text
    empty = status.snapshot_of(capture_of([]))
    assert json.loads(status.render_json(empty))["files"] == []


def test_natural_order_compares_digit_runs_as_numbers():
    names = ["scan_10.jpg", "Scan_2.jpg", "scan_1.JPG", "a", "10", "9", "scan_2b.jpg", ""]
    assert sorted(names, key=status.natural_key) == ["", "9", "10", "a", "scan_1.JPG", "Scan_2.jpg",
                                                     "scan_2b.jpg", "scan_10.jpg"]


def test_a_settled_state_is_the_capture_without_its_time_and_none_while_files_move():
    settled = capture_of(records(3, pending=1))
    later = dict(settled, now=settled["now"] + 60)
    assert status.settled_state([settled]) == status.settled_state([later]) is not None
    assert status.render_json(status.snapshot_of(settled)) != status.render_json(status.snapshot_of(later))
    assert len(status.render_json(status.snapshot_of(settled))) == len(status.render_json(status.snapshot_of(later)))
    assert status.settled_state([capture_of(records(3, failed=1))]) is None  # its retry countdown moves
    uploading = records(3, pending=1)
    uploading[-1].state = UPLOADING
    assert status.settled_state([capture_of(uploading)]) is None  # its progress and rate move


def test_status_json_is_the_snapshot_wherever_the_file_list_stands():
    """render_json writes the file list with the one-line encoder into its place: the document
    must read back as the snapshot with the list last, empty, or a field holding the placeholder."""
    for snapshot in ({"a": 1, "files": [{"name": "x", "n": 1}, {"name": "}, {\"name\": "}], "z": "q"},
                     {"a": 1, "files": []},
                     {"a": 1, "files": [{"name": "x"}]},
                     {"a": "\0files\0", "files": [{"name": "x"}]}):
        assert json.loads(status.render_json(snapshot)) == snapshot


def test_names_that_would_act_on_a_terminal_are_shown_escaped_and_status_json_keeps_them():
    """A C1 control (U+009B is a CSI to some terminals), a right-to-left override (a name that
    reads "exe.jpg" backwards), a zero-width space: escaped in the text; any other character as
    it is; status.json as written (JSON escapes what it must)."""
    made = records(3)
    made[0].name = "a\u009b31mRED.jpg"
    made[1].name = "b\u202egpj.exe.jpg"
    made[2].name = "Фото\u200b 中 é.jpg"
    snapshot = status.snapshot_of(capture_of(made))
    text = status.render_text(snapshot).decode()
    for raw, shown in (("\u009b", "\\u009b"), ("\u202e", "\\u202e"), ("\u200b", "\\u200b")):
        assert raw not in text and shown in text
    assert "Фото\\u200b 中 é.jpg" in text
    assert {f["name"] for f in json.loads(status.render_json(snapshot))["files"]} == {f.name for f in made}
    assert status.terminal_safe("plain, ß and 中文 ✓") == "plain, ß and 中文 ✓"


def test_log_lines_show_such_names_escaped():
    import logging
    from fs360.daemon import TerminalSafeFormatter
    record = logging.LogRecord("fs360", logging.INFO, __file__, 1, "uploaded %s/%s", ("Survey", "a\u009b2J.jpg"), None)
    assert TerminalSafeFormatter("%(message)s").format(record) == "uploaded Survey/a\\u009b2J.jpg"


def test_what_a_server_sent_is_shown_with_its_control_characters_escaped():
    """A project's name and an upload id come from the server: a broken or hostile one holding an
    ESC sequence must not reach a terminal through `cat status` or `fs360 status`."""
    capture = capture_of(records(1))
    capture["upload_id"] = "u1\x1b]0;owned\x07"
    capture["project"] = {"state": "ready", "name": "p\x1b[2Jx", "status": 100, "error": "", "record": {},
                          "options": {}}
    snapshot = status.snapshot_of(capture)
    text = status.render_text(snapshot).decode()
    assert "\x1b" not in text and "\x07" not in text
    assert "u1\\u001b]0;owned\\u0007" in text and "p\\u001b[2Jx" in text
    assert "\x1b" not in status.render_json(snapshot).decode("unicode_escape")


def test_a_failed_project_says_what_can_still_make_one():
    """Refused by the server, .create can be written again; made and then lost by the server, the
    folder is sealed, and only a new folder makes another project."""
    for name, sealed, todo in ((None, False, "remove .create and write a corrected one"),
                               ("p1", True, "copy the files into a new folder to make a new project")):
        capture = capture_of(records(1))
        capture["sealed"] = sealed
        capture["project"] = {"state": "failed", "name": name, "status": 0, "error": "the server said no",
                              "record": {}, "options": {}}
        text = status.render_text(status.snapshot_of(capture)).decode()
        assert f"project   FAILED: the server said no ({todo})" in text, text


def test_a_failed_project_needs_the_user_in_unmount_wait():
    """`fs360 unmount --wait` exits 3 and names what needs the user: a project that failed too."""
    from fs360.status_view import needs_you_lines
    doc = {"sessions": [{"session": "S", "files": [], "project": {"state": "failed", "error": "the server lost it"}}]}
    assert [line.plain for line in needs_you_lines(doc)] == ["  ✗ S/.create project failed: the server lost it"]


def test_a_scratch_file_says_why_it_stays_here():
    """A top-level Makefile or 20240101 is taken for an editor's temporary copy (a hostile run saw
    'local only, never uploaded' and nothing more)."""
    from fs360.fs.status import local_only_why
    assert "no file without an extension" in local_only_why("Makefile")
    assert "in a dot-folder" in local_only_why(".git/config")
    assert "in a dot-folder" in local_only_why("Scans/.rsync-partial/a.jpg")
    assert "rename it to upload it" in local_only_why("scan.e57.part")


def test_a_refused_create_says_what_to_do_once():
    """A refusal that already says to write .create is not told it again (a hostile run read
    '... or write .create yourself once it is whole (write .create again once that is put right)')."""
    for reason, told in (("invalid JSON at line 1 column 17", " (write .create again once that is put right)"),
                         ("rsync exited with status 20 after it put .create here, so .create was not taken: "
                          "copy it again, or write .create yourself once it is whole", "")):
        capture = capture_of(records(1))
        capture["marker_refused"] = reason
        text = status.render_text(status.snapshot_of(capture)).decode()
        assert f"project   refused: {reason}{told}\n" in text, text
