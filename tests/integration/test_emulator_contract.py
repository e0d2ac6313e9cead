"""Contract tests of the emulator: real HTTP against a running emulator process."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import socket
import threading
import time
import zipfile

import pytest
import requests

from fs360.emulator.harness import EmulatorProcess
from tests.harness import wait_until

KEYS = ["--key", "sk_local_demo", "--key", "sk_read:projects:read", "--key", "sk_write:projects:write"]
OCTET = "application/octet-stream"


class Api:
    def __init__(self, emu, key="sk_local_demo"):
        self.emu = emu
        self.base = emu.base_url
        self.s = requests.Session()
        self.key = key

    def h(self, key=None, **extra):
        d = {"Authorization": f"Bearer {key or self.key}"}
        d.update(extra)
        return d

    def open(self) -> str:
        r = self.s.post(self.base + "/uploads", headers=self.h())
        assert r.status_code == 201, r.text
        body = r.json()
        assert set(body) == {"upload_id", "expires_in_seconds"}
        assert body["expires_in_seconds"] == 259200
        return body["upload_id"]

    def put(self, uid, name, data, rng=None, ctype=OCTET, **kw):
        headers = self.h(**{"Content-Type": ctype}) if ctype else self.h()
        if rng is not None:
            headers["Content-Range"] = "bytes %d-%d/%d" % rng
        return self.s.put(f"{self.base}/uploads/{uid}/{name}", data=data, headers=headers, **kw)

    def get_file(self, uid, name):
        return self.s.get(f"{self.base}/uploads/{uid}/{name}", headers=self.h())

    def get_session(self, uid):
        return self.s.get(f"{self.base}/uploads/{uid}", headers=self.h())

    def project(self, body=None, raw=None):
        if raw is not None:
            return self.s.post(self.base + "/projects", data=raw, headers=self.h(**{"Content-Type": "application/json"}))
        return self.s.post(self.base + "/projects", json=body, headers=self.h())

    def get_project(self, name, key=None):
        return self.s.get(f"{self.base}/projects/{name}", headers=self.h(key))

    def upload(self, uid, name, data):
        r = self.put(uid, name, data)
        assert r.status_code == 200 and r.json()["complete"], r.text
        return r


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    with EmulatorProcess(tmp_path_factory.mktemp("emu"), args=["--no-rate-limits", "--processing-seconds", "0", *KEYS]) as e:
        yield e
        assert "Traceback" not in e.stderr_text


@pytest.fixture
def api(emu):
    emu.reset()  # the start-up flags, no faults, fresh stats and violations
    yield Api(emu)
    crashes = [v["detail"] for v in emu.violations() if v["kind"] == "emulator_internal_error"]
    assert not crashes, crashes[0]


def efile(emu, uid, name):
    return [f for f in emu.files() if f["upload_id"] == uid and f["name"] == name][0]


# ----------------------------------------------------------------------------
def test_auth_and_scopes(api):
    r = api.s.post(api.base + "/uploads")
    assert (r.status_code, r.json()) == (401, {"error": "unauthorized"})
    r = api.s.post(api.base + "/uploads", headers={"Authorization": "Bearer sk_nope"})
    assert (r.status_code, r.json()) == (401, {"error": "unauthorized"})
    r = api.s.post(api.base + "/uploads", headers={"Authorization": "Basic sk_local_demo"})
    assert r.status_code == 401
    r = api.s.post(api.base + "/uploads", headers=api.h("sk_read"))
    assert (r.status_code, r.json()) == (403, {"error": "insufficient_scope"})
    r = api.get_project("whatever", key="sk_write")
    assert (r.status_code, r.json()) == (403, {"error": "insufficient_scope"})
    r = api.get_project("doesnotexist", key="sk_read")
    assert (r.status_code, r.json()) == (404, {"error": "project_not_found"})
    uid = api.open()
    r = api.s.get(f"{api.base}/uploads/{uid}", headers=api.h("sk_read"))
    assert r.status_code == 403


def test_open_session_quota_and_tariff(api, emu):
    emu.set_flags(quota_exceeded=True)
    r = api.s.post(api.base + "/uploads", headers=api.h())
    assert (r.status_code, r.json()) == (402, {"error": "storage_quota_exceeded"})
    emu.set_flags(quota_exceeded=False, tariff_forbids_upload=True)
    r = api.s.post(api.base + "/uploads", headers=api.h())
    assert (r.status_code, r.json()) == (403, {"error": "tariff_forbids_upload"})
    emu.set_flags(tariff_forbids_upload=False)
    assert api.open()


def test_full_flow_with_resume(api, emu):
    # Long enough that the first GET below surely sees processing, short enough to poll to 100.
    emu.set_flags(processing_seconds=4)
    uid = api.open()
    data = os.urandom(2_500_000)
    total = len(data)
    C = 1_000_000
    r = api.put(uid, "scan.e57", data[:C], (0, C - 1, total))
    assert r.status_code == 200
    assert r.json() == {"received": C, "total": total, "complete": False}
    # "resume": ask the server where it is and continue from there
    r = api.get_file(uid, "scan.e57")
    assert r.json() == {"received": C, "total": total, "complete": False}
    off = r.json()["received"]
    while off < total:
        end = min(off + C, total) - 1
        r = api.put(uid, "scan.e57", data[off : end + 1], (off, end, total))
        assert r.status_code == 200, r.text
        off = r.json()["received"]
    assert r.json() == {"received": total, "total": total, "complete": True}
    api.upload(uid, "pano.JPG", b"\xff\xd8jpegdata!")
    r = api.get_session(uid)
    assert r.status_code == 200
    assert r.json() == {
        "upload_id": uid,
        "files": [
            {"name": "scan.e57", "received": total, "total": total, "complete": True},
            {"name": "pano.JPG", "received": 11, "total": 11, "complete": True},
        ],
    }
    f = efile(emu, uid, "scan.e57")
    assert f["sha256"] == hashlib.sha256(data).hexdigest()
    assert f["put_count"] == 3 and f["overwritten_bytes"] == 0
    assert emu.progress(uid) == {"upload_id": uid, "files": 2, "complete": 2, "received": total + 11}
    r = api.project({"upload_id": uid, "title": "My scan", "privacy_mode": 2})
    assert r.status_code == 201
    assert r.json() == {"name": uid, "status": 0, "message": "processing_started"}
    r = api.get_project(uid)
    assert r.status_code == 200
    assert set(r.json()) == {"name", "status"} and r.json()["status"] < 100
    def ready():
        body = api.get_project(uid).json()
        assert body["status"] == 100 or (set(body) == {"name", "status"} and 0 <= body["status"] < 100)
        return body if body["status"] == 100 else None
    body = wait_until(ready, 60, 0.1, what="the project to reach 100")
    for k in ("id", "name", "title", "status", "created", "updated", "size", "privacy_mode", "public_project",
              "setups_count", "views", "errors", "epsg", "proj4", "coord_unit", "potree", "glb", "obj", "ifc",
              "kml", "pdf", "geotiff", "threedgs", "video360", "files"):
        assert k in body, k
    assert body["name"] == uid and body["title"] == "My scan" and body["privacy_mode"] == 2
    assert body["size"] == total + 11 and body["files"] == ["scan.e57", "pano.JPG"]
    assert body["potree"] == 1 and body["setups_count"] == 1 and body["public_project"] == 0
    # creating again is idempotent
    r = api.project({"upload_id": uid})
    assert (r.status_code, r.json()["name"]) == (201, uid)
    assert [p["create_count"] for p in emu.projects() if p["name"] == uid] == [2]


def test_chunk_rules(api, emu):
    uid = api.open()
    data = os.urandom(300)
    # gap -> 409 with received
    r = api.put(uid, "a.ply", data[100:200], (100, 199, 300))
    assert (r.status_code, r.json()) == (409, {"error": "non_contiguous_chunk", "received": 0})
    assert api.put(uid, "a.ply", data[:150], (0, 149, 300)).json()["received"] == 150
    # overlap overwrites; received = max(received, end+1)
    r = api.put(uid, "a.ply", data[100:200], (100, 199, 300))
    assert r.json() == {"received": 200, "total": 300, "complete": False}
    r = api.put(uid, "a.ply", data[0:50], (0, 49, 300))
    assert r.json()["received"] == 200
    f = efile(emu, uid, "a.ply")
    assert f["overwritten_bytes"] == 50 + 50 and f["received"] == 200 and f["sha256"] is None
    # total differs from the file's total
    r = api.put(uid, "a.ply", data[200:], (200, 299, 301))
    assert (r.status_code, r.json()) == (400, {"error": "invalid_content_range"})
    r = api.put(uid, "a.ply", data[200:], (200, 299, 300))
    assert r.json() == {"received": 300, "total": 300, "complete": True}
    assert efile(emu, uid, "a.ply")["sha256"] == hashlib.sha256(data).hexdigest()
    # re-PUT of a complete file: unchanged (even with other content / other total)
    r = api.put(uid, "a.ply", b"x" * 10, (0, 9, 300))
    assert r.json() == {"received": 300, "total": 300, "complete": True}
    r = api.put(uid, "a.ply", b"other content")
    assert (r.status_code, r.json()) == (200, {"received": 300, "total": 300, "complete": True})
    assert efile(emu, uid, "a.ply")["sha256"] == hashlib.sha256(data).hexdigest()
    # whole-file PUT is the chunk 0-(n-1)/n: continues an incomplete file of that size
    assert api.put(uid, "b.ply", data[:100], (0, 99, 300)).json()["received"] == 100
    assert api.put(uid, "b.ply", data).json() == {"received": 300, "total": 300, "complete": True}
    # empty file
    assert api.put(uid, "empty.jpg", b"").json() == {"received": 0, "total": 0, "complete": True}


@pytest.mark.parametrize(
    "cr", ["bytes 0-9/*", "bytes 5-4/10", "bytes 0-10/10", "bytes=0-9/10", "garbage", "bytes 0-9/10/1",
           "bytes -1-9/10", "bytes 0-99999999999999999999/100000000000000000000"]
)
def test_invalid_content_range(api, cr):
    uid = api.open()
    r = api.s.put(f"{api.base}/uploads/{uid}/x.jpg", data=b"0123456789",
                  headers=api.h(**{"Content-Type": OCTET, "Content-Range": cr}))
    assert (r.status_code, r.json()) == (400, {"error": "invalid_content_range"})


def test_put_validation_errors(api, emu):
    uid = api.open()
    r = api.put("bad-id!", "a.jpg", b"x")
    assert (r.status_code, r.json()) == (400, {"error": "invalid_upload_id"})
    r = api.put("abc", "a.jpg", b"x")
    assert r.json() == {"error": "invalid_upload_id"}
    r = api.put("Zz9Zz9Zz9", "a.jpg", b"x")
    assert (r.status_code, r.json()) == (404, {"error": "upload_session_not_found"})
    for bad in ["%2E%2E", "%2E", "%2F%2F", "%00%01", "%FF%FE.jpg", "a" * 252 + ".jpg"]:
        r = api.put(uid, bad, b"x")
        assert (r.status_code, r.json()) == (400, {"error": "invalid_filename"}), bad
    r = api.put(uid, "README", b"x")
    assert r.status_code == 415
    assert r.json()["error"] == "extension_not_allowed" and r.json()["extension"] == ""
    assert "jpg" in r.json()["allowed"] and "ifc" in r.json()["allowed"] and "zip" in r.json()["allowed"]
    r = api.put(uid, "evil.EXE", b"x")
    assert (r.status_code, r.json()["extension"]) == (415, "exe")
    r = api.put(uid, "a.jpg", b"x", ctype="text/plain")
    assert (r.status_code, r.json()) == (400, {"error": "invalid_content_type"})
    r = api.put(uid, "a.jpg", b"x", ctype=None)
    assert (r.status_code, r.json()) == (400, {"error": "invalid_content_type"})
    # chunked transfer encoding: neither Content-Range nor Content-Length
    r = api.put(uid, "a.jpg", (b for b in [b"abc", b"def"]))
    assert (r.status_code, r.json()) == (411, {"error": "length_required"})
    r = api.put(uid, "a.jpg", b"12345", (0, 9, 20))
    assert (r.status_code, r.json()) == (400, {"error": "chunk_length_mismatch"})
    # name flattening: separators and control characters are removed
    assert api.upload(uid, "dir%2Fsub%5Cn%09ame.jpg", b"1").json()["complete"]
    names = [f["name"] for f in api.get_session(uid).json()["files"]]
    assert names == ["dirsubname.jpg"]
    assert api.get_file(uid, "dirsubname.jpg").json()["complete"] is True
    assert api.get_file(uid, "nope.jpg").json() == {"error": "file_not_found"}
    assert api.get_file(uid, "nope.jpg").status_code == 404
    # duplicate name in the session: the second file is ignored
    r = api.put(uid, "dir%2Fsubname.jpg", b"another file")
    assert r.json() == {"received": 1, "total": 1, "complete": True}
    # unicode names are fine
    assert api.upload(uid, "caf%C3%A9%20%E2%9C%93.JPEG", b"abc").status_code == 200
    assert "café ✓.JPEG" in [f["name"] for f in emu.files() if f["upload_id"] == uid]


def test_size_limits(api, emu):
    emu.set_flags(max_file_size=1000, max_session_size=1500)
    uid = api.open()
    r = api.put(uid, "big.las", b"x" * 10, (0, 9, 1001))
    assert (r.status_code, r.json()) == (413, {"error": "file_too_large", "limit": 1000})
    r = api.put(uid, "big.las", b"x" * 1001)
    assert (r.status_code, r.json()) == (413, {"error": "file_too_large", "limit": 1000})
    api.upload(uid, "one.las", b"x" * 1000)
    r = api.put(uid, "two.las", b"x" * 10, (0, 9, 501))
    assert (r.status_code, r.json()) == (413, {"error": "session_too_large", "limit": 1500})
    assert api.upload(uid, "two.las", b"x" * 500).json()["received"] == 500
    assert [f["name"] for f in api.get_session(uid).json()["files"]] == ["one.las", "two.las"]


def test_sessions_delete_and_expiry(api, emu):
    uid = api.open()
    api.upload(uid, "a.jpg", b"abc")
    r = api.s.delete(f"{api.base}/uploads/{uid}", headers=api.h())
    assert (r.status_code, r.json()) == (200, {"deleted": True})
    r = api.s.delete(f"{api.base}/uploads/{uid}", headers=api.h())
    assert (r.status_code, r.json()) == (200, {"deleted": True})
    assert api.get_session(uid).json() == {"error": "upload_session_not_found"}
    r = api.s.delete(f"{api.base}/uploads/no!", headers=api.h())
    assert (r.status_code, r.json()) == (400, {"error": "invalid_upload_id"})
    uid = api.open()
    api.put(uid, "b.jpg", b"ab", (0, 1, 4))
    emu.expire(uid)
    r = api.put(uid, "b.jpg", b"cd", (2, 3, 4))
    assert (r.status_code, r.json()) == (404, {"error": "upload_session_not_found"})
    assert api.get_file(uid, "b.jpg").status_code == 404
    assert api.get_session(uid).status_code == 404
    r = api.project({"upload_id": uid})
    assert (r.status_code, r.json()) == (404, {"error": "upload_session_not_found"})


def test_project_errors(api, emu):
    uid = api.open()
    assert api.project(raw=b"not json").json() == {"error": "invalid_json"}
    assert api.project(raw=b"[1,2]").status_code == 400
    r = api.project({})
    assert (r.status_code, r.json()) == (400, {"error": "upload_id_or_download_link_required"})
    r = api.project({"upload_id": uid, "download_link": "https://example.com/a.zip"})
    assert (r.status_code, r.json()) == (400, {"error": "provide_either_upload_id_or_download_link"})
    assert api.project({"upload_id": "x!"}).json() == {"error": "invalid_upload_id"}
    r = api.project({"upload_id": "Unknown123"})
    assert (r.status_code, r.json()) == (404, {"error": "upload_session_not_found"})
    r = api.project({"upload_id": uid})  # empty session
    assert (r.status_code, r.json()) == (400, {"error": "project_creation_failed"})
    api.put(uid, "a.jpg", b"ab", (0, 1, 4))
    r = api.project({"upload_id": uid})  # a file is not complete
    assert (r.status_code, r.json()) == (400, {"error": "project_creation_failed"})
    api.put(uid, "a.jpg", b"cd", (2, 3, 4))
    r = api.project({"upload_id": uid, "privacy_mode": 3})
    assert (r.status_code, r.json()) == (400, {"error": "invalid_privacy_mode"})
    emu.set_flags(project_tariff=True)
    r = api.project({"upload_id": uid})
    assert (r.status_code, r.json()) == (403, {"error": "tariff"})
    emu.set_flags(project_tariff=False, quota_exceeded=True)
    r = api.project({"upload_id": uid})
    assert (r.status_code, r.json()) == (402, {"error": "storage_quota_exceeded"})
    emu.set_flags(quota_exceeded=False, project_name_collision=True)
    r = api.project({"upload_id": uid})
    assert r.status_code == 201
    name = r.json()["name"]
    assert name != uid and name.startswith(uid)
    assert api.get_project(name).json()["status"] == 100
    assert api.get_project(uid).status_code == 404
    r = api.project({"download_link": "https://example.com/data/site.zip", "title": "remote"})
    assert r.status_code == 201
    body = api.get_project(r.json()["name"]).json()
    assert body["title"] == "remote" and body["files"] == ["site.zip"]
    assert api.project({"download_link": "ftp://x"}).json() == {"error": "invalid_download_link"}


def test_zip_members_listed(api):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("scans/room1.e57", b"a" * 100)
        z.writestr("scans/", b"")
        z.writestr("pano/p1.jpg", b"b" * 10)
    uid = api.open()
    api.upload(uid, "site.zip", buf.getvalue())
    api.upload(uid, "model.ifc", b"ISO-10303-21;")
    name = api.project({"upload_id": uid}).json()["name"]
    body = api.get_project(name).json()
    assert body["files"] == ["scans/room1.e57", "pano/p1.jpg", "model.ifc"]
    assert body["ifc"] == 1 and body["potree"] == 1 and body["setups_count"] == 1


def test_faults_each_kind(api, emu):
    uid = api.open()
    data = os.urandom(4096)

    def fault(kind, endpoint="put_file", **kw):
        emu.set_faults([dict(endpoint=endpoint, kind=kind, count=1, **kw)])

    for kind, status in (("error_500", 500), ("error_502", 502), ("error_503", 503)):
        fault(kind)
        r = api.put(uid, "f.jpg", data[:1000], (0, 999, 4096))
        assert (r.status_code, r.json()) == (status, {"error": "internal_error"})
    assert api.get_file(uid, "f.jpg").status_code == 404  # the work was not done
    fault("cut_body")
    with pytest.raises(requests.ConnectionError):
        api.put(uid, "f.jpg", data[:1000], (0, 999, 4096))
    assert api.get_file(uid, "f.jpg").json() == {"error": "file_not_found"}  # nothing committed
    fault("drop_response")
    with pytest.raises(requests.ConnectionError):
        api.put(uid, "f.jpg", data[:1000], (0, 999, 4096))
    assert api.get_file(uid, "f.jpg").json()["received"] == 1000  # committed
    fault("invalid_json")
    r = api.put(uid, "f.jpg", data[1000:2000], (1000, 1999, 4096))
    assert r.status_code == 200
    with pytest.raises(ValueError):
        r.json()
    fault("html_error")
    r = api.put(uid, "f.jpg", data[1000:2000], (1000, 1999, 4096))
    assert r.status_code == 502 and r.headers["Content-Type"].startswith("text/html") and b"<html>" in r.content
    fault("received_gt_total")
    r = api.put(uid, "f.jpg", data[1000:2000], (1000, 1999, 4096))
    assert r.status_code == 200 and r.json()["received"] > r.json()["total"] == 4096
    fault("received_gt_total", "get_file")
    b = api.get_file(uid, "f.jpg").json()
    assert b["received"] > b["total"]
    fault("missing_fields")
    r = api.put(uid, "f.jpg", data[1000:2000], (1000, 1999, 4096))
    assert r.status_code == 200 and "received" not in r.json() and "complete" not in r.json()
    fault("missing_fields", "open_session")
    r = api.s.post(api.base + "/uploads", headers=api.h())
    assert r.status_code == 200 and "upload_id" not in r.json()
    assert api.get_file(uid, "f.jpg").json()["received"] == 1000  # none of the above did the work
    fault("rate_limit_burst", retry_after=7, burst=2)
    for _ in range(2):
        r = api.put(uid, "f.jpg", data[1000:2000], (1000, 1999, 4096))
        assert (r.status_code, r.json(), r.headers["Retry-After"]) == (429, {"error": "rate_limited"}, "7")
    fault("latency", seconds=0.05)
    assert api.put(uid, "f.jpg", data[1000:2000], (1000, 1999, 4096)).json()["received"] == 2000
    assert emu.faults()["rules"][0]["fired"] == 1
    fault("trickle", "get_file", seconds=0.2)
    assert api.get_file(uid, "f.jpg").json() == {"received": 2000, "total": 4096, "complete": False}
    assert emu.faults()["rules"][0]["fired"] == 1
    fault("cut_body", "get_session")
    with pytest.raises(requests.ConnectionError):
        api.get_session(uid)
    emu.clear_faults()
    assert api.put(uid, "f.jpg", data[2000:], (2000, 4095, 4096)).json()["complete"] is True
    assert efile(emu, uid, "f.jpg")["sha256"] == hashlib.sha256(data).hexdigest()
    st = emu.stats()["requests"]
    assert st["PUT put_file 503"] >= 1 and st["PUT put_file 429"] >= 2 and st["PUT put_file dropped"] >= 1


def test_fault_probability_is_seeded(api, emu):
    def run():
        emu.set_faults([{"endpoint": "*", "kind": "error_503", "probability": 0.5}], seed=42)
        uid = "Nonexist1"
        return [api.get_session(uid).status_code for _ in range(30)]

    a, b = run(), run()
    assert a == b and 503 in a and 404 in a
    r = requests.post(emu.root_url + "/_emulator/faults", json={"rules": [{"kind": "nope"}]})
    assert r.status_code == 400 and r.json()["error"] == "invalid_faults"


def test_violations(api, emu):
    before = len(emu.violations())
    assert before == 0  # the fixture's reset
    uid = api.open()
    data = os.urandom(2000)
    # gap after 409: the client ignores the received of the 409
    r = api.put(uid, "v.jpg", data[500:1000], (500, 999, 2000))
    assert r.json() == {"error": "non_contiguous_chunk", "received": 0}
    r = api.put(uid, "v.jpg", data[300:1000], (300, 999, 2000))
    assert r.status_code == 409
    v = emu.violations()[before:]
    assert [x["kind"] for x in v] == ["gap_after_409"] and v[0]["upload_id"] == uid and v[0]["name"] == "v.jpg"
    # a GET in between makes it legitimate
    api.get_file(uid, "v.jpg")
    api.put(uid, "v.jpg", data[300:1000], (300, 999, 2000))
    assert api.put(uid, "v.jpg", data[:1000], (0, 999, 2000)).json()["received"] == 1000
    assert len(emu.violations()) == before + 1
    # concurrent PUTs: the first one's body is held back on a raw socket
    puts_before = efile(emu, uid, "v.jpg")["put_count"]
    host, port = emu.root_url.split("//")[1].split(":")
    s = socket.create_connection((host, int(port)))
    s.sendall((f"PUT /api/v1/uploads/{uid}/v.jpg HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk_local_demo\r\n"
               f"Content-Type: {OCTET}\r\nContent-Range: bytes 1000-1499/2000\r\nContent-Length: 500\r\n\r\n").encode()
              + data[1000:1200])
    # put_count moves when a PUT holds the file: then the second one must wait for it.
    wait_until(lambda: efile(emu, uid, "v.jpg")["put_count"] == puts_before + 1, 10, 0.02,
               what="the first PUT to hold the file")
    result = {}
    t = threading.Thread(target=lambda: result.update(r=api.put(uid, "v.jpg", data[1000:], (1000, 1999, 2000))))
    t.start()
    wait_until(lambda: len(emu.violations()) == before + 2, 10, 0.02, what="the concurrent_put violation")
    assert t.is_alive()  # served after the first one
    s.sendall(data[1200:1500])
    resp = s.recv(4096)
    assert b" 200 " in resp.split(b"\r\n")[0] and b'"received":1500' in resp
    s.close()
    t.join(10)
    assert result["r"].json() == {"received": 2000, "total": 2000, "complete": True}
    v = emu.violations()[before:]
    assert [x["kind"] for x in v] == ["gap_after_409", "concurrent_put"]
    assert efile(emu, uid, "v.jpg")["sha256"] == hashlib.sha256(data).hexdigest()
    assert emu.stats()["violations"][-1]["kind"] == "concurrent_put"


def _raw(emu, payload: bytes, timeout=5.0) -> bytes:
    host, port = emu.root_url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(payload)
        out = b""
        try:
            while True:
                ch = s.recv(65536)
                if not ch:
                    break
                out += ch
                if b"\r\n\r\n" in out:
                    head, _, body = out.partition(b"\r\n\r\n")
                    cl = [l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")]
                    if cl and len(body) >= int(cl[0].split(b":")[1]):
                        break
        except socket.timeout:
            pass
        return out


def test_robustness_raw_requests(api, emu):
    uid = api.open()
    auth = b"Authorization: Bearer sk_local_demo\r\n"
    cases = [
        (b"GARBAGE\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"404"),
        (b"BREW /api/v1/uploads HTTP/1.1\r\nHost: x\r\n\r\n", b"405"),
        (b"GET /api/v1/nothing HTTP/1.1\r\n\r\n", b"404"),
        (b"GET /api/v1/uploads/" + uid.encode() + b" HTTP/1.1\r\n" + auth + b"Content-Length: abc\r\n\r\n", b"400"),
        (b"PUT /api/v1/uploads/" + uid.encode() + b"/a.jpg HTTP/1.1\r\n" + auth
         + b"Content-Type: application/octet-stream\r\nContent-Length: -5\r\n\r\n", b"400"),
        (b"PUT /api/v1/uploads/" + uid.encode() + b"/a.jpg HTTP/1.1\r\n" + auth
         + b"Content-Type: application/octet-stream\r\nContent-Length: 999999999999999999\r\n\r\nabc", b"413"),
        (b"PUT /api/v1/uploads/" + uid.encode() + b"/a.jpg HTTP/1.1\r\n" + auth
         + b"Content-Type: application/octet-stream\r\nContent-Range: bytes 0-99999999999999999999999/1\r\n"
         + b"Content-Length: 3\r\n\r\nabc", b"400"),
        (b"PUT /api/v1/uploads/" + uid.encode() + b"/\xff\xfe.jpg HTTP/1.1\r\n" + auth
         + b"Content-Type: application/octet-stream\r\nContent-Length: 3\r\n\r\nabc", b"400"),
        (b"PUT /api/v1/uploads/" + uid.encode() + b"/short.jpg HTTP/1.1\r\n" + auth
         + b"Content-Type: application/octet-stream\r\nContent-Length: 10\r\nConnection: close\r\n\r\nabc", b""),
        (b"POST /api/v1/projects HTTP/1.1\r\n" + auth + b"Content-Length: 5\r\n\r\n\xff\xfe{}x", b"400"),
        (b"POST /api/v1/projects HTTP/1.1\r\n" + auth + b"Content-Length: 99999999\r\n\r\n{}", b"413"),
        (b"GET /api/v1/uploads/" + uid.encode() + b" HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n", b"431"),
        (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", b"414"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64) + b"\r\n\r\n", b"400"),
    ]
    for payload, want in cases:
        if want == b"":  # body shorter than announced, client half-closes: no response, nothing committed
            host, port = emu.root_url.split("//")[1].split(":")
            with socket.create_connection((host, int(port)), timeout=5) as s:
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
                assert s.recv(100) == b""
            assert api.get_file(uid, "short.jpg").json()["received"] == 0
            continue
        out = _raw(emu, payload)
        status = out.split(b"\r\n")[0]
        assert status.startswith(b"HTTP/1.1 " + want), (payload[:80], out[:200])
        body = out.partition(b"\r\n\r\n")[2]
        assert isinstance(json.loads(body), dict), out[:200]
        assert api.get_session(uid).status_code == 200  # still serving
    # keep-alive: two requests on one connection
    two = (b"GET /api/v1/uploads/" + uid.encode() + b" HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n") * 2
    host, port = emu.root_url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(two)
        got = b""
        while got.count(b"HTTP/1.1 200") < 2:
            ch = s.recv(65536)
            assert ch
            got += ch
    # a 409 with an 8 MiB body keeps the connection usable (body drained)
    sess = requests.Session()
    big = os.urandom(8 << 20)
    for _ in range(2):
        r = sess.put(f"{api.base}/uploads/{uid}/big.las", data=big,
                     headers=api.h(**{"Content-Type": OCTET, "Content-Range": f"bytes {len(big)}-{2 * len(big) - 1}/{3 * len(big)}"}))
        assert r.status_code == 409
    assert sess.put(f"{api.base}/uploads/{uid}/big.las", data=big,
                    headers=api.h(**{"Content-Type": OCTET, "Content-Range": f"bytes 0-{len(big) - 1}/{3 * len(big)}"})).json()["received"] == len(big)


def test_rate_limits(tmp_path):
    # 30 POST /uploads per hour: the 31st within the hour is refused.
    with EmulatorProcess(tmp_path / "rl") as emu:
        api = Api(emu)
        codes = [api.s.post(api.base + "/uploads", headers=api.h()) for _ in range(31)]
        assert [r.status_code for r in codes[:30]] == [201] * 30
        r = codes[30]
        assert (r.status_code, r.json()) == (429, {"error": "rate_limited"})
        ra = r.headers["Retry-After"]
        assert ra.isdigit() and int(ra) >= 1
        assert emu.stats()["requests"]["POST open_session 429"] == 1
        # other endpoints are counted separately
        uid = codes[0].json()["upload_id"]
        assert api.get_session(uid).status_code == 200


def test_restart_continues_upload(tmp_path):
    data = os.urandom(3_000_000)
    total = len(data)
    with EmulatorProcess(tmp_path / "persist", args=["--processing-seconds", "3", "--no-rate-limits"]) as emu:
        api = Api(emu)
        uid = api.open()
        assert api.put(uid, "s.las", data[:1_000_000], (0, 999_999, total)).json()["received"] == 1_000_000
        url = emu.base_url
        emu.restart()
        assert emu.base_url == url
        api = Api(emu)
        assert api.get_file(uid, "s.las").json() == {"received": 1_000_000, "total": total, "complete": False}
        assert api.put(uid, "s.las", data[1_000_000:2_000_000], (1_000_000, 1_999_999, total)).status_code == 200
        emu.kill()
        assert emu.returncode == -signal.SIGKILL
        emu.start()
        assert emu.base_url == url
        api = Api(emu)
        off = api.get_file(uid, "s.las").json()["received"]
        assert off == 2_000_000
        assert api.put(uid, "s.las", data[off:], (off, total - 1, total)).json()["complete"] is True
        assert efile(emu, uid, "s.las")["sha256"] == hashlib.sha256(data).hexdigest()
        name = api.project({"upload_id": uid}).json()["name"]
        ready_at = time.time() + 3  # --processing-seconds 3
        # Processing follows the wall clock, also while the emulator is down.
        emu.stop()
        time.sleep(max(0.0, ready_at + 0.2 - time.time()))
        emu.start()
        api = Api(emu)
        assert api.get_project(name).json()["status"] == 100
        emu.stop()
        assert emu.returncode == 0
        assert "Traceback" not in emu.stderr_text
        emu.start()
        emu.stop(signal.SIGINT)
        assert emu.returncode == 0 and "Traceback" not in emu.stderr_text


def test_discard_mode_keeps_sha256(tmp_path):
    data = os.urandom(5_000_000)
    with EmulatorProcess(tmp_path / "d", args=["--discard", "--no-rate-limits", "--processing-seconds", "0"]) as emu:
        api = Api(emu)
        uid = api.open()
        C = 2_000_000
        for off in range(0, len(data), C):
            end = min(off + C, len(data)) - 1
            api.put(uid, "d.mp4", data[off : end + 1], (off, end, len(data)))
        f = efile(emu, uid, "d.mp4")
        assert f["complete"] and f["sha256"] == hashlib.sha256(data).hexdigest()
        assert os.listdir(os.path.join(emu.data_dir, "blobs")) == []


def _cut_put(emu, uid, name, data, start, total, sent):
    """A PUT of data[start:] whose connection dies after `sent` body bytes."""
    host, port = emu.root_url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall((f"PUT /api/v1/uploads/{uid}/{name} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk_local_demo\r\n"
                   f"Content-Type: {OCTET}\r\nContent-Range: bytes {start}-{len(data) - 1}/{total}\r\n"
                   f"Content-Length: {len(data) - start}\r\n\r\n").encode() + data[start:start + sent])
        s.shutdown(socket.SHUT_WR)
        assert s.recv(100) == b""  # no answer to a cut body


@pytest.mark.parametrize("mode", ["discard", "storing"])
def test_body_pipeline_keeps_bytes_and_hash(tmp_path, mode):
    """Chunks of several body segments go through each connection's body worker:
    a body cut in the middle leaves no trace, chunks of one file may come on
    different connections, overlap, or be small enough to be handled inline, and
    the stored bytes (or the running sha256 in --discard) are still exact."""
    data = os.urandom(11_000_000)
    total = len(data)
    args = ["--no-rate-limits"] + (["--discard"] if mode == "discard" else [])
    with EmulatorProcess(tmp_path / "p", args=args) as emu:
        first, second = Api(emu), Api(emu)  # two sessions: two keep-alive connections
        uid = first.open()
        assert first.put(uid, "p.las", data[:3_500_000], (0, 3_499_999, total)).json()["received"] == 3_500_000
        _cut_put(emu, uid, "p.las", data, 3_500_000, total, sent=2_200_000)
        assert second.get_file(uid, "p.las").json()["received"] == 3_500_000
        r = second.put(uid, "p.las", data[3_500_000:7_000_000], (3_500_000, 6_999_999, total))
        assert r.json()["received"] == 7_000_000
        # overlapping the bytes already there (same content), on the first connection again
        r = first.put(uid, "p.las", data[5_000_000:10_900_000], (5_000_000, 10_899_999, total))
        assert r.json()["received"] == 10_900_000
        r = second.put(uid, "p.las", data[10_900_000:], (10_900_000, total - 1, total))  # one segment: inline
        assert r.json() == {"received": total, "total": total, "complete": True}
        f = efile(emu, uid, "p.las")
        assert f["sha256"] == hashlib.sha256(data).hexdigest()
        assert f["overwritten_bytes"] == 2_000_000
        assert emu.violations() == []
    assert "Traceback" not in emu.stderr_text


def test_next_chunk_on_another_connection_is_not_a_violation(api, emu):
    """A client may send the next chunk on another connection the moment it reads
    the answer to the last one: the file must already be free by then."""
    other = Api(emu)  # a second keep-alive connection
    uid = api.open()
    data = os.urandom(400 * 1000)
    for i, off in enumerate(range(0, len(data), 1000)):
        client = (api, other)[i % 2]
        r = client.put(uid, "n.obj", data[off : off + 1000], (off, off + 999, len(data)))
        assert r.status_code == 200, r.text
    assert efile(emu, uid, "n.obj")["sha256"] == hashlib.sha256(data).hexdigest()
    assert emu.violations() == []


def test_full_disk_of_the_emulator_is_a_500(tmpfs, tmp_path):
    """The emulator's own disk filling up is the server's fault: a JSON 500, the
    connection and the emulator go on, and nothing past the failure is counted."""
    data = os.urandom(6 << 20)
    total = len(data)
    data_dir = tmp_path / "full"
    data_dir.mkdir()
    (data_dir / "blobs").symlink_to(tmpfs("4m"))  # only the file bytes run out of room
    with EmulatorProcess(data_dir, args=["--no-rate-limits"]) as emu:
        api = Api(emu)
        uid = api.open()
        assert api.put(uid, "f.las", data[: 2 << 20], (0, (2 << 20) - 1, total)).json()["received"] == 2 << 20
        r = api.put(uid, "f.las", data[2 << 20 :], (2 << 20, total - 1, total))
        assert (r.status_code, r.json()) == (500, {"error": "storage_error"})
        assert api.get_file(uid, "f.las").json() == {"received": 2 << 20, "total": total, "complete": False}
        assert [v["kind"] for v in emu.violations()] == []
        assert "cannot store a chunk of 'f.las'" in emu.stderr_text
    assert "Traceback" not in emu.stderr_text


def test_tls(tmp_path):
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    import subprocess

    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    with EmulatorProcess(tmp_path / "t", args=["--tls-cert", str(cert), "--tls-key", str(key)]) as emu:
        assert emu.base_url.startswith("https://")
        with pytest.raises(requests.exceptions.SSLError):
            requests.post(emu.base_url + "/uploads", headers={"Authorization": "Bearer sk_local_demo"})
        # Trusted when its certificate is.
        r = requests.post(emu.base_url + "/uploads", headers={"Authorization": "Bearer sk_local_demo"},
                          verify=str(cert))
        assert r.status_code == 201
        uid = r.json()["upload_id"]
        r = requests.put(f"{emu.base_url}/uploads/{uid}/a.jpg", data=os.urandom(300_000), verify=str(cert),
                         headers={"Authorization": "Bearer sk_local_demo", "Content-Type": OCTET})
        assert r.json()["complete"] is True
