"""The spool's aligned runs go past the page cache (O_DIRECT), the rest through it, and what
is read back for upload is exactly what was written, whatever the mix (spool.py)."""

from __future__ import annotations

import errno
from pathlib import Path
import mmap
import os
import threading
import random
import subprocess

import pytest

from fs360.engine.spool import DIRECT_ALIGN, DIRECT_FROM, DIRECT_MIN, Spool, SpoolReader, direct_span, read_exactly
from fs360.errors import EarlierWriteLost

MiB = 1024 * 1024


def cached_pages(path) -> int:
    """Pages of `path` in the page cache, as util-linux's fincore counts them."""
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "PAGES", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


@pytest.fixture
def spool(tmp_path):
    spool = Spool(tmp_path / "spool")
    if not spool.direct:
        pytest.fail(f"the spool's file system ({tmp_path}) refused O_DIRECT: these tests need one that takes it")
    return spool


def open_for_writing(spool: Spool, file_id: int) -> tuple[int, int]:
    spool.create(file_id)
    return os.open(spool.path(file_id), os.O_RDWR), spool.open_direct(file_id, os.O_WRONLY)


def test_direct_spans():
    assert direct_span(DIRECT_FROM, MiB) == (0, MiB)
    assert direct_span(DIRECT_FROM, MiB + 100) == (0, MiB)              # the tail goes through the cache
    assert direct_span(DIRECT_FROM + 100, MiB) == (DIRECT_ALIGN - 100, MiB - DIRECT_ALIGN)
    assert direct_span(DIRECT_FROM, DIRECT_MIN - DIRECT_ALIGN) == (DIRECT_MIN - DIRECT_ALIGN, 0)  # too short
    assert direct_span(0, MiB) == (DIRECT_FROM, MiB - DIRECT_FROM)      # a file's first bytes: cached
    assert direct_span(0, DIRECT_FROM) == (DIRECT_FROM, 0)              # a small file: cached whole


def test_a_small_file_stays_in_the_cache_and_is_read_through_it(spool):
    fd, direct_fd = open_for_writing(spool, 3)
    data = os.urandom(DIRECT_FROM)
    try:
        assert spool.write(3, fd, direct_fd, data, 0) == len(data)
    finally:
        os.close(fd)
        os.close(direct_fd)
    assert cached_pages(spool.path(3)) == DIRECT_FROM // mmap.PAGESIZE
    assert spool.open_direct(3, os.O_RDONLY) == -1
    reader = SpoolReader(spool, 3)
    view = memoryview(mmap.mmap(-1, len(data)))
    try:
        reader.read_exactly(view, 0)
    finally:
        reader.close()
    assert view == data


def test_large_aligned_writes_stay_out_of_the_page_cache_and_read_back_exactly(spool):
    fd, direct_fd = open_for_writing(spool, 1)
    data = os.urandom(8 * MiB + 1234)
    try:
        for offset in range(0, len(data), MiB):
            piece = memoryview(data)[offset:offset + MiB]
            assert spool.write(1, fd, direct_fd, piece, offset) == len(piece)
        spool.behind.drain(1)
    finally:
        os.close(fd)
        os.close(direct_fd)
    # Only the first MiB and the tail's page went through the cache.
    assert cached_pages(spool.path(1)) <= DIRECT_FROM // mmap.PAGESIZE + 1
    reader = SpoolReader(spool, 1)
    view = memoryview(mmap.mmap(-1, len(data) + DIRECT_ALIGN))
    try:
        reader.read_exactly(view[:len(data)], 0)
        assert view[:len(data)] == data
        # From an unaligned offset, and into an unaligned view: through the cache, still exact.
        reader.read_exactly(view[1:1 + 3 * MiB], 12345)
        assert view[1:1 + 3 * MiB] == data[12345:12345 + 3 * MiB]
        with pytest.raises(OSError, match="shorter than expected"):
            reader.read_exactly(view[:2 * MiB], len(data) - MiB)
    finally:
        reader.close()


def test_any_mix_of_writes_reads_back_as_written(spool):
    """Random writes, aligned or not, large and small, overwriting each other, through the
    spool's two descriptors: the file and every read of it equal the same writes into memory."""
    rng = random.Random(2112)
    size = 6 * MiB
    fd, direct_fd = open_for_writing(spool, 2)
    read_direct_fd = os.open(spool.path(2), os.O_RDONLY | os.O_DIRECT)
    expected = bytearray(size)
    try:
        os.ftruncate(fd, size)
        for _ in range(300):
            if rng.random() < 0.5:
                offset = rng.randrange(0, size // DIRECT_ALIGN) * DIRECT_ALIGN
                length = rng.choice([DIRECT_MIN, 256 * 1024, MiB, MiB + 7])
            else:
                offset = rng.randrange(0, size)
                length = rng.randrange(1, 300 * 1024)
            length = min(length, size - offset)
            data = rng.randbytes(length)
            assert spool.write(2, fd, direct_fd, data, offset) == length
            expected[offset:offset + length] = data
            if rng.random() < 0.2:
                at = rng.choice([0, DIRECT_ALIGN * rng.randrange(size // DIRECT_ALIGN), rng.randrange(size)])
                n = min(rng.choice([DIRECT_MIN, MiB, 5000]), size - at)
                view = memoryview(mmap.mmap(-1, n))
                spool.behind.settle(2)  # as every read of the spool file does
                read_exactly(fd, view, at, read_direct_fd)
                assert view == expected[at:at + n]
        spool.behind.drain(2)
    finally:
        for each in (fd, direct_fd, read_direct_fd):
            os.close(each)
    with open(spool.path(2), "rb") as f:
        assert f.read() == expected


def test_a_truncate_lands_after_the_writes_behind_it(spool, monkeypatch):
    # The writes behind are held until the truncate was made, so that they are still behind it
    # whatever the machine's speed (fewer than the 8 buffers: submit never waits for one).
    gate = threading.Event()
    write = spool.behind._write
    monkeypatch.setattr(spool.behind, "_write", lambda *args: (gate.wait(30), write(*args)))
    fd, direct_fd = open_for_writing(spool, 4)
    try:
        spool.write(4, fd, direct_fd, b"a" * DIRECT_FROM, 0)
        for offset in range(DIRECT_FROM, 6 * MiB, MiB):
            spool.write(4, fd, direct_fd, os.urandom(MiB), offset)
        spool.truncate(4, 100)      # by path, queued behind the direct writes it follows
        gate.set()
        spool.behind.drain(4)
    finally:
        os.close(fd)
        os.close(direct_fd)
    assert Path(spool.path(4)).read_bytes() == b"a" * 100


def test_a_failed_write_behind_fails_the_files_next_write_once(spool):
    fd, direct_fd = open_for_writing(spool, 5)
    os.close(direct_fd)  # the write behind gets EBADF
    try:
        spool.write(5, fd, direct_fd, os.urandom(MiB), DIRECT_FROM)
        with pytest.raises(EarlierWriteLost) as failed:
            spool.behind.drain(5)
        assert failed.value.errno == errno.EBADF and "an earlier write of this file" in str(failed.value)
        spool.behind.drain(5)  # told once; other files never hear of it
        spool.behind.drain(6)
    finally:
        os.close(fd)
