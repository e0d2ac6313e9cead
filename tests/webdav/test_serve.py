"""`fs360 serve webdav` end to end with curl: the daemon against the emulator over real HTTP.

The issue's "done when": MKCOL a session, PUT three files (one of 50 MB) and .create, and the
emulator holds them complete with equal sha256 and the project reaches 100; PROPFIND shows
each file's state; GET of `status` shows progress. Then the commit point of a PUT (an empty
PUT then a full one uploads once; a body cut short never uploads) and the rules over HTTP.
"""

from __future__ import annotations

import contextlib
import html
import json
import socket
from urllib.parse import urlsplit

import pytest

from tests.harness import assert_uploaded, remote_files, sha256_of, wait_until, write_random
from tests.webdav.conftest import FS360

MiB = 1024 * 1024


def put(dav, path: str, source, expect: int | None = None, *headers: str) -> tuple[int, str]:
    args = ["-T", str(source)]
    for header in headers:
        args += ["-H", header]
    return dav.curl(*args, path=path, check_status=expect)


def upload_id_of(dav, session: str) -> str:
    return json.loads(dav.curl(path=f"{session}/status.json", check_status=200)[1])["upload_id"]


def test_a_session_of_three_files_and_create_reaches_project_100(tmp_path, emulator, dav):
    sizes = {"scan.e57": 50 * MiB, "photo.jpg": 300_000, "plan.dxf": 1000}
    expected = {name: write_random(tmp_path / name, size) for name, size in sizes.items()}
    dav.curl("-X", "MKCOL", path="Office", check_status=201)
    for name in sizes:
        put(dav, f"Office/{name}", tmp_path / name, 201)
    (tmp_path / "create.json").write_text('{"title": "Office", "privacy_mode": 1}')
    put(dav, "Office/.create", tmp_path / "create.json", 201)

    def project():
        return json.loads(dav.curl(path="Office/status.json")[1])["project"] or {}
    wait_until(lambda: project().get("status") == 100, 180, 0.3, what="the project to reach 100")
    assert project()["state"] == "ready" and project()["title"] == "Office"
    assert_uploaded(emulator, upload_id_of(dav, "Office"), expected)
    listing = dav.properties("Office/")
    for name in sizes:
        assert listing[f"/Office/{name}"][f"{FS360}state"] == "complete"
        assert listing[f"/Office/{name}"][f"{FS360}server-name"] == name
        assert listing[f"/Office/{name}"]["{DAV:}getcontentlength"] == str(sizes[name])
    status, text = dav.curl(path="Office/status", check_status=200)
    assert "3/3 complete" in text and "100%" in text, text
    # The key never appears in an answer.
    assert emulator.api_key not in text + dav.curl(path="status")[1] + dav.curl(path="Office/status.json")[1]
    assert emulator.api_key not in dav.curl("-X", "PROPFIND", "-H", "Depth: infinity", path="")[1]


def test_propfind_shows_the_upload_state_while_a_file_uploads_and_get_reads_it_back(tmp_path, emulator, dav):
    emulator.set_faults([{"endpoint": "put_file", "kind": "latency", "seconds": 1, "probability": 1}])
    sha = write_random(tmp_path / "a.jpg", 3 * MiB)
    dav.curl("-X", "MKCOL", path="S", check_status=201)
    put(dav, "S/a.jpg", tmp_path / "a.jpg", 201, "Translate: f")
    assert dav.state("S/a.jpg") in ("pending", "uploading")
    status, text = dav.curl(path="S/status", check_status=200)
    assert "a.jpg" in text and "0/1 complete" in text
    emulator.clear_faults()
    dav.wait_state("S/a.jpg", "complete")
    # Windows' WebClient sends `Translate: f` on GET: the file's bytes, as they are.
    got = tmp_path / "got.jpg"
    got.write_bytes(b"")
    dav.curl("-H", "Translate: f", "-o", str(got), path="S/a.jpg")
    assert sha256_of(got) == sha


def test_an_empty_put_then_the_full_put_uploads_once_the_full_file(tmp_path, emulator, dav):
    """Windows' WebClient and Finder create a file with an empty PUT, then PUT its content."""
    (tmp_path / "empty").write_bytes(b"")
    sha = write_random(tmp_path / "full.jpg", 2 * MiB)
    dav.curl("-X", "MKCOL", path="S", check_status=201)
    put(dav, "S/pano.jpg", tmp_path / "empty", 201)
    assert dav.state("S/pano.jpg") == "writing"  # held back: its content may come next
    put(dav, "S/pano.jpg", tmp_path / "full.jpg", 204)
    dav.wait_state("S/pano.jpg", "complete")
    remote = assert_uploaded(emulator, upload_id_of(dav, "S"), {"pano.jpg": sha})
    assert remote["pano.jpg"]["overwritten_bytes"] == 0 and remote["pano.jpg"]["put_count"] == 1


