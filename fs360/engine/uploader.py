"""Sends one file: one whole-file PUT up to a chunk, else sequential chunks.

The caller says where to start (the server's `received`, asked for before any
retry). On 409 we go on from the body's `received`. The file is never read whole
into memory: each chunk is read into the worker's one page-aligned buffer.
"""

from __future__ import annotations

import os

from ..api.client import ApiClient, FileProgress
from ..errors import Cancelled, MalformedResponse, NonContiguousChunk, ServerHoldsOtherFile


# A server that answers without moving forward this many times running is broken.
MAX_STALLS = 5
# One attempt's PUTs, beyond twice the file's chunks: a server that loses bytes now and then
# moves forward in between (no stall), and without a budget could keep an attempt going forever.
PUT_BUDGET_MARGIN = MAX_STALLS


def put_budget(size: int, chunk_size: int) -> int:
    """The PUTs one attempt may send: every chunk of the file twice over (a rollback to 0 of
    the whole file on the way included), plus a margin."""
    return 2 * -(-size // chunk_size) + PUT_BUDGET_MARGIN


def read_exactly(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            raise OSError(f"the spool file is shorter than expected (at byte {offset + done})")
        done += n


def send_file(client: ApiClient, upload_id: str, name: str, read_exactly, size: int, start: int,
              buffer, chunk_size: int, on_progress, should_stop) -> FileProgress:
    """Uploads bytes start..size-1 of a file; returns the final server state. `read_exactly(view,
    offset)` fills `view` with the file's bytes from `offset`: a spool file's
    (`functools.partial(read_exactly, fd)`) or an archive's (`ArchiveReader.read_exactly`)."""
    view = memoryview(buffer)
    if start == 0 and size <= chunk_size:
        if should_stop():  # ops: asked before every PUT, as before each chunk (bwlimit/pause wait in it)
            raise Cancelled()
        read_exactly(view[:size], 0)
        progress = client.put(upload_id, name, view[:size], 0, size, whole=True)
        _check_total(progress, size, name)
        on_progress(progress.received)
        if not progress.complete:
            raise MalformedResponse(f"{name}: a whole-file PUT left the file incomplete")
        return progress

    offset, stalls, puts, budget = start, 0, 0, put_budget(size, chunk_size)
    progress = FileProgress(start, size, start == size)
    while offset < size:
        if puts >= budget:
            # Retryable: the next attempt starts from what the server says it holds then.
            raise MalformedResponse(
                f"{name}: {puts} PUTs in one attempt and the server still holds only {offset} of {size} bytes "
                f"(it keeps losing what it took); trying again later")
        if should_stop():
            raise Cancelled()
        n = min(chunk_size, size - offset)
        read_exactly(view[:n], offset)
        puts += 1
        try:
            progress = client.put(upload_id, name, view[:n], offset, size)
        except NonContiguousChunk as exc:
            new_offset = exc.received
            if not 0 <= new_offset <= size:
                raise MalformedResponse(f"{name}: 409 with an impossible received {new_offset}") from None
        else:
            _check_total(progress, size, name)
            new_offset = progress.received
        stalls = stalls + 1 if new_offset <= offset else 0
        if stalls >= MAX_STALLS:
            raise MalformedResponse(f"{name}: {stalls} answers running did not move past byte {offset} "
                                    f"of {size}; trying again later")
        offset = new_offset
        on_progress(offset)
    if not progress.complete:
        # We got here through a 409 that said everything is there: confirm it.
        progress = client.file_status(upload_id, name)
        _check_total(progress, size, name)
        if not progress.complete:
            raise MalformedResponse(f"{name}: the server says {progress.received} of {size} after the last chunk")
    return progress


def _check_total(progress: FileProgress, size: int, name: str) -> None:
    if progress.total != size:
        raise ServerHoldsOtherFile(
            f"the server already holds a different file named {name!r} ({progress.total} bytes, ours {size})",
            status=409)
