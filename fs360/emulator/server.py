"""The emulator's HTTP server: every endpoint of api.md Part A with the Part B
choices (or, with ``--profile vendor``, Part C's), plus the ``/_emulator``
introspection API.

Every choice made where api.md is silent, the profiles, the faults and the
introspection API are written down in doc/EMULATOR.md; keep it in step.
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
import queue
import random
import re
import secrets
import socket
import ssl
import string
import sys
import threading
import time
import traceback
import zipfile
from collections import deque
from datetime import datetime, timezone
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote_to_bytes, urlsplit

from .faults import ENDPOINTS, FaultSet, FaultSpecError
from .profiles import (  # noqa: F401  (DEFAULT_EXTENSIONS and EXT_GROUPS: imported from here by callers)
    DEFAULT_EXTENSIONS, EXT_GROUPS, IMAGES, MESH, POINTS, PROFILES, RECORD_OWN, SPLATS, VIDEO, extension_of,
    flatten_name,
)
from .store import Store

API_PREFIX = "/api/v1"
EMU_PREFIX = "/_emulator"
SCOPE_WRITE = "projects:write"
SCOPE_READ = "projects:read"

# The server's own copy of api.md's table (endpoint -> (limit, window seconds)). Kept apart from
# the client's fs360.config on purpose: the emulator stands for a foreign server, so a client
# bug in its table must not be mirrored here.
RATE_LIMITS = {
    "open_session": (30, 3600.0),
    "put_file": (1200, 60.0),
    "get_file": (600, 60.0),
    "get_session": (120, 60.0),
    "delete_session": (60, 60.0),
    "create_project": (10, 3600.0),
    "get_project": (60, 60.0),
    "list_projects": (60, 60.0),  # not in api.md's table (vendor profile only): as polling a project
}

UPLOAD_ID_RE = re.compile(r"[A-Za-z0-9]{4,64}\Z")
CR_RE = re.compile(r"bytes[ ]+([0-9]{1,19})-([0-9]{1,19})/([0-9]{1,19}|\*)\Z")
ID_ALPHABET = string.ascii_letters + string.digits

GiB = 1 << 30
DRAIN_LIMIT = 64 << 20
JSON_BODY_LIMIT = 1 << 20
SEG = 1 << 20  # body read segment size
NBUF = 8  # segments per connection: a whole 8 MiB chunk can arrive while the body worker drains the last one
SOCKET_TIMEOUT = 60.0

REASONS = {
    100: "Continue", 200: "OK", 201: "Created", 307: "Temporary Redirect", 400: "Bad Request", 401: "Unauthorized",
    402: "Payment Required", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    409: "Conflict", 411: "Length Required", 413: "Content Too Large", 414: "URI Too Long",
    415: "Unsupported Media Type", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
}
ACCOUNT_STATUSES = (401, 402, 403)
STREAM_BLOCK = 1 << 16  # huge_body is written in blocks of this size from one buffer


def html_error_page(status: int) -> bytes:
    """The page a reverse proxy in front of the API answers with."""
    title = f"{status} {REASONS.get(status, 'Error')}"
    return (f"<!DOCTYPE html>\n<html><head><title>{title}</title></head>"
            f"<body><center><h1>{title}</h1></center><hr><center>nginx</center></body></html>\n").encode()


def _padding_json(size: int):
    """`size` bytes of what looks like an answer ({"received":0,"padding":"xxx…"}; only x's when
    `size` is too small for that), as blocks of one shared buffer."""
    head, tail = b'{"received":0,"padding":"', b'"}'
    if size < len(head) + len(tail):
        head = tail = b""
    fill = memoryview(b"x" * STREAM_BLOCK)
    yield head
    left = size - len(head) - len(tail)
    while left > 0:
        n = min(left, STREAM_BLOCK)
        yield fill[:n]
        left -= n
    yield tail


def _slow_json(n: int, answer: bytes, step: float):
    """`answer` behind JSON whitespace, `n` bytes in all, one byte every `step` seconds.
    A thread per connection: the sleeps hold up only this client."""
    pad = n - len(answer)
    for i in range(n):
        time.sleep(step)
        yield b" " if i < pad else answer[i - pad : i - pad + 1]


class Abort(Exception):
    """Close the connection right away (reset when rst=True), no response."""

    def __init__(self, rst=True):
        super().__init__()
        self.rst = rst


def _stderr(text: str) -> None:
    """A line for the operator; a stderr that cannot be written (say, on the
    emulator's own full disk) must not cost the client its response."""
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):  # AttributeError: no stderr at all
        pass


def _error_body(code: str, **extra) -> dict:
    return {"error": code, **extra}


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------
# body pipeline
class _Op:
    """One piece of body work handed to the _BodyWorker; wait() re-raises its error."""

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


class _BodyWorker:
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

    def submit(self, fn, *args) -> _Op:
        op = _Op(fn, args)
        self.q.put(op)
        return op


class StorageError(Exception):
    """The emulator's own disk failed (full, gone): a 500, never a hung client."""


def _pwrite_all(fd, mv, off):
    try:
        w = 0
        while w < len(mv):
            w += os.pwrite(fd, mv[w:], off + w)
    except OSError as e:
        raise StorageError(f"{e.strerror or e}") from None


class _RunningHash:
    """sha256 of a --discard file's first `upto` bytes, kept while its chunks
    arrive in order.  Everything but `h` belongs to the handler holding the
    file's lock; `h` is replaced by body-worker ops, or inline once settled."""

    __slots__ = ("h", "upto", "last", "last_worker")

    def __init__(self):
        self.h = hashlib.sha256()
        self.upto = 0
        self.last: _Op | None = None  # the commit of the newest PUT ...
        self.last_worker: _BodyWorker | None = None  # ... queued on this worker

    def settled(self):
        """Wait until no body-worker op of this file is pending."""
        if self.last is not None:
            self.last.wait()
        self.last = self.last_worker = None


class _PutHash:
    """The hash of one PUT in progress: a fork of the file's hash that becomes
    the file's hash only if the whole body arrives (a cut body leaves no trace)."""

    __slots__ = ("h",)

    def fork(self, rh):
        self.h = rh.h.copy()

    def update(self, mv):
        self.h.update(mv)

    def commit(self, rh):
        rh.h = self.h


class _Buf:
    __slots__ = ("mv", "op")

    def __init__(self, mv):
        self.mv = mv
        self.op: _Op | None = None  # body work still reading this buffer

    def settle(self):
        op, self.op = self.op, None
        if op is not None:
            op.wait()


