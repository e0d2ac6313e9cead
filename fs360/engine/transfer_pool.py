"""Uploads' HTTP in worker processes, outside the daemon's GIL.

The daemon's one interpreter runs the FUSE callbacks; the requests/urllib3 stack of
a PUT costs about as much CPU again, and both used to queue on one GIL. Here each
engine worker thread hands `send_file` to a worker process of its own and serves
that process's questions while it runs:

    parent (engine worker thread)              worker process
    ---------------------------------          --------------------------------
    job (upload_id, name, size, start, ──▶     per PUT, reading the spool file
         chunk size) + the open spool fd       through the fd it was handed (an
         (an archive: its members instead)     archive: from its members' paths):
    pacer.acquire(endpoint)            ◀──▶    ("acquire", endpoint): may it send?
    should_stop()                      ◀──▶    ("should_stop",) between chunks
    on_progress(received)              ◀──     ("progress", received) after a chunk
    pacer.rate_limited(...)            ◀──     ("rate_limited", endpoint, seconds)
    (still alive)                      ◀──     ("reading",) while a resume hashes what
                                               an earlier attempt sent (uploader.SentDigest)
    return / raise                     ◀──     ("done", SentFile) | ("error", ...)

So pacing, cancelling, the state machine and the journal stay in the daemon,
exactly as with an in-process `send_file`; the worker process only moves bytes.
The settings (with the key) reach a worker over its socket, never through its
environment or command line. A worker that dies, or stops answering, is a
transport error: the engine reads the server's `received` and goes on from there,
with a new worker. Workers die with the daemon (PR_SET_PDEATHSIG), so an orphan
can never send a PUT next to the restarted daemon's.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib
import logging
import mmap
import os
import queue
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING
from multiprocessing.connection import Connection
from multiprocessing.reduction import recv_handle, send_handle

from ..api.client import ApiClient
from ..config import Settings
from ..errors import Cancelled, Fs360Error, TransportError
from .uploader import SentFile, read_exactly, send_file

if TYPE_CHECKING:
    from .archive import ArchiveMember

log = logging.getLogger(__name__)

# A worker that says nothing for this long past the request deadline is hung: killed.
SILENCE_MARGIN = 30.0
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class TransferJob:
    upload_id: str
    server_name: str
    size: int
    start: int
    chunk_size: int
    # A session's tree as one .zip: its members (spool files by path), read through an
    # ArchiveReader; None for a spool file, which goes with the job as an open fd.
    archive: tuple[ArchiveMember, ...] | None = None
    zip64: bool = False  # the archive always in ZIP64 form (Settings.archive_zip64)
    # The sha256 journaled when the file was queued: the PUT that completes the file goes only
    # if what was sent has it (None: nothing to check against, as for an archive).
    sha256: str | None = None


@contextlib.contextmanager
def job_reader(job: TransferJob, spool_fd: int | None):
    """`read_exactly(view, offset)` of the job's bytes: its spool file's, or its archive's (the
    archive is deterministic, so any process rebuilds the same bytes from the same members)."""
    if job.archive is None:
        yield functools.partial(read_exactly, spool_fd)
        return
    # Here, not at the top: stream_zip and zipfile would cost every worker process a few MiB.
    from .archive import ArchiveReader, ArchiveSourceChanged
    with ArchiveReader(job.archive, force_zip64=job.zip64) as reader:
        if reader.size != job.size:
            raise ArchiveSourceChanged(f"the tree makes {reader.size} bytes now, not the {job.size} planned")
        yield reader.read_exactly


def run_job(client: ApiClient, job: TransferJob, spool_fd: int | None, buffer, on_progress,
            should_stop, on_reading=lambda: None) -> SentFile:
    """`send_file` of one job, in this process."""
    with job_reader(job, spool_fd) as read:
        return send_file(client, job.upload_id, job.server_name, read, job.size, job.start, buffer,
                         job.chunk_size, on_progress, should_stop, expected_sha256=job.sha256,
                         on_reading=on_reading)


class TransferProcesses:
    """Worker processes for `send_file`, checked out one per call (at most `count` at once)."""

    def __init__(self, settings: Settings, pacer, count: int):
        self._settings = settings
        self._pacer = pacer
        self._idle: queue.LifoQueue[_Worker | None] = queue.LifoQueue()
        for _ in range(count):
            self._idle.put(None)  # a slot; its process is started on first use
        self._all: set[_Worker] = set()
        self._closed = False

    def send_file(self, job: TransferJob, spool_fd: int | None, on_progress, should_stop) -> SentFile:
        """Like `run_job`, in a worker process; raises what it would raise. The spool file goes
        over as an open fd, so a file unlinked meanwhile still reads whole (None: an archive)."""
        worker = self._idle.get()
        try:
            if worker is None or not worker.alive():
                worker = self._start_worker()
            result = worker.run(job, spool_fd, self._pacer, on_progress, should_stop, self._silence_limit(job))
        except _WorkerLost as lost:
            self._discard(worker)
            worker = None
            raise TransportError(f"the upload process ended unexpectedly ({lost}); resuming") from None
        finally:
            self._idle.put(worker)
        return result

    def close(self) -> None:
        self._closed = True
        for worker in list(self._all):
            self._discard(worker)

    def pids(self) -> list[int]:
        return [w.process.pid for w in self._all if w.alive()]

    def _silence_limit(self, job: TransferJob) -> float:
        # The worker's own request deadline (ApiClient.deadline_for), plus a margin.
        settings = self._settings
        body = job.chunk_size / settings.min_upload_rate if settings.min_upload_rate else 0.0
        return settings.request_deadline + body + SILENCE_MARGIN

    def _start_worker(self) -> "_Worker":
        if self._closed:
            raise Cancelled()
        parent_end, child_end = socket.socketpair()
        # Nothing of the daemon's environment that could matter, and never the key.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FS360_", "API_KEY", "NOTIFY_SOCKET"))}
        try:
            command = [sys.executable, "-I", "-S", _WORKER_SCRIPT, str(child_end.fileno()), *_worker_import_path()]
            process = subprocess.Popen(command, pass_fds=(child_end.fileno(),), env=env, stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, start_new_session=True)
        finally:
            child_end.close()
        worker = _Worker(process, Connection(parent_end.detach()))
        worker.conn.send(self._settings)
        self._all.add(worker)
        return worker

    def _discard(self, worker: "_Worker | None") -> None:
        if worker is None:
            return
        self._all.discard(worker)
        worker.kill()


# The slim entry (see upload_worker.py): a script, so that fs360/engine/__init__.py is not run.
_WORKER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "upload_worker.py")


def _worker_import_path() -> list[str]:
    """The daemon's import path for a worker started with -I -S: first the root holding this fs360
    package (so the worker runs the daemon's code), then the rest (site-packages: requests ...)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(_WORKER_SCRIPT)))
    return [root, *(p for p in sys.path if p and os.path.abspath(p) != root)]


class _WorkerLost(Exception):
    pass


class _Worker:
    def __init__(self, process: subprocess.Popen, conn: Connection):
        self.process = process
        self.conn = conn

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        try:
            self.conn.close()
        except OSError:
            pass
        if self.process.poll() is None:
            self.process.kill()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            log.warning("upload process %d did not end", self.process.pid)

    def run(self, job: TransferJob, spool_fd: int, pacer, on_progress, should_stop,
            silence_limit: float) -> SentFile:
        outcome = self._converse(job, spool_fd, pacer, on_progress, should_stop, silence_limit)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def _converse(self, job, spool_fd, pacer, on_progress, should_stop, silence_limit):
        """Serves the worker until it answers; its error comes back as a value, to be raised."""
        try:
            self.conn.send(job)
            if spool_fd is not None:
                send_handle(self.conn, spool_fd, self.process.pid)
            while True:
                if not self.conn.poll(silence_limit):
                    raise _WorkerLost(f"silent for {silence_limit:.0f} s")
                message = self.conn.recv()
                kind = message[0]
                if kind == "acquire":
                    self.conn.send(pacer.acquire(message[1]))
                elif kind == "should_stop":
                    self.conn.send(bool(should_stop()))
                elif kind == "progress":
                    on_progress(message[1])
                elif kind == "rate_limited":
                    pacer.rate_limited(message[1], message[2])
                elif kind == "reading":
                    pass  # alive: the poll above starts its silence limit again
                elif kind == "done":
                    return message[1]
                elif kind == "error":
                    return _rebuilt(*message[1:])
                else:
                    raise _WorkerLost(f"unknown message {kind!r}")
        except (EOFError, OSError) as exc:
            raise _WorkerLost(type(exc).__name__) from None


# --- errors across the process boundary ---------------------------------------------------------

def _portable(exc: BaseException) -> tuple:
    """(module, class name, message, attributes) of an error the engine knows how to settle."""
    if isinstance(exc, OSError):
        return ("builtins", "OSError", exc.strerror or str(exc), {"errno": exc.errno})
    if isinstance(exc, (Fs360Error, Cancelled)):
        return (type(exc).__module__, type(exc).__qualname__, str(exc), dict(vars(exc)))
    # A bug in the worker: the file is retried like after a network error, the cause is logged.
    return ("fs360.errors", "TransportError", f"upload process error: {type(exc).__name__}: {exc}", {})


def _rebuilt(module: str, name: str, message: str, attributes: dict) -> BaseException:
    if (module, name) == ("builtins", "OSError"):
        return OSError(attributes.get("errno") or 0, message)
    cls = getattr(importlib.import_module(module), name, None)
    if not (isinstance(cls, type) and issubclass(cls, (Fs360Error, Cancelled))):
        return TransportError(f"upload process error: {name}: {message}")
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    exc.__dict__.update(attributes)
    return exc


# --- the worker process ---------------------------------------------------------------------------

class _ParentPacer:
    """The daemon's pacer, asked over the socket: every request is paced where all are counted."""

    def __init__(self, conn: Connection):
        self._conn = conn

    def acquire(self, endpoint: str) -> float:
        self._conn.send(("acquire", endpoint))
        return self._conn.recv()

    def rate_limited(self, endpoint: str, retry_after) -> None:
        self._conn.send(("rate_limited", endpoint, retry_after))


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # the daemon died before prctl took effect
        os._exit(1)


def worker_main(fd: int) -> int:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in a foreground mount is the daemon's to handle
    conn = Connection(fd)
    try:
        _serve_jobs(conn)
    except (EOFError, BrokenPipeError, ConnectionResetError):
        pass  # the daemon closed the socket or ended: so does its worker
    return 0


def _serve_jobs(conn: Connection) -> None:
    settings: Settings = conn.recv()
    client = ApiClient(settings, pacer=_ParentPacer(conn))
    buffer = None
    while True:
        job: TransferJob = conn.recv()
        spool = None if job.archive is not None else recv_handle(conn)
        if buffer is None or len(buffer) < job.chunk_size:
            # Private: MADV_DONTNEED below really gives its pages back (a shared one keeps them).
            buffer = mmap.mmap(-1, max(job.chunk_size, mmap.PAGESIZE), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        try:
            result = run_job(client, job, spool, buffer,
                             on_progress=lambda received: conn.send(("progress", received)),
                             should_stop=lambda: _ask(conn, ("should_stop",)),
                             on_reading=lambda: conn.send(("reading",)))
        except (EOFError, BrokenPipeError, ConnectionResetError):
            raise
        except Exception as exc:  # every outcome goes back to the daemon, which settles it
            conn.send(("error", *_portable(exc)))
            continue
        finally:
            if spool is not None:
                os.close(spool)
            # An idle worker holds no chunk: after a big file, a chunk_size of resident pages
            # per worker would stay for every small file that follows.
            buffer.madvise(mmap.MADV_DONTNEED)
        conn.send(("done", result))


def _ask(conn: Connection, question: tuple):
    conn.send(question)
    return conn.recv()

