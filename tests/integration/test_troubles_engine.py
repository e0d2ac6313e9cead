"""Failures shared by every upload (api/troubles.py) in a real engine against the emulator over
HTTP, with the documented rate limits on at both ends: an account refusal or a short outage
costs one probe at a time (never a storm that spends the hourly session budget), every file it
holds shows the one reason, and when it clears every file goes. Both profiles where the account's
codes matter (api.md Part C).

Requests are counted; time only makes the scenario (an outage of 10 s, the first 12 s looked at).
"""

from __future__ import annotations

import socket
import time

import pytest

from fs360.api.client import ApiClient
from fs360.config import Settings
from fs360.engine.engine import Engine
from fs360.errors import TransportError
from fs360.engine.records import COMPLETE, FAILED
from tests.harness import assert_uploaded, make_sources, request_count, wait_until
from tests.integration.engine_runner import queue_files
from tests.engine_helpers import state_counts, wait_idle

FILES = 30
# Production retry timings: the point is how few requests they let through.
PRODUCTION_TIMINGS = dict(backoff_base=0.5, backoff_cap=60.0, abandoned_upload_quiet=60.0)
PLAN_REFUSED = "your plan does not allow uploads through the API"


def thirty_files(tmp_path) -> tuple[dict[str, str], dict]:
    src = tmp_path / "src"
    sources = make_sources(src, {f"scan-{i:02d}.jpg": 3000 + i for i in range(FILES)})
    return sources, {name: src / name for name in sources}


def records_of(engine: Engine, session: str) -> list:
    with engine.lock:
        return list(engine.registry.sessions[session].files.values())


def all_held_with_one_reason(engine: Engine, session: str, words: str, count: int = FILES):
    """At least `count` files not complete, each failed (waiting) with the same reason, which says
    `words`; None until then."""
    records = [r for r in records_of(engine, session) if r.state != COMPLETE]
    reasons = {r.last_error for r in records}
    held = len(records) >= count and all(r.state == FAILED for r in records) and len(reasons) == 1
    return reasons.pop() if held and words in next(iter(reasons)) else None


def sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))


def engine_for(emulator, settings_for, **changes) -> Engine:
    emulator.set_flags(rate_limits=True)  # the documented limits, enforced by the server too
    return Engine(settings_for(emulator, rate_limits_enabled=True, **{**PRODUCTION_TIMINGS, **changes})).start()


def sent(emulator, endpoint: str = "") -> int:
    """Requests the emulator received (to `endpoint`, "METHOD name", or all), whatever the answer
    (a faulted one is counted once as its fault and once as its status: here once)."""
    return sum(n for key, n in emulator.stats()["requests"].items()
               if key.startswith(endpoint) and " fault:" not in key)


@pytest.mark.slow(18)
def test_an_account_refusal_costs_one_probe_at_a_time_and_every_file_goes_once_fixed(profiled_emulator,
                                                                                    settings_for, tmp_path):
    emulator = profiled_emulator
    sources, paths = thirty_files(tmp_path)
    emulator.set_account(403, "tariff_does_not_allow_api")
    engine = engine_for(emulator, settings_for)
    try:
        started = time.monotonic()
        queue_files(engine, "new folder", paths)
        reason = wait_until(lambda: all_held_with_one_reason(engine, "new folder", PLAN_REFUSED), 30,
                            what="every file to show the account's reason")
        assert "HTTP 403 tariff_does_not_allow_api" in reason and "fs360 resume" in reason
        assert engine.trouble_reasons() == [reason]
        sleep_until(started + 12)
        assert sent(emulator) <= 3, emulator.stats()["requests"]
        emulator.clear_account()
        assert wait_idle(engine, timeout=90, poll=0.1), state_counts(engine)
        assert state_counts(engine) == {COMPLETE: FILES}
        upload_id = engine.registry.sessions["new folder"].upload_id
    finally:
        engine.stop()
    assert_uploaded(emulator, upload_id, sources)
    assert request_count(emulator, "POST open_session 201") == 1
    assert request_count(emulator, "POST open_session 403") == 1  # the probes asked for no session
    assert request_count(emulator, "POST open_session 429") == request_count(emulator, "PUT put_file 429") == 0


def test_resume_checks_a_refused_account_at_once(emulator, settings_for, tmp_path):
    """`fs360 resume` (Engine.try_now) ends the wait for the account's probe, however long: here
    its next probe would come after an hour."""
    sources, paths = thirty_files(tmp_path)
    emulator.set_account(402, "storage_quota_exceeded", endpoints=["put_file"])
    engine = engine_for(emulator, settings_for, backoff_base=1000.0, backoff_cap=7200.0)
    try:
        queue_files(engine, "s", paths)
        wait_until(lambda: all_held_with_one_reason(engine, "s", "storage quota is used up"), 30,
                   what="every file to show the account's reason")
        emulator.clear_account()
        engine.try_now()
        assert wait_idle(engine, timeout=60, poll=0.1), state_counts(engine)
        upload_id = engine.registry.sessions["s"].upload_id
    finally:
        engine.stop()
    assert_uploaded(emulator, upload_id, sources)
    assert request_count(emulator, "PUT put_file 402") <= 4  # those under way when it was first refused


