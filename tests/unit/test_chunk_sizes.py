"""engine/chunk_sizes.py, the adaptive chunk size, and send_file's chunks with it, on a fake
clock: the fake client's PUTs take the time a link would give them."""

from __future__ import annotations

import functools
import os

import pytest

from fs360.api.client import FileProgress
from fs360.api.transport import BODY_PIECE
from fs360.engine.chunk_sizes import (FAST_PUT, LIMIT_KEPT_SECONDS, MIN_BODY, PROXY_LIMIT_KEY, SLOW_PUT,
                                     ChunkSizes)
from fs360.engine.journal import Journal
from fs360.engine.spool import read_exactly
from fs360.engine.uploader import send_file
from fs360.errors import ApiError, BodyTooLarge, FileTooLarge, ServerError

KiB = 1024
MiB = 1024 * KiB


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def put_taking(chunks, clock: FakeClock, nbytes: int, seconds: float) -> None:
    chunks.put_starts()
    clock.now += seconds
    chunks.put_done(nbytes)


def test_chunks_double_while_puts_are_fast_up_to_the_maximum():
    clock = FakeClock()
    chunks = ChunkSizes(8 * MiB, 64 * MiB, clock).for_file()
    seen = []
    for _ in range(6):
        seen.append(chunks.size)
        put_taking(chunks, clock, chunks.size, FAST_PUT / 2)
    assert seen == [8 * MiB, 16 * MiB, 32 * MiB, 64 * MiB, 64 * MiB, 64 * MiB]


def test_a_put_neither_fast_nor_slow_keeps_the_size_and_a_slow_one_halves_it_down_to_the_start():
    clock = FakeClock()
    chunks = ChunkSizes(8 * MiB, 64 * MiB, clock).for_file()
    put_taking(chunks, clock, 8 * MiB, FAST_PUT / 2)
    put_taking(chunks, clock, 16 * MiB, FAST_PUT / 2)
    assert chunks.size == 32 * MiB
    put_taking(chunks, clock, 32 * MiB, (FAST_PUT + SLOW_PUT) / 2)
    assert chunks.size == 32 * MiB
    put_taking(chunks, clock, 32 * MiB, SLOW_PUT + 1)
    assert chunks.size == 16 * MiB
    put_taking(chunks, clock, 16 * MiB, SLOW_PUT + 1)
    put_taking(chunks, clock, 8 * MiB, SLOW_PUT + 1)
    assert chunks.size == 8 * MiB


def test_a_short_put_at_the_files_end_says_nothing_and_each_attempt_starts_again():
    clock = FakeClock()
    sizes = ChunkSizes(8 * MiB, 64 * MiB, clock)
    chunks = sizes.for_file()
    put_taking(chunks, clock, 8 * MiB, FAST_PUT / 2)
    put_taking(chunks, clock, MiB, FAST_PUT / 100)  # shorter than its size (16 MiB)
    assert chunks.size == 16 * MiB
    assert sizes.for_file().size == 8 * MiB


def test_a_maximum_below_the_start_leaves_the_start():
    chunks = ChunkSizes(16 * MiB, 8 * MiB, FakeClock()).for_file()
    assert chunks.size == chunks.limit == 16 * MiB


def test_a_proxys_413_halves_the_mounts_limit_or_falls_back_to_the_largest_body_accepted():
    clock = FakeClock()
    sizes = ChunkSizes(8 * MiB, 64 * MiB, clock)
    chunks = sizes.for_file()
    for _ in range(3):
        put_taking(chunks, clock, chunks.size, FAST_PUT / 2)
    assert chunks.size == 64 * MiB
    assert chunks.refused(64 * MiB)  # accepted 32 MiB: half of 64
    assert sizes.limit == chunks.size == 32 * MiB
    assert chunks.refused(32 * MiB)  # the proxy changed its mind: accepted 32 before, not now
    assert sizes.limit == 16 * MiB

    sizes = ChunkSizes(8 * MiB, 64 * MiB, clock)
    chunks = sizes.for_file()
    put_taking(chunks, clock, 8 * MiB, FAST_PUT / 2)
    put_taking(chunks, clock, 16 * MiB, FAST_PUT / 2)
    put_taking(chunks, clock, 24 * MiB, FAST_PUT / 2)  # a shorter one (the file's end) accepted
    assert chunks.refused(32 * MiB)
    assert sizes.limit == 24 * MiB  # the largest accepted below it, more than half of it
    # Every file of the mount keeps under it, growth included; a smaller start stays as it is.
    other = sizes.for_file()
    put_taking(other, clock, 8 * MiB, FAST_PUT / 2)
    put_taking(other, clock, 16 * MiB, FAST_PUT / 2)
    assert other.size == 24 * MiB and other.smallest == 8 * MiB


