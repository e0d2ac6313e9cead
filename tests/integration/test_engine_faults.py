"""The upload engine over real HTTP against the emulator with its faults on.

Every test ends with the same proof: each file on the emulator has the sha256 of
its source and the emulator saw zero protocol violations.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fs360.engine.engine import Engine
from fs360.engine.records import COMPLETE, P_READY
from fs360.errors import RateLimited
from tests.harness import assert_uploaded, make_sources, request_count, wait_until
from tests.integration.engine_runner import queue_files
from tests.engine_helpers import state_counts, wait_idle

KiB = 1024
CHUNK = 64 * KiB
REPO = Path(__file__).resolve().parents[2]


# Multi-chunk files (several chunks each), one exact chunk, small whole-file PUTs, an empty file.
MIXED = {"a.jpg": 5 * CHUNK + 123, "b.las": 9 * CHUNK, "c.e57": 3 * CHUNK + 1, "d.png": CHUNK,
         "e.tif": 1000, "f.jpg": 17, "g.jpg": 0}


def run_engine(settings, src: Path, expected: dict, session="s", project=None, timeout=60.0) -> Engine:
    engine = Engine(settings).start()
    queue_files(engine, session, {name: src / name for name in expected}, project=project)
    assert wait_idle(engine, timeout=timeout, poll=0.05), state_counts(engine)
    return engine


def fired(emulator) -> list[int]:
    return [rule["fired"] for rule in emulator.faults()["rules"]]


# --- resume after each kind of failure ---------------------------------------------------------

@pytest.mark.parametrize("rules", [
    pytest.param([{"endpoint": "put_file", "kind": "cut_body", "probability": 0.3, "count": 8}], id="cut_body"),
    pytest.param([{"endpoint": "put_file", "kind": "drop_response", "probability": 0.3, "count": 8},
                  {"endpoint": "get_file", "kind": "drop_response", "probability": 0.3, "count": 2}],
                 id="drop_response"),
    pytest.param([{"endpoint": "*", "kind": "error_500", "probability": 0.2, "count": 10},
                  {"endpoint": "*", "kind": "error_502", "probability": 0.2, "count": 10},
                  {"endpoint": "*", "kind": "error_503", "probability": 0.3, "count": 10}], id="5xx_storm"),
    pytest.param([{"endpoint": "put_file", "kind": "invalid_json", "probability": 0.15, "count": 4},
                  {"endpoint": "put_file", "kind": "html_error", "probability": 0.15, "count": 4},
                  {"endpoint": "put_file", "kind": "received_gt_total", "probability": 0.15, "count": 4},
                  {"endpoint": "put_file", "kind": "missing_fields", "probability": 0.15, "count": 4},
                  {"endpoint": "get_file", "kind": "invalid_json", "probability": 0.3, "count": 2},
                  {"endpoint": "get_file", "kind": "received_gt_total", "probability": 0.3, "count": 2},
                  {"endpoint": "get_file", "kind": "missing_fields", "probability": 0.3, "count": 2},
                  {"endpoint": "open_session", "kind": "missing_fields", "count": 1},
                  {"endpoint": "open_session", "kind": "invalid_json", "count": 1}], id="malformed"),
])
def test_resumes_after_faults(emulator, settings_for, tmp_path, rules):
    src = tmp_path / "src"
    expected = make_sources(src, MIXED)
    emulator.set_faults(rules, seed=7)
    engine = run_engine(settings_for(emulator, chunk_size=CHUNK, workers=3), src, expected)
    try:
        assert state_counts(engine) == {COMPLETE: len(expected)}
    finally:
        engine.stop()
    assert sum(fired(emulator)) > 0, "no fault fired: the test proved nothing"
    by_name = assert_uploaded(emulator, None, expected)
    # Resumed, never restarted from 0: at most one chunk sent twice per fault that hit the file.
    total_faults = sum(fired(emulator))
    for f in by_name.values():
        assert f["overwritten_bytes"] <= CHUNK * total_faults
    # No spin: a bounded number of PUTs for the chunks there are plus one retry per fault.
    chunks = sum(max(1, -(-size // CHUNK)) for size in MIXED.values())
    puts = sum(f["put_count"] for f in by_name.values())
    assert puts <= chunks + total_faults


def test_drop_response_resumes_without_resending(emulator, settings_for, tmp_path):
    """A PUT whose answer was lost after the server kept the data: GET, then go on past it."""
    src = tmp_path / "src"
    expected = make_sources(src, {"big.las": 10 * CHUNK})
    emulator.set_faults([{"endpoint": "put_file", "kind": "drop_response", "probability": 0.5, "count": 4}], seed=3)
    engine = run_engine(settings_for(emulator, chunk_size=CHUNK, workers=1), src, expected)
    engine.stop()
    assert fired(emulator) == [4]
    by_name = assert_uploaded(emulator, None, expected)
    assert by_name["big.las"]["overwritten_bytes"] == 0
    assert request_count(emulator, "GET get_file 200") >= 4


@pytest.mark.slow(6)
def test_rate_limited_honours_retry_after(emulator, settings_for, tmp_path):
    src = tmp_path / "src"
    expected = make_sources(src, {"a.jpg": 3 * CHUNK, "b.jpg": 100})
    emulator.set_faults([{"endpoint": "put_file", "kind": "rate_limit_burst", "burst": 3, "retry_after": 2,
                          "count": 1}])
    engine = Engine(settings_for(emulator, chunk_size=CHUNK, workers=2, rate_limits_enabled=True))
    waits = []

    def on_event(event, **details):
        error = details.get("error")
        if event == "file_failed" and isinstance(error, RateLimited):
            waits.append((error.retry_after, details["retry_in"]))

    engine.listeners.add(on_event)
    engine.start()
    queue_files(engine, "s", {name: src / name for name in expected})
    assert wait_idle(engine, timeout=60, poll=0.05)
    engine.stop()
    assert request_count(emulator, "PUT put_file 429") == 3
    assert waits, "no 429 reached the engine"
    for retry_after, planned in waits:
        assert retry_after == 2
        assert planned >= retry_after  # the retry is planned no earlier than the server said
    assert_uploaded(emulator, None, expected)


# --- session expiry ------------------------------------------------------------------------------

@pytest.mark.slow(8)
def test_session_expiry_resends_everything_and_project_completes(profiled_emulator, settings_for, tmp_path):
    emulator = profiled_emulator
    src = tmp_path / "src"
    expected = make_sources(src, MIXED)
    engine = Engine(settings_for(emulator, chunk_size=CHUNK, workers=2))
    # Two PUTs a second (the bandwidth gate, 128 KiB/s for 64 KiB chunks): however loaded the
    # machine, one file is complete while another is half-way for seconds at a time (b.las
    # alone takes 9 PUTs).
    engine.gate.set_bwlimit("128k")
    engine.start()
    try:
        session = queue_files(engine, "expiring", {name: src / name for name in expected})
        first = wait_until(lambda: [f for f in emulator.files() if f["complete"]]
                         and [f for f in emulator.files() if not f["complete"] and f["received"]],
                         60, what="an upload in mid-flight")
        old_id = first[0]["upload_id"]
        emulator.expire(old_id)
        engine.gate.set_bwlimit("off")
        with engine.lock:
            engine.request_project_locked(session, {"privacy_mode": 1})
        wait_until(lambda: session.project.state == P_READY, 60, what="the project to be ready")
        new_id = session.upload_id
        assert new_id and new_id != old_id
        assert state_counts(engine) == {COMPLETE: len(expected)}
    finally:
        engine.stop()
    assert_uploaded(emulator, new_id, expected)
    assert not [f for f in emulator.files() if f["upload_id"] == old_id]
    projects = emulator.projects()
    assert len(projects) == 1 and projects[0]["name"] == session.project.name


def test_project_is_posted_once_when_its_answer_is_lost(profiled_emulator, settings_for, tmp_path):
    emulator = profiled_emulator
    src = tmp_path / "src"
    expected = make_sources(src, {"a.jpg": 1000, "b.jpg": 2 * CHUNK})
    emulator.set_faults([{"endpoint": "create_project", "kind": "drop_response", "count": 1},
                         {"endpoint": "get_project", "kind": "error_503", "count": 2}])
    settings = settings_for(emulator, chunk_size=CHUNK)
    engine = run_engine(settings, src, expected, session="proj", project={"title": "T"})
    session = engine.registry.sessions["proj"]
    wait_until(lambda: session.project.state == P_READY, 30, what="the project to be ready")
    engine.stop()
    projects = emulator.projects()
    assert len(projects) == 1
    assert projects[0]["create_count"] == 1  # POSTed once: the lost answer was found by a GET
    assert request_count(emulator, "POST create_project") == 1
    assert_uploaded(emulator, None, expected)


def test_project_request_survives_restart(emulator, settings_for, tmp_path):
    src = tmp_path / "src"
    expected = make_sources(src, {"a.jpg": 3 * CHUNK})
    settings = settings_for(emulator, chunk_size=CHUNK)
    engine = Engine(settings)  # not started: the request is only journaled
    queue_files(engine, "later", {"a.jpg": src / "a.jpg"}, project={})
    engine.stop()
    engine = Engine(settings).start()
    try:
        session = engine.registry.sessions["later"]
        assert session.project is not None
        wait_until(lambda: session.project.state == P_READY, 30, what="the project to be ready")
        assert session.sealed
        assert session.project.name == session.upload_id
    finally:
        engine.stop()
    assert_uploaded(emulator, None, expected)
    assert [p["create_count"] for p in emulator.projects()] == [1]


# --- pacing ----------------------------------------------------------------------------------------

@pytest.mark.slow(16)
def test_pacing_holds_1500_puts_under_the_limit(emulator_factory, settings_for, tmp_path):
    """1,500 small whole-file PUTs against the documented 1200/min with no 429.

    Both the emulator (--rate-window-scale 0.1) and the engine
    (Settings(rate_window_scale=0.1)) scale every rate window to a tenth, so the
    1200 PUTs a minute become 1200 per 6 s and the test takes seconds, not minutes.
    """
    emulator = emulator_factory("--rate-window-scale", "0.1", "--processing-seconds", "1")
    src = tmp_path / "src"
    src.mkdir()
    expected = {}
    for i in range(1500):
        data = i.to_bytes(4, "little") * 4
        (src / f"f{i:04d}.jpg").write_bytes(data)
        expected[f"f{i:04d}.jpg"] = hashlib.sha256(data).hexdigest()
    settings = settings_for(emulator, rate_limits_enabled=True, rate_window_scale=0.1, workers=4,
                            writeback_delay=0.0)
    engine = run_engine(settings, src, expected, timeout=100)
    engine.stop()
    requests = emulator.stats()["requests"]
    assert not [k for k in requests if k.endswith(" 429")], requests
    assert requests.get("PUT put_file 200") == 1500
    assert_uploaded(emulator, None, expected)


# --- SIGKILL and restart -----------------------------------------------------------------------

def test_sigkill_mid_upload_then_restart_resends_at_most_one_chunk(emulator, tmp_path):
    src = tmp_path / "src"
    expected = make_sources(src, {f"k{i}.las": (12 + i) * CHUNK + i for i in range(4)} | {"s.jpg": 500})
    cache = tmp_path / "runner-cache"
    emulator.set_faults([{"endpoint": "put_file", "kind": "latency", "seconds": 0.03}])
    cmd = [sys.executable, "-m", "tests.integration.engine_runner", "--url", emulator.base_url,
           "--cache", str(cache), "--src", str(src), "--chunk-size", str(CHUNK), "--workers", "4"]
    env = dict(os.environ, FS360_API_KEY=emulator.api_key)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: len([f for f in emulator.files() if 0 < f["received"] < f["total"]]) >= 2,
                 30, what="uploads in mid-flight")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    before = {f["name"]: f for f in emulator.files()}
    assert any(not f["complete"] for f in before.values())
    emulator.clear_faults()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "DONE" in done.stdout
    by_name = assert_uploaded(emulator, None, expected)
    for name, f in by_name.items():
        assert f["overwritten_bytes"] <= CHUNK, (name, f)


def test_a_put_that_outlives_the_stop_leaves_no_error_and_goes_on_at_the_next_start(emulator, settings_for,
                                                                                      tmp_path, caplog):
    """stop() waits for a worker's current chunk only so long (a large chunk on a slow link), then
    closes the journal: the attempt that ends later records nothing, says so without a traceback
    (it raised on the closed database), and the next start finds the file where the server has it."""
    src = tmp_path / "src"
    expected = make_sources(src, {"slow.jpg": 3 * CHUNK})
    settings = settings_for(emulator, chunk_size=CHUNK, max_chunk_size=CHUNK, workers=1)
    # (5 s: the stop must come while the answer still trickles, however loaded the machine)
    emulator.set_faults([{"endpoint": "put_file", "kind": "trickle", "seconds": 5.0, "count": 1}])
    engine = Engine(settings).start()
    queue_files(engine, "s", {"slow.jpg": src / "slow.jpg"})
    wait_until(lambda: emulator.files() and emulator.files()[0]["received"] > 0, 30, 0.02,
               what="the first chunk on the server, its answer still trickling")
    workers = [thread for thread in engine._threads if thread.name.startswith("fs360-upload")]
    with caplog.at_level("INFO"):
        engine.stop(timeout=0.1)
        for thread in workers:
            thread.join(30)
    assert not any(thread.is_alive() for thread in workers)
    assert [r.getMessage() for r in caplog.records if r.levelno >= 40] == []
    assert any("the mount stopped during the upload of 'slow.jpg'" in r.getMessage() for r in caplog.records)
    emulator.clear_faults()
    engine = Engine(settings).start()
    try:
        assert wait_idle(engine, timeout=60, poll=0.05), state_counts(engine)
        assert state_counts(engine) == {COMPLETE: 1}
        assert_uploaded(emulator, None, expected)
    finally:
        engine.stop()


def test_a_project_request_that_outlives_the_stop_leaves_no_error_and_is_made_once(emulator, settings_for, tmp_path,
                                                                                   caplog):
    """The same for housekeeping: the POST of a project still on its way when stop() closes the
    journal ended in 'unexpected error in housekeeping'; the next start asks before posting again."""
    src = tmp_path / "src"
    make_sources(src, {"a.jpg": 1000})
    settings = settings_for(emulator)
    engine = Engine(settings).start()
    session = queue_files(engine, "s", {"a.jpg": src / "a.jpg"})
    assert wait_idle(engine, timeout=60, poll=0.05), state_counts(engine)
    emulator.set_faults([{"endpoint": "create_project", "kind": "latency", "seconds": 5.0, "count": 1}])
    with engine.lock:
        engine.request_project_locked(session, {})
    wait_until(lambda: session.project.posted_upload_id, 30, 0.02, what="the project's POST on its way")
    keeper = [thread for thread in engine._threads if thread.name == "fs360-maintenance"]
    with caplog.at_level("INFO"):
        engine.stop(timeout=0.1)
        for thread in keeper:
            thread.join(30)
    assert keeper and not any(thread.is_alive() for thread in keeper)
    assert [r.getMessage() for r in caplog.records if r.levelno >= 40] == []
    emulator.clear_faults()
    engine = Engine(settings).start()
    try:
        wait_until(lambda: engine.registry.sessions["s"].project.state == P_READY, 60, 0.05, what="the project")
        assert request_count(emulator, "POST create_project") == 1
    finally:
        engine.stop()


def test_restart_marks_writing_interrupted_and_resumes_queued_from_server(emulator, settings_for, tmp_path):
    """Journal replay: a file open for writing at the stop is `interrupted`, never uploaded; a queued
    file half on the server goes on from the server's received (nothing sent twice)."""
    src = tmp_path / "src"
    expected = make_sources(src, {"half.las": 8 * CHUNK})
    settings = settings_for(emulator, chunk_size=CHUNK, workers=1)
    engine = Engine(settings)
    session = queue_files(engine, "s", {"half.las": src / "half.las"})
    with engine.lock:
        writing = engine.registry.create_file_locked(session, "open.jpg", 0o644, 0, 0, local_only=False)
        engine.registry.open_for_write_locked(writing)
    # Half of the file reaches the server, then the engine stops without a word to the journal.
    emulator.set_faults([{"endpoint": "put_file", "kind": "latency", "seconds": 0.05}])
    engine.start()
    wait_until(lambda: [f for f in emulator.files() if f["received"] >= 3 * CHUNK], 30, what="half an upload")
    engine.stop()
    emulator.clear_faults()
    engine = Engine(settings).start()
    try:
        assert engine.registry.sessions["s"].files["open.jpg"].state == "interrupted"
        assert wait_idle(engine, timeout=30, poll=0.05)
        assert engine.registry.sessions["s"].files["half.las"].state == COMPLETE
        assert engine.registry.sessions["s"].files["open.jpg"].state == "interrupted"
    finally:
        engine.stop()
    by_name = assert_uploaded(emulator, None, expected)
    assert by_name["half.las"]["overwritten_bytes"] == 0


