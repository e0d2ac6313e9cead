"""The real client against a tiny hostile HTTP server: stalls, floods, redirects, odd answers.

The server is raw sockets on 127.0.0.1 (port 0), one thread per connection,
every blocking call bounded, and stops by itself when the test ends. Nothing of
the client is mocked. No timing is asserted: a call with a small deadline must
return (pytest-timeout is the hang detector), and a wait is bounded generously.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import threading
import time
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from fs360 import errors as E
from fs360.api.client import CREDENTIAL_CHECK_ATTEMPTS, MAX_RETRY_AFTER, ApiClient
from fs360.api.transport import BODY_PIECE, MAX_RESPONSE_BYTES
from fs360.config import Settings
from fs360.engine.gate import TransferGate
from tests.harness import self_signed_certificate, wait_until

pytestmark = pytest.mark.timeout(60)

API_KEY = "sk_hostile_test_never_printed"
# Every blocking call of the server ends by this, whatever the client does. Longer than any
# test's timeout: a deadline that does not work shows as a hang, never as a server giving up.
SERVER_PATIENCE = 120.0
# The hang detector of a call whose deadline is about a second.
DEADLINE_TEST_TIMEOUT = 20


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    rfile: object = field(repr=False)

    def read_body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("content-length", "0")))


class RawServer:
    """Answers each request with `respond(conn, request)`; a false return closes the connection."""

    def __init__(self, respond, tls: ssl.SSLContext | None = None, handshake: bool = True):
        self._respond = respond
        self._tls, self._handshake = tls, handshake
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}/api/v1"
        self.requests: list[Request] = []
        self.connections = 0
        self.stopped = threading.Event()
        self._open: list[socket.socket] = []
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> "RawServer":
        self._spawn(self._accept_loop)
        return self

    def __exit__(self, *exc_info) -> None:
        self.stopped.set()
        self._listener.close()
        for conn in list(self._open):
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self._threads:
            thread.join(timeout=5)

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.connections += 1
            self._open.append(conn)
            self._spawn(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(SERVER_PATIENCE)
        if self._tls is not None:
            if not self._handshake:
                self.stopped.wait(SERVER_PATIENCE)  # accepts, then never says a word of TLS
                conn.close()
                return
            try:
                conn = self._tls.wrap_socket(conn, server_side=True)
            except OSError:
                conn.close()
                return
            self._open.append(conn)
        rfile = conn.makefile("rb")
        try:
            while not self.stopped.is_set():
                request = _read_head(rfile)
                if request is None:
                    return
                self.requests.append(request)
                if not self._respond(conn, request):
                    return
        except OSError:
            return  # the client hung up: that is what most of these tests want
        finally:
            rfile.close()
            conn.close()

    def paths(self) -> list[str]:
        return [f"{r.method} {r.path}" for r in self.requests]


def _read_head(rfile) -> Request | None:
    line = rfile.readline(65536)
    if not line:
        return None
    method, path, _ = line.decode("latin-1").split(" ", 2)
    headers = {}
    while True:
        line = rfile.readline(65536)
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return Request(method, path, headers, rfile)


def answer(status: int, body=b"", headers=(), reason="X") -> bytes:
    if not isinstance(body, bytes):
        body = json.dumps(body).encode()
    head = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def canned(*answers: bytes):
    """Answers the requests in turn with `answers`, repeating the last one."""
    def respond(conn, request):
        request.read_body()
        conn.sendall(answers[min(respond.count, len(answers) - 1)])
        respond.count += 1
        return True
    respond.count = 0
    return respond


def routes(table: dict[str, bytes]):
    """Answers "METHOD /path" from `table`; anything else is a 404 page."""
    def respond(conn, request):
        request.read_body()
        conn.sendall(table.get(f"{request.method} {request.path}", answer(404, b"<html>Not Found</html>")))
        return True
    return respond


def trickle(conn, start: bytes, stopped: threading.Event, every: float = 0.1) -> None:
    """Sends `start`, then one byte at a time until the client hangs up or the test ends."""
    conn.sendall(start)
    deadline = time.monotonic() + SERVER_PATIENCE
    while not stopped.is_set() and time.monotonic() < deadline:
        conn.sendall(b"x")
        time.sleep(every)


def make_client(server: RawServer, **settings) -> ApiClient:
    values = dict(api_url=server.url, api_key=API_KEY, rate_limits_enabled=False, request_deadline=1.0,
                  read_timeout=20.0)
    values.update(settings)
    return ApiClient(Settings(**values))


def connections_to(port: int) -> int:
    """Sockets this process still holds open towards 127.0.0.1:`port` (from /proc, so from the kernel)."""
    inodes = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    if int(cols[2].rsplit(":", 1)[1], 16) == port and cols[9] != "0":
                        inodes.add(cols[9])
        except FileNotFoundError:
            continue
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            count += 1
    return count


def no_key_in(exc: BaseException) -> bool:
    return API_KEY not in str(exc) and API_KEY not in repr(exc)


PROGRESS = answer(200, {"received": 3, "total": 3, "complete": True})


# --- deadlines ------------------------------------------------------------------------------------

@pytest.mark.timeout(DEADLINE_TEST_TIMEOUT)
def test_slow_headers_end_at_the_deadline_on_a_closed_connection_and_the_next_request_is_fresh():
    def respond(conn, request):
        request.read_body()
        if len(server.requests) == 1:
            trickle(conn, b"HTTP/1.1 200 OK\r\nX-Slow: ", server.stopped)
            return False
        conn.sendall(PROGRESS)
        return True

    with RawServer(respond) as server:
        client = make_client(server)
        with pytest.raises(E.DeadlineExceeded) as info:
            client.file_status("u1", "a.jpg")
        # The call is over: its socket is already closed, not merely abandoned.
        assert connections_to(server.port) == 0
        assert isinstance(info.value, E.TransportError) and info.value.retryable
        assert "did not answer within 1 s" in str(info.value) and no_key_in(info.value)
        with pytest.raises(E.HeldBack):  # its kind of request waits for one probe now, unsent
            client.file_status("u1", "a.jpg")
        client.troubles.resume()
        assert client.file_status("u1", "a.jpg").complete
        assert server.connections == 2


@pytest.mark.timeout(DEADLINE_TEST_TIMEOUT)
def test_slow_body_ends_at_the_deadline():
    def respond(conn, request):
        request.read_body()
        trickle(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n{", server.stopped)
        return False

    with RawServer(respond) as server:
        client = make_client(server)
        with pytest.raises(E.DeadlineExceeded):
            client.file_status("u1", "a.jpg")
        assert connections_to(server.port) == 0


class Pieces:
    """A PUT body's pace through a real gate at `rate`, and the sizes of the pieces it was told went."""

    def __init__(self, rate: str):
        self.turns = TransferGate(rate).turns(lambda: False, self.sent)
        self.sizes: list[int] = []

    def wait_turn(self, nbytes: int) -> None:
        self.turns.wait_turn(nbytes)

    def sent(self, nbytes: int) -> None:
        self.sizes.append(nbytes)


