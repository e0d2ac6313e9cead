"""The provider over a MountModel in this process (no daemon): the held-back empty PUT through
MOVE, DELETE, LOCK and a stop, COPY as one writer, and the server's own stop in mid-PUT."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import pytest
import requests

from fs360.errors import NotFound
from fs360.webdav.server import WebDavServer
from fs360.webdav.writers import NEVER_CAME
from tests.harness import remote_files, wait_until


@pytest.fixture
def served(make_model, emulator):
    """(model, url): a WebDavServer in this process over a model of its own; stopped at the end."""
    started = []

    def serve(**settings):
        model = make_model(emulator, webdav_empty_put_grace=settings.pop("grace", 3600.0), **settings)
        server = WebDavServer(model, model.settings, "127.0.0.1:0")
        started.append(server)
        return model, server, server.start()

    yield serve
    for server in started:
        server.stop()


def state(model, path: str) -> str:
    return model.getxattr(path, "user.fs360.state").decode()


def test_an_empty_put_moved_then_filled_uploads_once_under_its_new_name(served, emulator):
    model, _, url = served()
    requests.request("MKCOL", url + "S").raise_for_status()
    assert requests.put(url + "S/New file.jpg", data=b"").status_code == 201
    moved = requests.request("MOVE", url + "S/New file.jpg", headers={"Destination": url + "S/pano.jpg"})
    assert moved.status_code == 201
    assert state(model, "/S/pano.jpg") == "writing"  # still held: the content comes next
    assert requests.put(url + "S/pano.jpg", data=b"p" * 5000).status_code == 204
    wait_until(lambda: state(model, "/S/pano.jpg") == "complete", 60)
    assert set(remote_files(emulator)) == {"pano.jpg"}


def test_an_empty_put_deleted_before_its_content_leaves_nothing(served, emulator):
    model, _, url = served()
    requests.request("MKCOL", url + "S").raise_for_status()
    requests.put(url + "S/a.jpg", data=b"").raise_for_status()
    assert requests.delete(url + "S/a.jpg").status_code == 204
    assert requests.get(url + "S/a.jpg").status_code == 404
    requests.put(url + "S/b.jpg", data=b"b" * 100).raise_for_status()
    wait_until(lambda: state(model, "/S/b.jpg") == "complete", 60)
    assert set(remote_files(emulator)) == {"b.jpg"}


def test_a_lock_of_an_unmapped_name_creates_it_held_until_the_locked_put(served, emulator):
    model, server, url = served(grace=0.2)
    requests.request("MKCOL", url + "S").raise_for_status()
    body = ('<?xml version="1.0"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope>'
            '<D:locktype><D:write/></D:locktype></D:lockinfo>')
    locked = requests.request("LOCK", url + "S/scan.e57", data=body, headers={"Timeout": "Second-600"})
    assert locked.status_code == 201
    token = locked.headers["Lock-Token"]
    # The grace time passes, more than once: still held, as the client holds a lock on it.
    wait_until(lambda: server.provider.held.rearmed("/S/scan.e57") >= 2, 30)
    assert state(model, "/S/scan.e57") == "writing"
    put = requests.put(url + "S/scan.e57", data=b"e" * 70_000, headers={"If": f"({token})"})
    assert put.status_code == 204
    requests.request("UNLOCK", url + "S/scan.e57", headers={"Lock-Token": token}).raise_for_status()
    wait_until(lambda: state(model, "/S/scan.e57") == "complete", 60)
    assert remote_files(emulator)["scan.e57"]["total"] == 70_000


def test_a_held_empty_file_is_left_unfinished_when_the_server_stops(served, emulator):
    model, server, url = served()
    requests.request("MKCOL", url + "S").raise_for_status()
    requests.put(url + "S/a.jpg", data=b"").raise_for_status()
    server.stop()
    assert state(model, "/S/a.jpg") == "interrupted"
    assert model.getxattr("/S/a.jpg", "user.fs360.error").decode() == NEVER_CAME
    assert remote_files(emulator) == {}


def test_copy_is_one_writer_and_cannot_replace_what_the_server_holds(served, emulator):
    model, _, url = served()
    requests.request("MKCOL", url + "S").raise_for_status()
    requests.put(url + "S/a.jpg", data=b"a" * 3000).raise_for_status()
    requests.put(url + "S/b.jpg", data=b"b" * 3000).raise_for_status()
    assert requests.request("COPY", url + "S/a.jpg", headers={"Destination": url + "S/c.jpg"}).status_code == 201
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        wait_until(lambda: state(model, f"/S/{name}") == "complete", 60)
    replaced = requests.request("COPY", url + "S/a.jpg", headers={"Destination": url + "S/b.jpg"})
    assert replaced.status_code == 403 and "cannot be replaced" in replaced.text
    assert requests.get(url + "S/b.jpg").content == b"b" * 3000
    assert requests.get(url + "S/c.jpg").content == b"a" * 3000
    assert {f["name"]: f["total"] for f in emulator.files()} == {"a.jpg": 3000, "b.jpg": 3000, "c.jpg": 3000}
    # Reads leave no handle open: HEAD, a GET cut off by a failed precondition, a status file.
    assert requests.head(url + "S/a.jpg").headers["Content-Length"] == "3000"
    assert requests.get(url + "S/a.jpg", headers={"If-Match": '"nope"'}).status_code == 412
    assert requests.get(url + "S/status").status_code == 200
    assert model._handles.numbers() == []


def test_a_copy_of_a_file_cut_short_is_refused_with_its_reason(served, emulator):
    """The hostile run's find: COPY of an `interrupted` file (its PUT cut short) made a new file
    of its half, which went up complete (201, and the server held the half)."""
    model, _, url = served()
    requests.request("MKCOL", url + "S").raise_for_status()
    address = urlsplit(url)
    with socket.create_connection((address.hostname, address.port), timeout=30) as sock:
        sock.sendall(b"PUT /S/short.jpg HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"s" * 40_000)
        sock.shutdown(socket.SHUT_WR)  # the body ends early
        sock.recv(65536)
    wait_until(lambda: state(model, "/S/short.jpg") == "interrupted", 30)
    copied = requests.request("COPY", url + "S/short.jpg", headers={"Destination": url + "S/copied.jpg"})
    assert copied.status_code == 403, copied.text
    assert "not copied: short.jpg is interrupted: " in copied.text
    with pytest.raises(NotFound):
        model.getattr("/S/copied.jpg")
    assert remote_files(emulator) == {}


def test_a_put_in_flight_when_the_server_stops_is_never_uploaded(served, emulator):
    model, server, url = served()
    requests.request("MKCOL", url + "S").raise_for_status()
    address = urlsplit(url)
    sock = socket.create_connection((address.hostname, address.port), timeout=30)
    try:
        sock.sendall(b"PUT /S/half.jpg HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n" + b"h" * 300_000)
        wait_until(lambda: "/S/half.jpg" in server.provider._writing, 30)  # its writer is open (see below)
        server.stop()
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    finally:
        sock.close()
    assert state(model, "/S/half.jpg") == "interrupted"
    assert remote_files(emulator) == {}
    # The client is told to try again later, not that its request was wrong (it got an HTML 400).
    assert answer.startswith(b"HTTP/1.1 503 "), answer[:200]


def test_a_second_put_of_a_file_still_receiving_its_body_is_refused(served, emulator):
    """Two bodies written into one file would merge: the second writer waits its turn (409)."""
    model, server, url = served()
    requests.request("MKCOL", url + "S").raise_for_status()
    address = urlsplit(url)
    with socket.create_connection((address.hostname, address.port), timeout=30) as sock:
        sock.sendall(b"PUT /S/a.jpg HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n" + b"1" * 300_000)
        # Until the first PUT's writer is open, a second PUT would be the first writer: the file is
        # listed (PROPFIND 207) as soon as WsgiDAV makes it empty, before that. Nothing a client
        # sees tells when it opened, so the provider's own record of its writers is read.
        wait_until(lambda: "/S/a.jpg" in server.provider._writing, 30)
        second = requests.put(url + "S/a.jpg", data=b"2" * 1000)
        assert second.status_code == 409 and "still running" in second.text
        copied = requests.request("COPY", url + "S/status", headers={"Destination": url + "S/a.jpg"})
        assert copied.status_code == 409
    wait_until(lambda: state(model, "/S/a.jpg") == "interrupted", 30)
    assert requests.put(url + "S/a.jpg", data=b"3" * 1000).status_code == 204
    wait_until(lambda: state(model, "/S/a.jpg") == "complete", 60)
    assert requests.get(url + "S/a.jpg").content == b"3" * 1000
    assert {f["name"]: f["total"] for f in emulator.files()} == {"a.jpg": 1000}


def test_windows_proppatch_of_win32_times_is_kept_and_sets_the_mtime(served, emulator):
    model, _, url = served()
    requests.request("MKCOL", url + "S").raise_for_status()
    requests.put(url + "S/a.jpg", data=b"a" * 100).raise_for_status()
    body = ('<?xml version="1.0" encoding="utf-8" ?><D:propertyupdate xmlns:D="DAV:" '
            'xmlns:Z="urn:schemas-microsoft-com:"><D:set><D:prop>'
            '<Z:Win32CreationTime>Mon, 02 Mar 2026 10:00:00 GMT</Z:Win32CreationTime>'
            '<Z:Win32LastModifiedTime>Mon, 02 Mar 2026 11:00:00 GMT</Z:Win32LastModifiedTime>'
            '<Z:Win32FileAttributes>00000020</Z:Win32FileAttributes>'
            '</D:prop></D:set></D:propertyupdate>')
    patched = requests.request("PROPPATCH", url + "S/a.jpg", data=body,
                               headers={"User-Agent": "Microsoft-WebDAV-MiniRedir/10.0.19045"})
    assert patched.status_code == 207 and patched.text.count("200 OK") >= 1 and "403" not in patched.text
    assert model.getattr("/S/a.jpg")["st_mtime"] == 1772449200 * 10**9
    found = requests.request("PROPFIND", url + "S/a.jpg", headers={"Depth": "0"}).text
    assert "Mon, 02 Mar 2026 10:00:00 GMT" in found and "00000020" in found
    # fs360's own properties are read-only.
    refused = requests.request("PROPPATCH", url + "S/a.jpg", data=body.replace(
        'xmlns:Z="urn:schemas-microsoft-com:"', 'xmlns:Z="urn:fs360"').replace("Win32CreationTime", "state"))
    assert refused.status_code == 207 and "403 Forbidden" in refused.text


def test_an_empty_create_then_its_content_requests_the_project_once_with_it(served, emulator):
    """Windows writes .create as it writes any file: empty first, then the JSON."""
    model, _, url = served()
    requests.request("MKCOL", url + "S").raise_for_status()
    requests.put(url + "S/a.jpg", data=b"a" * 100).raise_for_status()
    assert requests.put(url + "S/.create", data=b"").status_code == 201
    assert requests.put(url + "S/.create", data=b'{"title": "Office"}').status_code == 204
    wait_until(lambda: [p.get("title") for p in emulator.projects()] == ["Office"], 60)
    assert requests.get(url + "S/.create").json() == {"title": "Office"}


def test_names_as_windows_and_finder_write_them(served, emulator):
    model, _, url = served()
    requests.request("MKCOL", url + "Büro%20Süd").raise_for_status()
    assert requests.put(url + "B%C3%BCro%20S%C3%BCd/%D0%A4%D0%BE%D1%82%D0%BE%201.JPG", data=b"f" * 10).status_code == 201
    assert requests.put(url + "B%C3%BCro%20S%C3%BCd/._%D0%A4%D0%BE%D1%82%D0%BE%201.JPG", data=b"x").status_code == 201
    assert requests.put(url + "B%C3%BCro%20S%C3%BCd/.DS_Store", data=b"x").status_code == 201
    wait_until(lambda: state(model, "/Büro Süd/Фото 1.JPG") == "complete", 60)
    assert model.getxattr("/Büro Süd/Фото 1.JPG", "user.fs360.server_name") == b"Foto_1.jpg"
    assert state(model, "/Büro Süd/.DS_Store") == "local"  # Finder's files stay here
    assert set(remote_files(emulator)) == {"Foto_1.jpg"}