# Every transient fault a link, a proxy or the server itself can give a PUT. (Rolled-back
# `received` has tests of its own: each one re-sends up to half the file by design.)
TRANSIENT_PUT_FAULTS = ("error_500", "error_502", "error_503", "cut_body", "drop_response", "html_error",
                        "invalid_json", "missing_fields", "retry_after_none", "rate_limit_burst")


@pytest.mark.slow(12)
def test_backoff_starts_over_once_a_file_makes_progress(emulator, settings_for, tmp_path):
    """About 3% of PUTs fail, with every transient kind of fault, on one file of 600 chunks:
    each error after progress costs the first step of the backoff again (its attempt count
    starts over), so the file completes in a bounded number of PUTs (a backoff that never
    reset, at the real 0.5 s doubling to 60 s, spent 30-60 s on each error after the 7th)."""
    src = tmp_path / "src"
    chunk = 64 * 1024
    chunks = 600
    expected = make_sources(src, {"scan.e57": chunks * chunk})
    emulator.set_faults([{"endpoint": "put_file", "kind": kind, "probability": 0.003, "retry_after": 1}
                         for kind in TRANSIENT_PUT_FAULTS], seed=11)
    engine = Engine(settings_for(emulator, chunk_size=chunk, max_chunk_size=chunk, workers=1))  # 600 PUTs
    attempts = []  # the attempt count each failure was retried with
    engine.listeners.add(lambda event, **details: attempts.append(details["file"].attempts)
                         if event == "file_failed" else None)
    engine.start()
    queue_files(engine, "s", {"scan.e57": src / "scan.e57"})
    assert wait_idle(engine, timeout=240, poll=0.05), state_counts(engine)
    engine.stop()
    fired_by_kind = fired(emulator)
    assert sum(fired_by_kind) >= 10 and sum(1 for n in fired_by_kind if n) >= 6, \
        f"too few faults fired to prove anything: {fired_by_kind}"
    assert_uploaded(emulator, None, expected)
    assert request_count(emulator, "PUT put_file") <= chunks + 2 * sum(fired_by_kind)
    # Faults that hit a file in a row (no progress between them) step the backoff up; any
    # progress starts it over. Without the reset the count would climb with every fault.
    assert len(attempts) >= 10 and max(attempts) <= 3, attempts


