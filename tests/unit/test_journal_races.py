"""The journal (engine/journal.py) under a full disk and failing statements: the newest value
of each column always wins over a change that waited for room, and no failure leaves a
transaction open. A real SQLite journal on a real tmpfs filled up to the last byte."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading

import pytest

from fs360.engine.journal import FILE_COLUMNS, Journal
from fs360.engine.registry import STOPPED_WHILE_WRITING
from tests.integration.test_engine_full_disk import fill


def new_file(journal: Journal) -> int:
    """A file row, in the journal's one session (made by the first call)."""
    sessions = journal.sessions()
    session_id = sessions[0]["id"] if sessions else journal.insert_session(
        {"name": "s", "upload_id": None, "expires_at": None, "mode": 0o755, "mtime_ns": 0, "sealed": 0})
    values = dict.fromkeys(FILE_COLUMNS, 0) | {"session_id": session_id, "name": "a.jpg", "mode": 0o644,
                                              "state": "writing", "upload_id": None, "last_error": "",
                                              "server_name": None, "sha256": None, "unfinished": "",
                                              "writers": ""}
    return journal.insert_file(values)


def committed(journal_path, sql: str, args=()) -> list[tuple]:
    """What another connection sees: only what was committed."""
    with contextlib.closing(sqlite3.connect(str(journal_path))) as db:
        return db.execute(sql, args).fetchall()


def defer(journal: Journal, disk, change) -> str:
    """Fills the disk until `change(attempt)` (an update, different each time: SQLite writes
    nothing for an update that changes nothing) waits in memory for room; returns the filler."""
    for attempt in range(5):  # the first full disk only costs the journal its reserve
        filler = fill(disk)
        change(attempt)
        if journal._behind:
            return filler
    raise AssertionError("the journal never had to keep a change in memory")


class GatedLock:
    """The journal's own lock, with a gate shut before one thread (by name) may take it: the
    test decides that another thread's update comes in between. Everything else is the lock."""

    def __init__(self, lock, gated_thread: str):
        self._lock = lock
        self._gated_thread = gated_thread
        self.arrived = threading.Event()
        self.opened = threading.Event()

    def __enter__(self):
        if threading.current_thread().name == self._gated_thread and not self.opened.is_set():
            self.arrived.set()
            assert self.opened.wait(30), "the gate was never opened"
        return self._lock.__enter__()

    def __exit__(self, *exc):
        return self._lock.__exit__(*exc)


def test_a_newer_change_is_never_overwritten_by_one_that_waited_for_room(tmpfs):
    """The review's case: `pending` waited for room; housekeeping writes it once there is room
    while a FUSE thread journals that the file is open again ("stopped while writing"). The
    newer value must stay, or a crash then uploads a partial file."""
    disk = tmpfs("4m")
    journal = Journal(disk / "journal.db")
    file_id = new_file(journal)
    filler = defer(journal, disk, lambda attempt: journal.update_file(file_id, state="pending", unfinished="",
                                                                         attempts=attempt))
    os.unlink(filler)  # room again

    gated = GatedLock(journal._lock, gated_thread="housekeeping")
    journal._lock = gated
    housekeeping = threading.Thread(target=journal.restore_reserve, name="housekeeping")
    housekeeping.start()
    try:
        assert gated.arrived.wait(30), "housekeeping never went to write what waited"
        journal.update_file(file_id, unfinished=STOPPED_WHILE_WRITING)  # the newer change, in between
    finally:
        gated.opened.set()
        housekeeping.join(30)
    assert not housekeeping.is_alive()
    assert not journal._behind
    assert committed(disk / "journal.db", "SELECT state, unfinished FROM files WHERE id=?", (file_id,)) == \
        [("pending", STOPPED_WHILE_WRITING)]
    journal.close()


