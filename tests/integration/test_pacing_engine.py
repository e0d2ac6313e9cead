"""Pacing in the engine against the emulator's own rate limits (documented numbers, windows scaled
alike on both sides): a burst of new folders opens at once, an endpoint out of budget never holds
a worker, and status says why a file waits."""

from __future__ import annotations

import pytest

from fs360.engine.engine import Engine
from fs360.engine.records import COMPLETE
from tests.harness import assert_uploaded, make_sources, request_count, wait_until
from tests.integration.engine_runner import queue_files
from tests.engine_helpers import state_counts, wait_idle

# The hour windows become 5.4 s on both sides; the minute windows 0.09 s. The 28 folders that
# open at once are done in about 0.3 s, well inside the window the 29th then waits out.
SCALE = "0.0015"


def test_five_new_folders_open_at_once(emulator_factory, settings_for, tmp_path):
    """The documented limits, unscaled: a client that spaced sessions out evenly (a token bucket
    of one: 131 s apart) would still be on the second folder when this gives up."""
    emulator = emulator_factory("--processing-seconds", "1")
    src = tmp_path / "src"
    sources = make_sources(src, {f"{i}.jpg": 5000 for i in range(5)})
    engine = Engine(settings_for(emulator, rate_limits_enabled=True)).start()
    try:
        for i in range(5):
            queue_files(engine, f"folder {i}", {f"{i}.jpg": src / f"{i}.jpg"})
        assert wait_idle(engine, timeout=60, poll=0.05), state_counts(engine)
        assert state_counts(engine) == {COMPLETE: 5}
    finally:
        engine.stop()
    assert request_count(emulator, "POST open_session 201") == 5
    assert request_count(emulator, "POST open_session 429") == 0
    assert_uploaded(emulator, None, sources)


@pytest.mark.slow
def test_a_folder_out_of_budget_waits_without_holding_a_worker(emulator_factory, settings_for, tmp_path):
    """29 new folders: 28 open at once (95% of 30 an hour); the 29th waits for the window, says so
    in its error, and meanwhile the one worker keeps uploading files of open folders."""
    emulator = emulator_factory("--processing-seconds", "1", "--rate-window-scale", SCALE)
    src = tmp_path / "src"
    sources = make_sources(src, {f"{i}.jpg": 2000 for i in range(29)} | {"late.jpg": 3000})
    engine = Engine(settings_for(emulator, rate_limits_enabled=True, rate_window_scale=float(SCALE),
                                 workers=1)).start()
    try:
        for i in range(29):
            queue_files(engine, f"folder {i:02d}", {f"{i}.jpg": src / f"{i}.jpg"})

        def the_last_one_waits():
            with engine.lock:
                waiting = [r for s in engine.registry.sessions.values() for r in s.files.values()
                           if "rate limit" in r.last_error]
                done = sum(1 for s in engine.registry.sessions.values() for r in s.files.values() if r.state == COMPLETE)
            return waiting if len(waiting) == 1 and done == 28 else None
        (waiting,) = wait_until(the_last_one_waits, 30, what="28 folders done and one waiting for the limit")
        assert waiting.state == "pending" and waiting.attempts == 0
        # The worker is free: a file of a folder that is already open goes at once.
        queue_files(engine, "folder 00", {"late.jpg": src / "late.jpg"})
        wait_until(lambda: engine.registry.sessions["folder 00"].files["late.jpg"].state == COMPLETE, 20,
                   what="a file of an open folder while another waits for the limit")
        assert waiting.state == "pending"
        assert wait_idle(engine, timeout=90, poll=0.1), state_counts(engine)
    finally:
        engine.stop()
    assert request_count(emulator, "POST open_session 429") == 0
    assert request_count(emulator, "POST open_session 201") == 29
    assert len(emulator.files()) == 30 and all(f["complete"] for f in emulator.files())
    assert sorted(f["sha256"] for f in emulator.files()) == sorted(sources.values())
