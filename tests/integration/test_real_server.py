"""The engine against both emulator profiles: Part B (default) and the real service's Part C (vendor).

What differs on the real server: it flattens names, may expire sessions only when
idle, defaults a project to public, and may discard a project's input when its
session is deleted. Each test runs on both profiles and ends with the sha256 of
every file on the server.
"""

from __future__ import annotations

import pytest

from fs360.engine.engine import Engine
from fs360.engine.projects import project_page
from fs360.engine.records import COMPLETE, P_READY
from tests.harness import FAST_EMULATOR_ARGS, assert_uploaded, make_sources, request_count, wait_until
from tests.integration.engine_runner import queue_files
from tests.engine_helpers import state_counts, wait_idle


def server_project(emulator, name: str) -> dict:
    """The project's record as the API serves it."""
    from fs360.api.client import ApiClient
    from fs360.config import Settings
    client = ApiClient(Settings(api_url=emulator.base_url, api_key=emulator.api_key, rate_limits_enabled=False))
    return client.project_status(name).record


def start_engine(settings) -> Engine:
    return Engine(settings).start()


def server_names(engine: Engine, session: str) -> dict[str, str]:
    with engine.lock:
        return {r.name: r.server_name for r in engine.registry.sessions[session].files.values()}


def test_colliding_and_non_ascii_names_land_under_distinct_server_names(profiled_emulator, settings_for, tmp_path):
    emulator = profiled_emulator
    src = tmp_path / "src"
    # Same size on purpose: a server that merged two of them would still say "complete".
    local = ["scan 1.e57", "scan_1.e57", "Scan_1.E57", "Фото.jpg", "ab.jpg", "a\u0085b.jpg", "plan .ifc "]
    sources = make_sources(src, {f"f{i}": 40_000 for i in range(len(local))})
    engine = start_engine(settings_for(emulator))
    try:
        queue_files(engine, "s", {name: src / f"f{i}" for i, name in enumerate(local)})
        assert wait_idle(engine, timeout=60, poll=0.05)
        assert state_counts(engine) == {COMPLETE: len(local)}
        names = server_names(engine, "s")
    finally:
        engine.stop()
    assert len({n.lower() for n in names.values()}) == len(local), names
    assert names["Фото.jpg"] == "Foto.jpg"
    assert names["scan 1.e57"] == "scan_1.e57" and names["plan .ifc "] == "plan.ifc"
    expected = {names[name]: sources[f"f{i}"] for i, name in enumerate(local)}
    assert_uploaded(emulator, None, expected)


def test_the_journal_keeps_the_mapping_across_restarts(profiled_emulator, settings_for, tmp_path):
    emulator = profiled_emulator
    src = tmp_path / "src"
    sources = make_sources(src, {"one": 1000, "two": 1000})
    settings = settings_for(emulator)
    engine = start_engine(settings)
    queue_files(engine, "s", {"x y.jpg": src / "one", "x_y.jpg": src / "two"})
    assert wait_idle(engine, timeout=60, poll=0.05)
    before = server_names(engine, "s")
    engine.stop()
    again = Engine(settings)
    try:
        assert server_names(again, "s") == before
    finally:
        again.stop()
    assert_uploaded(emulator, None, {before["x y.jpg"]: sources["one"], before["x_y.jpg"]: sources["two"]})


def test_a_name_the_server_already_holds_is_a_conflict_not_a_resume(profiled_emulator, settings_for, tmp_path):
    """A session from the journal whose server holds a name fs360 has no record of sending
    (another client, a lost journal): the new file goes under the next free name."""
    emulator = profiled_emulator
    src = tmp_path / "src"
    sources = make_sources(src, {"first": 5000, "second": 5000})
    settings = settings_for(emulator)
    engine = start_engine(settings)
    queue_files(engine, "s", {"a.jpg": src / "first"})
    assert wait_idle(engine, timeout=60, poll=0.05)
    with engine.lock:
        upload_id = engine.registry.sessions["s"].upload_id
        # Forget that a.jpg was sent, as a journal that lost it would.
        record = engine.registry.sessions["s"].files.pop("a.jpg")
        engine.registry.sessions["s"].names.pop("a.jpg")
        engine.journal.delete_file(record.id)
    engine.stop()
    again = start_engine(settings)
    try:
        queue_files(again, "s", {"a.jpg": src / "second"})
        assert wait_idle(again, timeout=60, poll=0.05)
        assert server_names(again, "s") == {"a.jpg": "a_2.jpg"}
    finally:
        again.stop()
    assert_uploaded(emulator, upload_id, {"a.jpg": sources["first"], "a_2.jpg": sources["second"]})


