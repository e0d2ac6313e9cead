"""What is sent is checked (engine/uploader.py, SentDigest): the chunk that completes a file
goes only if the sha256 of everything sent equals the one journaled when the file was queued.

A real engine against the emulator over loopback; the spool file is changed behind the
engine's back, as another program (or a bug) would. Nothing wrong is ever complete on the
server, the file says why, and a resume (which hashes what the server already holds from
the local copy) still completes an unchanged file.
"""

from __future__ import annotations

import logging

import pytest

from fs360.engine.engine import Engine
from fs360.engine.records import COMPLETE, REJECTED
from tests.harness import assert_uploaded, make_sources, wait_until
from tests.integration.engine_runner import queue_files
from tests.engine_helpers import state_counts, wait_idle

KiB = 1024
CHUNK = 64 * KiB
BIG = 8 * CHUNK + 5  # 9 PUTs; the last one (5 bytes) completes it
REASON = "no longer matches the file as it was written"


def flip_byte(engine: Engine, session: str, name: str, offset: int) -> None:
    """Changes one byte of the file's spool copy, as a program outside fs360 would."""
    with engine.lock:
        path = engine.spool.path(engine.registry.sessions[session].files[name].id)
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def remote_file(emulator, name: str) -> dict | None:
    return next((f for f in emulator.files() if f["name"] == name), None)


def record_of(engine: Engine, session: str, name: str):
    with engine.lock:
        return engine.registry.sessions[session].files[name]


def sent_until(emulator, name: str, received: int):
    """Waits until the server holds at least `received` bytes of `name`, not all of it."""
    return wait_until(lambda: (f := remote_file(emulator, name)) and received <= f["received"] < f["total"],
                      60, what=f"{name} in mid-flight")


@pytest.mark.parametrize("size,changed_at", [
    pytest.param(1000, 10, id="whole-file PUT"),
    pytest.param(BIG, 3, id="first chunk"),
    pytest.param(BIG, BIG - 2, id="last chunk"),
])
def test_a_spool_changed_after_queueing_is_never_completed(profiled_emulator, settings_for, tmp_path, caplog,
                                                           size, changed_at):
    emulator = profiled_emulator
    src = tmp_path / "src"
    make_sources(src, {"scan.las": size})
    engine = Engine(settings_for(emulator, chunk_size=CHUNK, workers=2))
    try:
        queue_files(engine, "s", {"scan.las": src / "scan.las"})  # queued: its sha256 journaled
        flip_byte(engine, "s", "scan.las", changed_at)
        with caplog.at_level(logging.ERROR, logger="fs360.engine.transfer"):
            engine.start()
            assert wait_idle(engine, timeout=60, poll=0.05), state_counts(engine)
        record = record_of(engine, "s", "scan.las")
        assert record.state == REJECTED, (record.state, record.last_error)
        assert REASON in record.last_error
        assert [r for r in caplog.records if r.levelno == logging.ERROR and REASON in r.getMessage()]
        remote = remote_file(emulator, "scan.las")
        if size <= CHUNK:
            # One PUT would have been the whole file: nothing went, and the file may be copied again.
            assert remote is None or remote["received"] == 0
            assert "nothing of it was sent: copy it again" in record.last_error
            assert not record.may_be_on_server
        else:
            # Everything but the last chunk went; the last chunk never did.
            assert remote["received"] == 8 * CHUNK and not remote["complete"], remote
            assert f"keeps its first {8 * CHUNK} bytes" in record.last_error
        with engine.lock:
            blocking = engine.projects.blocking_reason_locked(engine.registry.sessions["s"])
        assert "scan.las" in blocking  # what holds the folder's project back names it (its reason: status)
    finally:
        engine.stop()
    assert emulator.violations() == []