def test_a_malformed_project_list_never_leads_to_a_second_post(emulator_factory, settings_for, tmp_path):
    """The POST's answer is lost, the one list asked then cannot be read, and the project is named
    apart from its upload_id (a collision): fs360 asks again, finds it, and never POSTs twice."""
    emulator = emulator_factory("--profile", "vendor", "--project-name-collision", "--processing-seconds", "1")
    src = tmp_path / "src"
    expected = make_sources(src, {"a.jpg": 5000})
    emulator.set_faults([{"endpoint": "create_project", "kind": "drop_response", "count": 1},
                         {"endpoint": "list_projects", "kind": "invalid_json", "count": 1}])
    engine = run_engine(settings_for(emulator), src, expected, session="s", project={"title": "once"})
    try:
        session = engine.registry.sessions["s"]
        wait_until(lambda: session.project.state == P_READY, 60, what="the project to be ready")
    finally:
        engine.stop()
    assert [p["create_count"] for p in emulator.projects()] == [1]
    assert request_count(emulator, "POST create_project") == 1


def test_after_a_restart_an_older_project_of_the_same_title_is_never_taken(profiled_emulator, settings_for,
                                                                           tmp_path):
    """Last week's "Office" project exists. Today's "Office" folder requests its own; that POST fails
    without making one (503), and the daemon restarts: its project is a new one holding new.jpg,
    never last week's."""
    emulator = profiled_emulator
    src = tmp_path / "src"
    old = make_sources(src / "old", {"old.jpg": 5000})
    new = make_sources(src / "new", {"new.jpg": 9000})
    settings = settings_for(emulator)
    engine = run_engine(settings, src / "old", old, session="Office", project={})
    try:
        session = engine.registry.sessions["Office"]
        wait_until(lambda: session.project.state == P_READY, 60, what="last week's project to be ready")
        old_project = session.project.name
        with engine.lock:
            engine.discard_session_locked(session)
        emulator.set_faults([{"endpoint": "create_project", "kind": "error_503", "count": 1}])
        queue_files(engine, "Office", {"new.jpg": src / "new" / "new.jpg"}, project={})
        wait_until(lambda: fired(emulator) == [1], 60, what="today's POST to fail")
    finally:
        engine.stop()
    engine = Engine(settings).start()  # nothing of the last run's memory
    try:
        session = engine.registry.sessions["Office"]
        wait_until(lambda: session.project.state == P_READY, 60, what="today's project to be ready")
        assert session.project.name != old_project
        mine = next(p for p in emulator.projects() if p["name"] == session.project.name)
        assert mine["upload_id"] == session.upload_id
    finally:
        engine.stop()