class RateLimiter:
    def __init__(self):
        self.lock = threading.Lock()
        self.windows: dict = {}

    def check(self, key: str, endpoint: str, scale: float):
        limit, window = RATE_LIMITS[endpoint]
        window *= scale
        now = time.monotonic()
        with self.lock:
            dq = self.windows.get((key, endpoint))
            if dq is None:
                dq = self.windows[(key, endpoint)] = deque()
            while dq and dq[0] <= now - window:
                dq.popleft()
            if len(dq) >= limit:
                return max(1, math.ceil(dq[0] + window - now))
            dq.append(now)
            return None

    def reset(self):
        with self.lock:
            self.windows.clear()


# --------------------------------------------------------------------------
class Emulator:
    """All state shared by the request handlers."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.profile = PROFILES[getattr(cfg, "profile", "default")]()
        self.store = Store(cfg.data_dir)
        self.discard = cfg.discard
        self.keys = cfg.keys
        self.allowed = list(cfg.allowed_extensions)
        self.allowed_set = set(self.allowed)
        self.flags_lock = threading.Lock()
        self.flags = dict(
            quota_exceeded=cfg.quota_exceeded,
            tariff_forbids_upload=cfg.tariff_forbids_upload,
            project_tariff=cfg.project_tariff,
            project_name_collision=cfg.project_name_collision,
            max_file_size=cfg.max_file_size,
            max_session_size=cfg.max_session_size,
            rate_limits=cfg.rate_limits,
            rate_window_scale=cfg.rate_window_scale,
            processing_seconds=cfg.processing_seconds,
            session_lifetime=cfg.session_lifetime,
        )
        self.initial_flags = dict(self.flags)
        self.rate = RateLimiter()
        self.faults = FaultSet(cfg.faults)
        self.rng = random.Random(cfg.seed) if cfg.seed is not None else None
        self.rng_lock = threading.Lock()
        self.stats_lock = threading.Lock()
        self.stats: dict[str, int] = {}
        self.violations: list[dict] = []
        self.file_locks: dict = {}
        self.file_locks_lock = threading.Lock()
        self.after409: dict = {}  # (upload_id, name) -> received given in the 409
        self.hashes: dict[int, _RunningHash] = {}
        self.projects_lock = threading.Lock()
        self.log = cfg.log and not cfg.quiet
        # A runtime account fault: {"status", "error", "endpoints"} or None (see /_emulator/account).
        self.account_lock = threading.Lock()
        self.account = None

    # -- helpers ----------------------------------------------------------
    def flag(self, name):
        with self.flags_lock:
            return self.flags[name]

    def new_id(self, n=8) -> str:
        with self.rng_lock:
            if self.rng is not None:
                return "".join(self.rng.choice(ID_ALPHABET) for _ in range(n))
        return "".join(secrets.choice(ID_ALPHABET) for _ in range(n))

    def count(self, method, endpoint, status):
        k = f"{method} {endpoint} {status}"
        with self.stats_lock:
            self.stats[k] = self.stats.get(k, 0) + 1

    def violation(self, kind, upload_id, name, detail):
        with self.stats_lock:
            self.violations.append(
                {"kind": kind, "upload_id": upload_id, "name": name, "detail": detail, "time": time.time()}
            )

    def file_lock(self, key) -> threading.Lock:
        with self.file_locks_lock:
            lk = self.file_locks.get(key)
            if lk is None:
                lk = self.file_locks[key] = threading.Lock()
            return lk

    def live_session(self, upload_id):
        """The session's row, or None when it is unknown or expired (then purged).
        Every API request to a session comes through here: with idle expiry
        (vendor profile) this is where its clock restarts."""
        row = self.store.session(upload_id)
        if row is None:
            return None
        now = time.time()
        if row["expires_at"] <= now:
            self.purge(upload_id)
            return None
        if self.profile.idle_expiry:
            self.store.run("UPDATE sessions SET expires_at=? WHERE upload_id=?",
                           (now + self.flag("session_lifetime"), upload_id))
        return row

    def account_fault(self, endpoint):
        """The runtime account fault's (status, error) when it covers `endpoint`, else None."""
        with self.account_lock:
            a = self.account
        if a is None or (a["endpoints"] is not None and endpoint not in a["endpoints"]):
            return None
        return a["status"], a["error"]

    def discard_projects_of(self, upload_id):
        """Vendor DELETE /uploads/{id}: the projects made from the session that are
        not ready yet lose their input; their status stays where it was."""
        with self.projects_lock:
            for prow in self.store.all("SELECT * FROM projects WHERE upload_id=? AND discarded_status IS NULL",
                                       (upload_id,)):
                st = self.project_status(prow)
                if st < 100:
                    self.store.run("UPDATE projects SET discarded_status=? WHERE id=?", (st, prow["id"]))

    def purge(self, upload_id=None):
        """Forget a session (or, with None, every session and project) with its
        in-memory file state."""
        if upload_id is None:
            self.store.wipe()
            self.hashes.clear()
        else:
            for fid in self.store.purge_session(upload_id):
                self.hashes.pop(fid, None)
        with self.file_locks_lock:
            for table in (self.after409, self.file_locks):
                for k in [k for k in table if upload_id is None or k[0] == upload_id]:
                    del table[k]

    def file_sha256(self, row):
        """sha256 of a complete file, computing it from the blob if needed."""
        if not row["complete"]:
            return None
        if row["sha256"]:
            return row["sha256"]
        if self.discard:
            return None
        h = hashlib.sha256()
        try:
            with open(self.store.blob_path(row["id"]), "rb") as f:
                left = row["total"]
                while left > 0:
                    b = f.read(min(left, 8 << 20))
                    if not b:
                        break
                    h.update(b)
                    left -= len(b)
        except FileNotFoundError:
            if row["total"] != 0:
                return None
        hx = h.hexdigest()
        self.store.run("UPDATE files SET sha256=? WHERE id=?", (hx, row["id"]))
        return hx

    def project_status(self, prow) -> int:
        if "discarded_status" in prow.keys() and prow["discarded_status"] is not None:
            return prow["discarded_status"]
        ps = prow["processing_seconds"]
        if ps <= 0:
            return 100
        el = time.time() - prow["created"]
        if el <= 0:
            return 0
        return min(100, int(el * 100 / ps))


