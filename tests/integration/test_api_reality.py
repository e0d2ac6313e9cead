"""What the vendor's own client shows of the real service (api.md Part C, issue 20): http://
only on loopback, projects the server deleted no longer polled, polling slows after a quarter
of an hour, a lost POST /projects answer found through GET /projects (never a second POST
for a project that exists), each unfinished session looked at (kept alive, or found lost),
whole numbers as JSON floats, a User-Agent of fs360's own, transport errors said as they are."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

from fs360 import __version__
from fs360 import errors as E
from fs360.api.client import ApiClient
from fs360.config import Settings
from fs360.engine.engine import Engine
from fs360.engine.records import COMPLETE, P_CREATED, P_FAILED
from tests.harness import assert_uploaded, make_sources, request_count, wait_until
from tests.integration.engine_runner import queue_files
from tests.integration.test_api_hostile_server import RawServer, answer, canned, make_client
from tests.engine_helpers import state_counts, wait_idle

pytestmark = pytest.mark.timeout(180)


def api(emulator) -> ApiClient:
    return ApiClient(Settings(api_url=emulator.base_url, api_key=emulator.api_key, rate_limits_enabled=False))


def project_of(engine: Engine, session: str):
    with engine.lock:
        return engine.registry.sessions[session].project


def emulator_project(emulator, name: str) -> dict:
    return next(p for p in emulator.projects() if p["name"] == name)


def created(engine: Engine, session: str) -> str:
    """Waits until the session's project exists; its name."""
    project = wait_until(lambda: (p := project_of(engine, session)) and p.state != "waiting" and p,
                         60, 0.05, what=f"the project of {session}")
    assert project.name, project
    return project.name


# --- the client --------------------------------------------------------------------------------


def test_http_is_refused_for_any_host_but_loopback():
    for url in ("http://360-for-you.com/api/v1", "http://10.1.2.3/api/v1", "http://[2001:db8::1]/api/v1"):
        with pytest.raises(E.SettingError, match="clear text"):
            ApiClient(Settings(api_url=url, api_key="sk_x"))
    for url in ("http://127.0.0.1:1/api/v1", "http://127.8.9.10:1/api/v1", "http://localhost:1/api/v1",
                "http://[::1]:1/api/v1", "https://360-for-you.com/api/v1"):
        ApiClient(Settings(api_url=url, api_key="sk_x")).close()
    ApiClient(Settings(api_url="http://10.1.2.3/api/v1", api_key="sk_x", insecure_http=True)).close()


def test_whole_floats_are_numbers_and_the_user_agent_is_fs360s():
    progress = answer(200, b'{"received": 1048576.0, "total": 2097152.0, "complete": false}')
    fraction = answer(200, b'{"received": 1.5, "total": 2.0, "complete": false}')
    polled = answer(200, b'{"name": "Bx0", "status": 40.0}')
    with RawServer(canned(progress, fraction, polled)) as server:
        client = make_client(server)
        got = client.file_status("Bx0", "a.e57")
        assert (got.received, got.total, got.complete) == (1048576, 2097152, False)
        assert type(got.received) is int
        with pytest.raises(E.MalformedResponse):
            client.file_status("Bx0", "a.e57")
        assert client.project_status("Bx0").status == 40
        client.close()
    assert {r.headers.get("user-agent") for r in server.requests} == {f"fs360/{__version__}"}


def test_the_server_closing_the_connection_is_said_so(emulator):
    emulator.set_faults([{"endpoint": "get_project", "kind": "drop_response", "count": 1}])
    with pytest.raises(E.TransportError) as caught:
        api(emulator).project_status("Bx0")
    assert "the server closed the connection without an answer" in str(caught.value)


