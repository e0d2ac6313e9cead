"""Contract tests of the emulator's hostile-server faults: 429s without a usable
Retry-After, a slow loris, a huge body, a redirect, a proxy's HTML errors, lost
bytes and chatty error bodies."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import pytest

from fs360.emulator.harness import EmulatorError, EmulatorProcess
from tests.integration.test_emulator_contract import KEYS, Api, efile


@pytest.fixture(scope="module", params=["default", "vendor"])
def emu(request, tmp_path_factory):
    args = ["--no-rate-limits", "--processing-seconds", "0", *KEYS]
    if request.param == "vendor":
        args += ["--profile", "vendor"]
    with EmulatorProcess(tmp_path_factory.mktemp("hostile"), args=args) as e:
        yield e
        assert "Traceback" not in e.stderr_text


@pytest.fixture
def api(emu):
    emu.reset()
    yield Api(emu)
    crashes = [v["detail"] for v in emu.violations() if v["kind"] == "emulator_internal_error"]
    assert not crashes, crashes[0]


def fault(emu, kind, endpoint="put_file", **kw):
    emu.set_faults([dict(endpoint=endpoint, kind=kind, count=1, **kw)])


def connect(emu) -> socket.socket:
    host, port = emu.root_url.split("//")[1].rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=30)


def read_head(s: socket.socket) -> tuple[bytes, dict[str, str], bytes]:
    """Status line, headers and whatever body bytes came with them."""
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = s.recv(4096)
        assert chunk, got
        got += chunk
    head, _, rest = got.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return status.encode(), headers, rest


def get_session_request(uid) -> bytes:
    return (f"GET /api/v1/uploads/{uid} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk_local_demo\r\n\r\n").encode()


# ----------------------------------------------------------------------------
def test_429_without_a_usable_retry_after(api, emu):
    uid = api.open()
    fault(emu, "retry_after_none")
    r = api.put(uid, "a.jpg", b"x")
    assert (r.status_code, r.json()) == (429, {"error": "rate_limited"}) and "Retry-After" not in r.headers
    fault(emu, "retry_after_date", retry_after=120)
    r = api.put(uid, "a.jpg", b"x")
    assert (r.status_code, r.json()) == (429, {"error": "rate_limited"})
    when = parsedate_to_datetime(r.headers["Retry-After"])  # an HTTP-date, not a number
    assert when.tzinfo is not None and r.headers["Retry-After"].endswith("GMT")
    fault(emu, "retry_after_huge")
    r = api.put(uid, "a.jpg", b"x")
    assert (r.status_code, r.headers["Retry-After"]) == (429, "86400")
    assert api.get_file(uid, "a.jpg").status_code == 404  # none did the work
    api.upload(uid, "a.jpg", b"x")  # count=1: one each
    assert [rule["retry_after"] for rule in emu.faults()["rules"]] == [86400]


@pytest.mark.parametrize("status", [413, 502, 504])
def test_html_error_status(api, emu, status):
    uid = api.open()
    fault(emu, "html_error", status=status)
    r = api.put(uid, "a.jpg", b"x" * 1000)
    assert r.status_code == status and r.headers["Content-Type"].startswith("text/html")
    assert f"<title>{status} ".encode() in r.content
    assert api.upload(uid, "a.jpg", b"x" * 1000).json()["complete"]  # the connection and server go on


def test_slow_loris_does_not_hold_up_others(api, emu):
    uid = api.open()
    fault(emu, "slow_loris", "get_session", seconds=0.5, duration=120)
    with connect(emu) as s:
        s.sendall(get_session_request(uid))
        status, headers, rest = read_head(s)
        assert status.startswith(b"HTTP/1.1 503") and headers["content-length"] == "240"
        body = bytearray(rest)
        while len(body) < 2:  # the body comes a byte at a time
            chunk = s.recv(1)
            assert chunk
            body += chunk
        assert bytes(body) == b"  "
        # meanwhile the emulator answers other connections
        other = Api(emu)
        assert other.get_session(uid).json() == {"upload_id": uid, "files": []}
        assert other.upload(uid, "b.jpg", b"abc").json()["complete"]
    assert api.get_session(uid).status_code == 200  # and goes on once the client gave up


def test_slow_loris_whole_body_is_json(api, emu):
    uid = api.open()
    fault(emu, "slow_loris", "get_file", seconds=0.01, duration=0.3)
    r = api.get_file(uid, "nope.jpg")
    assert (r.status_code, r.json()) == (503, {"error": "internal_error"})
    assert len(r.content) == 30 and r.content.startswith(b"    ")


def _peak_rss_kib(pid) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("VmHWM:")).split()[1])


def test_huge_body_is_streamed(api, emu):
    uid = api.open()
    size = 200_000_000
    peak_before = _peak_rss_kib(emu.proc.pid)
    fault(emu, "huge_body", "get_session", size=size)
    with connect(emu) as s:
        s.sendall(get_session_request(uid))
        status, headers, rest = read_head(s)
        assert status.startswith(b"HTTP/1.1 200") and headers["content-length"] == str(size)
        first, last, n = bytes(rest[:64]), b"", len(rest)
        buf = bytearray(1 << 20)
        while n < size:
            got = s.recv_into(buf)
            assert got, f"closed after {n} bytes"
            if len(first) < 64:
                first = (first + bytes(buf[:got]))[:64]
            last = (last + bytes(buf[:got]))[-8:]
            n += got
    assert n == size
    assert first.startswith(b'{"received":0,"padding":"xxxx') and last == b'xxxxxx"}'
    # the emulator never held it: its peak memory grew by far less than the body
    assert _peak_rss_kib(emu.proc.pid) - peak_before < 64 * 1024
    fault(emu, "huge_body", "get_file", size=10)
    r = api.get_file(uid, "a.jpg")
    assert (r.status_code, r.content) == (200, b"x" * 10)
    assert api.get_session(uid).status_code == 200


def test_redirect_to_another_host(api, emu):
    uid = api.open()
    data = b"redirected bytes"
    fault(emu, "redirect")
    r = api.put(uid, "a.jpg", data, allow_redirects=False)
    assert r.status_code == 307
    loc = urlsplit(r.headers["Location"])
    assert loc.hostname == "localhost" and loc.port == emu.port
    assert loc.path == f"/_emulator/redirected/api/v1/uploads/{uid}/a.jpg"
    # A client that follows it is told the file is complete, but nothing was stored,
    # and the emulator records that a client trusted another host.
    fault(emu, "redirect")
    r = api.put(uid, "a.jpg", data)
    assert r.json() == {"received": len(data), "total": len(data), "complete": True}
    assert r.history and r.history[0].status_code == 307
    assert api.get_file(uid, "a.jpg").status_code == 404
    [v] = emu.violations()
    assert v["kind"] == "redirect_followed" and "without the Authorization header" in v["detail"]
    assert "sk_local_demo" not in str(emu.violations())
    emu.reset()
    # a location of the test's choice; {path} is the request's path
    fault(emu, "redirect", "get_session", location="http://127.0.0.1:9{path}")
    r = api.s.get(f"{api.base}/uploads/{uid}", headers=api.h(), allow_redirects=False)
    assert (r.status_code, r.headers["Location"]) == (307, f"http://127.0.0.1:9/api/v1/uploads/{uid}")
    assert emu.violations() == []


def test_rollback_received(api, emu):
    uid = api.open()
    data = os.urandom(1000)
    assert api.put(uid, "r.las", data[:500], (0, 499, 1000)).json()["received"] == 500
    # the server loses everything: the next chunk is a gap, the client must resync
    fault(emu, "rollback_received", "put_file")
    r = api.put(uid, "r.las", data[500:], (500, 999, 1000))
    assert (r.status_code, r.json()) == (409, {"error": "non_contiguous_chunk", "received": 0})
    assert api.put(uid, "r.las", data[:600], (0, 599, 1000)).json()["received"] == 600
    # or a share of it, seen by the status GET
    fault(emu, "rollback_received", "get_file", fraction=0.5)
    assert api.get_file(uid, "r.las").json() == {"received": 300, "total": 1000, "complete": False}
    assert api.put(uid, "r.las", data[300:], (300, 999, 1000)).json()["complete"] is True
    assert efile(emu, uid, "r.las")["sha256"] == hashlib.sha256(data).hexdigest()
    # a complete file is final
    fault(emu, "rollback_received", "get_file")
    assert api.get_file(uid, "r.las").json() == {"received": 1000, "total": 1000, "complete": True}
    assert emu.faults()["rules"][0]["fired"] == 1
    assert emu.violations() == []


def test_extra_fields_on_errors(api, emu):
    uid = api.open()
    assert api.get_file(uid, "nope.jpg").json() == {"error": "file_not_found"}
    emu.set_faults([{"endpoint": "get_file", "kind": "extra_fields"}])
    body = api.get_file(uid, "nope.jpg").json()
    assert body["error"] == "file_not_found" and isinstance(body["message"], str) and isinstance(body["detail"], str)
    emu.set_faults([{"endpoint": "put_file", "kind": "extra_fields"}, {"endpoint": "put_file", "kind": "error_503"}])
    body = api.put(uid, "a.jpg", b"x").json()
    assert body["error"] == "internal_error" and set(body) == {"error", "message", "detail"}
    api.put(uid, "a.jpg", b"abc", (0, 2, 10))  # still 503: nothing stored
    emu.set_faults([{"endpoint": "put_file", "kind": "extra_fields"}])
    r = api.put(uid, "b.jpg", b"ab", (2, 3, 4))
    assert r.status_code == 409 and r.json()["received"] == 0 and "message" in r.json()
    assert api.upload(uid, "b.jpg", b"abcd").json() == {"received": 4, "total": 4, "complete": True}  # success: as is


def test_new_fault_fields_are_validated(emu):
    for rules in ([{"kind": "html_error", "status": 418}], [{"kind": "slow_loris", "seconds": 0}],
                  [{"kind": "huge_body", "size": -1}], [{"kind": "redirect", "location": 5}],
                  [{"kind": "rollback_received", "fraction": 1.5}], [{"kind": "error_503", "status": 504}],
                  [{"kind": "redirect", "location": "http://x\r\nSet-Cookie: a"}]):
        with pytest.raises(EmulatorError, match="invalid_faults"):
            emu.set_faults(rules)
    emu.clear_faults()


def test_concurrent_slow_loris_and_normal_traffic(api, emu):
    """Several stalled clients at once still leave the emulator free for the rest."""
    uid = api.open()
    emu.set_faults([{"endpoint": "get_session", "kind": "slow_loris", "seconds": 1, "duration": 600, "count": 4}])
    socks = []
    try:
        for _ in range(4):
            s = connect(emu)
            s.sendall(get_session_request(uid))
            socks.append(s)
        for s in socks:
            assert read_head(s)[0].startswith(b"HTTP/1.1 503")
        results = []

        def client(i):
            c = Api(emu)
            results.append(c.upload(uid, f"c{i}.jpg", b"x" * 100).json()["complete"])

        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert results == [True] * 4
    finally:
        for s in socks:
            s.close()
    assert emu.violations() == []
