"""Uploads' HTTP in worker processes, outside the daemon's GIL.

The daemon's one interpreter runs the FUSE callbacks; the requests/urllib3 stack of
a PUT costs about as much CPU again, and both used to queue on one GIL. Here each
engine worker thread hands `send_file` to a worker process of its own and serves
that process's questions while it runs:

    parent (engine worker thread)              worker process
    ---------------------------------          --------------------------------
    job (id, upload_id, name, size,    ──▶     per PUT, reading the spool file
         start, chunk size) + the open         through the fd it was handed (an
         spool fd (an archive: its             archive: from its members' paths):
         members instead)
    admission.admit(endpoint, ...)     ◀──▶    ("admit", endpoint, ...): may it send?
                                               ("ok",) or ("refused", error): held back
    admission.report(...)              ◀──     ("outcome", error or None, reached)
    should_stop()                      ◀──▶    ("should_stop",) between chunks
    on_progress(received)              ◀──     ("progress", received) after a chunk
    (still alive)                      ◀──     ("reading",) while a resume hashes what
                                               an earlier attempt sent (uploader.SentDigest)
    return / raise                     ◀──     ("done", SentFile) | ("error", ...)

Every message of the worker carries its job's id. So the troubles and pacing,
cancelling, the state machine and the journal stay in the daemon, exactly as with
an in-process `send_file`; the worker process only moves bytes. The settings (with
the key) reach a worker over its socket, never through its environment or command
line. A worker that dies, stops answering, or whose conversation broke off for any
other reason (a daemon-side callback that raised, a message out of turn) is
discarded, never given another job: a lost one is a transport error after which
the engine reads the server's `received` and goes on from there, with a new worker
(its connections end with a reset: api/transport.py). An error the worker does
not know comes back as an internal error with its traceback, which the daemon
logs. Workers die with the daemon (PR_SET_PDEATHSIG), so an orphan can never send
a PUT next to the restarted daemon's.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib
import itertools
import logging
import mmap
import os
import queue
import signal
import socket
import subprocess
import sys
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from multiprocessing.connection import Connection
from multiprocessing.reduction import recv_handle, send_handle

from ..api.client import ApiClient
from ..config import Settings
from ..errors import Cancelled, Fs360Error, InternalError, NotSent, TransportError
from .uploader import SentFile, read_exactly, send_file

if TYPE_CHECKING:
    from .archive import ArchiveMember

log = logging.getLogger(__name__)

# A worker that says nothing for this long past the request deadline is hung: killed.
SILENCE_MARGIN = 30.0
PR_SET_PDEATHSIG = 1
# Each job's id, carried by every message of its conversation.
_job_ids = itertools.count(1)


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
    job_id: int = field(default_factory=lambda: next(_job_ids))


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

    def __init__(self, settings: Settings, admission, count: int):
        self._settings = settings
        self._admission = admission
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
            outcome = worker.converse(job, spool_fd, self._admission, on_progress, should_stop,
                                      self._silence_limit(job))
        except _WorkerLost as lost:
            self._discard(worker)
            worker = None
            error = TransportError(f"the upload process ended unexpectedly ({lost}); resuming")
            error.gave_up_on_upload = True  # it may have died mid-PUT: the server may still read that body
            raise error from None
        except BaseException:
            # The conversation broke off midway (a callback here raised): that worker may still be
            # in it, so it never gets another job.
            self._discard(worker)
            worker = None
            raise
        finally:
            self._idle.put(worker)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

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

    def converse(self, job: TransferJob, spool_fd: int | None, admission, on_progress, should_stop,
                 silence_limit: float):
        """Serves the worker through one job: its SentFile, or its error as a value (to be raised).
        Anything raised instead means the conversation broke off: the caller discards the worker."""
        passed = None  # the request the worker was let to send, until it reports how it ended
        try:
            self.conn.send(job)
            if spool_fd is not None:
                send_handle(self.conn, spool_fd, self.process.pid)
            while True:
                if not self.conn.poll(silence_limit):
                    raise _WorkerLost(f"silent for {silence_limit:.0f} s")
                message = self.conn.recv()
                if not isinstance(message, tuple) or len(message) < 2 or message[0] != job.job_id:
                    raise _WorkerLost(f"a message out of turn: {str(message)[:80]}")
                kind, args = message[1], message[2:]
                if kind == "admit":
                    try:
                        passed = admission.admit(*args)
                    except NotSent as exc:  # held back or not its turn: the worker raises it
                        self.conn.send(("refused", *_portable(exc)))
                    else:
                        self.conn.send(("ok",))
                elif kind == "outcome":
                    admission.report(passed, _rebuilt(*args[0]) if args[0] else None, args[1])
                    passed = None
                elif kind == "should_stop":
                    self.conn.send(bool(should_stop()))
                elif kind == "progress":
                    on_progress(args[0])
                elif kind == "reading":
                    pass  # alive: the poll above starts its silence limit again
                elif kind == "done":
                    return args[0]
                elif kind == "error":
                    return _rebuilt(*args, job=job)
                else:
                    raise _WorkerLost(f"unknown message {kind!r}")
        except (EOFError, OSError) as exc:
            raise _WorkerLost(type(exc).__name__) from None
        finally:
            if passed is not None:  # its outcome will never come: its probe's turn is free again
                admission.report(passed, NotSent())


# --- errors across the process boundary ---------------------------------------------------------

def _portable(exc: BaseException) -> tuple:
    """(module, class name, message, attributes) of an error the engine knows how to settle."""
    if isinstance(exc, OSError):
        return ("builtins", "OSError", exc.strerror or str(exc), {"errno": exc.errno})
    if isinstance(exc, (Fs360Error, Cancelled)):
        return (type(exc).__module__, type(exc).__qualname__, str(exc), dict(vars(exc)))
    # A bug: retried a few times (engine/transfer.py), with its traceback in the daemon's log.
    return ("fs360.errors", "InternalError", f"upload process error: {type(exc).__name__}: {exc}",
            {"traceback": "".join(traceback.format_exception(exc))})


def _rebuilt(module: str, name: str, message: str, attributes: dict, job: TransferJob | None = None) -> BaseException:
    if (module, name) == ("builtins", "OSError"):
        return OSError(attributes.get("errno") or 0, message)
    cls = getattr(importlib.import_module(module), name, None)
    if not (isinstance(cls, type) and issubclass(cls, (Fs360Error, Cancelled))):
        return InternalError(f"upload process error: {name}: {message}")
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    exc.__dict__.update(attributes)
    if isinstance(exc, InternalError) and attributes.get("traceback"):
        log.error("%s: %s\n%s", job.server_name if job else "upload", message, attributes["traceback"].rstrip())
    return exc


# --- the worker process ---------------------------------------------------------------------------

class _Conversation:
    """The worker's side of one job's conversation: every message carries the job's id."""

    def __init__(self, conn: Connection):
        self._conn = conn
        self.job_id = 0

    def tell(self, *message) -> None:
        self._conn.send((self.job_id, *message))

    def ask(self, *question):
        self.tell(*question)
        return self._conn.recv()