def test_a_project_refused_for_a_server_file_fs360_does_not_know_says_which_and_what_to_do(emulator, settings_for,
                                                                                           tmp_path):
    """The server holds part of a file no file here is sent as (another client, or a journal lost
    with a failed cache disk): it refuses the project, and the reason names that file and the way
    out, not a bare code."""
    import urllib.request
    src = tmp_path / "src"
    expected = make_sources(src, {"a.jpg": 5000})
    engine = run_engine(settings_for(emulator), src, expected, session="s")
    try:
        session = engine.registry.sessions["s"]
        stray = urllib.request.Request(f"{emulator.base_url}/uploads/{session.upload_id}/stray.e57", data=b"x" * 10,
                                       method="PUT", headers={"Authorization": f"Bearer {emulator.api_key}",
                                                              "Content-Type": "application/octet-stream",
                                                              "Content-Range": "bytes 0-9/100"})
        urllib.request.urlopen(stray, timeout=10).close()
        with engine.lock:
            engine.request_project_locked(session, {})
        wait_until(lambda: "stray.e57" in (session.project.last_error or ""), 60,
                   what="the refusal to name the stray file")
        assert "copy the files into a new folder" in session.project.last_error
    finally:
        engine.stop()


def test_a_lost_post_is_still_looked_up_after_a_file_is_deleted(profiled_emulator, settings_for, tmp_path):
    """The POST's answer is lost and the first lookups fail; the user deletes a file meanwhile (the
    server holds it). The project may exist, so it is still looked up and found: ready, once."""
    emulator = profiled_emulator
    src = tmp_path / "src"
    expected = make_sources(src, {"a.jpg": 1000, "b.jpg": 2000})
    engine = run_engine(settings_for(emulator), src, expected, session="s")
    try:
        session = engine.registry.sessions["s"]
        emulator.set_faults([{"endpoint": "create_project", "kind": "drop_response", "count": 1}] + [
            {"endpoint": endpoint, "kind": "error_503", "count": 2} for endpoint in ("list_projects", "get_project")])
        with engine.lock:
            engine.request_project_locked(session, {})
        wait_until(lambda: fired(emulator)[0] == 1, 30, what="the POST's answer to be lost")
        with engine.lock:
            engine.registry.remove_file_locked(session.files["b.jpg"])
        wait_until(lambda: session.project.state == P_READY, 60, what="the lost POST's project to be found")
    finally:
        engine.stop()
    assert [p["create_count"] for p in emulator.projects()] == [1]