@pytest.mark.slow(12)
def test_a_short_outage_of_new_sessions_costs_one_probe_at_a_time(profiled_emulator, settings_for, tmp_path):
    """A 503 on `POST /uploads` for 10 s while 30 files of a new folder wait."""
    emulator = profiled_emulator
    sources, paths = thirty_files(tmp_path)
    emulator.set_faults([{"endpoint": "open_session", "kind": "error_503"}])
    engine = engine_for(emulator, settings_for)
    try:
        started = time.monotonic()
        queue_files(engine, "new folder", paths)
        reason = wait_until(lambda: all_held_with_one_reason(engine, "new folder", "new upload sessions fail"), 30,
                            what="every file to show the outage")
        assert "HTTP 503" in reason
        sleep_until(started + 10)
        emulator.clear_faults()
        sleep_until(started + 12)
        assert sent(emulator, "POST open_session") <= 3, emulator.stats()["requests"]
        assert wait_idle(engine, timeout=90, poll=0.1), state_counts(engine)
        upload_id = engine.registry.sessions["new folder"].upload_id
    finally:
        engine.stop()
    assert_uploaded(emulator, upload_id, sources)
    assert request_count(emulator, "POST open_session 201") == 1
    assert request_count(emulator, "POST open_session 429") == 0


@pytest.mark.slow(10)
def test_an_upload_outage_holds_every_file_and_its_end_brings_them_all_forward(emulator, settings_for, tmp_path):
    """PUTs fail (503) for a while: the files wait without spending requests, the probes back off,
    and the first success makes every waiting file due at once."""
    sources, paths = thirty_files(tmp_path)
    engine = engine_for(emulator, settings_for, backoff_base=0.25)
    due_at_close = []

    def waiting_beyond_now():
        now = time.time()
        return sorted(r.name for r in records_of(engine, "s") if r.state == FAILED and r.next_attempt > now + 0.5)
    try:
        queue_files(engine, "s", {"first.jpg": paths.pop("scan-00.jpg")})
        assert wait_idle(engine, timeout=30, poll=0.05)  # the session is open
        emulator.set_faults([{"endpoint": "put_file", "kind": "error_503"}])
        engine.client.troubles.on_clear(lambda: due_at_close.append(waiting_beyond_now()))
        queue_files(engine, "s", paths)
        wait_until(lambda: sum(r.state == FAILED and "uploads fail" in r.last_error
                               for r in records_of(engine, "s")) == FILES - 1, 30,
                   what="every file to wait for the upload outage")
        time.sleep(6)
        failed_puts = sent(emulator, "PUT put_file") - 1  # the first file went before the outage
        emulator.clear_faults()
        assert wait_idle(engine, timeout=60, poll=0.1), state_counts(engine)
        upload_id = engine.registry.sessions["s"].upload_id
    finally:
        engine.stop()
    # In flight when it opened (at most one per worker), then one probe per wait, doubling from
    # 0.25 s: a handful, where 29 files retrying each on its own would have sent dozens.
    assert failed_puts <= 4 + 6, failed_puts
    assert request_count(emulator, "PUT put_file fault:error_503") == failed_puts  # none after the outage
    assert due_at_close and due_at_close[0] == [], f"still waiting after the outage ended: {due_at_close[0]}"
    assert_uploaded(emulator, upload_id, {"first.jpg": sources["scan-00.jpg"], **{
        name: sha for name, sha in sources.items() if name != "scan-00.jpg"}})


def test_the_lost_answer_of_the_last_put_leaves_nothing_held_back(profiled_emulator, settings_for, tmp_path):
    """The last file's PUT is done but its answer is lost: an outage of uploads, until a request
    checks. The file's retry asks the server where it stands and finds it whole, so no PUT comes
    to check: the hold must end with that answer, or status says "held back: uploads fail" for
    good, with every file complete."""
    emulator = profiled_emulator
    sources, paths = thirty_files(tmp_path)
    engine = engine_for(emulator, settings_for, backoff_base=0.25)
    try:
        queue_files(engine, "s", {"first.jpg": paths.pop("scan-00.jpg")})
        assert wait_idle(engine, timeout=30, poll=0.05)  # the session is open
        emulator.set_faults([{"endpoint": "put_file", "kind": "drop_response", "count": 1}])
        queue_files(engine, "s", {"last.jpg": paths.pop("scan-01.jpg")})
        assert wait_idle(engine, timeout=60, poll=0.1), state_counts(engine)
        assert state_counts(engine) == {COMPLETE: 2}
        assert request_count(emulator, "PUT put_file dropped") == 1
        assert engine.trouble_reasons() == []
        upload_id = engine.registry.sessions["s"].upload_id
    finally:
        engine.stop()
    assert_uploaded(emulator, upload_id, {"first.jpg": sources["scan-00.jpg"], "last.jpg": sources["scan-01.jpg"]})