@pytest.mark.skipif(os.getuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare for a network namespace of the test's own")
def test_a_dropped_network_is_said_so_not_blamed_on_the_server():
    """In a network namespace of its own (no route anywhere: nothing leaves the machine), the
    network is down as it is when a cable is pulled."""
    script = textwrap.dedent("""
        from fs360.api.client import ApiClient
        from fs360.config import Settings
        from fs360.errors import TransportError
        try:
            ApiClient(Settings(api_url="https://10.255.0.1/api/v1", api_key="sk_x", connect_timeout=5)).file_status("B", "a")
        except TransportError as exc:
            print(exc)
    """)
    result = subprocess.run(["unshare", "--net", sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert result.stdout.strip() == "cannot reach 10.255.0.1: the network dropped (network unreachable)", \
        result.stdout + result.stderr


# --- projects ----------------------------------------------------------------------------------


def project_through_a_fault(emulator, settings, tmp_path, kind: str) -> tuple[str, str, dict]:
    """Session "office" with one file and .create, its first POST /projects met by fault `kind`:
    (the project's name, the session's upload_id, the sources' sha256 by name)."""
    sources = make_sources(tmp_path / "src", {"a.jpg": 5000})
    engine = Engine(settings).start()
    try:
        emulator.set_faults([{"endpoint": "create_project", "kind": kind, "count": 1}])
        queue_files(engine, "office", {"a.jpg": tmp_path / "src" / "a.jpg"}, project={})
        return created(engine, "office"), engine.registry.sessions["office"].upload_id, sources
    finally:
        engine.stop()


def test_a_lost_post_answer_never_makes_a_second_post(profiled_emulator, settings_for, tmp_path):
    """The POST is done and its answer lost. The vendor profile lists projects (GET /projects) and
    names this one apart from its session (a collision): it is found by its title. The default
    profile has no list: the project named after the session is asked for."""
    emulator = profiled_emulator
    vendor = emulator.profile == "vendor"
    emulator.set_flags(project_name_collision=vendor)
    name, upload_id, sources = project_through_a_fault(emulator, settings_for(emulator), tmp_path, "drop_response")
    assert request_count(emulator, "POST create_project") == 1
    made = [p for p in emulator.projects() if p["upload_id"] == upload_id]
    assert len(made) == 1 and made[0]["create_count"] == 1 and made[0]["name"] == name
    assert (name != upload_id) == vendor
    assert_uploaded(emulator, upload_id, sources)


def test_a_project_of_the_same_title_made_before_is_not_taken_for_ours(profiled_emulator, settings_for, tmp_path):
    """The POST never reached the server (reset before any work) while an older project has the
    session's title: fs360 must POST again, not adopt the older one."""
    emulator = profiled_emulator
    older = api(emulator).create_project({"download_link": "https://example.org/old.zip", "title": "office"})
    name, upload_id, sources = project_through_a_fault(emulator, settings_for(emulator), tmp_path, "cut_body")
    assert name != older.name
    assert [p["name"] for p in emulator.projects() if p["upload_id"] == upload_id] == [name]
    assert_uploaded(emulator, upload_id, sources)


class Polling:
    """An engine polling quickly against `emulator`, with a project to watch and, to show the
    keeper goes on polling, another project it polls five times on request."""

    def __init__(self, emulator, settings_for, tmp_path):
        self.emulator = emulator
        self.sources = tmp_path / "src"
        make_sources(self.sources, {"a.jpg": 3000, "b.jpg": 3000})
        self.engine = Engine(settings_for(emulator, project_poll_interval=0.05)).start()

    def project(self, session: str, source: str) -> str:
        queue_files(self.engine, session, {source: self.sources / source}, project={})
        return created(self.engine, session)

    def polls(self, name: str) -> int:
        return emulator_project(self.emulator, name)["polls"]

    def another_polled_five_times(self) -> None:
        other = self.project("other", "b.jpg")
        wait_until(lambda: self.polls(other) >= 5, 30, 0.05, what="five polls of another project")


@pytest.fixture
def polling(settings_for, tmp_path):
    made = []

    def make(emulator) -> Polling:
        made.append(Polling(emulator, settings_for, tmp_path))
        return made[-1]
    yield make
    for each in made:
        each.engine.stop()


def test_a_project_the_server_deleted_is_no_longer_polled(emulator_factory, polling):
    """Vendor profile: deleting the session discards its unfinished project (`deleted: true`)."""
    emulator = emulator_factory("--profile", "vendor", "--no-rate-limits", "--processing-seconds", "600")
    run = polling(emulator)
    first = run.project("gone", "a.jpg")
    wait_until(lambda: run.polls(first) >= 1, 30, 0.05, what="a first poll")
    api(emulator).delete_session(run.engine.registry.sessions["gone"].upload_id)
    wait_until(lambda: project_of(run.engine, "gone").state == P_FAILED, 30, 0.05, what="the deletion seen")
    assert "deleted" in project_of(run.engine, "gone").last_error
    polls = run.polls(first)
    run.another_polled_five_times()
    assert run.polls(first) == polls


def test_a_project_the_server_no_longer_has_is_no_longer_polled(emulator_factory, polling):
    """A 404 on the poll (the server's data went: here the emulator's, reset) ends the polling."""
    emulator = emulator_factory("--no-rate-limits", "--processing-seconds", "600")
    run = polling(emulator)
    run.project("gone", "a.jpg")
    emulator.reset(data=True)
    wait_until(lambda: project_of(run.engine, "gone").state == P_FAILED, 30, 0.05, what="the 404 seen")
    assert "HTTP 404" in project_of(run.engine, "gone").last_error
    run.another_polled_five_times()
    assert request_count(emulator, "GET get_project 404") == 1


def test_polling_slows_to_minutes_after_a_quarter_of_an_hour(emulator_factory, polling):
    emulator = emulator_factory("--no-rate-limits", "--processing-seconds", "3600")
    run = polling(emulator)
    first = run.project("old", "a.jpg")
    wait_until(lambda: run.polls(first) >= 2, 30, 0.05, what="fast polls")
    with run.engine.lock:  # its first poll, a quarter of an hour ago
        run.engine.projects._polling_since[run.engine.registry.sessions["old"].id] -= 15 * 60
    wait_until(lambda: project_of(run.engine, "old").next_attempt > time.time() + 60, 30, 0.05,
               what="a slow poll: the next one minutes away")
    polls = run.polls(first)
    run.another_polled_five_times()
    assert run.polls(first) == polls
    assert project_of(run.engine, "old").state == P_CREATED


# --- sessions ----------------------------------------------------------------------------------


def test_an_unfinished_session_is_looked_at_on_mount_and_kept_alive(emulator_factory, settings_for, tmp_path):
    """Vendor profile: sessions expire after a spell of idleness; the look at mount restarts it."""
    emulator = emulator_factory("--profile", "vendor", "--no-rate-limits")
    make_sources(tmp_path / "src", {"a.jpg": 3000})
    settings = settings_for(emulator)
    engine = Engine(settings).start()
    queue_files(engine, "idle", {"a.jpg": tmp_path / "src" / "a.jpg"})
    assert wait_idle(engine, timeout=60, poll=0.05)
    upload_id = engine.registry.sessions["idle"].upload_id
    engine.stop()
    expires = next(s for s in emulator.sessions() if s["upload_id"] == upload_id)["expires_at"]
    looked_at = request_count(emulator, "GET get_session")
    again = Engine(settings).start()
    try:
        wait_until(lambda: request_count(emulator, "GET get_session 200") > looked_at, 30, 0.05,
                   what="the look at mount")
        assert next(s for s in emulator.sessions() if s["upload_id"] == upload_id)["expires_at"] > expires
        assert again.registry.sessions["idle"].upload_id == upload_id
    finally:
        again.stop()


def test_a_session_the_server_lost_is_found_at_mount_not_at_create(profiled_emulator, settings_for, tmp_path):
    """Its files go again from the spool into a new session, with no .create written."""
    emulator = profiled_emulator
    sources = make_sources(tmp_path / "src", {"a.jpg": 3000, "b.las": 70_000})
    settings = settings_for(emulator)
    engine = Engine(settings).start()
    queue_files(engine, "lost", {name: tmp_path / "src" / name for name in sources})
    assert wait_idle(engine, timeout=60, poll=0.05)
    upload_id = engine.registry.sessions["lost"].upload_id
    engine.stop()
    emulator.expire(upload_id)
    again = Engine(settings).start()
    try:
        wait_until(lambda: again.registry.sessions["lost"].upload_id not in (None, upload_id), 30, 0.05,
                   what="a new session")
        assert wait_idle(again, timeout=60, poll=0.05)
        assert state_counts(again) == {COMPLETE: 2}
        assert project_of(again, "lost") is None
        new_id = again.registry.sessions["lost"].upload_id
    finally:
        again.stop()
    assert_uploaded(emulator, new_id, sources)
