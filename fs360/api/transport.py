"""The HTTP exchange under an overall deadline, with a bounded answer.

The socket timeouts bound each socket operation, not the request: a server that
sends one byte every few seconds, or reads our body that slowly, holds a worker
forever. Here every request gets a `Deadline`; one watchdog thread shuts down
the socket of any request still running at its deadline, which wakes the worker
whatever it is blocked in (connect, TLS handshake, sending, headers, body).

The socket is found through urllib3 connection classes that tell the calling
thread's current `Deadline` which connection it uses, and keep a second
descriptor of their TCP socket to shut it down with. `shutdown()` is safe from
another thread where `close()` is not (the descriptor could be reused); the
calling thread then closes the connection itself, before its call returns.

Every connection ends with a reset, never a graceful close (SO_LINGER 0, set when
it connects): after a FIN the kernel still delivers the queued rest of a body,
once a stalled link comes back or after the process that sent it died, which
would complete an abandoned PUT next to the one that replaces it.

Without a proxy a request goes out through http.client on such a connection
(`Channel._send_direct`), past urllib3's pool and its request and response layers:
what the pool does that fs360 needs (no reuse of a connection the server closed, an
early answer read after a broken send, a decoded body) is done there and in
`_decoded_pieces`. Through a proxy, urllib3's pool sends.

Only the mechanism lives here (and what a failed exchange's exception says, in
words: `failure_reason`); the client decides what an expired deadline or an
oversized answer means to fs360.
"""

from __future__ import annotations

import contextlib
import email.parser
import errno
import heapq
import http.client
import itertools
import logging
import os
import re
import socket
import ssl
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from typing import Mapping

import requests
import urllib3
import urllib3.connection
import urllib3.connectionpool
import urllib3.exceptions

log = logging.getLogger(__name__)

# The API's answers are a few hundred bytes; anything past this is not the API's
# (listings, which grow with the session, get their own cap from the client).
MAX_RESPONSE_BYTES = 1024 * 1024
READ_PIECE = 64 * 1024

# The calling thread's current deadline, for the connection classes below to find.
_current = threading.local()


class Deadline:
    """One request's time limit and the connection it runs on."""

    def __init__(self, seconds: float, clock=time.monotonic):
        self.seconds = seconds
        self.at = clock() + seconds
        self.expired = False  # set once by the watchdog: nothing read on this request is trusted then
        self.finished = False
        self._connection = None
        # The shutdown handle its connection let go of while this request still reads its answer
        # from the socket (see adopt_locked): cut at the deadline, closed when the call is over.
        self._adopted: socket.socket | None = None
        self.lock = threading.Lock()  # the watchdog shuts down under it; a handle is dropped under it

    def extend(self, seconds: float) -> None:
        """Moves the deadline on by `seconds` the request spent waiting on fs360's own account
        (a bandwidth limit's turn), not the server's."""
        with self.lock:
            self.at += seconds
            self.seconds += seconds

    def attach(self, connection) -> None:
        """Called from the calling thread by the connection the request uses (maybe before it connects)."""
        with self.lock:
            self._connection = connection
            if self.expired:
                _shutdown(connection)

    def adopt_locked(self, connection, handle: socket.socket) -> bool:
        """Called with `lock` held by `connection` as it closes: http.client closes the connection
        of an answer that ends with the connection (`Connection: close`, HTTP/1.0, no length), and
        the answer goes on reading from the socket. While this call lasts the deadline keeps the
        handle, to cut that reading too. False when the call is over or on another connection."""
        if self.finished or connection is not self._connection:
            return False
        if self._adopted is not None:
            self._adopted.close()  # (one request, one connection: never seen, but never leaked)
        self._adopted = handle
        return True

    def expire(self) -> None:
        """Called from the watchdog thread at the deadline."""
        with self.lock:
            if self.finished:
                return
            self.expired = True
            if self._connection is not None:
                _shutdown(self._connection)
            if self._adopted is not None:
                _cut(self._adopted)

    def finish(self):
        """The call is over: the watchdog leaves its connection alone from now on. Returns that connection."""
        with self.lock:
            self.finished = True
            connection, self._connection = self._connection, None
            adopted, self._adopted = self._adopted, None
        if adopted is not None:
            adopted.close()
        return connection