def test_an_empty_put_alone_is_final_after_the_grace_time(tmp_path, emulator, dav_factory):
    dav = dav_factory(emulator, extra_args=["--empty-put-grace", "0.5"])
    (tmp_path / "empty").write_bytes(b"")
    dav.curl("-X", "MKCOL", path="S", check_status=201)
    put(dav, "S/empty.jpg", tmp_path / "empty", 201)
    dav.wait_state("S/empty.jpg", "complete")
    remote = remote_files(emulator)
    assert remote["empty.jpg"]["total"] == 0 and remote["empty.jpg"]["complete"]


def raw_request(dav, head: str, body: bytes) -> bytes:
    """Sends a request's head and (part of) its body, then closes the connection: a client that
    disconnects halfway. Returns whatever answer came before the close."""
    address = urlsplit(dav.url)
    answer = b""
    with socket.create_connection((address.hostname, address.port), timeout=30) as sock:
        # A server that refuses the request may answer and close before the rest is sent: what it
        # answered is still read (its reset then ends the reading, not the test).
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                answer += chunk
    return answer


@pytest.mark.parametrize("framing", ["content-length", "chunked", "expected-entity-length"])
def test_a_put_cut_off_mid_body_is_never_uploaded(tmp_path, emulator, dav, framing):
    dav.curl("-X", "MKCOL", path="S", check_status=201)
    data = b"x" * (2 * MiB)
    half = data[: MiB]
    if framing == "content-length":
        head = f"PUT /S/cut.jpg HTTP/1.1\nHost: x\nContent-Length: {len(data)}\n"
        sent = half
    elif framing == "chunked":  # a chunk announced whole, its bytes cut short
        head = "PUT /S/cut.jpg HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\n"
        sent = f"{len(data):x}\r\n".encode() + half
    else:  # Finder: chunked, the length in X-Expected-Entity-Length, the body ends early but well formed
        head = (f"PUT /S/cut.jpg HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\n"
                f"X-Expected-Entity-Length: {len(data)}\n")
        sent = f"{len(half):x}\r\n".encode() + half + b"\r\n0\r\n\r\n"
    raw_request(dav, head, sent)
    dav.wait_state("S/cut.jpg", "interrupted")
    # A whole file after it goes up: the engine runs, and the cut one stays behind.
    write_random(tmp_path / "ok.jpg", 1000)
    put(dav, "S/ok.jpg", tmp_path / "ok.jpg", 201)
    dav.wait_state("S/ok.jpg", "complete")
    assert "cut.jpg" not in remote_files(emulator)
    error = dav.properties("S/")["/S/cut.jpg"][f"{FS360}error"]
    assert "cut short" in error and "copy it again" in error


MALFORMED = {
    "not hex": (b"zz\r\nxx\r\n", "is not a hexadecimal size"),
    # int("-5", 16) is -5, which cheroot took for the last chunk: an empty file went up (a hostile run).
    "negative": (b"-5\r\nhello\r\n0\r\n\r\n", "is not a hexadecimal size"),
    "python's own notation": (b"0x5\r\nhello\r\n0\r\n\r\n", "is not a hexadecimal size"),
    # Past any socket read: cheroot's OverflowError was answered 500.
    "too large": (b"ffffffffffffffffffff\r\n" + b"z" * 1000, "is not a hexadecimal size"),
    "larger than fs360 reads at once": (b"7fffffffffff\r\n" + b"z" * 1000, "more than fs360 takes at once"),
    # cheroot read a size line of any length into memory.
    # (Just past the limit: the server's answer comes before a larger send is done, and the
    # client's own shutdown then fails.)
    "an endless size line": (b"5;" + b"x" * 4200 + b"\r\nhello\r\n0\r\n\r\n", "longer than 4096 bytes"),
    "no last chunk": (b"", "malformed or ends without its last chunk"),
}


# Each as the first chunk and after a good one; an empty body without its last chunk never began.
CASES = [(body, first) for body in MALFORMED for first in (True, False) if body != "no last chunk" or not first]


@pytest.mark.parametrize("body, first", CASES, ids=[f"{b}, {'first chunk' if f else 'after a good one'}" for b, f in CASES])
def test_a_put_whose_chunked_body_cannot_be_read_gets_400_with_its_reason(tmp_path, emulator, dav, body, first):
    """cheroot cannot read the body (a chunk size that is not hex, or the connection's end where
    the next chunk's size should be): WsgiDAV answered 500 and fs360 logged nothing; a negative
    size ended the body, so the file went up empty. Now: a 400 that says why, one log line, and
    the file interrupted, never uploaded."""
    dav.curl("-X", "MKCOL", path="S", check_status=201)
    data = b"y" * 100_000
    bad, words = MALFORMED[body]
    sent = bad if first else f"{len(data):x}\r\n".encode() + data + b"\r\n" + bad
    answer = raw_request(dav, "PUT /S/bad.jpg HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\n", sent)
    head, _, page = answer.decode("utf-8", "replace").partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 400 "), answer[:300]
    assert words in html.unescape(page) and "the file is not taken; send it again" in html.unescape(page), page
    dav.wait_state("S/bad.jpg", "interrupted")
    logged = [line for line in (dav.cache_dir / "fs360.log").read_text().splitlines() if "PUT /S/bad.jpg" in line]
    assert len(logged) == 1 and " WARNING " in logged[0], logged
    assert "bad.jpg" not in remote_files(emulator)