def test_a_huge_retry_after_holds_what_the_server_limited_and_says_until_when(emulator, settings_for, tmp_path):
    """A `Retry-After: 1e9` on one PUT holds every upload (capped at an hour), each file says
    so, nothing else is held, and resume lifts it."""
    sources, paths = thirty_files(tmp_path)
    engine = engine_for(emulator, settings_for)
    try:
        queue_files(engine, "s", {"first.jpg": paths.pop("scan-00.jpg")})
        assert wait_idle(engine, timeout=30, poll=0.05)
        emulator.set_faults([{"endpoint": "put_file", "kind": "retry_after_huge", "retry_after": 1e9,
                              "count": 1}])
        queue_files(engine, "s", paths)
        # (the PUTs the other workers had begun before the 429 was seen may have gone through: a
        # few files of 3 KB, more when this machine is slow; every file left must be held)
        reason = wait_until(lambda: all_held_with_one_reason(engine, "s", "the server asked to wait 31.7 years",
                                                             FILES // 2), 30,
                            what="every file to show the server's wait")
        assert "before more uploads (HTTP 429): they wait until" in reason
        # What the server did not limit goes on: a new folder opens.
        queue_files(engine, "other", {})
        assert request_count(emulator, "PUT put_file 429") == 1
        engine.try_now()
        assert wait_idle(engine, timeout=60, poll=0.1), state_counts(engine)
        upload_id = engine.registry.sessions["s"].upload_id
    finally:
        engine.stop()
    assert request_count(emulator, "PUT put_file 429") == 1
    assert_uploaded(emulator, upload_id, {"first.jpg": sources["scan-00.jpg"], **{
        name: sha for name, sha in sources.items() if name != "scan-00.jpg"}})


@pytest.mark.parametrize("kind", ["invalid_json", "missing_fields"])
def test_a_folder_whose_opening_fails_asks_once_for_all_its_files(emulator, settings_for, tmp_path, kind):
    """An answer to `POST /uploads` that is not the API's (not an outage of the server): the
    folder's files share that failure, one request per folder at a time, not one each."""
    sources, paths = thirty_files(tmp_path)
    emulator.set_faults([{"endpoint": "open_session", "kind": kind, "count": 3}])
    engine = engine_for(emulator, settings_for, backoff_base=0.05)
    try:
        queue_files(engine, "s", paths)
        assert wait_idle(engine, timeout=60, poll=0.1), state_counts(engine)
        upload_id = engine.registry.sessions["s"].upload_id
    finally:
        engine.stop()
    assert_uploaded(emulator, upload_id, sources)
    assert sent(emulator, "POST open_session") == 4


def test_a_stalled_endpoint_holds_one_worker_beyond_its_deadline(emulator, settings_for, tmp_path):
    """PUTs whose answers never come: each ends at its deadline (small here), the first of them
    opens the uploads' circuit, and from then on one probe at a time waits on that endpoint while
    the other files wait without a request; new sessions (another endpoint) still open."""
    sources, paths = thirty_files(tmp_path)
    engine = engine_for(emulator, settings_for, request_deadline=1.0, min_upload_rate=1e9, backoff_base=1.0,
                        abandoned_upload_quiet=0.5)
    try:
        queue_files(engine, "s", {"first.jpg": paths.pop("scan-00.jpg")})
        assert wait_idle(engine, timeout=30, poll=0.05)
        emulator.set_faults([{"endpoint": "put_file", "kind": "latency", "seconds": 30}])
        queue_files(engine, "s", paths)

        def one_probe_at_most():
            records = [r for r in records_of(engine, "s") if r.state != COMPLETE]
            uploading = sum(r.state == "uploading" for r in records)
            waiting = sum(r.state == FAILED and "did not answer within 1 s" in r.last_error for r in records)
            return uploading <= 1 and uploading + waiting == FILES - 1
        wait_until(one_probe_at_most, 30, what="every file but one probe waiting on the stalled uploads")
        queue_files(engine, "other", {"another.jpg": paths["scan-01.jpg"]})
        wait_until(lambda: engine.registry.sessions["other"].upload_id, 30, what="a new session while uploads stall")
        stalled_puts = sent(emulator, "PUT put_file") - 1
        emulator.clear_faults()
        assert wait_idle(engine, timeout=60, poll=0.1), state_counts(engine)
    finally:
        engine.stop()
    # One per worker in flight when the first deadline passed, then one probe at a time.
    assert stalled_puts <= 4 + 4, stalled_puts
    assert len([f for f in emulator.files() if f["complete"]]) == FILES + 1


def test_requests_that_never_reached_the_server_do_not_spend_its_budget(settings_for, tmp_path):
    """A server that is down (a closed port): every try fails to connect, and none of them is
    counted against the documented 30 sessions an hour."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    settings = Settings(api_url=f"http://127.0.0.1:{port}/api/v1", api_key="sk_test", cache_dir=tmp_path,
                        rate_limits_enabled=True, connect_timeout=1.0)
    client = ApiClient(settings)
    for _ in range(40):
        with pytest.raises(TransportError) as info:
            client.open_session(wait=False)
        assert "connection refused" in str(info.value)
        client.troubles.resume()  # past the circuit each failure opens: try again at once
    assert [client.pacer.try_acquire("open_session") for _ in range(28)] == [0.0] * 28