@pytest.mark.timeout(DEADLINE_TEST_TIMEOUT)
def test_a_paced_put_goes_in_pieces_and_its_turns_do_not_count_against_its_deadline():
    """A 1 MiB body at 512 KiB/s waits about 1.5 s for its pieces' turns: past the 1 s deadline,
    which those waits extend (they are fs360's, not the server's). It arrives whole, in the
    gate's 256 KiB pieces, each told as sent."""
    bodies = []

    def respond(conn, request):
        bodies.append(request.read_body())
        conn.sendall(PROGRESS)
        return True

    with RawServer(respond) as server:
        client = make_client(server, min_upload_rate=1e12)  # the deadline stays at its 1 s floor
        data = os.urandom(1024 * 1024)
        pace = Pieces("512k")
        started = time.monotonic()
        client.put("u1", "a.las", memoryview(data), 0, len(data), whole=True, pace=pace)
        assert time.monotonic() - started > 1.0  # the scenario: the waits outlast the deadline's floor
        assert bodies == [data] and server.requests[0].headers["content-length"] == str(len(data))
        assert pace.sizes == [BODY_PIECE] * 4


@pytest.mark.timeout(DEADLINE_TEST_TIMEOUT)
@pytest.mark.parametrize("paced", [False, True], ids=["whole", "paced"])
def test_a_put_whose_body_the_server_does_not_read_ends_at_the_deadline(paced):
    """The stall is in sending: only the watchdog's shutdown can wake the sender (a paced body
    too: only the gate's waits extend its deadline)."""
    def respond(conn, request):
        server.stopped.wait(SERVER_PATIENCE)  # never reads the body
        return False

    with RawServer(respond) as server:
        client = make_client(server, min_upload_rate=1e12)  # the deadline stays at its 1 s floor
        data = bytes(64 * 1024 * 1024)  # far more than the socket buffers hold
        pace = Pieces("off") if paced else None
        with pytest.raises(E.DeadlineExceeded) as info:
            client.put("u1", "big.las", memoryview(data), 0, len(data), whole=True, pace=pace)
        assert connections_to(server.port) == 0
        # The broken pipe after the cut is this end's doing: the server may still hold that body, so
        # the file's next PUT waits (engine/abandoned.py); it once passed for the peer's hang-up.
        assert info.value.gave_up_on_upload
        if paced:
            assert 0 < sum(pace.sizes) < len(data)  # what went before the stall was told, nothing after


