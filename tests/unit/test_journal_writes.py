"""How many journal writes a file costs (a count, not a time: each is a WAL commit, and
100,000 small files pay it 100,000 times)."""

from __future__ import annotations

import types

from fs360.engine import registry_sessions
from fs360.engine.journal import Journal
from tests.unit.test_model import wait_state, write_file


def test_a_small_file_costs_four_journal_writes_from_create_to_complete(emulator, make_model, monkeypatch):
    """Its row inserted (as being written), queued (with its digest), claimed before its PUT,
    complete; its folder's mtime is not journaled once per file (next test)."""
    model = make_model(emulator)
    journal = model.engine.journal
    writes = []
    real = journal._with_room_locked

    def counted(operation):
        writes.append(1)
        return real(operation)

    model.mkdir("/s", 0o755)
    write_file(model, "/s/first.jpg", b"x" * 1000)  # opens the session
    wait_state(model, "s", "first.jpg", "complete")
    monkeypatch.setattr(journal, "_with_room_locked", counted)
    monkeypatch.setattr(model.engine.registry, "_journal_mtime", lambda key, mtime_ns: None)
    for index in range(20):
        write_file(model, f"/s/img{index:02d}.jpg", b"x" * 1000)
    for index in range(20):
        wait_state(model, "s", f"img{index:02d}.jpg", "complete")
    assert len(writes) <= 4 * 20


def test_a_folders_mtime_is_journaled_once_per_second_and_at_the_end(emulator, make_model, monkeypatch):
    """Names coming into a folder in a burst: memory has each mtime, the journal the first at once
    and the last when housekeeping (or the stop) writes what is behind; a chmod/utimens of the
    folder meanwhile is never written over by an older touch."""
    model = make_model(emulator, start=False)
    registry = model.engine.registry
    real = registry_sessions.time
    clock = types.SimpleNamespace(monotonic=lambda: 1000.0, time=real.time, time_ns=real.time_ns)
    monkeypatch.setattr(registry_sessions, "time", clock)
    model.mkdir("/s", 0o755)
    session = model.engine.registry.sessions["s"]
    journaled = lambda: next(r["mtime_ns"] for r in model.engine.journal.sessions() if r["id"] == session.id)
    with model.engine.lock:
        for now_ns in range(1, 101):
            registry.touch_session_locked(session, now_ns)
        assert (session.mtime_ns, journaled()) == (100, 1)
        registry.write_touches_locked()
        assert journaled() == 100
        registry.touch_session_locked(session, 200)  # behind: within the second
        registry.set_session_attrs_locked(session, mtime_ns=50)  # touch -d, after it
        registry.write_touches_locked()
        assert (session.mtime_ns, journaled()) == (50, 50)
        registry.touch_session_locked(session, 300)
    model.engine.stop(5)
    reopened = Journal(model.engine.journal._path)
    assert [r["mtime_ns"] for r in reopened.sessions() if r["id"] == session.id] == [300]
    reopened.close()


def test_a_journal_that_refuses_writes_says_so_in_words_and_the_log_says_it_once(tmp_path):
    """A read-only or failing cache disk: every write fails. The error names the journal and what
    to do (no sqlite3 traceback per file), and the daemon's log says it once a minute."""
    import logging
    import sqlite3

    import pytest

    from fs360.daemon import JournalTroubleFilter
    from fs360.errors import JournalUnwritable
    journal = Journal(tmp_path / "journal.db")
    session_id = journal.insert_session({"name": "s", "upload_id": None, "expires_at": None, "mode": 0o755,
                                         "mtime_ns": 0, "sealed": 0})
    journal._db.close()
    journal._db = sqlite3.connect(f"file:{tmp_path / 'journal.db'}?mode=ro", uri=True, check_same_thread=False)
    with pytest.raises(JournalUnwritable) as refused:
        journal.update_session(session_id, mode=0o700)
    assert f"cannot write its journal in {tmp_path}" in str(refused.value) and "read-only" in str(refused.value)

    said = []
    handler = logging.Handler()
    handler.emit = said.append
    handler.addFilter(JournalTroubleFilter())
    log = logging.getLogger("test.journal.trouble")
    log.addHandler(handler)
    try:
        for _ in range(3):
            try:
                raise refused.value
            except JournalUnwritable:
                log.exception("cannot settle %r", "a.jpg")
    finally:
        log.removeHandler(handler)
    assert len(said) == 1 and said[0].exc_info is None
    assert said[0].getMessage().startswith("cannot settle 'a.jpg': fs360 cannot write its journal")
