"""A cache disk that fills up during uploads: no worker dies, nothing is re-sent to a second
session, and every file completes once there is room again, without a remount."""

from __future__ import annotations

import errno
import os

from fs360.engine.engine import Engine
from fs360.engine.records import COMPLETE
from tests.harness import assert_uploaded, make_sources, request_count, wait_until
from tests.integration.engine_runner import queue_files
from tests.engine_helpers import state_counts, wait_idle

KiB = 1024


def fill(directory) -> str:
    """Writes one file until the disk says ENOSPC; returns its path."""
    path = os.path.join(directory, "filler")
    block = b"\0" * (64 * KiB)
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(block)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    for size in (4096, 512, 1):  # the last crumbs too
        try:
            with open(path, "ab", buffering=0) as f:
                while True:
                    f.write(b"\0" * size)
        except OSError:
            pass
    return path


def test_a_full_cache_disk_during_uploads(tmpfs, emulator, settings_for, tmp_path):
    disk = tmpfs("24m")
    src = tmp_path / "src"
    sources = make_sources(src, {f"{i}.las": 2048 * KiB for i in range(6)})
    # Errors on a third of the PUTs: every retry settles an error, which writes the journal.
    emulator.set_faults([{"endpoint": "put_file", "kind": "error_503", "probability": 0.3},
                         {"endpoint": "put_file", "kind": "latency", "seconds": 0.1}], seed=3)
    engine = Engine(settings_for(emulator, cache_dir=disk / "cache", chunk_size=128 * KiB, workers=3,
                                 backoff_base=0.02, backoff_cap=0.2)).start()
    try:
        queue_files(engine, "s", {name: src / name for name in sources})
        filler = fill(disk)
        # The journal gives its reserve back at the first change that finds no room: fill that too.
        wait_until(lambda: not engine.journal._reserve.exists(), 30, what="the journal to use its reserve")
        fill(disk / "cache")
        wait_until(lambda: engine.journal._behind, 30, what="a journal change that found no room")
        wait_until(lambda: emulator.faults()["rules"][0]["fired"] >= 3, 30, what="errors settled meanwhile")
        assert all(t.is_alive() for t in engine._threads), "a worker died on the full disk"
        os.unlink(filler)
        os.unlink(disk / "cache" / "filler")
        assert wait_idle(engine, timeout=90, poll=0.05), state_counts(engine)
        assert state_counts(engine) == {COMPLETE: len(sources)}
        wait_until(lambda: not engine.journal._behind, 30, what="the journal to catch up")
        with engine.lock:
            upload_id = engine.registry.sessions["s"].upload_id
    finally:
        engine.stop()
    assert request_count(emulator, "POST open_session") == 1
    assert_uploaded(emulator, upload_id, sources)
    # The journal has every file complete: a remount would not send anything again.
    again = Engine(settings_for(emulator, cache_dir=disk / "cache"))
    try:
        assert state_counts(again) == {COMPLETE: len(sources)}
    finally:
        again.stop()
