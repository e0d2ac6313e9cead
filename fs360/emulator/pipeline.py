"""The body pipeline: how a PUT's bytes go from the socket to the blob and the
running sha256.  Each connection reads into its own ring of segments; a second
thread per connection (the body worker) writes and hashes them in order."""

from __future__ import annotations

import hashlib
import os
import queue
import threading

SEG = 1 << 20  # body read segment size
NBUF = 8  # segments per connection: a whole 8 MiB chunk can arrive while the body worker drains the last one


class Op:
    """One piece of body work handed to the BodyWorker; wait() re-raises its error."""

    __slots__ = ("fn", "args", "done", "error")

    def __init__(self, fn, args):
        self.fn = fn
        self.args = args
        self.done = threading.Event()
        self.error: BaseException | None = None

    def wait(self):
        self.done.wait()
        if self.error is not None:
            raise self.error


class BodyWorker:
    """A connection's second thread: it runs the body work of its PUTs (sha256
    updates, blob writes) in submission order.  Both drop the GIL on large
    buffers, so the work on one segment overlaps the socket read of the next,
    and because the order is kept, a PUT does not wait for the previous PUT's
    work before it starts reading."""

    def __init__(self):
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        t = threading.Thread(target=self._run, name="emulator-body", daemon=True)
        t.start()

    def stop(self):
        """Ends the thread once the work already submitted is done."""
        self.q.put(None)

    def _run(self):
        while True:
            op = self.q.get()
            if op is None:
                return
            try:
                op.fn(*op.args)
            except BaseException as e:  # handed to whoever waits on the op
                op.error = e
            finally:
                op.done.set()

    def submit(self, fn, *args) -> Op:
        op = Op(fn, args)
        self.q.put(op)
        return op


class StorageError(Exception):
    """The emulator's own disk failed (full, gone): a 500, never a hung client."""


def pwrite_all(fd, mv, off):
    try:
        w = 0
        while w < len(mv):
            w += os.pwrite(fd, mv[w:], off + w)
    except OSError as e:
        raise StorageError(f"{e.strerror or e}") from None


class RunningHash:
    """sha256 of a --discard file's first `upto` bytes, kept while its chunks
    arrive in order.  Everything but `h` belongs to the handler holding the
    file's lock; `h` is replaced by body-worker ops, or inline once settled."""

    __slots__ = ("h", "upto", "last", "last_worker")

    def __init__(self):
        self.h = hashlib.sha256()
        self.upto = 0
        self.last: Op | None = None  # the commit of the newest PUT ...
        self.last_worker: BodyWorker | None = None  # ... queued on this worker

    def settled(self):
        """Wait until no body-worker op of this file is pending."""
        if self.last is not None:
            self.last.wait()
        self.last = self.last_worker = None


class PutHash:
    """The hash of one PUT in progress: a fork of the file's hash that becomes
    the file's hash only if the whole body arrives (a cut body leaves no trace)."""

    __slots__ = ("h",)

    def fork(self, rh):
        self.h = rh.h.copy()

    def update(self, mv):
        self.h.update(mv)

    def commit(self, rh):
        rh.h = self.h


class Buf:
    __slots__ = ("mv", "op")

    def __init__(self, mv):
        self.mv = mv
        self.op: Op | None = None  # body work still reading this buffer

    def settle(self):
        op, self.op = self.op, None
        if op is not None:
            op.wait()
