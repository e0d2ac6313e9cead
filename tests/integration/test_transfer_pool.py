"""Uploads' HTTP in worker processes (engine/transfer_pool.py), against the emulator over HTTP."""

from __future__ import annotations

import logging
import os
import signal
import threading

import pytest

from fs360.api.client import ApiClient
from fs360.api.pacing import Pacer
from fs360.api.troubles import Admission, Troubles
from fs360.engine.transfer_pool import TransferJob, TransferProcesses
from fs360.errors import Cancelled, ExtensionNotAllowed, InternalError, TransportError
from tests.harness import assert_uploaded, make_sources, wait_until

CHUNK = 64 * 1024


class CountingPacer(Pacer):
    """The daemon's pacer, counting what the worker processes asked of it."""

    def __init__(self):
        super().__init__({}, enabled=False)
        self.asked: list[str] = []
        self.lock = threading.Lock()

    def acquire_booking(self, endpoint: str):
        with self.lock:
            self.asked.append(endpoint)
        return 0.0, None


@pytest.fixture
def pool_for(settings_for):
    made = []

    def make(emulator, count=2):
        pacer = CountingPacer()
        pool = TransferProcesses(settings_for(emulator), Admission(pacer, Troubles()), count)
        made.append(pool)
        return pool, pacer

    yield make
    for pool in made:
        pool.close()


def upload_id_of(emulator, settings_for) -> str:
    return ApiClient(settings_for(emulator)).open_session().upload_id


def send(pool, upload_id, path, name, start=0, on_progress=None, should_stop=lambda: False):
    fd = os.open(path, os.O_RDONLY)
    try:
        job = TransferJob(upload_id, name, os.path.getsize(path), start, CHUNK)
        return pool.send_file(job, fd, on_progress or (lambda received: None), should_stop).progress
    finally:
        os.close(fd)