# SO_LINGER on, 0 s: closing sends a reset and drops whatever is still queued to send.
ABORT_ON_CLOSE = struct.pack("ii", 1, 0)


def _abort_on_close(handle: socket.socket) -> None:
    """An abandoned request's connection must end with a reset, not a FIN: after a FIN the
    kernel still delivers the queued rest of the body once a stalled link comes back, which
    would complete the abandoned PUT next to the one that replaces it."""
    try:
        handle.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, ABORT_ON_CLOSE)
    except OSError:
        pass


def _shutdown(connection) -> None:
    handle = getattr(connection, "shutdown_handle", None)
    if handle is not None:
        _cut(handle)


def _cut(handle: socket.socket) -> None:
    _abort_on_close(handle)
    try:
        handle.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed by its peer


class _Watchdog:
    """One thread for all deadlines: a heap ordered by time, finished entries dropped lazily."""

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._order = itertools.count()
        self._start_afresh()
        # A forked child has no watchdog thread (only the forking thread survives a fork).
        os.register_at_fork(after_in_child=self._start_afresh)

    def _start_afresh(self) -> None:
        self._heap: list[tuple[float, int, Deadline]] = []
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False

    def stop(self) -> None:
        """Ends the thread (a test's own watchdog; the process's one lives as long as it)."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
            thread = self._thread
        if thread is not None:
            thread.join()

    def watch(self, deadline: Deadline) -> None:
        with self._wake:
            first = self._heap[0][0] if self._heap else None
            heapq.heappush(self._heap, (deadline.at, next(self._order), deadline))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="fs360-deadlines", daemon=True)
                self._thread.start()
            if first is None or deadline.at < first:
                # Only a new first deadline changes how long the thread sleeps: waking it for each
                # request (one or more per file) cost a context switch each.
                self._wake.notify()

    def _next_expired(self) -> Deadline | None:
        """The next deadline to cut; None once stopped."""
        with self._wake:
            while not self._stopping:
                while self._heap and self._heap[0][2].finished:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._wake.wait()
                    continue
                now = self._clock()
                wait = self._heap[0][0] - now
                if wait <= 0:
                    deadline = heapq.heappop(self._heap)[2]
                    if deadline.at > now:  # extended since it was watched: watched again
                        heapq.heappush(self._heap, (deadline.at, next(self._order), deadline))
                        continue
                    return deadline
                self._wake.wait(wait)
            return None

    def _run(self) -> None:
        while (deadline := self._next_expired()) is not None:
            try:
                deadline.expire()
            except Exception:  # the one watchdog must outlive any surprise
                log.exception("could not cut a request at its deadline")


_watchdog = _Watchdog()


class _CheckedResponse(http.client.HTTPResponse):
    """http.client's answer, framed as urllib3 frames it where http.client is laxer: interim
    answers are skipped, a Transfer-Encoding list that ends in chunked is chunked (http.client takes only exactly
    "chunked", and reads anything else to the connection's end); any other transfer coding, two
    different Content-Lengths or a chunk of negative size (read to the end, past every cap) is
    no answer. Its head is read as http.client reads it, but plain header lines are parsed
    without the email package (`_parsed_head`)."""

    def begin(self) -> None:
        if self.headers is not None:
            return
        # http.client skips a 100 Continue only. Any other interim answer (102 Processing, 103 Early
        # Hints from a proxy) would be taken for the answer, and the real one left in the socket
        # for the next request on this connection to read as its own: skipped too, as RFC 9110 says.
        while True:
            version, status, reason = self._read_status()
            headers = _parsed_head(http.client._read_headers(self.fp))
            if status == 101:
                raise http.client.HTTPException("the server switched protocols, which fs360 never asks for")
            if not 100 <= status < 200:
                break
        self.code = self.status = status
        self.reason = reason.strip()
        if version in ("HTTP/1.0", "HTTP/0.9"):
            self.version = 10
        elif version.startswith("HTTP/1."):
            self.version = 11
        else:
            raise http.client.UnknownProtocol(version)
        self.headers = self.msg = headers
        codings = [c.strip().lower() for c in ",".join(headers.get_all("Transfer-Encoding") or ()).split(",")]
        self.chunked = codings != [""]
        if self.chunked and codings[-1] != "chunked":
            raise http.client.HTTPException("the answer's Transfer-Encoding is not one fs360 can read")
        self.chunk_left = None
        lengths = {v.strip() for value in headers.get_all("Content-Length") or () for v in value.split(",")}
        if len(lengths) > 1:
            raise http.client.HTTPException("the answer gives two different lengths")
        self.length = None
        if lengths and not self.chunked:  # a chunked body's length is its chunks' (RFC 9112 6.3)
            length, = lengths
            if length.isascii() and length.isdigit():
                self.length = int(length)
        if status in (http.client.NO_CONTENT, http.client.NOT_MODIFIED) or self._method == "HEAD":
            self.length = 0
        # A body with neither a length nor chunks ends where the connection does.
        self.will_close = self._check_close() or (not self.chunked and self.length is None)

    def _read_next_chunk_size(self) -> int:
        size = super()._read_next_chunk_size()
        if size < 0:
            raise http.client.HTTPException("the answer has a chunk of negative size")
        return size


# A header line as the email package takes one: a name of printable characters but ':', then ':'.
_HEADER_NAME = re.compile(r"[!-9;-~]+")


def _parsed_head(lines: list[bytes]) -> http.client.HTTPMessage:
    """An answer's header lines (as http.client reads them) as the message http.client's
    `parse_headers` makes of them, without the email package's parser for plain `Name: value`
    lines: that parser was a fifth of the CPU of a small file's PUT. A folded line, a line
    without a name or anything else unusual goes to the email parser, which decides as before."""
    message = http.client.HTTPMessage()
    for line in lines:
        if line in (b"\r\n", b"\n", b""):
            break
        text = line.decode("iso-8859-1")
        text = text[:-2] if text.endswith("\r\n") else text.removesuffix("\n")
        name, colon, value = text.partition(":")
        # A lone CR also ends a line for the email parser.
        if not colon or "\r" in value or not _HEADER_NAME.fullmatch(name):
            return email.parser.Parser(_class=http.client.HTTPMessage).parsestr(b"".join(lines).decode("iso-8859-1"))
        message[name] = value.lstrip(" \t")  # as email's compat32 policy stores it
    return message


class _ReportsToDeadline:
    """Mixed into urllib3's connections: tells the thread's current deadline which connection it uses.

    `shutdown_handle` is a second descriptor of the connection's TCP socket. TLS
    wrapping detaches the first one (and a handshake can stall too); shutting
    down through either ends the connection for every reader and writer, and this
    one cannot be closed and reused under the watchdog's feet.
    """

    shutdown_handle: socket.socket | None = None
    response_class = _CheckedResponse

    def _report(self) -> None:
        deadline = getattr(_current, "deadline", None)
        if deadline is not None:
            deadline.attach(self)

    report_to_deadline = _report

    def _new_conn(self):
        sock = super()._new_conn()
        # From the start, not only when abandoned: a process that dies (killed mid-PUT) closes
        # its sockets without asking anybody.
        _abort_on_close(sock)
        self._drop_shutdown_handle()
        self.shutdown_handle = sock.dup()
        self._report()  # the deadline may have passed while connecting
        return sock

    def request(self, *args, **kwargs):
        self._report()  # a reused keep-alive connection does not connect again
        return super().request(*args, **kwargs)

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._drop_shutdown_handle(answer_may_read_on=True)

    def _drop_shutdown_handle(self, answer_may_read_on: bool = False) -> None:
        deadline = getattr(_current, "deadline", None)
        with deadline.lock if deadline is not None else contextlib.nullcontext():
            handle, self.shutdown_handle = self.shutdown_handle, None
            if handle is not None and answer_may_read_on and deadline is not None \
                    and deadline.adopt_locked(self, handle):
                return
        if handle is not None:
            handle.close()


class _HTTPConnection(_ReportsToDeadline, urllib3.connection.HTTPConnection):
    pass


class _HTTPSConnection(_ReportsToDeadline, urllib3.connection.HTTPSConnection):
    pass


class _HTTPConnectionPool(urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSConnectionPool(urllib3.connectionpool.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOL_CLASSES = {"http": _HTTPConnectionPool, "https": _HTTPSConnectionPool}


class DeadlineAdapter(requests.adapters.HTTPAdapter):
    """requests' adapter whose connections report to the current deadline. A Channel asks it
    for its connection pool (TLS verification, proxies, proxy credentials, as requests sets
    them up) and sends through that pool itself.

    Behind a SOCKS proxy urllib3 uses its own connection classes: there the
    deadline is still checked between pieces of the body, but cannot cut a stall.
    """

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOL_CLASSES

    def proxy_manager_for(self, proxy, **proxy_kwargs):
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = _POOL_CLASSES
        return manager


# A PUT body passes a bandwidth limit this many bytes at a time.
BODY_PIECE = 256 * 1024


class PacedBody:
    """A request body sent in pieces of BODY_PIECE bytes (urllib3 sends each one
    with `sendall` as it comes), for a bandwidth limit and progress within a chunk: `pace`
    has `wait_turn(n)`, which may hold the next piece back (the time held extends the
    request's deadline: it is fs360's wait, not the server's slowness), and `sent(n)`,
    told once a piece is in the socket's queue. A body cut midway tells nothing more."""

    def __init__(self, data, pace):
        """`data`: a memoryview, or a body that yields its own pieces (of BODY_PIECE at most)."""
        self._data = data
        self._pace = pace

    def __len__(self) -> int:  # the Content-Length
        return len(self._data)

    def __iter__(self):
        data, pace = self._data, self._pace
        pieces = (data[offset:offset + BODY_PIECE] for offset in range(0, len(data), BODY_PIECE)) \
            if isinstance(data, memoryview) else data
        for piece in pieces:
            started = time.monotonic()
            pace.wait_turn(len(piece))
            deadline = getattr(_current, "deadline", None)
            if deadline is not None:
                deadline.extend(time.monotonic() - started)
            yield piece
            pace.sent(len(piece))


class Channel:
    """One thread's keep-alive connection to the API, sent through urllib3 directly.

    requests' adapter sets the connection pool up once, as its own `send` would: TLS
    verification (certifi's bundle unless a CA bundle is given), the proxy and its credentials
    (from the environment the client read once), and the request target (a path, or the whole
    URL through an HTTP proxy). Each request then goes straight to that pool. requests' own
    layers (preparing, merging settings, cookies, hooks, wrapping the answer) cost 0.4-0.5 ms of
    CPU per 100 KiB PUT, about a fifth of a small file's whole cost (BENCHMARKS.md, "the
    floor"). Never follows a redirect, never retries: both are the client's decisions.

    Without a proxy (the usual case) the pool only makes the connection, TLS settings included,
    and the request goes out through http.client on it (`_send_direct`): urllib3's pool and its
    request and response layers cost 150-200 us of CPU per 100 KiB PUT, about a tenth of a small
    file's (BENCHMARKS.md, "the lean exchange"). Through a proxy (forwarding, tunnelling, SOCKS)
    the pool sends it, as urllib3 knows how."""

    def __init__(self, base_url: str, headers: dict[str, str], proxies: dict, verify: bool | str):
        self.base_url = base_url
        self.headers = headers
        self._proxies = proxies
        self._verify = verify
        self._adapter = DeadlineAdapter(max_retries=0, pool_connections=1, pool_maxsize=1)
        self._pool = None
        # The base URL as requests prepares it: its pool is made from it at the first request.
        self._base = requests.Request("GET", base_url).prepare()
        # What requests would send as the base URL's target ("/api/v1", or the URL without its
        # credentials through an HTTP proxy); an API path goes after it.
        self._target_prefix = self._adapter.request_url(self._base, proxies).rstrip("/")
        self._direct = requests.utils.select_proxy(base_url, proxies) is None
        self._connection = None  # the direct path's one keep-alive connection
        self._send_broke = False  # the last request's body did not all go (see _send_direct)

    def target(self, path: str) -> str:
        """The request target of API path `path` ("/uploads/...")."""
        return self._target_prefix + path

    def request(self, method: str, path: str, *, timeout: tuple[float, float], data=None,
                headers: dict | None = None):
        """`path` is the API's ("/uploads"). The answer is streamed: read it (Exchange.read). An
        http.client answer on the direct path, urllib3's through a proxy."""
        if self._pool is None:
            pool = self._adapter.get_connection_with_tls_context(self._base, self._verify, self._proxies)
            # As HTTPAdapter.send: the CA bundle (certifi's for verify=True); a missing one is an OSError.
            self._adapter.cert_verify(pool, self._base.url, self._verify, None)
            self._pool = pool
        sent = {**self.headers, **headers} if headers else self.headers
        if self._direct:
            return self._send_direct(method, self.target(path), timeout, data, sent)
        return self._pool.urlopen(method, self.target(path), body=data, headers=sent, redirect=False,
                                  assert_same_host=False, preload_content=False, decode_content=False,
                                  retries=self._adapter.max_retries,
                                  timeout=urllib3.Timeout(connect=timeout[0], read=timeout[1]))

    def _send_direct(self, method: str, target: str, timeout: tuple[float, float], data,
                     headers: dict) -> http.client.HTTPResponse:
        """One request on the channel's own connection, as urllib3's pool would send it: a kept-alive
        connection the server has closed meanwhile is not reused; sending uses the connect timeout
        and the answer the read timeout; a server that stops reading the body (EPIPE, a reset) may
        still have answered (an early 413), so its answer is read."""
        connection = self._connection
        if connection is None:
            # Made by the pool (its private maker: urllib3 is pinned): TLS verification and the CA
            # bundle as requests set them on the pool.
            connection = self._connection = self._pool._new_conn()
        elif connection.sock is not None and (self._send_broke or not connection.is_connected):
            connection.close()
        connection.timeout = timeout[0]
        connection.report_to_deadline()
        if connection.sock is None:
            connection.connect()
        connection.sock.settimeout(timeout[0])
        broken = False
        try:
            http.client.HTTPConnection.request(connection, method, target, body=data, headers=headers)
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET):
                raise
            broken = True
        if connection.sock is not None:
            connection.sock.settimeout(timeout[1])
        response = http.client.HTTPConnection.getresponse(connection)
        # Part of this body never went: the connection carries no other request, whatever the
        # answer says. Closed before the next one (closing it now would close this answer too).
        self._send_broke = broken
        return response

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        self._adapter.close()
        self._pool = None


@dataclass(frozen=True)
class Answer:
    """What the translator reads of an HTTP answer besides its body."""
    status: int
    headers: Mapping[str, str]  # case-insensitive
    url: str  # the request's
    sent_length: int  # the request body's Content-Length (0: none or unknown)


class Exchange:
    """One request under a deadline, as a context manager: `send` it, `read` the body; leaving it
    closes the connection unless the answer was read whole in time."""

    def __init__(self, seconds: float):
        self.deadline = Deadline(seconds)
        self.response: urllib3.BaseHTTPResponse | None = None
        self._complete = False

    def __enter__(self) -> "Exchange":
        _current.deadline = self.deadline
        _watchdog.watch(self.deadline)
        return self

    def send(self, channel: Channel, method: str, path: str, **kwargs) -> urllib3.BaseHTTPResponse:
        # Streamed: the body is ours to read, in pieces, up to a cap.
        self.response = channel.request(method, path, **kwargs)
        return self.response

    def read(self, limit: int = MAX_RESPONSE_BYTES) -> bytes | None:
        """The body, or None if it is longer than `limit` bytes (then nothing more is read)."""
        response = self.response
        declared = response.headers.get("Content-Length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > limit:
            return None
        pieces, size = [], 0
        # Decoded: a server or proxy may compress though asked not to; decoded a piece at a time,
        # each to at most the cap, so a compressed bomb meets the cap, not memory.
        for piece in _decoded_pieces(response, limit + 1):
            size += len(piece)
            if size > limit or self.deadline.expired:
                return None
            pieces.append(piece)
        self._complete = not self.deadline.expired
        return b"".join(pieces)

    @property
    def expired(self) -> bool:
        return self.deadline.expired

    def __exit__(self, *exc_info) -> None:
        _current.deadline = None
        connection = self.deadline.finish()
        if not self._complete or self.deadline.expired:
            # Abandoned midway or cut by the watchdog: this connection must never carry another request.
            # Closed here, so when the call returns no byte of this request can still go out.
            handle = getattr(connection, "shutdown_handle", None)
            if handle is not None:
                _abort_on_close(handle)
            if self.response is not None:
                self.response.close()
            if connection is not None:
                connection.close()


def _decoded_pieces(response, most: int):
    """The answer's body in pieces, decoded (gzip, deflate), no piece longer than `most`."""
    if isinstance(response, urllib3.BaseHTTPResponse):  # through a proxy: urllib3 decodes
        yield from response.stream(READ_PIECE, decode_content=True)
        return
    encoding = response.headers.get("Content-Encoding", "").strip().lower()
    # Another encoding (br, several) stays as it came: it cannot be the API's JSON, and is refused as such.
    decoder = _BodyDecoder(encoding) if encoding in _WBITS else None
    while piece := response.read(READ_PIECE):
        if decoder is None:
            yield piece
        else:
            yield from decoder.decode(piece, most)
    if response.length:  # http.client ends a body cut short quietly: it is not the whole answer
        raise http.client.IncompleteRead(b"", response.length)


_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class _BodyDecoder:
    """A body compressed though not asked for, as urllib3 decodes one: gzip of one or more
    members; deflate in zlib's wrapping or raw (servers send both)."""

    def __init__(self, encoding: str):
        self.encoding = encoding
        self._zlib = zlib.decompressobj(_WBITS[encoding])
        self._started = False
        self._members = 0  # gzip members decoded whole
        self._done = False  # what follows the last member that decodes is dropped

    def decode(self, data: bytes, most: int):
        """Pieces of at most `most` bytes."""
        while data and not self._done:
            try:
                out = self._zlib.decompress(data, most)
            except zlib.error as exc:
                if self.encoding == "deflate" and not self._started:
                    self._zlib, self._started = zlib.decompressobj(-zlib.MAX_WBITS), True
                    continue
                if self._members:  # junk after a whole member (a newline, say): urllib3 drops it too
                    self._done = True
                    return
                raise http.client.HTTPException(f"the answer's {self.encoding} body does not decode ({exc})") from None
            self._started = True
            if out:
                yield out
            data = self._zlib.unconsumed_tail
            if not data and self._zlib.eof:
                self._members += 1
                if self._zlib.unused_data and self.encoding != "deflate":
                    data = self._zlib.unused_data  # the next gzip member
                    self._zlib = zlib.decompressobj(_WBITS[self.encoding])


# --- what a failed exchange says -----------------------------------------------------------------

# Socket errors by errno, as they are: the network's doing, or the server's.
_ERRNO_REASONS = {
    errno.ECONNREFUSED: "connection refused (is the server running?)",
    errno.ENETUNREACH: "the network dropped (network unreachable)",
    errno.ENETDOWN: "the network dropped (network down)",
    errno.EHOSTUNREACH: "the network dropped (host unreachable)",
    errno.ETIMEDOUT: "the network dropped (the connection timed out)",
    errno.ECONNRESET: "the connection was reset (by the server or on the way)",
    errno.ECONNABORTED: "the connection was aborted on this machine",
    errno.EPIPE: "the server closed the connection while fs360 was still sending",
}
# Substrings of urllib3/socket messages that carry no errno, and what they mean to a user.
_TEXT_REASONS = (
    ("name or service not known", "unknown host name"),
    ("temporary failure in name resolution", "the host name cannot be resolved now"),
    ("certificate verify failed", "certificate verify failed"),
    ("read timed out", "timed out waiting for the server"),
    ("connect timeout", "timed out connecting to the server"),
    ("connection aborted", "the connection ended before the answer"),
)


def _causes(exc: BaseException, limit: int = 16) -> list[BaseException]:
    """`exc` and what it wraps: causes, contexts, urllib3's `reason`, exceptions among its args."""
    found, todo = [], [exc]
    while todo and len(found) < limit:
        seen = todo.pop(0)
        if not isinstance(seen, BaseException) or any(seen is f for f in found):
            continue
        found.append(seen)
        todo += [seen.__cause__, seen.__context__, getattr(seen, "reason", None)]
        todo += [a for a in getattr(seen, "args", ()) if isinstance(a, BaseException)]
    return found


def peer_ended(exc: BaseException) -> bool:
    """Whether the other end ended the connection (it reset it, closed it without an answer, or
    stopped reading): then it is no longer reading what was sent on it."""
    for cause in _causes(exc):
        if isinstance(cause, http.client.RemoteDisconnected):
            return True
        if isinstance(cause, OSError) and cause.errno in (errno.ECONNRESET, errno.EPIPE):
            return True
    return False


def is_tls_failure(exc: BaseException) -> bool:
    """Whether the exchange failed on the API server's TLS (a certificate that does not verify,
    say); a proxy's own TLS failing is the way to the server failing, as any other proxy error."""
    causes = _causes(exc)
    # A connection closed during the handshake (SSLEOFError) verified nothing: a network or a
    # loaded server's failure, tried again as any other, not a final "TLS verification failed".
    return (any(isinstance(c, (urllib3.exceptions.SSLError, ssl.SSLError)) for c in causes)
            and not any(isinstance(c, (urllib3.exceptions.ProxyError, ssl.SSLEOFError, ssl.SSLZeroReturnError))
                        for c in causes))


def went_through_proxy_failing(exc: BaseException) -> bool:
    """Whether the exchange failed on the way to or through the proxy (urllib3's ProxyError)."""
    return any(isinstance(c, urllib3.exceptions.ProxyError) for c in _causes(exc))


def failure_reason(exc: BaseException) -> tuple[str, bool]:
    """(what went wrong in words, whether it was before a connection existed). Nothing of it
    can carry headers, so never the key."""
    causes = _causes(exc)
    connecting = any(isinstance(c, (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError))
                     for c in causes)
    for cause in causes:
        if isinstance(cause, http.client.RemoteDisconnected):
            return "the server closed the connection without an answer", False
        if isinstance(cause, (http.client.BadStatusLine, http.client.UnknownProtocol)):
            return "the server's answer is not HTTP", False
        if isinstance(cause, OSError) and cause.errno in _ERRNO_REASONS:
            return _ERRNO_REASONS[cause.errno], connecting
    text = " ".join(str(c) for c in causes).lower()
    for needle, reason in _TEXT_REASONS:
        if needle in text:
            return reason, connecting
    if any(isinstance(c, (urllib3.exceptions.TimeoutError, TimeoutError)) for c in causes):
        # A socket's own timeout (the direct path's) after connecting: the server stopped reading or answering.
        return ("timed out" if connecting else "timed out waiting for the server"), connecting
    # Whatever else it says may carry the server's own bytes: one printable line.
    return printable(str(exc).splitlines()[0] if str(exc) else type(exc).__name__), connecting


def printable(text: str, limit: int = 200) -> str:
    """Text a server sent, made safe for one log line."""
    cleaned = " ".join("".join(c if c.isprintable() else " " for c in str(text)).split())
    return cleaned if len(cleaned) <= limit else cleaned[:limit] + "…"