class _ParentAdmission:
    """The daemon's admission (api/troubles.py), asked over the socket: every request is held
    back, paced and counted where all are."""

    def __init__(self, conversation: _Conversation):
        self._conversation = conversation

    def admit(self, endpoint: str, wait: bool = True, account_probe: bool = False, counted: bool = True):
        answer = self._conversation.ask("admit", endpoint, wait, account_probe, counted)
        if answer[0] == "refused":
            raise _rebuilt(*answer[1:])

    def report(self, passed, error: BaseException | None, reached: bool = True) -> None:
        self._conversation.tell("outcome", _portable(error) if error is not None else None, reached)


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
    conversation = _Conversation(conn)
    client = ApiClient(settings, admission=_ParentAdmission(conversation))
    buffer = None
    while True:
        job: TransferJob = conn.recv()
        conversation.job_id = job.job_id
        spool = None if job.archive is not None else recv_handle(conn)
        if buffer is None or len(buffer) < job.chunk_size:
            # Private: MADV_DONTNEED below really gives its pages back (a shared one keeps them).
            buffer = mmap.mmap(-1, max(job.chunk_size, mmap.PAGESIZE), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        try:
            result = run_job(client, job, spool, buffer,
                             on_progress=lambda received: conversation.tell("progress", received),
                             should_stop=lambda: conversation.ask("should_stop"),
                             on_reading=lambda: conversation.tell("reading"))
        except (EOFError, BrokenPipeError, ConnectionResetError):
            raise
        except Exception as exc:  # every outcome goes back to the daemon, which settles it
            conversation.tell("error", *_portable(exc))
            continue
        finally:
            if spool is not None:
                os.close(spool)
            # An idle worker holds no chunk: after a big file, a chunk_size of resident pages
            # per worker would stay for every small file that follows.
            buffer.madvise(mmap.MADV_DONTNEED)
        conversation.tell("done", result)

