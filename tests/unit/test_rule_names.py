"""The name rule, as one table against the path model (no FUSE): which session and file names are
EINVAL or ENAMETOOLONG, which are scratch (local, never uploaded), and which server name each
uploadable file gets, as status, status.json and the xattr show it (doc/SEMANTICS.md "Decisions":
Names, "Server names"). The mapping function itself: tests/unit/test_server_names.py.

The same rule through a real mount with real programs: tests/fuse/test_names.py.
"""

from __future__ import annotations

import errno
import json
import os

import pytest

from tests.unit.test_model import errno_of, names, read_all, wait_state, write_file
from tests.engine_helpers import file_state

NON_UTF8 = [raw.decode("utf-8", "surrogateescape") for raw in (b"\xff\xfe.jpg", b"caf\xe9.jpg", b"\xc3(.jpg")]


@pytest.fixture
def idle(server, make_model):
    """An engine that never uploads: names are decided before any request."""
    model = make_model(server, start=False)
    model.mkdir("/s", 0o755)
    return model


# --- names the mount refuses ------------------------------------------------------------------------------

BAD_FILE_NAMES = [
    ("a" * 252 + ".jpg", errno.ENAMETOOLONG),          # 256 bytes
    ("é" * 126 + ".jpg", errno.ENAMETOOLONG),          # 256 bytes of 2-byte characters
    ("b" * 300, errno.ENAMETOOLONG),
    ("tab\there.jpg", errno.EINVAL),
    ("new\nline.jpg", errno.EINVAL),
    ("bell\x07.jpg", errno.EINVAL),
    ("del\x7f.jpg", errno.EINVAL),
    ("esc\x1b[31m.jpg", errno.EINVAL),
    ("\x01\x02", errno.EINVAL),
    *[(name, errno.EINVAL) for name in NON_UTF8],
]


@pytest.mark.parametrize("name, number", BAD_FILE_NAMES, ids=[repr(n)[:24] for n, _ in BAD_FILE_NAMES])
def test_a_bad_file_name_is_refused_at_create_and_at_rename(idle, name, number):
    """Longer than 255 bytes: ENAMETOOLONG; a C0 control, DEL or non-UTF-8 byte: EINVAL; for a new
    file, a rename onto the name, and a folder (tree) of that name alike."""
    assert errno_of(idle.create, f"/s/{name}", 0o644, os.O_WRONLY) == number
    write_file(idle, "/s/ok.jpg", b"")
    assert errno_of(idle.rename, "/s/ok.jpg", f"/s/{name}") == number
    assert errno_of(idle.mkdir, f"/s/{name}", 0o755) == number
    assert names(idle, "/s") == {"ok.jpg", "status", "status.json"}


BAD_SESSION_NAMES = [
    ("d" * 256, errno.ENAMETOOLONG),
    ("new\nline", errno.EINVAL),
    ("tab\there", errno.EINVAL),
    (NON_UTF8[1][:-4], errno.EINVAL),
    ("status", errno.EEXIST),                           # the root's status file
]


@pytest.mark.parametrize("name, number", BAD_SESSION_NAMES, ids=[repr(n)[:24] for n, _ in BAD_SESSION_NAMES])
def test_a_bad_session_name_is_refused_at_mkdir_and_at_rename(idle, name, number):
    """Session folders follow the file rules; `status` at the root is taken."""
    assert errno_of(idle.mkdir, f"/{name}", 0o755) == number
    if number != errno.EEXIST:
        assert errno_of(idle.rename, "/s", f"/{name}") == number
    assert names(idle) == {"s", "status"}


GOOD_FILE_NAMES = ["a" * 251 + ".jpg", "é" * 125 + "a.jpg", "back\\slash.jpg", "a\u0085b.jpg", "Фото 1.JPG",
                   "plan.ifc ", "?.jpg", " lead.jpg", "名前.e57"]


@pytest.mark.parametrize("name", GOOD_FILE_NAMES, ids=[repr(n)[:24] for n in GOOD_FILE_NAMES])
def test_any_other_utf8_name_up_to_255_bytes_is_taken_as_written(idle, name):
    """Anything else up to exactly 255 bytes is a file, listed under the very name written."""
    assert len(name.encode()) <= 255
    write_file(idle, f"/s/{name}", b"x")
    assert name in names(idle, "/s")
    assert file_state(idle, "s", name) == "pending"
    assert read_all(idle, f"/s/{name}") == b"x"