def test_a_spool_changed_while_it_uploads_is_never_completed(profiled_emulator, settings_for, tmp_path):
    emulator = profiled_emulator
    src = tmp_path / "src"
    make_sources(src, {"scan.las": BIG, "ok.jpg": 3 * CHUNK})
    engine = Engine(settings_for(emulator, chunk_size=CHUNK, workers=2))
    # One PUT a second: the change lands long before the last chunk is due.
    engine.gate.set_bwlimit("64k")
    engine.start()
    try:
        queue_files(engine, "s", {"scan.las": src / "scan.las"})
        sent_until(emulator, "scan.las", 2 * CHUNK)
        engine.gate.set_paused(True)
        flip_byte(engine, "s", "scan.las", 7 * CHUNK + 100)
        engine.gate.set_bwlimit("off")
        engine.gate.set_paused(False)
        queue_files(engine, "s", {"ok.jpg": src / "ok.jpg"})
        assert wait_idle(engine, timeout=60, poll=0.05), state_counts(engine)
        record = record_of(engine, "s", "scan.las")
        assert record.state == REJECTED and REASON in record.last_error
        assert record_of(engine, "s", "ok.jpg").state == COMPLETE  # the others go on
    finally:
        engine.stop()
    remote = remote_file(emulator, "scan.las")
    assert remote["received"] == 8 * CHUNK and not remote["complete"], remote


@pytest.mark.parametrize("changed", [False, True], ids=["unchanged", "prefix changed"])
def test_a_resume_hashes_what_the_server_holds_from_the_local_copy(emulator, settings_for, tmp_path, changed):
    """A restart resumes at the server's `received`: the sha256 of those bytes is taken from the
    spool (they are what was sent). Unchanged, the file completes; a byte changed there since
    is caught, though this run never sends it."""
    src = tmp_path / "src"
    sources = make_sources(src, {"scan.las": BIG})
    settings = settings_for(emulator, chunk_size=CHUNK, workers=1)
    engine = Engine(settings)
    engine.gate.set_bwlimit("64k")
    engine.start()
    try:
        queue_files(engine, "s", {"scan.las": src / "scan.las"})
        sent_until(emulator, "scan.las", 2 * CHUNK)
        if changed:
            flip_byte(engine, "s", "scan.las", 5)
    finally:
        engine.stop()  # the journal keeps it queued: the next engine resumes it
    held = remote_file(emulator, "scan.las")["received"]
    assert 2 * CHUNK <= held < BIG

    engine = Engine(settings).start()
    try:
        assert wait_idle(engine, timeout=60, poll=0.05), state_counts(engine)
        record = record_of(engine, "s", "scan.las")
        if changed:
            assert record.state == REJECTED and REASON in record.last_error
        else:
            assert record.state == COMPLETE and record.last_error == ""
    finally:
        engine.stop()
    remote = remote_file(emulator, "scan.las")
    if changed:
        assert remote["received"] == 8 * CHUNK and not remote["complete"], remote
        assert emulator.violations() == []
    else:
        assert_uploaded(emulator, None, sources)
        assert remote["overwritten_bytes"] == 0  # resumed where the server stood, nothing sent twice


def test_a_server_that_loses_bytes_still_gets_the_right_file(emulator, settings_for, tmp_path):
    """Rollbacks to where the last chunk began, and further back: the digest follows the server
    (the state before the last chunk is kept; further back, it is taken again from the spool)."""
    src = tmp_path / "src"
    sources = make_sources(src, {"a.las": 12 * CHUNK + 7, "b.las": 9 * CHUNK})
    emulator.set_faults([{"endpoint": "put_file", "kind": "rollback_received", "fraction": 0.5,
                          "probability": 0.3, "count": 6}], seed=5)
    engine = Engine(settings_for(emulator, chunk_size=CHUNK, workers=2)).start()
    try:
        queue_files(engine, "s", {name: src / name for name in sources})
        assert wait_idle(engine, timeout=60, poll=0.05), state_counts(engine)
        assert state_counts(engine) == {COMPLETE: 2}
    finally:
        engine.stop()
    assert emulator.faults()["rules"][0]["fired"] > 0, "no rollback happened: the test proved nothing"
    assert_uploaded(emulator, None, sources)
