"""Sends one file: one whole-file PUT up to a chunk, else sequential chunks.

The caller says where to start (the server's `received`, asked for before any
retry). On 409 we go on from the body's `received`. The file is never read whole
into memory: a chunk is streamed from the file, a piece at a time, through the
worker's page-aligned buffer as the request sends it (chunks grow large:
chunk_sizes.py); the chunk that completes the file, at most the buffer's size, is
read into the buffer whole first.

What is sent is hashed (`SentDigest`), and the chunk that completes the file is
held back unless the digest of the whole file as sent equals the one journaled
when the file was queued: a spool copy changed since (outside fs360, or a bug)
is never completed on the server (doc/SEMANTICS.md, "What is sent is checked").
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from ..api.client import ApiClient, FileProgress
from ..api.transport import BODY_PIECE
from ..errors import (BodyTooLarge, Cancelled, MalformedResponse, NonContiguousChunk, SentContentChanged,
                      ServerHoldsOtherFile)
from .chunk_sizes import ChunkSizes
from .content_digest import hash_like, tagged_hexdigest
from .spool import SpoolReader

log = logging.getLogger(__name__)


# A streamed chunk is read from the spool this much at a time and sent in BODY_PIECE pieces:
# a read past the page cache is a round trip to the disk (spool.py), and each costs wake-ups.
# 4 MiB, not 1: a GiB sent took 0.32-0.47 CPU-s in the upload threads against 0.46-0.58, with
# 450 voluntary switches against 1,070; 8 MiB gained nothing more (BENCHMARKS.md, issue 21).
READ_AHEAD = 16 * BODY_PIECE
# A server that answers without moving forward this many times running is broken.
MAX_STALLS = 5
# One attempt's PUTs, beyond twice the file's chunks: a server that loses bytes now and then
# moves forward in between (no stall), and without a budget could keep an attempt going forever.
PUT_BUDGET_MARGIN = MAX_STALLS


def put_budget(size: int, chunk_size: int) -> int:
    """The PUTs one attempt may send: every chunk of the file twice over (a rollback to 0 of
    the whole file on the way included), plus a margin."""
    return 2 * -(-size // chunk_size) + PUT_BUDGET_MARGIN


@contextlib.contextmanager
def file_reader(spool: SpoolReader | None, archive=None, size: int = 0, zip64: bool = False):
    """`read_exactly(view, offset)` of a file's bytes: its spool file's (open as `spool`), or
    for a session's tree its archive's, rebuilt from `archive` (its members; the archive is
    deterministic, so the same members make the same bytes), which must still make `size` bytes."""
    if archive is None:
        yield spool.read_exactly
        return
    from .archive import ArchiveReader, ArchiveSourceChanged
    with ArchiveReader(archive, force_zip64=zip64) as reader:
        if reader.size != size:
            raise ArchiveSourceChanged(f"the tree makes {reader.size} bytes now, not the {size} planned")
        yield reader.read_exactly


@dataclass(frozen=True)
class SentFile:
    """How an upload ended: the server's last word, and the sha256 of the whole file as the
    server holds it (None when the attempt found it complete and hashed nothing)."""
    progress: FileProgress
    sha256: str | None


class SentDigest:
    """The digest of the file's bytes [0, position) as the server holds them.

    Bytes this attempt sends are hashed as they are read for their PUT (a streamed
    chunk piece by piece; the chunk that completes the file whole, before it goes, so
    that `check` may hold it back). Bytes the server holds from an earlier attempt (a
    resume after a restart or a retry, a 409 that says it holds more) are hashed from
    the local copy: they are the same, since a file never changes once a PUT of it
    went out. A server that rolls back to where the last chunk began costs nothing
    (the state before it is kept); a rollback further back hashes the local copy again
    from byte 0."""

    def __init__(self, read_exactly, view: memoryview, expected: str | None = None):
        self._read_exactly = read_exactly
        self._view = view           # the upload's buffer: also where local bytes are read to
        # Checked against a journaled content digest: that digest's hash (XXH3-128 from this
        # build on, content_digest.py); with none to check, sha256 (an archive's, for status).
        self._new_hash = (lambda: hash_like(expected)) if expected else hashlib.sha256
        self._hash = self._new_hash()
        self.position = 0
        self._before_last = (0, self._hash.copy())

    def seek(self, offset: int) -> None:
        """Makes the digest cover exactly [0, offset)."""
        if offset == self.position:
            return
        if offset == self._before_last[0]:
            self.position, self._hash = offset, self._before_last[1].copy()
            return
        if offset < self.position:
            self.position, self._hash = 0, self._new_hash()
        while self.position < offset:
            part = self._view[:min(len(self._view), offset - self.position)]
            self._read_exactly(part, self.position)
            self._hash.update(part)
            self.position += len(part)

    def chunk_starts(self) -> None:
        """A chunk from `position` goes out: a rollback to here will cost nothing."""
        self._before_last = (self.position, self._hash.copy())

    def update(self, data: memoryview) -> None:
        """`data`, the bytes from `position`, goes out."""
        self._hash.update(data)
        self.position += len(data)

    def hexdigest(self) -> str:
        return tagged_hexdigest(self._hash)

    def check(self, expected: str | None, held_by_server: int) -> None:
        """Before the PUT that completes the file: raises SentContentChanged unless the whole
        file as sent has the sha256 `expected` (None: no journaled sha256 to check against)."""
        sent = self.hexdigest()
        if expected is None or sent == expected:
            return
        on_server = (f"the server keeps its first {held_by_server} bytes, never completed, and cannot drop "
                     f"them: copy the file again into a new folder (this folder's project cannot be made)"
                     if held_by_server else "nothing of it was sent: copy it again")
        raise SentContentChanged(
            f"the data being uploaded no longer matches the file as it was written (digest {sent[:25]}…, "
            f"written {expected[:25]}…): its spool copy changed outside fs360, or fs360 has a bug (please "
            f"report it); the last chunk was held back, so the server never completes it; {on_server}")


@dataclass
class StreamedChunk:
    """Bytes [offset, offset + n) of a file as a PUT body, in pieces of BODY_PIECE: read into
    `window` (the buffer's first READ_AHEAD bytes) a window at a time as the request asks for
    them, each piece hashed as it goes, so no buffer of the chunk's size exists. A read that
    fails ends the request (SpoolUnreadable: not an OSError, which the HTTP stack would take for
    the network's)."""
    read_exactly: Callable[[memoryview, int], None]
    window: memoryview
    offset: int
    n: int
    digest: SentDigest

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        self.digest.seek(self.offset)  # where the chunk starts, should the body be asked for again
        done = 0
        while done < self.n:
            block = self.window[:min(len(self.window), self.n - done)]
            try:
                self.read_exactly(block, self.offset + done)
            except OSError as exc:
                raise SpoolUnreadable(exc) from exc
            for at in range(0, len(block), BODY_PIECE):
                piece = block[at:at + BODY_PIECE]
                self.digest.update(piece)
                done += len(piece)
                yield piece


class SpoolUnreadable(Exception):
    """A streamed chunk's read failed (`args[0]`, the OSError) while its PUT was under way."""


def send_file(client: ApiClient, upload_id: str, name: str, read_exactly, size: int, start: int,
              buffer, sizes: ChunkSizes, on_progress, should_stop, expected_sha256: str | None = None,
              pace=None) -> SentFile:
    """Uploads bytes start..size-1 of a file; returns how it ended. `read_exactly(view, offset)`
    fills `view` with the file's bytes from `offset`: a spool file's
    (`SpoolReader.read_exactly`) or an archive's (`ArchiveReader.read_exactly`).
    The chunks' sizes follow `sizes` (chunk_sizes.py); the PUT that completes the file is at
    most the buffer's size. `should_stop(n)` is asked before each PUT of n bytes (true:
    Cancelled, nothing sent; the bandwidth limit and a pause wait in it), `on_progress(received,
    acknowledged)` told after each with the server's word (acknowledged False: a proxy refused
    the body, 413, so the server holds what it held), and each body goes in pieces through `pace`
    (ApiClient.put). The PUT that completes the file goes only if the whole file as sent has
    the digest `expected_sha256` (when given)."""
    view = memoryview(buffer)
    digest = SentDigest(read_exactly, view, expected_sha256)
    chunks = sizes.for_file()
    offset, stalls, puts = start, 0, 0
    progress = FileProgress(start, size, start == size)
    while offset < size or (size == 0 and not puts):  # an empty file is one PUT
        if puts >= put_budget(size, chunks.smallest):
            # Retryable: the next attempt starts from what the server says it holds then.
            raise MalformedResponse(
                f"{name}: {puts} PUTs in one attempt and the server still holds only {offset} of {size} bytes "
                f"(it keeps losing what it took); trying again later")
        digest.seek(offset)  # before the gate's turn: a resume may first hash what the server holds
        # The completing chunk is read into the buffer whole: it is what is left over the last
        # multiple of the buffer (fixed-size chunks end as they always did).
        left, last_limit = size - offset, min(len(view), chunks.limit)
        last = left <= last_limit
        n = left if last else min(chunks.size, left - ((left - 1) % last_limit + 1))
        whole = last and offset == 0
        if should_stop(n):
            raise Cancelled()
        if last:  # read whole and checked before it goes: the server never completes a changed file
            read_exactly(view[:n], offset)
            digest.chunk_starts()
            digest.update(view[:n])
            digest.check(expected_sha256, offset)
            body = view[:n]
        else:
            digest.chunk_starts()
            body = StreamedChunk(read_exactly, view[:min(len(view), READ_AHEAD)], offset, n, digest)
        puts += 1
        chunks.put_starts()
        try:
            progress = client.put(upload_id, name, body, offset, size, whole=whole, pace=pace)
        except NonContiguousChunk as exc:
            new_offset = exc.received
            if not 0 <= new_offset <= size:
                raise MalformedResponse(f"{name}: 409 with an impossible received {new_offset}") from None
        except SpoolUnreadable as exc:
            raise exc.args[0] from None
        except BodyTooLarge as exc:
            if not chunks.refused(n):
                raise
            log.info("%s: a PUT of %d bytes was refused as too large (%s); sending at most %d bytes a PUT",
                     name, n, exc, chunks.size)
            on_progress(offset, False)  # the refused body's pieces are not on the server: progress goes back
            continue  # the same bytes again, in smaller chunks
        else:
            _check_total(progress, size, name)
            if whole and not progress.complete:
                raise MalformedResponse(f"{name}: a whole-file PUT left the file incomplete")
            chunks.put_done(n)
            new_offset = progress.received
        stalls = stalls + 1 if new_offset <= offset else 0
        if stalls >= MAX_STALLS:
            raise MalformedResponse(f"{name}: {stalls} answers running did not move past byte {offset} "
                                    f"of {size}; trying again later")
        offset = new_offset
        on_progress(offset, True)
    if not progress.complete:
        # We got here through a 409 that said everything is there: confirm it.
        progress = client.file_status(upload_id, name)
        _check_total(progress, size, name)
        if not progress.complete:
            raise MalformedResponse(f"{name}: the server says {progress.received} of {size} after the last chunk")
    return SentFile(progress, digest.hexdigest() if digest.position == size else None)


def _check_total(progress: FileProgress, size: int, name: str) -> None:
    if progress.total != size:
        raise ServerHoldsOtherFile(
            f"the server already holds a different file named {name!r} ({progress.total} bytes, ours {size})",
            status=409)