def test_an_endless_request_head_is_refused_and_the_server_serves_on(tmp_path, emulator, dav):
    """cheroot takes a request head of any size by default: one endless header line grew the
    server's memory for as long as the client sent it."""
    dav.curl("-X", "MKCOL", path="S", check_status=201)
    answer = raw_request(dav, "PUT /S/big-head.jpg HTTP/1.1\nHost: x\nX-Pad: " + "p" * 200_000 + "\nContent-Length: 1\n",
                         b"z")
    assert answer.startswith(b"HTTP/1.1 413 ") or answer.startswith(b"HTTP/1.1 414 "), answer[:200]
    assert "big-head.jpg" not in remote_files(emulator)
    (tmp_path / "after.jpg").write_bytes(b"after")
    put(dav, "S/after.jpg", tmp_path / "after.jpg", 201)


def test_a_finder_style_chunked_put_with_its_expected_length_uploads(tmp_path, emulator, dav):
    dav.curl("-X", "MKCOL", path="S", check_status=201)
    sha = write_random(tmp_path / "clip.mp4", 3 * MiB + 5)
    put(dav, "S/clip.mp4", tmp_path / "clip.mp4", 201, "Transfer-Encoding: chunked",
        f"X-Expected-Entity-Length: {3 * MiB + 5}")
    dav.wait_state("S/clip.mp4", "complete")
    assert_uploaded(emulator, upload_id_of(dav, "S"), {"clip.mp4": sha})


def test_mkcol_put_propfind_move_lock_and_the_rules_over_http(tmp_path, emulator, dav):
    write_random(tmp_path / "a.jpg", 5000)
    write_random(tmp_path / "other.jpg", 5000, seed=2)
    dav.curl("-X", "MKCOL", path="S", check_status=201)
    dav.curl("-X", "MKCOL", path="S", check_status=405)               # exists
    dav.curl("-X", "MKCOL", path="S/Raw", check_status=201)           # a folder of the session's tree
    status, text = put(dav, "x.jpg", tmp_path / "a.jpg")              # files live in sessions
    assert status == 403 and "only folders live at the root" in text
    status, text = put(dav, "S/status", tmp_path / "a.jpg")
    assert status == 403 and "read-only" in text
    put(dav, "S/a.jpg", tmp_path / "a.jpg", 201)
    put(dav, "S/Raw/r.jpg", tmp_path / "a.jpg", 201)

    # MOVE inside the tree (before .create) and of a whole folder.
    dav.curl("-X", "MOVE", "-H", f"Destination: {dav.url}S/Raw/r2.jpg", path="S/Raw/r.jpg", check_status=201)
    dav.curl("-X", "MOVE", "-H", f"Destination: {dav.url}S/Scans/", path="S/Raw/", check_status=201)
    assert "/S/Scans/r2.jpg" in dav.properties("S/Scans/")

    # LOCK: a PUT without the token is refused with 423, with it accepted.
    lock_body = ('<?xml version="1.0"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope>'
                 '<D:locktype><D:write/></D:locktype><D:owner>test</D:owner></D:lockinfo>')
    status, text = dav.curl("-X", "LOCK", "-H", "Timeout: Second-60", "-H", "Content-Type: application/xml",
                            "--data", lock_body, "-D", "-", path="S/Scans/r2.jpg")
    assert status == 200, text
    token = next(line.split(":", 1)[1].strip() for line in text.splitlines()
                 if line.lower().startswith("lock-token:"))
    put(dav, "S/Scans/r2.jpg", tmp_path / "other.jpg", 423)
    put(dav, "S/Scans/r2.jpg", tmp_path / "other.jpg", 204, f"If: ({token})")
    dav.curl("-X", "UNLOCK", "-H", f"Lock-Token: {token}", path="S/Scans/r2.jpg", check_status=204)

    # What the server holds cannot change: 403 with the reason; the same bytes again are accepted.
    dav.wait_state("S/a.jpg", "complete")
    status, text = put(dav, "S/a.jpg", tmp_path / "other.jpg")
    assert status == 403 and "already holds a different a.jpg; it cannot be replaced" in text, text
    put(dav, "S/a.jpg", tmp_path / "a.jpg", 204)
    status, text = dav.curl("-X", "MOVE", "-H", f"Destination: {dav.url}S/b.jpg", path="S/a.jpg")
    assert status == 403 and "cannot be changed" in text, text
    # A session that still lists files is not removed by RMDIR's rule; DELETE is rm -r.
    dav.curl("-X", "DELETE", path="S/Scans/", check_status=204)
    assert "/S/Scans/" not in dav.properties("S/")
    assert [f["name"] for f in emulator.files()] == ["a.jpg"]


def test_an_invalid_create_is_refused_with_its_reason(tmp_path, emulator, dav):
    dav.curl("-X", "MKCOL", path="S", check_status=201)
    (tmp_path / "bad.json").write_text('{"title": ')
    status, text = put(dav, "S/.create", tmp_path / "bad.json")
    assert status == 400 and "invalid JSON" in text, text
    assert emulator.projects() == []