def test_a_413_at_the_smallest_body_is_not_about_the_size():
    """A proxy that refuses every body (an outage) halves the PUTs down to the smallest, where
    the refusal is no longer about the size: the guesses on the way down are dropped, and the
    last confirmed limit (none here) holds again, in memory and in the journal."""
    sizes = ChunkSizes(MiB, 64 * MiB, FakeClock())
    chunks = sizes.for_file()
    while chunks.size > MIN_BODY:
        assert chunks.refused(chunks.size)
    assert sizes.limit == MIN_BODY and chunks.size == chunks.smallest == MIN_BODY
    assert not chunks.refused(MIN_BODY)
    assert sizes.learned_limit is None and sizes.limit == 64 * MiB


def test_an_outage_after_a_confirmed_limit_leaves_that_limit(tmp_path):
    journal = Journal(tmp_path / "journal.db")
    sizes = ChunkSizes(8 * MiB, 64 * MiB, FakeClock())
    sizes.remember_in(journal, "https://a.example/api/v1")
    assert sizes.for_file().refused(8 * MiB)
    sizes.accepted(4 * MiB)  # a PUT of the limit's size confirms it: journaled from then on
    sizes.accepted(4 * MiB)  # a PUT at the limit: confirmed, journaled
    while sizes.limit > MIN_BODY:
        assert sizes.refused(sizes.limit)
    assert not sizes.refused(MIN_BODY)
    assert sizes.limit == 4 * MiB
    again = ChunkSizes(8 * MiB, 64 * MiB, FakeClock())
    again.remember_in(journal, "https://a.example/api/v1")
    assert again.learned_limit == 4 * MiB  # the guesses below it were never journaled


def test_the_limit_a_proxy_taught_is_journaled_for_its_server(tmp_path):
    journal = Journal(tmp_path / "journal.db")
    sizes = ChunkSizes(8 * MiB, 64 * MiB, FakeClock())
    sizes.remember_in(journal, "https://a.example/api/v1")
    assert sizes.learned_limit is None
    assert sizes.for_file().refused(8 * MiB)
    sizes.accepted(4 * MiB)  # a PUT of the limit's size confirms it: journaled from then on
    # The next mount on this journal starts within it, for the same server only.
    again = ChunkSizes(8 * MiB, 64 * MiB, FakeClock())
    again.remember_in(journal, "https://a.example/api/v1")
    assert again.learned_limit == again.limit == again.for_file().size == 4 * MiB
    elsewhere = ChunkSizes(8 * MiB, 64 * MiB, FakeClock())
    elsewhere.remember_in(journal, "https://b.example/api/v1")
    assert elsewhere.learned_limit is None and elsewhere.limit == 64 * MiB
    # A maximum set below it since is the largest body.
    lower = ChunkSizes(MiB, 2 * MiB, FakeClock())
    lower.remember_in(journal, "https://a.example/api/v1")
    assert lower.limit == 2 * MiB and lower.learned_limit == 4 * MiB


class FakeLink:
    """An ApiClient's put/file_status over a link of `rate` bytes/s with a round trip `rtt`: each
    PUT moves the fake clock on by its time. Keeps the bytes it took; bodies over `proxy_limit`
    get a proxy's 413 (an HTML page) before anything is stored."""

    def __init__(self, clock: FakeClock, rate: float, rtt: float, proxy_limit: int = 0):
        self.clock, self.rate, self.rtt, self.proxy_limit = clock, rate, rtt, proxy_limit
        self.data = bytearray()
        self.puts: list[tuple[int, int, bool]] = []  # (start, length, refused)
        self.largest_streamed_piece = 0

    def put(self, upload_id, name, data, start, total, whole=False, pace=None) -> FileProgress:
        refused = bool(self.proxy_limit) and len(data) > self.proxy_limit
        self.puts.append((start, len(data), refused))
        body = bytearray(data) if isinstance(data, memoryview) else bytearray()
        if not isinstance(data, memoryview):  # streamed: read a piece at a time as it is sent
            for piece in data:
                self.largest_streamed_piece = max(self.largest_streamed_piece, len(piece))
                body += piece
        assert len(body) == len(data)
        self.clock.now += self.rtt + len(body) / self.rate
        if refused:
            raise BodyTooLarge("put_file: HTTP 413 without a JSON body", status=413)
        assert start <= len(self.data) and (start == 0 or not whole)
        self.data[start:start + len(body)] = body
        return FileProgress(len(self.data), total, len(self.data) == total)

    def file_status(self, upload_id, name) -> FileProgress:
        raise AssertionError("not asked: every PUT is answered")


@pytest.fixture
def spool(tmp_path):
    def make(size: int):
        path = tmp_path / "spool"
        path.write_bytes(os.urandom(size))
        fd = os.open(path, os.O_RDONLY)
        return fd, path.read_bytes()
    opened = []
    yield lambda size: opened.append(make(size)) or opened[-1]
    for fd, _ in opened:
        os.close(fd)


def send(link: FakeLink, fd: int, size: int, sizes: ChunkSizes, buffer_size: int):
    return send_file(link, "u1", "scan.e57", functools.partial(read_exactly, fd), size, 0, bytearray(buffer_size),
                     sizes, lambda received, acknowledged: None, lambda n: False)