@pytest.mark.parametrize("profile", ["default", "vendor"])
def test_a_session_is_used_for_as_long_as_the_server_answers(emulator_factory, settings_for, tmp_path, profile):
    """A session that says it expires in under an hour is not renewed early: it is replaced only
    after a 404, and then the dead one is deleted (idempotently)."""
    emulator = emulator_factory(*FAST_EMULATOR_ARGS, "--profile", profile, "--session-lifetime", "3000")
    src = tmp_path / "src"
    sources = make_sources(src, {f"{i}.jpg": 2000 for i in range(6)})
    engine = start_engine(settings_for(emulator))
    try:
        for batch in ((0, 1, 2), (3, 4, 5)):
            queue_files(engine, "s", {f"{i}.jpg": src / f"{i}.jpg" for i in batch})
            assert wait_idle(engine, timeout=60, poll=0.05)
        assert request_count(emulator, "POST open_session") == 1
        with engine.lock:
            first = engine.registry.sessions["s"].upload_id
        assert_uploaded(emulator, first, sources)
        emulator.expire(first)
        sources.update(make_sources(src, {"late.jpg": 3000}))
        queue_files(engine, "s", {"late.jpg": src / "late.jpg"})
        assert wait_idle(engine, timeout=60, poll=0.05)
        with engine.lock:
            second = engine.registry.sessions["s"].upload_id
        assert second != first
        wait_until(lambda: request_count(emulator, "DELETE delete_session") >= 1, 20,
                   what="the dead session to be deleted")
    finally:
        engine.stop()
    # Every file went again to the new session, from the spool.
    assert_uploaded(emulator, second, sources)


def test_projects_are_private_unless_create_says_otherwise(profiled_emulator, settings_for, tmp_path):
    emulator = profiled_emulator
    src = tmp_path / "src"
    make_sources(src, {"a.jpg": 1000, "b.jpg": 1000})
    engine = start_engine(settings_for(emulator))
    try:
        queue_files(engine, "private", {"a.jpg": src / "a.jpg"}, project={})
        queue_files(engine, "linked", {"b.jpg": src / "b.jpg"},
                    project={"privacy_mode": 1, "coordinate_system": "EPSG:25832"})
        wait_until(lambda: all(s.project.state == P_READY for s in engine.registry.sessions.values()), 60,
                   what="both projects ready")
        with engine.lock:
            pages = {s.name: project_page(engine.settings.api_url, s.project.name)
                     for s in engine.registry.sessions.values()}
    finally:
        engine.stop()
    records = {p["title"]: server_project(emulator, p["name"]) for p in emulator.projects()}
    assert records["private"]["privacy_mode"] == 2
    assert records["linked"]["privacy_mode"] == 1
    if emulator.profile == "vendor":  # the default profile's record keeps only its own columns
        assert records["linked"]["coordinate_system"] == "EPSG:25832"
    # The page is on the server --api-url names, not on 360-for-you.com.
    root = emulator.base_url[: -len("/api/v1")]
    assert pages["private"].startswith(root + "/projects/")


def test_removing_a_session_with_a_project_sends_no_delete(profiled_emulator, settings_for, tmp_path):
    emulator = profiled_emulator
    src = tmp_path / "src"
    make_sources(src, {"a.jpg": 1000, "b.jpg": 1000})
    engine = start_engine(settings_for(emulator))
    try:
        queue_files(engine, "done", {"a.jpg": src / "a.jpg"}, project={})
        queue_files(engine, "scratch", {"b.jpg": src / "b.jpg"})
        wait_until(lambda: engine.registry.sessions["done"].project.state == P_READY, 60, what="the project")
        assert wait_idle(engine, timeout=60, poll=0.05)
        with engine.lock:
            engine.discard_session_locked(engine.registry.sessions["done"])
            engine.discard_session_locked(engine.registry.sessions["scratch"])
        # The session without a project is deleted; waiting for it shows the other had its chance.
        wait_until(lambda: request_count(emulator, "DELETE delete_session") >= 1, 20,
                   what="the session without a project to be deleted")
    finally:
        engine.stop()
    assert request_count(emulator, "DELETE delete_session") == 1
    assert all(p["status"] == 100 for p in emulator.projects())


@pytest.mark.parametrize("api_url, page", [
    ("https://360-for-you.com/api/v1", "https://360-for-you.com/projects/Bx0"),
    ("https://scans.example.org/api/v1/", "https://scans.example.org/projects/Bx0"),
    ("http://127.0.0.1:8360/prefix/api/v1", "http://127.0.0.1:8360/prefix/projects/Bx0"),
    ("http://host:1/other", "http://host:1/projects/Bx0"),
])
def test_project_page_follows_the_api_url(api_url, page):
    assert project_page(api_url, "Bx0") == page


