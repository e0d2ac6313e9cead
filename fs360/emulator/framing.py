"""HTTP framing: the request loop on one connection (parsing, bodies read,
drained or lingered over, answers written, streamed or trickled), and the
threading server.  It knows nothing of the API: a subclass supplies
``dispatch()`` and the ``emu`` state."""

from __future__ import annotations

import email.utils
import json
import mmap
import socket
import ssl
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from .constants import error_body
from .pipeline import NBUF, SEG, BodyWorker, Buf

DRAIN_LIMIT = 64 << 20
JSON_BODY_LIMIT = 1 << 20
SOCKET_TIMEOUT = 60.0

REASONS = {
    100: "Continue", 200: "OK", 201: "Created", 307: "Temporary Redirect", 400: "Bad Request", 401: "Unauthorized",
    402: "Payment Required", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    409: "Conflict", 411: "Length Required", 413: "Content Too Large", 414: "URI Too Long",
    415: "Unsupported Media Type", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Gateway Timeout",
}


class Abort(Exception):
    """Close the connection right away (reset when rst=True), no response."""

    def __init__(self, rst=True):
        super().__init__()
        self.rst = rst


def to_stderr(text: str) -> None:
    """A line for the operator; a stderr that cannot be written (say, on the
    emulator's own full disk) must not cost the client its response."""
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):  # AttributeError: no stderr at all
        pass


class FramedHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fs360-emulator"
    timeout = SOCKET_TIMEOUT
    emu = None  # the Emulator state, set on the subclass made by make_server

    # -- connection -----------------------------------------------------------
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
            to_stderr("emulator: %s\n" % (fmt % args))

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
            to_stderr(detail)
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
            self._bufs = [Buf(whole[i * SEG : (i + 1) * SEG]) for i in range(NBUF)]
        return self._bufs

    def _body_worker(self):
        """This connection's body worker, started for its first body of several segments."""
        if self._worker is None:
            self._worker = BodyWorker()
        return self._worker

    # -- responses --------------------------------------------------------------
    def _head(self, status, ctype, length, close, headers=()) -> bytes:
        lines = [
            f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}",
            "Server: fs360-emulator",
            # As every origin server with a clock (RFC 9110): `fs360 doctor` checks the clock by it.
            f"Date: {email.utils.formatdate(usegmt=True)}",
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

    def respond_then_reset(self, status, *, raw: bytes, ctype: str):
        """The answer before any of the body is read, then a reset: what a proxy that refuses a
        request from its headers alone and closes hard does (the client may still be sending)."""
        if self._endpoint is not None:
            self.emu.count(self.command, self._endpoint, status)
        self.close_connection = True
        self._write_response(status, raw, ctype, True)
        self.wfile.flush()
        raise Abort(True)

    def respond_stream(self, status, length, blocks, ctype="application/json"):
        """An answer of `length` bytes written block by block: never whole in memory."""
        self._before_response(status)
        self.wfile.write(self._head(status, ctype, length, self.close_connection))
        if self.command != "HEAD":
            for block in blocks:
                self.wfile.write(block)

    def error(self, status, code, **extra):
        self.respond(status, error_body(code, **extra))

    def _request_path(self) -> str:
        """The request target's path, without query or fragment."""
        path = self.path
        if not path.startswith("/"):
            try:
                path = urlsplit(path).path or "/"
            except ValueError:
                path = "/"
        return path.split("?", 1)[0].split("#", 1)[0]

    def dispatch(self):
        raise NotImplementedError


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