def test_a_large_file_goes_in_growing_chunks_streamed_through_a_small_buffer(spool):
    """A 200 Mbit/s link with a 40 ms round trip: the chunks double to the maximum, each one is
    read a piece at a time (no buffer of its size), and the completing one fits the buffer."""
    clock = FakeClock()
    fd, data = spool(100 * MiB + 12345)
    link = FakeLink(clock, rate=25e6, rtt=0.04)
    sent = send(link, fd, len(data), ChunkSizes(4 * MiB, 32 * MiB, clock), buffer_size=4 * MiB)
    assert bytes(link.data) == data and sent.progress.complete
    lengths = [n for _, n, _ in link.puts]
    assert lengths[:4] == [4 * MiB, 8 * MiB, 16 * MiB, 32 * MiB]
    assert len(lengths) < len(data) // (4 * MiB)  # fewer PUTs (round trips) than fixed chunks
    assert lengths[-1] <= 4 * MiB and sum(lengths) == len(data)
    assert max(lengths[:-1]) == 32 * MiB and 0 < link.largest_streamed_piece <= BODY_PIECE


def test_a_proxys_413_sends_the_same_bytes_again_in_smaller_chunks(spool):
    clock = FakeClock()
    fd, data = spool(40 * MiB + 7)
    link = FakeLink(clock, rate=25e6, rtt=0.04, proxy_limit=10 * MiB)
    sizes = ChunkSizes(4 * MiB, 64 * MiB, clock)
    send(link, fd, len(data), sizes, buffer_size=4 * MiB)
    assert bytes(link.data) == data
    assert [(n, refused) for _, n, refused in link.puts if refused] == [(16 * MiB, True)]
    assert sizes.limit == 8 * MiB  # half of 16 MiB: the largest accepted (8) is no more
    assert max(n for _, n, refused in link.puts if not refused) == 8 * MiB


@pytest.mark.parametrize("error", [FileTooLarge("file_too_large", status=413, code="file_too_large"),
                                   ApiError("refused", status=400, code="invalid_content_range"),
                                   ServerError("put_file: HTTP 502 without a JSON body", status=502)])
def test_the_apis_own_refusals_are_not_about_the_chunk(spool, error):
    clock = FakeClock()
    fd, data = spool(3 * MiB)

    class Refusing(FakeLink):
        def put(self, *args, **kwargs):
            raise error
    with pytest.raises(type(error)):
        send(Refusing(clock, 25e6, 0.04), fd, len(data), ChunkSizes(MiB, 64 * MiB, clock), buffer_size=MiB)



def test_a_learned_limit_holds_for_a_day_then_puts_may_grow_past_it_again(tmp_path):
    """The proxy may have been set up anew, or the laptop left the network whose proxy taught it."""
    wall = FakeClock()
    journal = Journal(tmp_path / "journal.db")
    sizes = ChunkSizes(8 * MiB, 64 * MiB, FakeClock(), wall_clock=wall)
    sizes.remember_in(journal, "https://a.example/api/v1")
    assert sizes.for_file().refused(8 * MiB)
    sizes.accepted(4 * MiB)  # a PUT of the limit's size confirms it: journaled from then on
    wall.now += LIMIT_KEPT_SECONDS - 1
    assert sizes.limit == 4 * MiB
    # A remount within the day starts within it; one after the day does not.
    again = ChunkSizes(8 * MiB, 64 * MiB, FakeClock(), wall_clock=wall)
    again.remember_in(journal, "https://a.example/api/v1")
    assert again.learned_limit == 4 * MiB
    wall.now += 1
    assert sizes.learned_limit is None and sizes.limit == 64 * MiB
    later = ChunkSizes(8 * MiB, 64 * MiB, FakeClock(), wall_clock=wall)
    later.remember_in(journal, "https://a.example/api/v1")
    assert later.learned_limit is None and later.limit == 64 * MiB
    # A proxy that still refuses teaches it again, from the body it refused (not the old limit).
    assert sizes.for_file().refused(32 * MiB)
    assert sizes.limit == 16 * MiB


def test_a_limit_kept_without_its_time_expires_a_day_after_the_first_mount_that_reads_it(tmp_path):
    """A journal of an earlier build kept the limit with no time: it counts from the first mount
    that reads it, not from every mount."""
    wall = FakeClock()
    journal = Journal(tmp_path / "journal.db")
    journal.set_meta(PROXY_LIMIT_KEY, {"api_url": "https://a.example/api/v1", "limit": 4 * MiB})
    first = ChunkSizes(8 * MiB, 64 * MiB, FakeClock(), wall_clock=wall)
    first.remember_in(journal, "https://a.example/api/v1")
    assert first.learned_limit == 4 * MiB
    wall.now += LIMIT_KEPT_SECONDS
    later = ChunkSizes(8 * MiB, 64 * MiB, FakeClock(), wall_clock=wall)
    later.remember_in(journal, "https://a.example/api/v1")
    assert later.learned_limit is None and later.limit == 64 * MiB
