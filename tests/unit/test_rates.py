"""Rates from progress events (fs/rates.py), on a clock the test holds."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from fs360.fs.rates import HISTORY_BUCKET, RateBook, RateWindow, eta_seconds

MiB = 1024 * 1024


def chunks(window: RateWindow, start: float, interval: float, size: int, count: int) -> float:
    """`count` chunks of `size` bytes acknowledged every `interval` seconds from `start`."""
    for index in range(count):
        window.add(start + index * interval, size)
    return start + (count - 1) * interval


def test_a_limited_upload_shows_the_limit_not_a_chunk_over_the_time_since_it_ended():
    """8 MiB chunks at 2 MiB/s: one every 4 s. The old meter showed 5 MiB/s and more."""
    window = RateWindow()
    last = chunks(window, 100.0, 4.0, 8 * MiB, 12)
    for now in (last, last + 0.5, last + 3.9):
        assert window.rate(now) == pytest.approx(2 * MiB, rel=0.01)


def test_the_first_chunk_is_left_out_until_a_window_of_history_exists():
    window = RateWindow()
    window.add(10.0, 8 * MiB)  # sent over a time nobody measured
    assert window.rate(10.0) is None
    window.add(14.0, 8 * MiB)
    assert window.rate(14.0) == pytest.approx(2 * MiB)
    window.add(18.0, 8 * MiB)
    assert window.rate(18.5) == pytest.approx(2 * MiB)


def test_rare_events_widen_the_window_to_a_few_intervals():
    """8 MiB at 500 KiB/s: a chunk every 16.4 s, rarer than the window allows."""
    window = RateWindow()
    interval = 8 * MiB / (500 * 1024)
    last = chunks(window, 0.0, interval, 8 * MiB, 8)
    assert window.rate(last + 1) == pytest.approx(500 * 1024, rel=0.01)


def test_irregular_events_are_averaged_with_the_straddling_chunk_shared():
    window = RateWindow()
    times = [0.0, 3.0, 7.0, 9.0, 14.0, 18.0, 21.0, 26.0, 29.0, 34.0]
    for t in times:
        window.add(t, MiB)
    # Over (14, 34]: five whole chunks after 14; nothing straddles a window that starts on an event.
    assert window.rate(34.0) == pytest.approx(5 * MiB / 20)


def test_a_stalled_upload_falls_instead_of_keeping_its_last_rate():
    window = RateWindow()
    last = chunks(window, 0.0, 1.0, MiB, 30)
    assert window.rate(last) == pytest.approx(MiB)
    assert window.rate(last + 10) < 0.6 * MiB
    assert window.rate(last + 700) is None  # long gone


def test_pieces_sent_make_the_rates_and_a_finished_file_has_none():
    book = RateBook(clock=lambda: clock[0], wall=lambda: 1000.0 + clock[0])
    clock = [0.0]
    record = SimpleNamespace(id=1, session_id=7, server_received=0, size=100 * MiB)
    book.on_event("file_uploading", at=0.0, file=record)
    for piece in range(1, 41):  # 256 KiB pieces, 4 a second: within chunks, not once per chunk
        clock[0] = piece / 4
        book.on_event("bytes_sent", at=clock[0], file=record, nbytes=MiB // 4)
    assert book.file_rate(1) == pytest.approx(MiB)
    assert book.session_rate(7) == pytest.approx(MiB) and book.mount_rate() == pytest.approx(MiB)
    book.on_event("chunk_acknowledged", at=10.0, file=record, received=8 * MiB)
    assert book.counters() == (10 * MiB, {"file_uploading": 1, "bytes_sent": 40, "chunk_acknowledged": 1})
    book.on_event("file_complete", at=12.0, file=record)
    assert book.file_rate(1) is None  # a finished file has no rate
    points = book.history_points()
    assert len(points) == 3600 / HISTORY_BUCKET and sum(rate for _, rate in points) * HISTORY_BUCKET == 10 * MiB


def test_progress_moves_with_the_pieces_and_goes_back_to_the_servers_word_after_a_failure():
    book = RateBook(clock=lambda: 0.0, wall=lambda: 0.0)
    record = SimpleNamespace(id=1, session_id=7, server_received=16 * MiB, size=100 * MiB)
    book.on_event("file_uploading", at=0.0, file=record)
    assert book.gone_out(1) is None  # nothing of this attempt went out yet: the server's word
    book.on_event("bytes_sent", at=1.0, file=record, nbytes=MiB)  # goes on from what the server held
    book.on_event("bytes_sent", at=2.0, file=record, nbytes=MiB)
    assert book.gone_out(1) == 18 * MiB
    book.on_event("chunk_acknowledged", at=3.0, file=record, received=24 * MiB)
    assert book.gone_out(1) == 24 * MiB
    book.on_event("bytes_sent", at=4.0, file=record, nbytes=MiB)
    assert book.gone_out(1) == 25 * MiB
    book.on_event("file_failed", at=5.0, file=record)  # the retry resumes where the server says
    assert book.gone_out(1) is None
    book.on_event("file_uploading", at=6.0, file=record)
    book.on_event("bytes_sent", at=7.0, file=record, nbytes=MiB)
    assert book.gone_out(1) == 17 * MiB  # record.server_received is still 16 MiB here
    book.on_event("file_complete", at=8.0, file=record)
    assert book.gone_out(1) is None


def test_eta():
    assert eta_seconds(10 * MiB, 2 * MiB) == 5
    assert eta_seconds(10 * MiB, None) is None and eta_seconds(0, MiB) is None


def test_a_refused_put_takes_progress_back_to_the_servers_word_and_is_not_counted_acknowledged():
    """A proxy's 413: the refused body's pieces went out but are not on the server."""
    book = RateBook(clock=lambda: 0.0, wall=lambda: 0.0)
    record = SimpleNamespace(id=1, session_id=7, server_received=8 * MiB, size=100 * MiB)
    book.on_event("file_uploading", at=0.0, file=record)
    book.on_event("bytes_sent", at=1.0, file=record, nbytes=2 * MiB)
    assert book.gone_out(1) == 10 * MiB
    book.on_event("chunk_refused", at=2.0, file=record, received=8 * MiB)
    assert book.gone_out(1) == 8 * MiB
    assert book.counters()[1].get("chunk_acknowledged", 0) == 0