# --- scratch names ------------------------------------------------------------------------------------------

SCRATCH = [".rsync.jpg.AbC123", ".goutputstream-XYZ", ".~lock.a.jpg#", ".DS_Store", "a.part", "b.tmp", "c.jpg~",
           "d.swp", "Thumbs.db", "desktop.ini", ".hidden.jpg", "e.jpg.crdownload", "~$report.docx", "data.db-journal",
           "data.db-wal", "data.db-shm", "sedAb12Cd"]


@pytest.mark.parametrize("name", SCRATCH)
def test_scratch_names_are_local_readable_and_never_checked(idle, name):
    """Dot-files and the default patterns are `local`: readable, never capped or refused for their
    extension, and a rename to a visible name queues them."""
    idle.engine.registry.caps.allowed_extensions = ("jpg",)
    idle.engine.registry.caps.file_cap = 3
    write_file(idle, f"/s/{name}", b"scratch")
    assert file_state(idle, "s", name) == "local"
    assert idle.getxattr(f"/s/{name}", "user.fs360.state") == b"local"
    assert read_all(idle, f"/s/{name}") == b"scratch"
    idle.engine.registry.caps.file_cap = 0
    idle.rename(f"/s/{name}", "/s/visible.jpg")
    # The renamer's exit is unknown here (no pid): the write-back delay commits it.
    assert file_state(idle, "s", "visible.jpg") == "closed"


def test_only_visible_names_reach_the_server(server, make_model):
    """Scratch files stay local while the session's other files upload, under their server names."""
    model = make_model(server)
    model.mkdir("/mixed", 0o755)
    for name in SCRATCH:
        write_file(model, f"/mixed/{name}", b"scratch")
    write_file(model, "/mixed/real.jpg", b"real")
    write_file(model, "/mixed/.a.jpg.XyZ", b"rsync data")
    model.rename("/mixed/.a.jpg.XyZ", "/mixed/a.jpg")         # rsync's rename: queued, uploaded
    wait_state(model, "mixed", "real.jpg", "complete")
    wait_state(model, "mixed", "a.jpg", "complete")
    assert {name: file_state(model, "mixed", name) for name in SCRATCH} == {name: "local" for name in SCRATCH}
    upload_id = model.engine.registry.sessions["mixed"].upload_id
    held = {f["name"]: f["received"] for f in server.files() if f["upload_id"] == upload_id}
    assert held == {"real.jpg": 4, "a.jpg": 10}


# --- server names as shown ----------------------------------------------------------------------------------

# Written in this order into one session: (local name, the server name it gets).
MAPPING = [
    ("scan 1.e57", "scan_1.e57"),
    ("scan_1.e57", "scan_1_2.e57"),       # de-duplicated ...
    ("SCAN_1.e57", "SCAN_1_3.e57"),       # ... case-insensitively
    ("Фото.JPG", "Foto.jpg"),
    ("ab.jpg", "ab.jpg"),
    ("a\u0085b.jpg", "ab_2.jpg"),
    ("plan.ifc ", "plan.ifc"),
    ("\\.jpg", "file.jpg"),
    ("\\\\.jpg", "file_2.jpg"),
    ("\u0085.jpg", "file_3.jpg"),
    ("a" * 251 + ".jpg", "a" * 243 + ".jpg"),   # shortened: room for a de-duplicating suffix
    ("é" * 125 + "a.jpg", "e" * 125 + "a.jpg"),
]


def test_each_file_gets_its_own_server_name_shown_in_status_and_xattr(server, make_model):
    """Local names stay as written; the server name (flattened, de-duplicated within the session) is
    in user.fs360.server_name, status.json and status (`local → server`), and is what the server holds."""
    model = make_model(server)
    model.mkdir("/Site A", 0o755)
    for i, (local, _) in enumerate(MAPPING):
        write_file(model, f"/Site A/{local}", str(i).encode())
    for local, expected in MAPPING:
        assert model.getxattr(f"/Site A/{local}", "user.fs360.server_name").decode() == expected, local
    snapshot = json.loads(read_all(model, "/Site A/status.json"))
    assert {f["name"]: f["server_name"] for f in snapshot["files"]} == dict(MAPPING)
    status = read_all(model, "/Site A/status").decode()
    assert "Фото.JPG → Foto.jpg" in status and "scan_1.e57 → scan_1_2.e57" in status
    for local, _ in MAPPING:
        wait_state(model, "Site A", local, "complete")
    upload_id = model.engine.registry.sessions["Site A"].upload_id
    held = {f["name"]: f["total"] for f in server.files() if f["upload_id"] == upload_id}
    assert held == {expected: len(str(i)) for i, (_, expected) in enumerate(MAPPING)}