# --------------------------------------------------------------------------
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fs360-emulator"
    timeout = SOCKET_TIMEOUT
    emu: Emulator = None  # set on the subclass made by make_server

    # -- plumbing -----------------------------------------------------------
    def setup(self):
        super().setup()
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self._plain = not isinstance(self.connection, ssl.SSLSocket)
        if not self._plain:
            self.connection.do_handshake()
        self._bufs = None
        self._worker = None

    def finish(self):
        try:
            super().finish()
        finally:
            if self._worker is not None:
                self._worker.stop()

    def log_message(self, fmt, *args):  # never log by default
        if self.emu is not None and self.emu.log:
            _stderr("emulator: %s\n" % (fmt % args))

    def handle(self):
        try:
            super().handle()
        except Exception:
            pass

    def handle_expect_100(self):
        self._expect = True
        return True

    def send_error(self, code, message=None, explain=None):
        err = {400: "bad_request", 414: "uri_too_long", 431: "headers_too_large"}.get(code, "bad_request")
        self.close_connection = True
        try:
            self._write_response(code, json.dumps({"error": err}).encode(), "application/json", close=True)
        except OSError:
            pass

    def handle_one_request(self):
        self._expect = False
        self._dropped = False
        self._trickle = 0.0
        self._extra_fields = False
        self._linger = False
        self._body_left = 0
        self._chunked = False
        self._content_length = None
        self._endpoint = None
        self.command = ""
        self.request_version = "HTTP/1.1"
        try:
            self.raw_requestline = self.rfile.readline(65537)
            if len(self.raw_requestline) > 65536:
                self.requestline = ""
                self.send_error(414)
                return
            if not self.raw_requestline:
                self.close_connection = True
                return
            if not self.parse_request():
                self.close_connection = True
                return
            if self.request_version == "HTTP/0.9":
                self.send_error(400)
                return
            self.dispatch()
            if self._linger:
                self._lingering_close()
        except Abort as a:
            self._abort(a.rst)
        except (TimeoutError, ConnectionError, ssl.SSLError, OSError):
            self.close_connection = True
        except Exception:  # a bug of the emulator: keep serving, but never hide it
            # stderr and the violations list make every test that checks either fail.
            detail = traceback.format_exc()
            _stderr(detail)
            self.emu.violation("emulator_internal_error", None, None, detail[-2000:])
            if self._endpoint:
                self.emu.count(self.command, self._endpoint, 500)
            self.close_connection = True
            try:
                self._write_response(500, b'{"error":"internal_error"}', "application/json", close=True)
            except Exception:
                pass

    def _abort(self, rst=True):
        self.close_connection = True
        if rst:
            try:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            except OSError:
                pass
        self.server.mark_aborted(self.connection)

    def _lingering_close(self):
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(2.0)
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline:
                if not self.connection.recv(1 << 16):
                    break
        except OSError:
            pass

    # -- body handling --------------------------------------------------------
    def _parse_framing(self) -> bool:
        """Sets _content_length/_chunked. Returns False (after a 400) when bad."""
        te = self.headers.get_all("Transfer-Encoding") or []
        if te:
            if any(t.strip().lower() not in ("chunked", "identity") for t in ",".join(te).split(",")):
                self._bad_framing()
                return False
            if any(t.strip().lower() == "chunked" for t in ",".join(te).split(",")):
                self._chunked = True
                return True
        cls = self.headers.get_all("Content-Length") or []
        vals = {v.strip() for v in cls}
        if len(vals) > 1:
            self._bad_framing()
            return False
        if vals:
            v = vals.pop()
            if not v.isdigit() or len(v) > 19:
                self._bad_framing()
                return False
            self._content_length = int(v)
            self._body_left = self._content_length
        return True

    def _bad_framing(self):
        self.close_connection = True
        self._body_left = 0
        self.respond(400, {"error": "bad_request"})

    def _send_continue(self):
        if self._expect:
            self._expect = False
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _read_into(self, mv) -> int:
        """Read exactly len(mv) body bytes (fewer only at EOF/timeout)."""
        n = len(mv)
        got = 0
        rf = self.rfile
        try:
            if self._plain and n > 65536:
                # Take what the buffered reader already holds, then read the socket
                # directly into the segment, skipping the reader's 8 KiB copies.
                # (MSG_WAITALL would do nothing: a socket with a timeout is
                # non-blocking underneath, so each recv returns what has arrived.)
                pk = rf.peek(1)
                if pk:
                    got = rf.readinto(mv[: min(len(pk), n)])
                sock = self.connection
                while got < n:
                    r = sock.recv_into(mv[got:], n - got)
                    if not r:
                        break
                    got += r
            while got < n:
                r = rf.readinto(mv[got:])
                if not r:
                    break
                got += r
        except (TimeoutError, OSError):
            pass
        self._body_left -= got
        return got

    def _read_small_body(self):
        """Whole body (<= 1 MiB) as bytes, or None after responding."""
        if self._chunked:
            self._send_continue()
            data = bytearray()
            while True:
                line = self.rfile.readline(1024)
                if not line:
                    raise Abort(False)
                try:
                    size = int(line.split(b";")[0].strip(), 16)
                except ValueError:
                    self.close_connection = True
                    self._chunked = False
                    self.respond(400, {"error": "bad_request"})
                    return None
                if size == 0:
                    while True:  # trailers
                        t = self.rfile.readline(65537)
                        if t in (b"\r\n", b"\n", b""):
                            break
                    break
                if len(data) + size > JSON_BODY_LIMIT:
                    self.close_connection = True
                    self.respond(413, {"error": "request_too_large"})
                    return None
                chunk = self.rfile.read(size)
                if len(chunk) < size:
                    raise Abort(False)
                data += chunk
                self.rfile.readline(3)
            self._chunked = False
            return bytes(data)
        n = self._content_length or 0
        if n > JSON_BODY_LIMIT:
            self.respond(413, {"error": "request_too_large"})
            return None
        if n:
            self._send_continue()
        data = self.rfile.read(n) if n else b""
        self._body_left = 0
        if len(data) < n:
            raise Abort(False)
        return data

    def _settle_body(self):
        """Before a response: drop an unconsumed body or plan a close."""
        if self._chunked:
            self.close_connection = True
            self._linger = True
            return
        if self._body_left <= 0:
            return
        if self._expect or self._body_left > DRAIN_LIMIT:
            self.close_connection = True
            self._linger = True
            return
        buf = self._buffers()[0]
        buf.settle()
        while self._body_left > 0:
            n = min(self._body_left, len(buf.mv))
            if self._read_into(buf.mv[:n]) < n:
                raise Abort(False)

    def _buffers(self):
        if self._bufs is None:
            # One page-aligned private region, in huge pages where the kernel allows
            # (fewer TLB misses in the kernel's copies into it: about 8% faster here).
            region = mmap.mmap(-1, SEG * NBUF, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            try:
                region.madvise(mmap.MADV_HUGEPAGE)
            except (AttributeError, OSError):
                pass
            whole = memoryview(region)
            self._bufs = [_Buf(whole[i * SEG : (i + 1) * SEG]) for i in range(NBUF)]
        return self._bufs

    def _body_worker(self):
        """This connection's body worker, started for its first body of several segments."""
        if self._worker is None:
            self._worker = _BodyWorker()
        return self._worker

    # -- responses --------------------------------------------------------------
    def _head(self, status, ctype, length, close, headers=()) -> bytes:
        lines = [
            f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}",
            "Server: fs360-emulator",
            f"Content-Type: {ctype}",
            f"Content-Length: {length}",
            "Connection: close" if close else "Connection: keep-alive",
        ]
        for k, v in headers:
            lines.append(f"{k}: {v}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _write_response(self, status, body: bytes, ctype, close, headers=()):
        head = self._head(status, ctype, len(body), close, headers)
        if self.command == "HEAD":
            body = b""
        if self._trickle > 0 and body:
            self.wfile.write(head)
            step = self._trickle / len(body)
            for i in range(len(body)):
                time.sleep(step)
                self.wfile.write(body[i : i + 1])
        else:
            self.wfile.write(head + body)

    def _before_response(self, status):
        """What every answer does first: drop the unread body, count it (or drop it)."""
        self._settle_body()
        if self._dropped:  # drop_response fault: the work is done, the answer is never sent
            self.emu.count(self.command, self._endpoint, "dropped")
            raise Abort(False)
        if self._endpoint is not None:
            self.emu.count(self.command, self._endpoint, status)

    def respond(self, status, obj=None, *, raw=None, ctype="application/json", headers=()):
        self._before_response(status)
        if self._extra_fields and status >= 400 and isinstance(obj, dict) and "error" in obj:
            obj = {**obj, "message": f"{REASONS.get(status, 'Error')}: {obj['error']}",
                   "detail": f"the server refused this {self.command} request ({status})"}
        body = raw if raw is not None else json.dumps(obj, separators=(",", ":")).encode()
        self._write_response(status, body, ctype, self.close_connection, headers)
        if self.emu.log:
            self.log_message('"%s %s" %s', self.command, self.path.split("?")[0][:200], status)

    def respond_stream(self, status, length, blocks, ctype="application/json"):
        """An answer of `length` bytes written block by block: never whole in memory."""
        self._before_response(status)
        self.wfile.write(self._head(status, ctype, length, self.close_connection))
        if self.command != "HEAD":
            for block in blocks:
                self.wfile.write(block)

    def error(self, status, code, **extra):
        self.respond(status, _error_body(code, **extra))

    # -- dispatch ---------------------------------------------------------------
    def dispatch(self):
        if not self._parse_framing():
            return
        path = self._request_path()
        m = self.command
        emu = self.emu
        if path == EMU_PREFIX or path.startswith(EMU_PREFIX + "/"):
            return self.introspect(m, path[len(EMU_PREFIX) :])
        if not path.startswith(API_PREFIX + "/"):
            return self.error(404, "not_found")
        rest = path[len(API_PREFIX) + 1 :]
        parts = rest.split("/", 2)
        route = None  # (endpoint, allowed methods, method->handler)
        if parts == ["uploads"]:
            route = {"POST": ("open_session", self.open_session, ())}
        elif len(parts) == 2 and parts[0] == "uploads" and parts[1]:
            route = {
                "GET": ("get_session", self.get_session, (parts[1],)),
                "DELETE": ("delete_session", self.delete_session, (parts[1],)),
            }
        elif len(parts) == 3 and parts[0] == "uploads" and parts[1]:
            route = {
                "PUT": ("put_file", self.put_file, (parts[1], parts[2])),
                "GET": ("get_file", self.get_file, (parts[1], parts[2])),
            }
        elif parts == ["projects"]:
            route = {"POST": ("create_project", self.create_project, ())}
            if emu.profile.list_projects:
                route["GET"] = ("list_projects", self.list_projects, ())
        elif len(parts) == 2 and parts[0] == "projects" and parts[1]:
            route = {"GET": ("get_project", self.get_project, (parts[1],))}
        if route is None:
            return self.error(404, "not_found")
        if m not in route:
            return self.respond(405, {"error": "method_not_allowed"}, headers=[("Allow", ", ".join(route))])
        endpoint, fn, args = route[m]
        self._endpoint = endpoint
        # auth
        auth = self.headers.get("Authorization", "")
        scheme, _, key = auth.strip().partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            return self.error(401, emu.profile.missing_key_error)
        scopes = emu.keys.get(key)
        if scopes is None:
            return self.error(401, emu.profile.unknown_key_error)
        need = SCOPE_READ if endpoint in ("get_project", "list_projects") else SCOPE_WRITE
        if need not in scopes:
            return self.error(403, "insufficient_scope")
        # rate limit
        if emu.flag("rate_limits"):
            ra = emu.rate.check(key, endpoint, emu.flag("rate_window_scale"))
            if ra is not None:
                return self.respond(429, {"error": "rate_limited"}, headers=[("Retry-After", str(ra))])
        account = emu.account_fault(endpoint)
        if account is not None:
            return self.error(*account)
        # faults: the modifiers first, then a terminal one
        d = emu.faults.decide(endpoint)
        if d.latency:
            time.sleep(d.latency)
        self._trickle = d.trickle
        self._extra_fields = d.extra_fields
        if d.rollback is not None:
            self._rollback_received(args, d.rollback)
        k = d.kind
        if k is not None and k != "drop_response":
            return self.apply_fault(k, d, endpoint, args)
        if k == "drop_response":
            self._dropped = True
        fn(*args)

    def _request_path(self) -> str:
        """The request target's path, without query or fragment."""
        path = self.path
        if not path.startswith("/"):
            try:
                path = urlsplit(path).path or "/"
            except ValueError:
                path = "/"
        return path.split("?", 1)[0].split("#", 1)[0]

    def apply_fault(self, k, d, endpoint, args):
        self.emu.count(self.command, endpoint, "fault:" + k)
        rule = d.rule
        if k in ("error_500", "error_502", "error_503"):
            return self.respond(int(k[-3:]), {"error": "internal_error"})
        if k == "rate_limit_burst":
            return self.respond(429, {"error": "rate_limited"}, headers=[("Retry-After", str(d.retry_after))])
        if k == "retry_after_none":
            return self.respond(429, {"error": "rate_limited"})
        if k == "retry_after_date":
            when = formatdate(time.time() + rule["retry_after"], usegmt=True)
            return self.respond(429, {"error": "rate_limited"}, headers=[("Retry-After", when)])
        if k == "retry_after_huge":
            return self.respond(429, {"error": "rate_limited"}, headers=[("Retry-After", str(rule["retry_after"]))])
        if k == "html_error":
            status = rule["status"]
            return self.respond(status, raw=html_error_page(status), ctype="text/html; charset=utf-8")
        if k == "slow_loris":
            answer = b'{"error":"internal_error"}'
            n = max(len(answer), round(rule["duration"] / rule["seconds"]))
            return self.respond_stream(503, n, _slow_json(n, answer, rule["seconds"]))
        if k == "huge_body":
            return self.respond_stream(200, rule["size"], _padding_json(rule["size"]))
        if k == "redirect":
            return self.respond(307, raw=b"", ctype="text/html", headers=[("Location", self._redirect_to(rule))])
        if k == "invalid_json":
            return self.respond(200, raw=b'{"received": 12, "total": <html>not json')
        if k == "cut_body":
            if endpoint == "put_file" and self._body_left > 0 and not self._chunked:
                self._send_continue()
                n = min(self._body_left // 2, 1 << 20)
                if n:
                    buf = self._buffers()[0]
                    buf.settle()  # the body worker may still be hashing the last PUT out of it
                    self._read_into(buf.mv[:n])
            raise Abort(True)
        if k == "received_gt_total":
            total = self._fault_total(endpoint, args)
            return self.respond(200, {"received": total + 1, "total": total, "complete": True})
        if k == "missing_fields":
            body = {
                "open_session": {"expires_in_seconds": self.emu.flag("session_lifetime")},
                "put_file": {"total": self._fault_total(endpoint, args)},
                "get_file": {"total": self._fault_total(endpoint, args)},
                "get_session": {"files": []},
                "delete_session": {},
                "create_project": {"status": 0, "message": "processing_started"},
                "get_project": {"name": args[0] if args else ""},
                "list_projects": {},
            }[endpoint]
            return self.respond(200, body)
        return self.respond(500, {"error": "internal_error"})

    def _redirect_to(self, rule) -> str:
        """The redirect fault's Location: the rule's, or this emulator's sink under another host name."""
        path = self.path if self.path.startswith("/") else self._request_path()
        loc = rule["location"]
        if loc is None:
            host, port = self.server.server_address[:2]
            other = "localhost" if host == "127.0.0.1" else "127.0.0.1"
            scheme = "http" if self._plain else "https"
            return f"{scheme}://{other}:{port}{EMU_PREFIX}/redirected{path}"
        return loc.replace("{path}", path)

    def _rollback_received(self, args, fraction):
        """rollback_received fault: the server loses the tail of an incomplete file."""
        emu = self.emu
        upload_id, raw_name = args
        name = emu.profile.flatten(raw_name)
        if name is None or not UPLOAD_ID_RE.match(upload_id):
            return
        # One statement, no file lock: a PUT racing with it may win, as on a real server.
        emu.store.run("UPDATE files SET received=CAST(received * ? AS INTEGER) WHERE upload_id=? AND name=?"
                      " AND complete=0", (fraction, upload_id, name))

    def _fault_total(self, endpoint, args):
        if endpoint == "put_file":
            cr = self.headers.get("Content-Range")
            if cr:
                mm = CR_RE.match(cr.strip())
                if mm and mm.group(3) != "*":
                    return int(mm.group(3))
            return self._content_length or 0
        name = self.emu.profile.flatten(args[1]) if len(args) > 1 else None
        if name and UPLOAD_ID_RE.match(args[0]):
            row = self.emu.store.one("SELECT total FROM files WHERE upload_id=? AND name=?", (args[0], name))
            if row:
                return row["total"]
        return 0

    # -- API endpoints -------------------------------------------------------------
    def open_session(self):
        emu = self.emu
        if emu.flag("quota_exceeded"):
            return self.error(402, "storage_quota_exceeded")
        if emu.flag("tariff_forbids_upload"):
            return self.error(403, "tariff_forbids_upload")
        lifetime = emu.flag("session_lifetime")
        now = time.time()
        for _ in range(100):
            uid = emu.new_id()
            if emu.store.session(uid) is None and emu.store.one("SELECT 1 FROM projects WHERE name=?", (uid,)) is None:
                break
        emu.store.run("INSERT INTO sessions (upload_id, created, expires_at) VALUES (?,?,?)", (uid, now, now + lifetime))
        self.respond(201, {"upload_id": uid, "expires_in_seconds": emu.profile.expires_in(lifetime)})

    def _session_or_error(self, upload_id):
        if not UPLOAD_ID_RE.match(upload_id):
            self.error(400, "invalid_upload_id")
            return None
        s = self.emu.live_session(upload_id)
        if s is None:
            self.error(404, "upload_session_not_found")
        return s

    def get_session(self, upload_id):
        if self._session_or_error(upload_id) is None:
            return
        rows = self.emu.store.all("SELECT * FROM files WHERE upload_id=? ORDER BY id", (upload_id,))
        with self.emu.file_locks_lock:
            for r in rows:
                self.emu.after409.pop((upload_id, r["name"]), None)
        files = [
            {"name": r["name"], "received": r["received"], "total": r["total"], "complete": bool(r["complete"])}
            for r in rows
        ]
        self.respond(200, {"upload_id": upload_id, "files": files})

    def delete_session(self, upload_id):
        if not UPLOAD_ID_RE.match(upload_id):
            return self.error(400, "invalid_upload_id")
        if self.emu.profile.delete_discards_projects:
            self.emu.discard_projects_of(upload_id)
        self.emu.purge(upload_id)
        self.respond(200, {"deleted": True})

    def get_file(self, upload_id, raw_name):
        if self._session_or_error(upload_id) is None:
            return
        name = self.emu.profile.flatten(raw_name)
        if name is None:
            return self.error(400, "invalid_filename")
        row = self.emu.store.one("SELECT * FROM files WHERE upload_id=? AND name=?", (upload_id, name))
        if row is None:
            return self.error(404, "file_not_found")
        with self.emu.file_locks_lock:
            self.emu.after409.pop((upload_id, name), None)
        self.respond(200, {"received": row["received"], "total": row["total"], "complete": bool(row["complete"])})

    def put_file(self, upload_id, raw_name):
        emu = self.emu
        if self._session_or_error(upload_id) is None:
            return
        name = self.emu.profile.flatten(raw_name)
        if name is None:
            return self.error(400, "invalid_filename")
        ext = extension_of(name)
        if ext not in emu.allowed_set:
            return self.error(415, "extension_not_allowed", extension=ext, allowed=list(emu.allowed))
        ctype = self.headers.get("Content-Type", "")
        if ctype.split(";", 1)[0].strip().lower() != "application/octet-stream":
            return self.error(400, "invalid_content_type")
        if self._chunked or self._content_length is None:
            return self.error(411, "length_required")
        length = self._content_length
        cr = self.headers.get_all("Content-Range")
        if cr is None:
            start, end, total = 0, length - 1, length
        else:
            mm = CR_RE.match(cr[0].strip()) if len(cr) == 1 else None
            if mm is None or mm.group(3) == "*":
                return self.error(400, "invalid_content_range")
            start, end, total = int(mm.group(1)), int(mm.group(2)), int(mm.group(3))
            if start > end or end >= total:
                return self.error(400, "invalid_content_range")
            if length != end - start + 1:
                return self.error(400, "chunk_length_mismatch")
        max_file = emu.flag("max_file_size")
        if total > max_file:
            return self.error(413, "file_too_large", limit=max_file)
        key = (upload_id, name)
        lock = emu.file_lock(key)
        waited = not lock.acquire(blocking=False)
        if waited:
            emu.violation("concurrent_put", upload_id, name, f"PUT bytes {start}-{end}/{total} while another PUT to the file was in flight")
            lock.acquire()
        try:
            if waited and emu.live_session(upload_id) is None:  # deleted/expired while waiting
                status, body = 404, _error_body("upload_session_not_found")
            else:
                status, body = self._put_locked(upload_id, name, key, start, end, total, length)
        finally:
            lock.release()
        # Answered only once the file is free again: a client that sends the next
        # chunk the moment it reads this answer must not find the file still held.
        self.respond(status, body)

    def _put_locked(self, upload_id, name, key, start, end, total, length):
        """Does the PUT with the file's lock held; returns the answer (status, body)."""
        emu = self.emu
        store = emu.store
        row = store.one("SELECT * FROM files WHERE upload_id=? AND name=?", (upload_id, name))
        if row is None:
            # A file's total is fixed when it is created: the session cap is checked once, here.
            # The per-file lock held by put_file makes this the only creator of (upload_id, name).
            max_sess = emu.flag("max_session_size")
            fid = store.create_file(upload_id, name, total, max_sess)
            if fid is None:
                return 413, _error_body("session_too_large", limit=max_sess)
            row = {"id": fid, "received": 0, "complete": 0, "total": total}
        fid = row["id"]
        store.run("UPDATE files SET put_count=put_count+1 WHERE id=?", (fid,))
        with emu.file_locks_lock:
            given = emu.after409.pop(key, None)
        if given is not None and start != given:
            emu.violation(
                "gap_after_409", upload_id, name,
                f"PUT starts at {start} after a 409 that said received={given} (no GET in between)",
            )
        received = row["received"]
        if row["complete"]:
            return 200, {"received": received, "total": row["total"], "complete": True}
        if row["total"] != total:
            return 400, _error_body("invalid_content_range")
        if start > received:
            with emu.file_locks_lock:
                emu.after409[key] = received
            return 409, _error_body("non_contiguous_chunk", received=received)

        # -- accept the body --
        rh = emu.hashes.get(fid)
        if rh is None and received == 0 and emu.discard and emu.cfg.sha256:
            rh = emu.hashes[fid] = _RunningHash()
        if rh is not None and rh.upto != received:  # a gap the hash cannot cover
            emu.hashes.pop(fid, None)
            rh = None
        # A body of one segment is handled inline (worker None): a hand-off to the
        # body worker and back costs more than the work for small files.  With
        # neither a blob nor a hash there is no body work at all.
        has_work = not emu.discard or rh is not None
        worker = self._body_worker() if length > SEG and has_work else None
        put_hash = None
        if rh is not None:
            put_hash = _PutHash()
            if worker is not None and rh.last_worker is worker:
                worker.submit(put_hash.fork, rh)  # queued behind the previous PUT's commit
            else:  # inline, or the previous PUT came on another connection
                rh.settled()
                put_hash.fork(rh)
        try:
            self._accept_body(fid, start, length, received, put_hash, worker)
        except StorageError as e:
            _stderr(f"emulator: cannot store a chunk of {name!r}: {e}\n")
            return 500, _error_body("storage_error")
        new_received = max(received, end + 1)
        overlap = max(0, min(end + 1, received) - start)
        complete = new_received == total
        sha = None
        if put_hash is not None:
            if worker is None:
                put_hash.commit(rh)
            else:
                rh.last = worker.submit(put_hash.commit, rh)
                rh.last_worker = worker
            rh.upto = new_received
            if complete:
                rh.settled()
                sha = rh.h.hexdigest()
                emu.hashes.pop(fid, None)
        store.run(
            "UPDATE files SET received=?, complete=?, overwritten=overwritten+?, sha256=COALESCE(?, sha256) WHERE id=?",
            (new_received, 1 if complete else 0, overlap, sha, fid),
        )
        return 200, {"received": new_received, "total": total, "complete": complete}

    def _accept_body(self, fid, start, length, received, put_hash, worker):
        """Read the body into the buffers and hand each segment to the blob and
        the running hash, through `worker` or inline if it is None.  Returns
        once every byte is written."""
        try:
            fd = -1 if self.emu.discard else self.emu.store.open_blob(fid)
        except OSError as e:
            raise StorageError(f"{e.strerror or e}") from None
        bufs = self._buffers()
        try:
            self._send_continue()
            off = start
            left = length
            i = 0
            while left > 0:
                buf = bufs[i % len(bufs)]
                i += 1
                buf.settle()
                n = min(left, SEG)
                mv = buf.mv[:n]
                if self._read_into(mv) < n:
                    raise Abort(False)  # short body: nothing committed
                if fd >= 0:
                    if worker is None:
                        _pwrite_all(fd, mv, off)
                    else:
                        buf.op = worker.submit(_pwrite_all, fd, mv, off)
                elif put_hash is not None and off + n > received:  # a running hash is kept only in --discard
                    lo = max(0, received - off)  # overlapping bytes are already hashed
                    if worker is None:
                        put_hash.update(mv[lo:])
                    else:
                        buf.op = worker.submit(put_hash.update, mv[lo:])
                off += n
                left -= n
            if fd >= 0:
                for buf in bufs:  # every byte is written before it is acknowledged
                    buf.settle()
        finally:
            if fd >= 0:
                for buf in bufs:  # no write may outlive the descriptor
                    try:
                        buf.settle()
                    except StorageError:
                        pass
                os.close(fd)

    def create_project(self):
        emu = self.emu
        body = self._read_small_body()
        if body is None:
            return
        try:
            req = json.loads(body.decode("utf-8")) if body.strip() else None
        except (UnicodeDecodeError, ValueError):
            req = None
        if not isinstance(req, dict):
            return self.error(400, "invalid_json")
        uid = req.get("upload_id")
        link = req.get("download_link")
        if uid is None and link is None:
            return self.error(400, "upload_id_or_download_link_required")
        if uid is not None and link is not None:
            return self.error(400, "provide_either_upload_id_or_download_link")
        if uid is not None and (not isinstance(uid, str) or not UPLOAD_ID_RE.match(uid)):
            return self.error(400, "invalid_upload_id")
        if link is not None and (
            not isinstance(link, str) or not re.match(r"https?://[^\s/]+", link) or len(link) > 4096
        ):
            return self.error(400, "invalid_download_link")
        pm = req.get("privacy_mode", 0)
        if isinstance(pm, bool) or pm not in (0, 1, 2):
            return self.error(400, "invalid_privacy_mode")
        title = req.get("title")
        if title is not None and not isinstance(title, str):
            return self.error(400, "invalid_title")
        if emu.flag("project_tariff"):
            return self.error(403, "tariff")
        if emu.flag("quota_exceeded"):
            return self.error(402, "storage_quota_exceeded")
        with emu.projects_lock:  # one project per upload_id, even for two POSTs at once
            status, answer = self._create_project_locked(req, uid, link, pm, title)
        self.respond(status, answer)

    def _create_project_locked(self, req, uid, link, pm, title):
        """Creates (or finds) the project with projects_lock held; returns the answer (status, body)."""
        emu = self.emu
        now = time.time()
        files: list[str] = []
        errors = None
        size = 0
        if uid is not None:
            if emu.live_session(uid) is None:
                return 404, _error_body("upload_session_not_found")
            existing = emu.store.one("SELECT * FROM projects WHERE upload_id=?", (uid,))
            if existing is not None:
                emu.store.run("UPDATE projects SET create_count=create_count+1 WHERE id=?", (existing["id"],))
                return 201, {"name": existing["name"], "status": emu.project_status(existing),
                             "message": "processing_started"}
            rows = emu.store.all("SELECT * FROM files WHERE upload_id=? ORDER BY id", (uid,))
            if not rows or any(not r["complete"] for r in rows):
                return 400, _error_body("project_creation_failed")
            for r in rows:
                size += r["total"]
                if extension_of(r["name"]) == "zip" and not emu.discard:
                    try:
                        with zipfile.ZipFile(emu.store.blob_path(r["id"])) as z:
                            files.extend(n for n in z.namelist() if not n.endswith("/"))
                        continue
                    except (zipfile.BadZipFile, OSError, ValueError, RuntimeError, EOFError):
                        errors = f"could not unpack {r['name']}"
                files.append(r["name"])
            name = uid
            if emu.flag("project_name_collision"):
                name = f"{uid}-{emu.new_id(4)}"
        else:
            try:
                seg = urlsplit(link).path.rstrip("/").rsplit("/", 1)[-1]
                seg = emu.profile.flatten(seg) or ""
            except ValueError:
                seg = ""
            files = [seg] if seg else []
            name = emu.new_id()
        while emu.store.one("SELECT 1 FROM projects WHERE name=?", (name,)) is not None:
            name = f"{uid or 'p'}-{emu.new_id(4)}"
        exts = [extension_of(f) for f in files]
        ps = float(emu.flag("processing_seconds"))
        record = {
            "title": title if title is not None else f"Project {name}",
            "size": size,
            "privacy_mode": pm,
            "public_project": 1 if pm == 0 else 0,
            "setups_count": sum(1 for e in exts if e in IMAGES or e in VIDEO),
            "views": 0,
            "errors": errors,
            "epsg": req.get("epsg"),
            "proj4": req.get("proj4"),
            "coord_unit": req.get("coord_unit", "m"),
            "potree": int(any(e in POINTS for e in exts)),
            "glb": int(any(e in MESH for e in exts)),
            "obj": int(any(e == "obj" for e in exts)),
            "ifc": int(any(e == "ifc" for e in exts)),
            "kml": 0,
            "pdf": 0,
            "geotiff": 0,
            "threedgs": int(any(e in SPLATS for e in exts)),
            "video360": int(any(e in VIDEO for e in exts)),
            "files": files,
            "upload_id": uid,
            "download_link": link,
        }
        if emu.profile.pass_through_options:
            record.update((k, v) for k, v in req.items() if k not in record and k not in RECORD_OWN)
        emu.store.run(
            "INSERT INTO projects (name, upload_id, download_link, title, privacy_mode, created, processing_seconds, record)"
            " VALUES (?,?,?,?,?,?,?,?)",
            (name, uid, link, record["title"], pm, now, ps, json.dumps(record)),
        )
        status = emu.project_status({"created": now, "processing_seconds": ps})
        return 201, {"name": name, "status": status, "message": "processing_started"}

    def get_project(self, name_raw):
        try:
            name = unquote_to_bytes(name_raw.encode("latin-1")).decode("utf-8")
        except (UnicodeDecodeError, UnicodeEncodeError):
            return self.error(404, "project_not_found")
        prow = self.emu.store.one("SELECT * FROM projects WHERE name=?", (name,))
        if prow is None:
            return self.error(404, "project_not_found")
        st = self.emu.project_status(prow)
        if prow["discarded_status"] is not None:  # its session was deleted before it was ready
            return self.respond(200, {"name": name, "status": st, "deleted": True, "errors": 1})
        if st < 100:
            return self.respond(200, {"name": name, "status": st})
        rec = json.loads(prow["record"])
        out = {
            "id": prow["id"],
            "name": name,
            "title": prow["title"],
            "status": 100,
            "created": _iso(prow["created"]),
            "updated": _iso(prow["created"] + max(0.0, prow["processing_seconds"])),
        }
        out.update(rec)
        self.respond(200, self.emu.profile.ready_record(out))

    def list_projects(self):
        emu = self.emu
        rows = emu.store.all("SELECT * FROM projects ORDER BY id")
        self.respond(200, {"projects": [
            {"name": r["name"], "title": r["title"], "status": emu.project_status(r),
             "privacy_mode": r["privacy_mode"], "created": _iso(r["created"]),
             "deleted": r["discarded_status"] is not None}
            for r in rows
        ]})

    # -- introspection -------------------------------------------------------------
    def introspect(self, m, sub):
        emu = self.emu
        self._endpoint = None
        sub = sub.rstrip("/")

        def body_json():
            b = self._read_small_body()
            if b is None:
                return Abort
            if not b.strip():
                return None
            try:
                return json.loads(b.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                self.error(400, "invalid_json")
                return Abort

        if sub == "/files" and m == "GET":
            rows = emu.store.all("SELECT * FROM files ORDER BY id")
            out = [
                {
                    "upload_id": r["upload_id"],
                    "name": r["name"],
                    "received": r["received"],
                    "total": r["total"],
                    "complete": bool(r["complete"]),
                    "sha256": emu.file_sha256(r),
                    "overwritten_bytes": r["overwritten"],
                    "put_count": r["put_count"],
                }
                for r in rows
            ]
            return self.respond(200, out)
        if sub.startswith("/progress/") and m == "GET":
            # Counts only: cheap enough to poll while a benchmark runs.
            upload_id = sub[len("/progress/"):]
            row = emu.store.one(
                "SELECT COUNT(*), COALESCE(SUM(complete), 0), COALESCE(SUM(received), 0) FROM files WHERE upload_id=?",
                (upload_id,))
            return self.respond(200, {"upload_id": upload_id, "files": row[0], "complete": row[1], "received": row[2]})
        if sub == "/stats" and m == "GET":
            with emu.stats_lock:
                requests = dict(emu.stats)
                violations = list(emu.violations)
            endpoints: dict[str, int] = {}  # "METHOD endpoint" -> count, whatever the answer
            for k, n in requests.items():
                ep = k.rsplit(" ", 1)[0]
                endpoints[ep] = endpoints.get(ep, 0) + n
            return self.respond(200, {"requests": requests, "endpoints": endpoints, "violations": violations})
        if sub == "/violations" and m == "GET":
            with emu.stats_lock:
                return self.respond(200, list(emu.violations))
        if sub == "/projects" and m == "GET":
            rows = emu.store.all("SELECT * FROM projects ORDER BY id")
            return self.respond(
                200,
                [
                    {"name": r["name"], "upload_id": r["upload_id"], "download_link": r["download_link"],
                     "title": r["title"], "status": emu.project_status(r), "create_count": r["create_count"],
                     "discarded": r["discarded_status"] is not None}
                    for r in rows
                ],
            )
        if sub == "/faults":
            if m == "GET":
                return self.respond(200, emu.faults.describe())
            if m == "DELETE":
                emu.faults = FaultSet(None)
                return self.respond(200, {"faults": "cleared"})
            if m == "POST":
                spec = body_json()
                if spec is Abort:
                    return
                try:
                    emu.faults = FaultSet(spec)
                except FaultSpecError as e:
                    return self.error(400, "invalid_faults", detail=str(e))
                return self.respond(200, emu.faults.describe())
        if sub == "/flags":
            if m == "GET":
                with emu.flags_lock:
                    return self.respond(200, dict(emu.flags))
            if m == "POST":
                d = body_json()
                if d is Abort:
                    return
                if not isinstance(d, dict):
                    return self.error(400, "invalid_flags", detail="expected a JSON object")
                err = None
                with emu.flags_lock:
                    for k, v in d.items():
                        if k not in emu.flags:
                            err = f"unknown flag {k!r}; known: {sorted(emu.flags)}"
                            break
                        old = emu.flags[k]
                        if isinstance(old, bool):
                            if not isinstance(v, bool):
                                err = f"flag {k!r} must be a boolean"
                                break
                        elif isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                            err = f"flag {k!r} must be a non-negative number"
                            break
                    if err is None:
                        emu.flags.update(d)
                        out = dict(emu.flags)
                if err:
                    return self.error(400, "invalid_flags", detail=err)
                return self.respond(200, out)
        if sub == "/sessions" and m == "GET":
            now = time.time()
            rows = emu.store.all("SELECT * FROM sessions ORDER BY created")
            return self.respond(200, [
                {"upload_id": r["upload_id"], "created": r["created"], "expires_at": r["expires_at"],
                 "expires_in": r["expires_at"] - now}
                for r in rows
            ])
        if sub == "/account":
            if m == "GET":
                with emu.account_lock:
                    return self.respond(200, {"account": emu.account})
            if m in ("POST", "DELETE"):
                d = body_json() if m == "POST" else None
                if d is Abort:
                    return
                try:
                    account = parse_account_fault(d)
                except ValueError as e:
                    return self.error(400, "invalid_account", detail=str(e))
                with emu.account_lock:
                    emu.account = account
                return self.respond(200, {"account": account})
        if sub.startswith("/redirected/"):
            return self.redirected(m, sub[len("/redirected"):])
        if sub.startswith("/expire/") and m == "POST":
            uid = sub[len("/expire/") :]
            if emu.store.session(uid) is None:
                return self.error(404, "upload_session_not_found")
            emu.store.run("UPDATE sessions SET expires_at=? WHERE upload_id=?", (time.time() - 1, uid))
            return self.respond(200, {"expired": True})
        if sub == "/reset" and m == "POST":
            d = body_json()
            if d is Abort:
                return
            with emu.stats_lock:
                emu.stats.clear()
                emu.violations.clear()
            emu.rate.reset()
            emu.faults = FaultSet(None)
            with emu.account_lock:
                emu.account = None
            with emu.flags_lock:
                emu.flags = dict(emu.initial_flags)
            if isinstance(d, dict) and d.get("data"):
                emu.purge()
            return self.respond(200, {"reset": True})
        if sub == "/health" and m == "GET":
            return self.respond(200, {"ok": True, "discard": emu.discard, "profile": emu.profile.name})
        known = {"/files", "/stats", "/violations", "/projects", "/faults", "/flags", "/reset", "/health", "/sessions",
                 "/account"}
        if sub in known or sub.startswith(("/expire/", "/progress/")):
            return self.error(405, "method_not_allowed")
        return self.error(404, "not_found")


    def redirected(self, m, path):
        """The sink a followed redirect fault lands on: it answers 200 (for a file: complete,
        though nothing is stored) and records that a client trusted another host."""
        emu = self.emu
        sent = "with" if self.headers.get("Authorization") else "without"
        emu.violation("redirect_followed", None, None,
                      f"{m} {path[:200]} followed a redirect to another host, {sent} the Authorization header")
        emu.count(m, "redirected", 200)
        parts = path[len(API_PREFIX) + 1:].split("/", 2) if path.startswith(API_PREFIX + "/") else []
        if len(parts) == 3 and parts[0] == "uploads" and m in ("PUT", "GET"):
            total = self._fault_total("put_file" if m == "PUT" else "get_file", (parts[1], parts[2]))
            return self.respond(200, {"received": total, "total": total, "complete": True})
        return self.respond(200, {"redirected": True})


def parse_account_fault(d):
    """A runtime account fault from its JSON ({} or null clears it); raises ValueError."""
    if d is None or d == {}:
        return None
    if not isinstance(d, dict):
        raise ValueError("expected a JSON object")
    unknown = set(d) - {"status", "error", "endpoints"}
    if unknown:
        raise ValueError(f"unknown fields {sorted(unknown)}")
    status = d.get("status")
    if status not in ACCOUNT_STATUSES or isinstance(status, bool):
        raise ValueError(f"status must be one of {list(ACCOUNT_STATUSES)}")
    error = d.get("error")
    if not isinstance(error, str) or not error:
        raise ValueError("error must be a non-empty string")
    eps = d.get("endpoints")
    if eps == "*":
        eps = None
    if eps is not None:
        if not isinstance(eps, list) or not eps or any(e not in ENDPOINTS for e in eps):
            raise ValueError(f"endpoints must be '*' or a list of {list(ENDPOINTS)}")
    return {"status": status, "error": error, "endpoints": eps}


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, addr, handler, ssl_ctx=None):
        self._aborted = set()
        self._aborted_lock = threading.Lock()
        super().__init__(addr, handler)
        if ssl_ctx is not None:
            self.socket = ssl_ctx.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)

    def mark_aborted(self, sock):
        with self._aborted_lock:
            self._aborted.add(sock)

    def shutdown_request(self, request):
        with self._aborted_lock:
            aborted = request in self._aborted
            self._aborted.discard(request)
        if not aborted:
            try:
                request.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        self.close_request(request)

    def handle_error(self, request, client_address):
        pass  # never print tracebacks


def make_server(cfg):
    emu = Emulator(cfg)
    handler = type("BoundHandler", (Handler,), {"emu": emu})
    ctx = None
    if cfg.tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
    srv = Server((cfg.host, cfg.port), handler, ctx)
    return srv, emu