def test_a_project_written_whole_drops_an_older_change_that_waited(tmpfs):
    disk = tmpfs("4m")
    journal = Journal(disk / "journal.db")
    session_id = journal.insert_session({"name": "s", "upload_id": None, "expires_at": None, "mode": 0o755,
                                         "mtime_ns": 0, "sealed": 0})
    project = {"options": {}, "state": "waiting", "name": None, "status": 0, "record": {}, "last_error": "",
               "attempts": 0, "next_attempt": 0, "posted_upload_id": None, "marker_hidden": 0,
               "posted_at": None, "listed_before": None, "marker": b"", "marker_mtime_ns": 0}
    journal.upsert_project(session_id, project)
    filler = defer(journal, disk, lambda attempt: journal.update_project(
        session_id, state="failed", last_error="refused", attempts=attempt))
    os.unlink(filler)
    journal.upsert_project(session_id, project | {"options": {"title": "new"}})  # a new .create
    journal.restore_reserve()
    assert committed(disk / "journal.db", "SELECT state, last_error, options FROM projects") == \
        [("waiting", "", '{"title": "new"}')]
    journal.close()


def test_a_failed_statement_inside_a_transaction_is_rolled_back(tmp_path):
    """A statement refused after BEGIN (delete_file: the highest id kept, then the row deleted):
    the transaction must not stay open, or every later change joins it and is never committed
    (lost at the next crash)."""
    journal = Journal(tmp_path / "journal.db")
    file_id = new_file(journal)
    journal._db.execute("CREATE TRIGGER refuse BEFORE DELETE ON files BEGIN SELECT RAISE(ABORT, 'refused'); END")
    with pytest.raises(sqlite3.IntegrityError, match="refused"):
        journal.delete_file(file_id)
    journal.update_file(file_id, last_error="later change")
    assert committed(tmp_path / "journal.db", "SELECT last_error FROM files WHERE id=?", (file_id,)) == \
        [("later change",)]
    journal.close()


def test_a_refused_insert_uses_no_id_and_leaves_nothing_open(tmp_path):
    journal = Journal(tmp_path / "journal.db")
    first = new_file(journal)
    with pytest.raises(sqlite3.IntegrityError):
        journal.insert_file(dict.fromkeys(FILE_COLUMNS))  # NOT NULL columns left empty
    journal.update_file(first, last_error="later change")
    assert new_file(journal) == first + 1
    assert committed(tmp_path / "journal.db", "SELECT id, last_error FROM files ORDER BY id") == \
        [(first, "later change"), (first + 1, "")]
    journal.close()


@pytest.mark.parametrize("delete", ["file", "session"])
def test_the_id_of_a_deleted_file_is_never_handed_out_again_even_after_a_restart(tmp_path, delete):
    """The newest file's row deleted (rm of it, or of its whole folder), then the journal opened
    anew: the next file gets a new id, not the deleted one's (SQLite's own rowid would reuse it)."""
    journal = Journal(tmp_path / "journal.db")
    kept = new_file(journal)
    newest = new_file(journal)
    if delete == "file":
        journal.delete_file(newest)
    else:
        journal.delete_session(journal.sessions()[-1]["id"])
    journal.close()
    journal = Journal(tmp_path / "journal.db")
    assert new_file(journal) == newest + 1 > kept
    journal.close()


def test_a_busy_database_after_begin_is_rolled_back(tmp_path):
    """Another writer holds the database (an admin's sqlite3 shell, a stuck checkpoint): the
    statement after BEGIN fails with "database is locked", not "full"."""
    path = tmp_path / "journal.db"
    journal = Journal(path)
    file_id = new_file(journal)
    journal._db.execute("PRAGMA busy_timeout=50")  # give up on the lock at once
    with contextlib.closing(sqlite3.connect(str(path), isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            journal.delete_session(1)
        other.execute("ROLLBACK")
    journal.update_file(file_id, last_error="later change")
    assert committed(path, "SELECT last_error FROM files WHERE id=?", (file_id,)) == [("later change",)]
    assert committed(path, "SELECT COUNT(*) FROM sessions") == [(1,)]  # the delete did not happen
    journal.close()