def test_a_name_refused_at_create_says_why_in_status(idle):
    """A file manager shows only "operation not permitted": status names the file and the reason."""
    idle.engine.registry.caps.allowed_extensions = ("jpg", "e57")
    assert errno_of(idle.create, "/s/setup.exe", 0o644, os.O_WRONLY) == errno.EPERM
    status = json.loads(read_all(idle, "/s/status.json"))
    assert status["refused_names"] == [{"name": "setup.exe", "reason": "the server does not take .exe files; "
                                        "allowed: jpg, e57: rename it to a type the server takes, or keep it "
                                        "out of the session"}]
    assert "refused   setup.exe: the server does not take .exe files" in read_all(idle, "/s/status").decode()


def test_a_tree_takes_files_of_any_extension_once_the_allowed_list_is_known(idle):
    """A tree's files go up inside its archive, never under names of their own: the extensions
    learned from a 415 do not apply to them (a hostile run's find: after a 415, `cp -r` of a
    folder with a README or a Makefile failed, and its other files were held)."""
    idle.engine.registry.caps.allowed_extensions = ("jpg", "e57", "zip")
    idle.mkdir("/s/h", 0o755)
    idle.mkdir("/s/h/sub", 0o755)
    for name in ("README", "notes.txt", "Makefile"):
        write_file(idle, f"/s/h/sub/{name}", b"text")
    assert errno_of(idle.create, "/s/setup.exe", 0o644, os.O_WRONLY) == errno.EPERM  # a file of its own


def test_the_scratch_patterns_joined_into_one_expression_answer_as_fnmatchcase_each():
    """names.is_local_only matches every pattern at once: it must say what fnmatchcase of each
    would say, for the defaults and for patterns a user writes (classes, ?, regex characters)."""
    import fnmatch
    import itertools
    from fs360.config import DEFAULT_LOCAL_ONLY_PATTERNS
    from fs360.fs.names import is_local_only
    patterns = DEFAULT_LOCAL_ONLY_PATTERNS + ("[!a]?.bak", "a|b.jpg", "(x).*", "*.[Jj][Pp][Gg].old", "+plus*")
    stems = ["a", "b", "x", "(x)", "a|b", "+plus", "~$doc", "Thumbs", "data", "ab", "é", "a\nb", "$", ""]
    ends = ["", ".jpg", ".part", ".tmp", "~", ".swp", ".db", "-journal", ".bak", ".JPG.old", ".db-wal", ".ini"]
    for stem, end in itertools.product(stems, ends):
        name = stem + end
        if not name or name.startswith(".") or name == ".create":
            continue
        expected = any(fnmatch.fnmatchcase(name, p) for p in patterns)
        assert is_local_only(name, patterns) == expected, name
        assert is_local_only(name, ()) is False


@pytest.mark.parametrize("name, scratch", [
    ("sedAb12Cd", True), ("zi97naXE", True), ("XXzl0JsR", True), ("tmpk8clc_mt", True), ("tmp.AbCdEf1234", True),
    # a user's own names, even of the same length and start: 9f9ed7b's sed?????? took "sedan.jpg" for sed's copy
    ("sedan.jpg", False), ("sed12.jpg", False), ("zip1.jpg", False), ("scan.e57", False), ("tmp_a.jpg", False),
    ("IMG_0001.jpg", False), ("sedAb12Cde", False), ("tmp.AbCdE.jpg", False),
])
def test_the_temporary_copies_of_in_place_editors_are_scratch_and_a_users_names_are_not(name, scratch):
    from fs360.config import DEFAULT_LOCAL_ONLY_PATTERNS
    from types import SimpleNamespace
    from fs360.fs.tree import SessionTree
    no_sessions = SimpleNamespace(registry=SimpleNamespace(sessions={}, folder_rows_locked=lambda: []))
    tree = SessionTree(no_sessions, DEFAULT_LOCAL_ONLY_PATTERNS)
    assert tree.local_only(name) is scratch
    # In a tree's folder every name but the scratch ones goes up in the archive: Makefile too.
    assert tree.local_only(f"Docs/{name}") is False
    assert tree.local_only("Docs/Makefile") is False
