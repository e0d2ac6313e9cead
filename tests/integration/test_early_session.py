"""A folder's server session opens while its first uploadable file is being written, not
after its close (issue 21): one POST /uploads per folder, none for a folder of scratch files,
tree files or empty files only."""

from __future__ import annotations

import os

from fs360.engine.engine import Engine
from fs360.engine.records import COMPLETE, WRITING
from tests.harness import request_count, wait_until


def write_open(engine: Engine, session, name: str, data: bytes, local_only: bool = False):
    """create + write, as the path model does, leaving the file open (its writer runs on)."""
    with engine.lock:
        record = engine.registry.create_file_locked(session, name, 0o644, os.getuid(), os.getgid(), local_only=local_only)
        engine.registry.open_for_write_locked(record)
    with open(engine.spool.path(record.id), "r+b") as spool:
        spool.write(data)
    with engine.lock:
        engine.registry.wrote_locked(record, 0, len(data))
    return record


def test_the_session_opens_while_the_first_file_is_written(emulator, settings_for):
    engine = Engine(settings_for(emulator)).start()
    try:
        with engine.lock:
            session = engine.registry.create_session_locked("s", 0o755)
        first = write_open(engine, session, "a.jpg", b"first")
        wait_until(lambda: session.upload_id, 30, what="the session opened while a.jpg is open")
        assert first.state == WRITING
        second = write_open(engine, session, "b.jpg", b"second")
        for record, size in ((first, 5), (second, 6)):
            engine.registry.content_digest(record)
            with engine.lock:
                engine.registry.close_writer_locked(record, size)
        wait_until(lambda: first.state == second.state == COMPLETE, 30, what="both files complete")
        assert {f["name"] for f in emulator.files() if f["upload_id"] == session.upload_id} == {"a.jpg", "b.jpg"}
    finally:
        engine.stop()
    assert request_count(emulator, "POST open_session") == 1


def test_scratch_tree_and_empty_files_open_no_session(emulator, settings_for):
    """One worker takes the openings in the order asked: once the last folder's session is open,
    any asked for before it would be too."""
    engine = Engine(settings_for(emulator, workers=1)).start()
    try:
        with engine.lock:
            quiet = engine.registry.create_session_locked("quiet", 0o755)
            engine.registry.add_folder_locked(quiet, "sub", 0o755, 0)
            later = engine.registry.create_session_locked("later", 0o755)
        write_open(engine, quiet, ".a.jpg.part", b"scratch", local_only=True)
        write_open(engine, quiet, "sub/b.jpg", b"in the tree")
        write_open(engine, quiet, "4913", b"")
        write_open(engine, later, "c.jpg", b"uploadable")
        wait_until(lambda: later.upload_id, 30, what="the later folder's session")
        assert quiet.upload_id is None
    finally:
        engine.stop()
    assert request_count(emulator, "POST open_session") == 1
