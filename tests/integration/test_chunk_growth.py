"""The adaptive chunk size against the emulator (engine/chunk_sizes.py): a large file goes up in
growing chunks, and a proxy's 413 (an HTML page for bodies over its limit) shrinks them for the
whole mount; the server holds the right bytes either way."""

from __future__ import annotations

import pytest

from fs360.engine import chunk_sizes
from fs360.engine.engine import Engine
from fs360.engine.records import COMPLETE
from fs360.fs.status import RenderedStatus
from tests.engine_helpers import state_counts, wait_idle
from tests.harness import assert_uploaded, make_sources, request_count
from tests.integration.engine_runner import queue_files

KiB = 1024
MiB = 1024 * KiB
START, MAXIMUM = 256 * KiB, 4 * MiB


@pytest.fixture(autouse=True)
def every_put_is_fast(monkeypatch):
    """Growth follows each PUT's time; on a loaded test machine a loopback PUT may take long:
    here every PUT counts as fast, so the sizes do not depend on the machine's load."""
    monkeypatch.setattr(chunk_sizes, "FAST_PUT", 3600.0)


def upload(emulator, settings_for, files: dict, start: int = START, refusals: list | None = None
           ) -> list[tuple[str, int]]:
    """Sends `files` (name -> path) through an engine with one worker, one after the other;
    the (name, bytes) of each chunk the server acknowledged, in order. A PUT refused (413) tells
    progress the offset it had, as refused: its name goes to `refusals`. Each call is a mount of
    its own on the same cache (its journal)."""
    engine = Engine(settings_for(emulator, chunk_size=start, max_chunk_size=MAXIMUM, workers=1))
    acknowledged, held, no_moves, refused = [], {}, [], []

    def listen(event, **details):  # on the listeners' thread: what it raises is only logged
        name = details["file"].name if "file" in details else None
        if event == "chunk_refused":
            refused.append(name)
        elif event == "chunk_acknowledged":
            if details["received"] == held.get(name, 0):
                no_moves.append(name)  # acknowledged, yet nothing moved
                return
            acknowledged.append((name, details["received"] - held.get(name, 0)))
            held[name] = details["received"]
    engine.listeners.add(listen)
    engine.start()
    try:
        for name, path in files.items():
            queue_files(engine, "s", {name: path})
            assert wait_idle(engine, timeout=120, poll=0.05)
        assert state_counts(engine) == {COMPLETE: len(engine.registry.files_locked())}
    finally:
        engine.stop()  # delivers the last events too
    assert not no_moves, f"a chunk was acknowledged without moving: {no_moves}"
    assert refusals is not None or not refused, f"a PUT was refused: {refused}"
    if refusals is not None:
        refusals.extend(refused)
    return acknowledged


def test_a_large_file_goes_up_in_growing_chunks(emulator, settings_for, tmp_path):
    size = 24 * MiB + 5
    sources = make_sources(tmp_path / "src", {"scan.e57": size})
    chunks = [n for _, n in upload(emulator, settings_for, {"scan.e57": tmp_path / "src" / "scan.e57"})]
    assert chunks[:5] == [START, 2 * START, 4 * START, 8 * START, MAXIMUM]
    assert max(chunks) == MAXIMUM and chunks[-1] <= START and sum(chunks) == size
    (remote,) = assert_uploaded(emulator, None, sources).values()
    assert remote["put_count"] == len(chunks) < size // START // 4  # 96 PUTs at the fixed size


def test_a_proxys_413_shrinks_the_chunks_of_the_whole_mount(emulator, settings_for, tmp_path):
    """Bodies over 1 MiB get nginx's 413 page: the first file's 2 MiB PUT is refused and sent
    again at once in 1 MiB chunks; the second file never tries more than that."""
    emulator.set_faults([{"endpoint": "put_file", "kind": "html_error", "status": 413, "min_body": MiB + 1}])
    names = {"a.e57": 12 * MiB + 3, "b.e57": 6 * MiB}
    sources = make_sources(tmp_path / "src", names)
    refusals = []
    chunks = upload(emulator, settings_for, {name: tmp_path / "src" / name for name in names}, refusals=refusals)
    assert request_count(emulator, "PUT put_file 413") == 1
    # The refused body's pieces are not on the server: `sent` (status) goes back to its offset.
    assert refusals == ["a.e57"]
    assert [n for name, n in chunks if name == "a.e57"][:4] == [START, 2 * START, 4 * START, MiB]
    assert max(n for _, n in chunks) == MiB
    assert [n for name, n in chunks if name == "b.e57"][:3] == [START, 2 * START, 4 * START]
    assert_uploaded(emulator, None, sources)
    # The limit is journaled: a remount that would start above it starts at it, and no PUT is
    # refused again.
    sources |= make_sources(tmp_path / "src", {"c.e57": 3 * MiB})
    chunks = upload(emulator, settings_for, {"c.e57": tmp_path / "src" / "c.e57"}, start=2 * MiB)
    assert request_count(emulator, "PUT put_file 413") == 1
    assert [n for _, n in chunks] == [MiB, MiB, MiB]
    assert_uploaded(emulator, None, sources)
    engine = Engine(settings_for(emulator))
    try:
        assert RenderedStatus(engine).mount_snapshot()["proxy_body_limit"] == MiB  # fs360 status --json
    finally:
        engine.stop()


def test_a_proxy_that_answers_413_early_and_resets_still_teaches_its_limit(emulator, settings_for, tmp_path):
    """A proxy may answer from the Content-Length alone and reset the connection while the body
    is still coming (16 MiB: more than the sockets hold, so the client is mid-body): the answer
    is in the client's socket before the reset, and is read. Each refusal halves the body."""
    emulator.set_faults([{"endpoint": "put_file", "kind": "html_error", "status": 413, "min_body": MiB + 1,
                          "early": True}])
    names = {"a.e57": 40 * MiB + 3}
    sources = make_sources(tmp_path / "src", names)
    refusals = []
    chunks = upload(emulator, settings_for, {name: tmp_path / "src" / name for name in names}, start=16 * MiB,
                    refusals=refusals)
    assert request_count(emulator, "PUT put_file 413") == 4 and refusals == ["a.e57"] * 4  # 16, 8, 4, 2 MiB
    assert max(n for _, n in chunks) == MiB
    assert_uploaded(emulator, None, sources)