def test_the_put_deadline_grows_with_its_body():
    client = ApiClient(Settings(api_key=API_KEY, request_deadline=120.0, min_upload_rate=64 * 1024))
    assert client.deadline_for(0) == 120.0
    assert client.deadline_for(8 * 1024 * 1024) == 120.0 + 128.0


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    cert, key = self_signed_certificate(tmp_path_factory.mktemp("tls"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return str(cert), context


@pytest.mark.timeout(DEADLINE_TEST_TIMEOUT)
def test_slow_headers_over_tls_end_at_the_deadline(certificate):
    cafile, context = certificate

    def respond(conn, request):
        request.read_body()
        trickle(conn, b"HTTP/1.1 200 OK\r\nX-Slow: ", server.stopped)
        return False

    with RawServer(respond, tls=context) as server:
        client = make_client(server, ca_bundle=cafile)
        with pytest.raises(E.DeadlineExceeded):  # not a TLS error: the cut socket is the deadline's doing
            client.file_status("u1", "a.jpg")
        assert connections_to(server.port) == 0


@pytest.mark.timeout(DEADLINE_TEST_TIMEOUT)
def test_a_stalled_tls_handshake_ends_at_the_deadline(certificate):
    cafile, context = certificate
    with RawServer(None, tls=context, handshake=False) as server:
        client = make_client(server, ca_bundle=cafile, connect_timeout=SERVER_PATIENCE)
        with pytest.raises(E.DeadlineExceeded):
            client.file_status("u1", "a.jpg")
        assert connections_to(server.port) == 0


def test_an_untrusted_certificate_is_a_tls_error(certificate):
    _, context = certificate
    with RawServer(canned(PROGRESS), tls=context) as server:
        with pytest.raises(E.TlsError) as info:
            make_client(server).check_credentials()
        assert "TLS" in str(info.value) and info.value.retryable


# --- bounded bodies -------------------------------------------------------------------------------

def rss_kib(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field_name} in /proc/self/status")


def test_a_300_mb_answer_is_dropped_without_filling_memory():
    piece = b"{" + b" " * (1024 * 1024 - 1)

    def respond(conn, request):
        request.read_body()
        # No Content-Length: the body runs until the connection closes, so it must be read to be judged.
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n")
        for _ in range(300):
            conn.sendall(piece)
        return False

    with RawServer(respond) as server:
        client = make_client(server, request_deadline=60.0)
        before = rss_kib("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets the peak (VmHWM) to now
            peak_field = "VmHWM"
        except OSError:
            peak_field = "VmRSS"
        error = None
        try:
            client.file_status("u1", "a.jpg")
        except E.Fs360Error as exc:
            error = exc
        growth_mib = (rss_kib(peak_field) - before) / 1024
        assert growth_mib < 50, f"RSS grew by {growth_mib:.0f} MiB"
        assert isinstance(error, E.ResponseTooLarge) and isinstance(error, E.TransportError) and error.retryable
        assert connections_to(server.port) == 0


def test_a_declared_oversize_answer_is_dropped_unread():
    def respond(conn, request):
        request.read_body()
        conn.sendall(f"HTTP/1.1 502 Bad Gateway\r\nContent-Length: {300 * 1024 * 1024}\r\n\r\n".encode())
        server.stopped.wait(SERVER_PATIENCE)
        return False

    with RawServer(respond) as server:
        with pytest.raises(E.ResponseTooLarge):
            make_client(server).file_status("u1", "a.jpg")
        assert MAX_RESPONSE_BYTES < 300 * 1024 * 1024


def test_a_compressed_bomb_is_dropped_without_filling_memory():
    """Sent gzip although the client asks for none: 300 MB of zeros in a few hundred KB."""
    bomb = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: the gzip format
    body = b"".join(bomb.compress(bytes(1024 * 1024)) for _ in range(300)) + bomb.flush()

    def respond(conn, request):
        request.read_body()
        conn.sendall(answer(200, body, headers=["Content-Encoding: gzip", "Content-Type: application/json"]))
        return True

    with RawServer(respond) as server:
        client = make_client(server, request_deadline=60.0)
        before = rss_kib("VmRSS")
        error = None
        try:
            client.file_status("u1", "a.jpg")
        except E.Fs360Error as exc:
            error = exc
        growth_mib = (rss_kib("VmRSS") - before) / 1024
        assert growth_mib < 50, f"RSS grew by {growth_mib:.0f} MiB"
        assert isinstance(error, E.ResponseTooLarge)


def test_answers_read_to_the_end_keep_the_connection_alive():
    """Reading the body in pieces must still hand the connection back for the next request."""
    with RawServer(canned(PROGRESS, answer(404, {"error": "file_not_found"}), PROGRESS)) as server:
        client = make_client(server)
        client.file_status("u1", "a.jpg")
        with pytest.raises(E.RemoteFileNotFound):
            client.file_status("u1", "b.jpg")
        client.file_status("u1", "a.jpg")
        assert server.connections == 1 and len(server.requests) == 3


def test_a_connection_the_server_closed_while_idle_is_not_reused():
    """A server (or a load balancer) closes a kept-alive connection between requests: the next
    request goes out on a fresh connection instead of failing on the dead one."""
    def respond(conn, request):
        request.read_body()
        conn.sendall(PROGRESS)
        return False  # answered with keep-alive, then closed anyway

    with RawServer(respond) as server:
        client = make_client(server)
        client.file_status("u1", "a.jpg")
        wait_until(lambda: closed_by_peer(server.port), 30, 0.01, what="the server's close to reach this end")
        client.file_status("u1", "a.jpg")
        assert server.connections == 2 and len(server.requests) == 2


def closed_by_peer(port: int) -> bool:
    """Whether a TCP socket of this process towards 127.0.0.1:`port` has its peer's FIN (CLOSE_WAIT)."""
    with open("/proc/self/net/tcp") as table:
        next(table)
        return any(int(cols[2].rsplit(":", 1)[1], 16) == port and cols[3] == "08"
                   for cols in (line.split() for line in table))


def _raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


@pytest.mark.parametrize("encoding,compress", [
    ("gzip", lambda data: zlib.compress(data, wbits=31)),
    ("gzip", lambda data: zlib.compress(data[:9], wbits=31) + zlib.compress(data[9:], wbits=31)),  # two members
    ("gzip", lambda data: zlib.compress(data, wbits=31) + b"\n"),  # a sloppy server's newline after it
    ("deflate", zlib.compress),
    ("deflate", _raw_deflate),  # without zlib's wrapping
], ids=["gzip", "gzip-two-members", "gzip-and-a-newline", "deflate", "raw-deflate"])
def test_an_answer_compressed_though_not_asked_is_decoded(encoding, compress):
    body = compress(json.dumps({"received": 3, "total": 3, "complete": True}).encode())
    with RawServer(canned(answer(200, body, headers=[f"Content-Encoding: {encoding}"]))) as server:
        progress = make_client(server).file_status("u1", "a.jpg")
        assert (progress.received, progress.total, progress.complete) == (3, 3, True)
        assert server.requests[0].headers["accept-encoding"] == "identity"


def test_an_answer_that_does_not_decode_is_a_transport_error():
    garbage = answer(200, b"\x1f\x8bnot gzip at all", headers=["Content-Encoding: gzip"])
    with RawServer(canned(garbage)) as server:
        with pytest.raises(E.TransportError, match="does not decode"):
            make_client(server).file_status("u1", "a.jpg")


def test_an_answer_cut_short_of_its_length_is_not_taken():
    """`{"received": 3, ...}` declared 100 bytes long, and the connection closed after 60: a
    truncated answer, whatever it parses to, is no answer."""
    whole = json.dumps({"received": 3, "total": 3, "complete": True}).encode()

    def respond(conn, request):
        request.read_body()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + whole)
        return False

    with RawServer(respond) as server:
        with pytest.raises(E.TransportError):
            make_client(server).file_status("u1", "a.jpg")


@pytest.mark.parametrize("head,said", [
    (b"\x1b[2J\x1b[31mYOUR DISK IS FULL\x1b[0m\r\n\r\n", "the server's answer is not HTTP"),
    (b"HTTP/\x1b]0;owned\x07 200 OK\r\nContent-Length: 2\r\n\r\n{}", "the server's answer is not HTTP"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 52\r\nContent-Length: 5\r\n\r\n", "two different lengths"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", "Transfer-Encoding"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n" + b"x" * 65536, "negative size"),
], ids=["garbage", "escapes-in-the-version", "two-lengths", "unknown-coding", "negative-chunk"])
def test_an_answer_that_cannot_be_framed_is_a_transport_error_in_plain_words(head, said):
    """What the server sent never reaches the message as it is (terminal escapes in a log)."""
    with RawServer(canned(head)) as server:
        with pytest.raises(E.TransportError) as failed:
            make_client(server).file_status("u1", "a.jpg")
    assert said in str(failed.value) and "\x1b" not in str(failed.value) and "\x07" not in str(failed.value)


def test_an_interim_answer_is_skipped_and_never_shifts_answers_onto_the_next_request():
    """A proxy's 103 Early Hints (or a 102) before the real answer: were it taken for the answer,
    the real one would be read by the next request on the connection, as another file's."""
    def respond(conn, request):
        request.read_body()
        file_name = request.path.rsplit("/", 1)[1]
        size = {"a.jpg": 3, "b.jpg": 7}[file_name]
        conn.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
                     b"HTTP/1.1 102 Processing\r\n\r\n"
                     + answer(200, {"received": size, "total": size, "complete": True}))
        return True

    with RawServer(respond) as server:
        client = make_client(server)
        assert client.file_status("u1", "a.jpg").total == 3
        assert client.file_status("u1", "b.jpg").total == 7
        assert server.connections == 1


@pytest.mark.parametrize("coding", ["chunked ", "identity, chunked", "Chunked"])
def test_a_transfer_encoding_that_ends_in_chunked_is_read_as_chunked(coding):
    body = json.dumps({"received": 3, "total": 3, "complete": True}).encode()
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    head = f"HTTP/1.1 200 OK\r\nTransfer-Encoding: {coding}\r\n\r\n".encode()
    with RawServer(canned(head + chunked)) as server:
        client = make_client(server, read_timeout=30.0)
        assert client.file_status("u1", "a.jpg").complete
        client.file_status("u1", "a.jpg")  # and the connection stays fit for the next answer
        assert server.connections == 1


@pytest.mark.timeout(DEADLINE_TEST_TIMEOUT)
def test_a_closing_answers_slow_body_ends_at_the_deadline():
    """`Connection: close`: http.client closes the connection and the answer reads on from the
    socket; the deadline must still cut that reading."""
    stopped = threading.Event()

    def respond(conn, request):
        request.read_body()
        trickle(conn, b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 100000\r\n\r\n{", stopped)
        return False

    with RawServer(respond) as server:
        try:
            with pytest.raises(E.DeadlineExceeded):
                make_client(server, request_deadline=1.0).file_status("u1", "a.jpg")
        finally:
            stopped.set()


def test_a_content_length_that_is_not_a_number_is_no_traceback():
    """`Content-Length: ²` (a digit to str.isdigit, not to int)."""
    body = json.dumps({"received": 3, "total": 3, "complete": True}).encode()
    with RawServer(canned(b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\nConnection: close\r\n\r\n" + body)) as server:
        try:
            make_client(server).file_status("u1", "a.jpg")
        except E.Fs360Error:
            pass  # refused is fine; escaping as a ValueError is not


def test_an_answer_sent_before_the_body_was_read_is_the_answer():
    """A server that refuses a PUT from its headers answers at once and closes without reading
    the body: fs360 hits a reset or a broken pipe while sending, and must read the refusal."""
    refusal = answer(413, {"error": "file_too_large", "limit": 1024})

    def respond(conn, request):
        conn.sendall(refusal)
        conn.shutdown(socket.SHUT_WR)
        request.rfile.read(1)  # the body is coming: closed with it unread, the connection is reset
        return False

    with RawServer(respond) as server:
        with pytest.raises(E.ApiError) as refused:
            make_client(server, request_deadline=30.0).put("u1", "a.jpg", memoryview(bytes(32 * 1024 * 1024)),
                                                           0, 32 * 1024 * 1024, whole=True)
        assert refused.value.code == "file_too_large"


# --- redirects ------------------------------------------------------------------------------------

def test_a_redirect_is_not_followed_and_names_its_target():
    with RawServer(canned(answer(200, {"upload_id": "x"}))) as elsewhere:
        target = f"http://127.0.0.1:{elsewhere.port}/api/v1/uploads"
        with RawServer(canned(answer(307, headers=[f"Location: {target}"]))) as server:
            client = make_client(server)
            with pytest.raises(E.Redirected) as info:
                client.open_session()
            assert elsewhere.connections == 0 and elsewhere.requests == []
            assert target in str(info.value) and "--api-url" in str(info.value)
            assert info.value.retryable and not isinstance(info.value, E.ApiError) and no_key_in(info.value)


# --- odd answers over the wire --------------------------------------------------------------------

def in_seconds(seconds: int) -> str:
    return format_datetime(datetime.now(timezone.utc) + timedelta(seconds=seconds), usegmt=True)


RATE = {"error": "rate_limited"}


@pytest.mark.parametrize("raw,retry_after", [
    (answer(429, RATE), None),
    (answer(429, RATE, headers=["Retry-After: soon"]), None),
    (answer(429, RATE, headers=["Retry-After: 86400000"]), MAX_RETRY_AFTER),
    (answer(429, RATE, headers=["Retry-After: 7"]), 7.0),
], ids=["none", "garbage", "huge", "seconds"])
def test_429_over_the_wire(raw, retry_after):
    with RawServer(canned(raw)) as server:
        with pytest.raises(E.RateLimited) as info:
            make_client(server).file_status("u1", "a.jpg")
        assert info.value.retry_after == retry_after and info.value.retryable


def test_429_with_an_http_date():
    with RawServer(canned(answer(429, RATE, headers=[f"Retry-After: {in_seconds(300)}"]))) as server:
        with pytest.raises(E.RateLimited) as info:
            make_client(server).file_status("u1", "a.jpg")
        assert 250 <= info.value.retry_after <= 301


@pytest.mark.parametrize("status", [413, 502, 504])
def test_a_proxys_html_page_is_transient(status):
    page = b"<html><head><title>Error</title></head><body><h1>nginx</h1></body></html>"
    with RawServer(canned(answer(status, page, headers=["Content-Type: text/html"]))) as server:
        with pytest.raises(E.ServerError) as info:
            make_client(server).put("u1", "a.jpg", b"abc", 0, 3, whole=True)
        assert info.value.retryable and info.value.status == status


def test_a_json_413_from_the_api_stays_a_refusal_with_its_limit():
    with RawServer(canned(answer(413, {"error": "file_too_large", "limit": 2}))) as server:
        with pytest.raises(E.FileTooLarge) as info:
            make_client(server).put("u1", "a.jpg", b"abc", 0, 3, whole=True)
        assert info.value.fields["limit"] == 2 and not info.value.retryable


def test_extra_fields_in_an_error_body():
    body = {"error": "extension_not_allowed", "extension": "exe", "allowed": ["jpg"],
            "message": "This file type is not supported", "detail": {"hint": 1}}
    with RawServer(canned(answer(415, body))) as server:
        with pytest.raises(E.ExtensionNotAllowed) as info:
            make_client(server).put("u1", "a.exe", b"abc", 0, 3, whole=True)
        assert "This file type is not supported" in str(info.value)
        assert info.value.fields["allowed"] == ["jpg"]


def test_float_expires_in_seconds():
    with RawServer(canned(answer(201, {"upload_id": "Bx0xyTjt", "expires_in_seconds": 259200.0}))) as server:
        opened = make_client(server).open_session()
    assert opened.upload_id == "Bx0xyTjt" and opened.expires_in_seconds == 259200.0


@pytest.mark.parametrize("status,code,cls", [(401, "token_expired_2027", E.Unauthorized),
                                             (403, "account_frozen", E.Forbidden),
                                             (402, None, E.QuotaExceeded)])
def test_account_errors_with_unknown_codes(status, code, cls):
    raw = answer(status, {"error": code}) if code else answer(status, b"<html>no</html>")
    with RawServer(canned(raw)) as server:
        with pytest.raises(E.AccountError) as info:
            make_client(server).put("u1", "a.jpg", b"abc", 0, 3, whole=True)
        assert type(info.value) is cls and no_key_in(info.value)


# --- the key check at mount -----------------------------------------------------------------------

PROJECTS = "GET /api/v1/projects"
PROBE = "GET /api/v1/uploads/fs360credentialcheck"
NO_SUCH_SESSION = answer(404, {"error": "upload_session_not_found"})


@pytest.mark.parametrize("listing", [b"[]", b'[{"name": "Bx0xyTjt", "status": 100}]', b'{"projects": []}'])
def test_check_with_get_projects(listing):
    with RawServer(routes({PROJECTS: answer(200, listing)})) as server:
        make_client(server).check_credentials()
        assert server.paths() == [PROJECTS]
        assert server.requests[0].headers["authorization"] == f"Bearer {API_KEY}"


@pytest.mark.parametrize("missing", [answer(404, b"<html>Not Found</html>"),
                                     answer(405, {"error": "method_not_allowed"}),
                                     answer(404, {"error": "not_found"})],
                         ids=["html-404", "json-405", "json-404"])
def test_check_falls_back_to_the_probe_without_get_projects(missing):
    with RawServer(routes({PROJECTS: missing, PROBE: NO_SUCH_SESSION})) as server:
        make_client(server).check_credentials()
        assert server.paths() == [PROJECTS, PROBE]


def test_check_fallback_on_a_server_that_is_not_the_api():
    with RawServer(routes({PROBE: answer(404, {"error": "not_found"})})) as server:
        with pytest.raises(E.ApiError) as info:
            make_client(server).check_credentials()
        assert info.value.code == "not_the_api"


@pytest.mark.parametrize("raw", [answer(200, b"<html><body>Projects</body></html>"), answer(200, {"hello": 1})],
                         ids=["html-200", "wrong-json"])
def test_check_against_a_web_page_is_not_the_api(raw):
    with RawServer(routes({PROJECTS: raw})) as server:
        with pytest.raises(E.ApiError) as info:
            make_client(server).check_credentials()
        assert info.value.code == "not_the_api"


@pytest.mark.parametrize("status,code,cls,advice", [
    (401, "invalid_api_key", E.Unauthorized, "make a new API key with both scopes"),
    (401, "brand_new_code", E.Unauthorized, "make a new API key with both scopes"),
    (403, "email_not_verified", E.Forbidden, "verify"),
    (403, "something_else", E.Forbidden, "profile page"),
])
def test_check_raises_account_errors_at_once(status, code, cls, advice):
    with RawServer(routes({PROJECTS: answer(status, {"error": code})})) as server:
        with pytest.raises(cls) as info:
            make_client(server).check_credentials()
        assert advice in str(info.value) and no_key_in(info.value)
        assert server.paths() == [PROJECTS]


def test_check_account_error_on_the_probe():
    with RawServer(routes({PROBE: answer(401, {"error": "unauthorized"})})) as server:
        with pytest.raises(E.Unauthorized):
            make_client(server).check_credentials()


def test_check_retries_a_failing_server_then_says_so():
    """GET /projects fails, and the probe after it proves nothing (a 404 page): the listing's
    failure is the one said, after every try."""
    with RawServer(routes({PROJECTS: answer(503, b"<html>Service Unavailable</html>")})) as server:
        with pytest.raises(E.TransportError) as info:
            make_client(server).check_credentials()
        assert server.paths() == [PROJECTS, PROBE] * CREDENTIAL_CHECK_ATTEMPTS
        message = str(info.value)
        assert f"the server at 127.0.0.1:{server.port} did not answer" in message and "HTTP 503" in message


@pytest.mark.parametrize("listing", [answer(503, {"error": "internal_error"}), answer(502, b"<html>Bad Gateway</html>"),
                                     answer(429, {"error": "rate_limited"}, headers=["Retry-After: 60"])],
                         ids=["json-503", "html-502", "429"])
def test_check_passes_on_the_probe_while_get_projects_fails(listing):
    """GET /projects is not in the API's guide (api.md Part C): while it fails, or is paced, the
    documented probe proves the key at once (a remount is not kept down by it)."""
    with RawServer(routes({PROJECTS: listing, PROBE: NO_SUCH_SESSION})) as server:
        make_client(server).check_credentials()
        assert server.paths() == [PROJECTS, PROBE]


def test_check_raises_the_probes_account_error_while_get_projects_fails():
    with RawServer(routes({PROJECTS: answer(503, {"error": "internal_error"}),
                           PROBE: answer(401, {"error": "invalid_api_key"})})) as server:
        with pytest.raises(E.Unauthorized):
            make_client(server).check_credentials()
        assert server.paths() == [PROJECTS, PROBE]


def test_check_recovers_when_the_server_does():
    with RawServer(canned(answer(502, b"<html>Bad Gateway</html>"), answer(200, b"[]"))) as server:
        make_client(server).check_credentials()
        # The probe after the 502 got the listing's answer, which proves nothing: tried again.
        assert server.paths() == [PROJECTS, PROBE, PROJECTS]


@pytest.mark.timeout(DEADLINE_TEST_TIMEOUT)
def test_check_retries_a_server_that_does_not_answer():
    def respond(conn, request):
        server.stopped.wait(SERVER_PATIENCE)
        return False

    with RawServer(respond) as server:
        with pytest.raises(E.TransportError) as info:
            make_client(server, request_deadline=0.5).check_credentials()
        assert len(server.requests) == CREDENTIAL_CHECK_ATTEMPTS
        assert "did not answer" in str(info.value)


def test_check_does_not_follow_a_redirect():
    with RawServer(routes({PROJECTS: answer(301, headers=["Location: https://example.invalid/login"])})) as server:
        with pytest.raises(E.Redirected) as info:
            make_client(server).check_credentials()
        assert "https://example.invalid/login" in str(info.value)
        assert len(server.requests) == 1