def test_files_go_whole_and_in_chunks_paced_by_the_daemon(emulator, settings_for, pool_for, tmp_path):
    sizes = {"big.las": 7 * CHUNK + 5, "exact.jpg": CHUNK, "small.jpg": 100, "empty.jpg": 0}
    sources = make_sources(tmp_path, sizes)
    pool, pacer = pool_for(emulator)
    upload_id = upload_id_of(emulator, settings_for)
    for name in sizes:
        seen = []
        progress = send(pool, upload_id, tmp_path / name, name, on_progress=seen.append)
        assert progress.complete and progress.total == sizes[name]
        # Progress came back after every PUT, growing to the whole file.
        assert seen == sorted(set(seen)) and seen[-1] == sizes[name]
        assert len(seen) == max(1, -(-sizes[name] // CHUNK))
    assert pacer.asked.count("put_file") == 8 + 3  # every PUT was paced in this process
    assert_uploaded(emulator, upload_id, sources)
    assert len(pool.pids()) == 1  # one job at a time: one worker process did them all


def test_a_stop_between_chunks_cancels(emulator, settings_for, pool_for, tmp_path):
    make_sources(tmp_path, {"a.las": 10 * CHUNK})
    pool, _ = pool_for(emulator)
    upload_id = upload_id_of(emulator, settings_for)
    sent = []
    with pytest.raises(Cancelled):
        send(pool, upload_id, tmp_path / "a.las", "a.las", on_progress=sent.append,
             should_stop=lambda: len(sent) >= 3)
    assert sent[-1] == 3 * CHUNK
    # The worker is fine and takes the rest from where the server is.
    progress = send(pool, upload_id, tmp_path / "a.las", "a.las", start=3 * CHUNK)
    assert progress.complete


def test_server_refusals_cross_with_their_fields(emulator, settings_for, pool_for, tmp_path):
    make_sources(tmp_path, {"notes.docx": 10})
    pool, _ = pool_for(emulator)
    with pytest.raises(ExtensionNotAllowed) as info:
        send(pool, upload_id_of(emulator, settings_for), tmp_path / "notes.docx", "notes.docx")
    assert info.value.status == 415 and "jpg" in info.value.fields["allowed"]


def test_a_killed_worker_is_a_transport_error_and_the_next_one_resumes(emulator, settings_for, pool_for,
                                                                       tmp_path):
    sources = make_sources(tmp_path, {"video.mp4": 40 * CHUNK})
    emulator.set_faults([{"endpoint": "put_file", "kind": "latency", "seconds": 0.2}])
    pool, _ = pool_for(emulator, count=1)
    upload_id = upload_id_of(emulator, settings_for)
    received = []

    def kill_after_two(offset):
        received.append(offset)
        if len(received) == 2:
            os.kill(pool.pids()[0], signal.SIGKILL)

    with pytest.raises(TransportError) as info:
        send(pool, upload_id, tmp_path / "video.mp4", "video.mp4", on_progress=kill_after_two)
    assert info.value.gave_up_on_upload  # it may have died mid-PUT: the file's next one waits for it
    emulator.clear_faults()
    client = ApiClient(settings_for(emulator))
    start = client.file_status(upload_id, "video.mp4").received
    assert start >= 2 * CHUNK
    progress = send(pool, upload_id, tmp_path / "video.mp4", "video.mp4", start=start)
    assert progress.complete
    (remote,) = assert_uploaded(emulator, upload_id, sources).values()
    assert remote["overwritten_bytes"] <= CHUNK


def test_a_conversation_the_daemon_broke_off_discards_its_worker(emulator, settings_for, pool_for, tmp_path):
    """A daemon-side callback that raises mid-job: that worker may still be in the job, so it is
    never given another; the next job gets a new one and is not mistaken for the old one."""
    sources = make_sources(tmp_path, {"a.las": 6 * CHUNK, "b.jpg": 100})
    pool, _ = pool_for(emulator, count=1)
    upload_id = upload_id_of(emulator, settings_for)
    seen = []

    def broken(received):
        seen.append(received)
        if len(seen) == 2:
            raise RuntimeError("a callback of the daemon failed")

    with pytest.raises(RuntimeError):
        send(pool, upload_id, tmp_path / "a.las", "a.las", on_progress=broken)
    assert pool.pids() == []  # discarded (killed), not back in the pool mid-conversation
    assert send(pool, upload_id, tmp_path / "b.jpg", "b.jpg").complete
    start = ApiClient(settings_for(emulator)).file_status(upload_id, "a.las").received
    assert send(pool, upload_id, tmp_path / "a.las", "a.las", start=start).complete
    assert_uploaded(emulator, upload_id, sources)


def test_a_bug_in_a_worker_comes_back_as_an_internal_error_with_its_traceback(emulator, settings_for, pool_for,
                                                                              tmp_path, caplog):
    """An error the worker does not know (a bug: here a sha256 that is not a string, which the
    sent-data check trips over) is an internal error, logged in the daemon with its traceback;
    the conversation ended cleanly, so the worker goes on with the next job."""
    make_sources(tmp_path, {"a.jpg": 100, "b.jpg": 100})
    pool, _ = pool_for(emulator, count=1)
    upload_id = upload_id_of(emulator, settings_for)
    fd = os.open(tmp_path / "a.jpg", os.O_RDONLY)
    try:
        with caplog.at_level(logging.ERROR, logger="fs360.engine.transfer_pool"), pytest.raises(InternalError):
            pool.send_file(TransferJob(upload_id, "a.jpg", 100, 0, CHUNK, sha256=12345), fd,
                           lambda received: None, lambda: False)
    finally:
        os.close(fd)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "Traceback" in logged and ("TypeError" in logged or "AttributeError" in logged), logged
    (pid,) = pool.pids()
    assert send(pool, upload_id, tmp_path / "b.jpg", "b.jpg").complete
    assert pool.pids() == [pid]


def test_workers_hold_no_key_and_die_with_the_pool(emulator, settings_for, pool_for, tmp_path):
    make_sources(tmp_path, {"a.jpg": 10})
    pool, _ = pool_for(emulator)
    send(pool, upload_id_of(emulator, settings_for), tmp_path / "a.jpg", "a.jpg")
    (pid,) = pool.pids()
    for part in ("environ", "cmdline"):
        with open(f"/proc/{pid}/{part}", "rb") as f:
            assert emulator.api_key.encode() not in f.read()
    pool.close()
    wait_until(lambda: not os.path.exists(f"/proc/{pid}") or _zombie(pid), 10, what="the worker to end")


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_a_worker_runs_the_daemons_code_without_the_engine(emulator, settings_for, pool_for, tmp_path):
    """Four workers sit next to the daemon: each loads what a transfer needs (requests, ssl), not the
    engine package (journal on sqlite3 ...), and imports fs360 from where the daemon did."""
    import fs360

    make_sources(tmp_path, {"a.jpg": 10})
    pool, _ = pool_for(emulator)
    send(pool, upload_id_of(emulator, settings_for), tmp_path / "a.jpg", "a.jpg")
    (pid,) = pool.pids()
    with open(f"/proc/{pid}/maps") as f:
        libraries = {line.split()[-1].rsplit("/", 1)[-1] for line in f if "/" in line}
    assert any(name.startswith("_ssl") for name in libraries)  # the check below sees extension modules
    assert not any(name.startswith("_sqlite3") for name in libraries), sorted(libraries)
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = f.read().decode().split("\0")
    root = os.path.dirname(os.path.dirname(os.path.abspath(fs360.__file__)))
    assert argv[argv.index("-S") + 1] == os.path.join(root, "fs360", "engine", "upload_worker.py")
    assert argv[argv.index("-S") + 3] == root  # first on its import path