@pytest.mark.parametrize("status, code", [(403, "tariff_does_not_allow_api"), (403, "some_code_nobody_documented"),
                                          (402, "storage_quota_exceeded"), (401, "invalid_api_key")])
def test_account_errors_leave_files_failed_never_rejected(profiled_emulator, settings_for, tmp_path, status, code):
    """Any 401/402/403 is about the account: files wait as failed with its one reason (held for
    every file: api/troubles.py), are never rejected, and complete once the account is fixed."""
    emulator = profiled_emulator
    src = tmp_path / "src"
    sources = make_sources(src, {"a.jpg": 3000, "b.las": 200_000})
    emulator.set_account(status, code, endpoints=["put_file"])
    engine = start_engine(settings_for(emulator, chunk_size=64 * 1024))
    try:
        queue_files(engine, "s", {name: src / name for name in sources})

        def all_failed():
            with engine.lock:
                records = list(engine.registry.sessions["s"].files.values())
                return all(r.state == "failed" and r.last_error for r in records) and records
        records = wait_until(all_failed, 30, what="both files to fail on the account error")
        assert len({r.last_error for r in records}) == 1 and f"HTTP {status}" in records[0].last_error, \
            [r.last_error for r in records]
        assert state_counts(engine).get("rejected", 0) == 0
        emulator.clear_account()
        assert wait_idle(engine, timeout=60, poll=0.05)
        assert state_counts(engine) == {COMPLETE: 2}
        with engine.lock:
            upload_id = engine.registry.sessions["s"].upload_id
    finally:
        engine.stop()
    assert_uploaded(emulator, upload_id, sources)


def test_a_file_deleted_before_its_first_put_leaves_no_trace(emulator, settings_for, tmp_path):
    """The worker has marked the file "may be on the server" and waits (here: for its turn under
    a bandwidth limit whose budget is spent) before its first PUT; the file is deleted: nothing
    was sent, so no tombstone holds the session back."""
    src = tmp_path / "src"
    make_sources(src, {"a.jpg": 3000, "b.jpg": 3000})
    engine = Engine(settings_for(emulator))
    engine.gate.set_bwlimit("1k")
    assert engine.gate.wait_turn(1 << 30, lambda: False)  # the next PUT's turn is days away
    engine.start()
    try:
        session = queue_files(engine, "s", {"a.jpg": src / "a.jpg"})
        record = session.files["a.jpg"]
        wait_until(lambda: record.upload_id is not None, 20, what="the worker to mark a.jpg before its PUT")
        with engine.lock:
            engine.registry.remove_file_locked(record)
            assert session.unlinked == [record]  # held back while a PUT may have gone out...
        wait_until(lambda: not session.unlinked, 20, what="the tombstone to go")  # ...until it is sure none did
        engine.gate.set_bwlimit("off")
        queue_files(engine, "s", {"a.jpg": src / "b.jpg"}, project={})
        wait_until(lambda: session.project.state == P_READY, 60, what="the project")
        assert engine.journal.files()[-1]["server_name"] == "a.jpg"
    finally:
        engine.stop()
    assert request_count(emulator, "PUT put_file") == 1
    assert [f["name"] for f in emulator.files()] == ["a.jpg"]


def test_a_scratch_file_renamed_to_its_final_name_uploads_without_the_delay(emulator, settings_for, tmp_path):
    """rsync's way: write .name.XXXXXX, close, rename to name. With a write-back delay of an
    hour, only the rename can have started the upload."""
    src = tmp_path / "src"
    sources = make_sources(src, {"scan.e57": 50_000})
    engine = Engine(settings_for(emulator, writeback_delay=3600.0)).start()
    try:
        with engine.lock:
            session = engine.registry.create_session_locked("s", 0o755)
            record = engine.registry.create_file_locked(session, ".scan.e57.Xa12Bc", 0o644, 0, 0, local_only=True)
            engine.registry.open_for_write_locked(record, rewrite=True)
            spool_path = engine.spool.path(record.id)
        with open(src / "scan.e57", "rb") as f, open(spool_path, "r+b") as out:
            out.write(f.read())
        with engine.lock:
            engine.registry.close_writer_locked(record, 50_000)
            engine.registry.rename_file_locked(record, session, "scan.e57", local_only=False)
        assert wait_idle(engine, timeout=30, poll=0.05)
        assert record.state == COMPLETE
    finally:
        engine.stop()
    assert_uploaded(emulator, None, sources)
