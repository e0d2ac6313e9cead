"""uploader.SentDigest: the digest of a file as the server holds it (sha256 with nothing to check
against, else of the kind journaled), followed through every
way an upload moves (chunks hashed as read for their PUT, a resume, a server that rolls back),
over a real file read the way send_file reads it."""

from __future__ import annotations

import functools
import hashlib
import os

import pytest
import xxhash

from fs360.engine.spool import read_exactly
from fs360.engine.uploader import SentDigest
from fs360.errors import SentContentChanged

CHUNK = 4096
DATA = hashlib.sha256(b"seed").digest() * (10 * CHUNK // 32) + b"tail"  # 10 chunks and a bit


@pytest.fixture
def spool(tmp_path):
    path = tmp_path / "spool"
    path.write_bytes(DATA)
    fd = os.open(path, os.O_RDONLY)
    yield fd
    os.close(fd)


class Reads:
    """read_exactly of the spool file, counting the bytes it read."""

    def __init__(self, fd: int):
        self.read = functools.partial(read_exactly, fd)
        self.bytes = 0

    def __call__(self, view, offset: int) -> None:
        self.read(view, offset)
        self.bytes += len(view)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def send(digest: SentDigest, reads: Reads, view: memoryview, offset: int) -> int:
    """What send_file does for one chunk: position, read, hash as it goes. Returns its end."""
    digest.seek(offset)
    n = min(CHUNK, len(DATA) - offset)
    digest.chunk_starts()
    reads(view[:n], offset)
    digest.update(view[:n])
    return offset + n


def new_digest(spool):
    reads = Reads(spool)
    view = memoryview(bytearray(CHUNK))
    return SentDigest(reads, view), reads, view


def test_chunks_sent_in_order_hash_to_the_file(spool):
    digest, reads, view = new_digest(spool)
    offset = 0
    while offset < len(DATA):
        offset = send(digest, reads, view, offset)
    assert digest.hexdigest() == sha(DATA)
    assert reads.bytes == len(DATA)  # each byte read once: for its PUT


def test_a_resume_hashes_what_the_server_holds_from_the_local_copy(spool):
    digest, reads, view = new_digest(spool)
    offset = 7 * CHUNK + 100  # the server's received, from an earlier attempt
    digest.seek(offset)
    assert digest.position == offset and reads.bytes == offset
    while offset < len(DATA):
        offset = send(digest, reads, view, offset)
    assert digest.hexdigest() == sha(DATA)


def test_a_rollback_to_the_last_chunk_costs_no_read_and_further_back_starts_again(spool):
    digest, reads, view = new_digest(spool)
    end = send(digest, reads, view, 0)
    end = send(digest, reads, view, end)
    before = reads.bytes
    digest.seek(CHUNK)  # the server did not take the last chunk (a stall, a 409 at its start)
    assert reads.bytes == before and digest.position == CHUNK
    end = send(digest, reads, view, CHUNK)
    digest.seek(CHUNK // 2)  # it lost more: taken again from the spool, from byte 0
    assert reads.bytes == before + CHUNK + CHUNK // 2
    offset = CHUNK // 2
    while offset < len(DATA):
        offset = send(digest, reads, view, offset)
    assert digest.hexdigest() == sha(DATA)


def test_the_check_holds_back_a_file_that_is_not_what_was_journaled(spool):
    digest, reads, view = new_digest(spool)
    offset = 0
    while offset < len(DATA):
        offset = send(digest, reads, view, offset)
    digest.check(sha(DATA), 9 * CHUNK)  # the same: passes
    digest.check(None, 9 * CHUNK)       # nothing journaled: nothing to check against
    with pytest.raises(SentContentChanged) as held:
        digest.check(sha(DATA + b"x"), 9 * CHUNK)
    assert f"keeps its first {9 * CHUNK} bytes" in str(held.value)
    with pytest.raises(SentContentChanged) as nothing_sent:
        digest.check(sha(b"other"), 0)
    assert "nothing of it was sent: copy it again" in str(nothing_sent.value)


def identity(data: bytes) -> str:
    return "xxh3-128:" + xxhash.xxh3_128(data).hexdigest()


@pytest.mark.parametrize("kind", [identity, sha])
def test_what_is_sent_is_hashed_like_the_journaled_digest(spool, kind):
    """A file journaled by this build has an XXH3-128 identity digest, one journaled before it a
    sha256: the sent data is hashed the same way, a resume included, and checked."""
    reads, view = Reads(spool), memoryview(bytearray(CHUNK))
    digest = SentDigest(reads, view, expected=kind(DATA))
    offset = 3 * CHUNK + 5
    digest.seek(offset)
    while offset < len(DATA):
        offset = send(digest, reads, view, offset)
    assert digest.hexdigest() == kind(DATA)
    digest.check(kind(DATA), 9 * CHUNK)
    with pytest.raises(SentContentChanged):
        digest.check(kind(DATA[:-1] + b"X"), 9 * CHUNK)
