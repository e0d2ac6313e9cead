"""Contract tests of the emulator's vendor profile (api.md Part C), each next to
what the default profile (Part B) does there, and of the runtime account fault."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import time
import zipfile

import pytest
import requests

from fs360.emulator.harness import EmulatorError, EmulatorProcess
from fs360.emulator.profiles import DEFAULT_EXTENSIONS, VENDOR_EXTENSIONS
from tests.harness import wait_until
from tests.integration.test_emulator_contract import KEYS, Api, efile

VENDOR = ["--profile", "vendor"]
FOTO = "%D0%A4%D0%BE%D1%82%D0%BE"  # "Фото", percent-encoded


@pytest.fixture(scope="module")
def vendor_emu(tmp_path_factory):
    with EmulatorProcess(tmp_path_factory.mktemp("vendor"),
                         args=[*VENDOR, "--no-rate-limits", "--processing-seconds", "0", *KEYS]) as e:
        yield e
        assert "Traceback" not in e.stderr_text


@pytest.fixture
def api(vendor_emu):
    vendor_emu.reset()
    yield Api(vendor_emu)
    crashes = [v["detail"] for v in vendor_emu.violations() if v["kind"] == "emulator_internal_error"]
    assert not crashes, crashes[0]


def names(api, uid):
    return [f["name"] for f in api.get_session(uid).json()["files"]]


# ----------------------------------------------------------------------------
def test_profile_is_visible(vendor_emu, profiled_emulator):
    assert vendor_emu.profile == "vendor" and vendor_emu.health()["profile"] == "vendor"
    assert profiled_emulator.health()["profile"] == profiled_emulator.profile


def test_names_are_flattened_like_the_vendor(api, vendor_emu):
    uid = api.open()
    data = os.urandom(10)
    # "scan 1.e57" and "scan_1.e57" are one file on the server: the second PUT continues the first
    assert api.put(uid, "scan%201.e57", data[:5], (0, 4, 10)).json()["received"] == 5
    assert api.put(uid, "scan_1.e57", data[5:], (5, 9, 10)).json() == {"received": 10, "total": 10,
                                                                          "complete": True}
    assert api.get_file(uid, "scan%201.e57").json()["complete"] is True
    assert efile(vendor_emu, uid, "scan_1.e57")["sha256"] == hashlib.sha256(data).hexdigest()
    # the extension is lowercased, the stem keeps its case; the lookup flattens the same way
    api.upload(uid, "Room.E57", b"abc")
    assert api.get_file(uid, "Room.E57").json()["complete"] is True
    assert api.get_file(uid, "Room.e57").json()["complete"] is True
    # path parts and unsafe characters: the web framework's way
    api.upload(uid, "..%2F..%2Fetc%2Fpasswd.txt", b"x")
    api.upload(uid, "caf%C3%A9%20%E2%9C%93.JPEG", b"y")
    assert names(api, uid) == ["scan_1.e57", "Room.e57", "etc_passwd.txt", "cafe_.jpeg"]
    assert [f["name"] for f in vendor_emu.files() if f["upload_id"] == uid] == names(api, uid)
    # "Фото.jpg" flattens to "jpg": no extension left
    r = api.put(uid, FOTO + ".jpg", b"x")
    assert r.status_code == 415
    assert (r.json()["error"], r.json()["extension"]) == ("extension_not_allowed", "")
    r = api.put(uid, "README", b"x")
    assert (r.status_code, r.json()["extension"]) == (415, "")
    # a name with nothing left at all
    for bad in (FOTO, "%2E%2E", "%FF%FE.jpg", "a" * 252 + ".jpg"):
        r = api.put(uid, bad, b"x")
        assert (r.status_code, r.json()) == (400, {"error": "invalid_filename"}), bad


def test_default_profile_keeps_names(emulator):
    api = Api(emulator)
    uid = api.open()
    api.upload(uid, "scan%201.e57", b"a")
    api.upload(uid, "scan_1.e57", b"b")
    api.upload(uid, "Room.E57", b"c")
    assert names(api, uid) == ["scan 1.e57", "scan_1.e57", "Room.E57"]
    assert api.put(uid, FOTO + ".jpg", b"x").status_code == 200


def test_default_extension_list(api, vendor_emu):
    uid = api.open()
    r = api.put(uid, "x.webp", b"x")  # allowed by default, not by a default vendor deployment
    assert r.status_code == 415 and r.json()["allowed"] == VENDOR_EXTENSIONS
    for ext in ("csv", "sog", "lgsx", "json"):
        assert api.put(uid, f"x.{ext}", b"x").status_code == 200, ext
    assert sorted(VENDOR_EXTENSIONS) == VENDOR_EXTENSIONS and len(VENDOR_EXTENSIONS) == 42


def test_extension_option_overrides_the_profile_list(tmp_path):
    with EmulatorProcess(tmp_path / "e", args=[*VENDOR, "--allowed-extensions", "las,webp"]) as emu:
        api = Api(emu)
        uid = api.open()
        assert api.put(uid, "x.webp", b"x").status_code == 200
        assert api.put(uid, "x.jpg", b"x").json()["allowed"] == ["las", "webp"]


def test_default_extension_list_of_the_default_profile(emulator):
    api = Api(emulator)
    r = api.put(api.open(), "x.csv", b"x")
    assert r.status_code == 415 and r.json()["allowed"] == DEFAULT_EXTENSIONS


def test_expires_in_seconds_types(api, emulator):
    r = api.s.post(api.base + "/uploads", headers=api.h())
    assert b'"expires_in_seconds":259200.0' in r.content and isinstance(r.json()["expires_in_seconds"], float)
    default = Api(emulator)
    r = default.s.post(default.base + "/uploads", headers=default.h())
    assert b'"expires_in_seconds":259200}' in r.content and isinstance(r.json()["expires_in_seconds"], int)


def _session(emu, uid):
    return [s for s in emu.sessions() if s["upload_id"] == uid][0]


@pytest.mark.slow(6)
@pytest.mark.parametrize("profile", ["default", "vendor"])
def test_session_expiry_idle_or_from_creation(tmp_path, profile):
    lifetime = 3.0
    args = ["--session-lifetime", str(lifetime), "--no-rate-limits"] + (VENDOR if profile == "vendor" else [])
    with EmulatorProcess(tmp_path / "x", args=args) as emu:
        api = Api(emu)
        r = api.s.post(api.base + "/uploads", headers=api.h())
        uid = r.json()["upload_id"]
        first = _session(emu, uid)
        assert first["expires_at"] == pytest.approx(first["created"] + lifetime)
        wait_until(lambda: time.time() > first["created"] + 0.1, what="the clock to move")
        assert api.get_session(uid).status_code == 200
        after = _session(emu, uid)
        if profile == "default":
            # Fixed from creation: requests do not extend it, the session ends while in use.
            assert after["expires_at"] == first["expires_at"]
            wait_until(lambda: api.get_session(uid).status_code == 404, 30, 0.2, what="the session to expire")
            return
        # Idle expiry: every request restarts the clock ...
        assert after["expires_at"] > first["expires_at"]
        api.upload(uid, "a.jpg", b"x")
        assert _session(emu, uid)["expires_at"] > after["expires_at"]
        # ... so a session in use outlives its first expiry ...
        def used_past_first_expiry():
            assert api.get_file(uid, "a.jpg").status_code == 200
            return time.time() > first["expires_at"] + 1
        wait_until(used_past_first_expiry, 30, 0.2, what="the session to be used past its first expiry")
        # ... and one left alone expires
        idle_until = _session(emu, uid)["expires_at"]
        wait_until(lambda: time.time() > idle_until, 30, 0.2, what="the idle expiry")
        assert api.get_session(uid).json() == {"error": "upload_session_not_found"}


def test_vendor_auth_errors(api, vendor_emu):
    r = api.s.post(api.base + "/uploads")
    assert (r.status_code, r.json()) == (401, {"error": "missing_bearer_token"})
    r = api.s.post(api.base + "/uploads", headers={"Authorization": "Basic sk_local_demo"})
    assert (r.status_code, r.json()) == (401, {"error": "missing_bearer_token"})
    r = api.s.post(api.base + "/uploads", headers={"Authorization": "Bearer sk_nope"})
    assert (r.status_code, r.json()) == (401, {"error": "invalid_api_key"})
    r = api.s.post(api.base + "/uploads", headers=api.h("sk_read"))
    assert (r.status_code, r.json()) == (403, {"error": "insufficient_scope"})
    vendor_emu.set_flags(quota_exceeded=True)
    r = api.s.post(api.base + "/uploads", headers=api.h())
    assert (r.status_code, r.json()) == (402, {"error": "storage_quota_exceeded"})
    vendor_emu.set_flags(quota_exceeded=False, tariff_forbids_upload=True)
    r = api.s.post(api.base + "/uploads", headers=api.h())
    assert (r.status_code, r.json()) == (403, {"error": "tariff_forbids_upload"})


@pytest.mark.parametrize("status,code", [(403, "tariff_does_not_allow_api"), (403, "project_limit_reached"),
                                         (403, "email_not_verified"), (403, "tariff_forbids_upload"),
                                         (402, "storage_quota_exceeded"), (401, "invalid_api_key")])
def test_vendor_account_codes(api, vendor_emu, status, code):
    uid = api.open()
    vendor_emu.set_account(status, code)
    for r in (api.put(uid, "a.jpg", b"x"), api.get_session(uid), api.project({"upload_id": uid}),
              api.s.post(api.base + "/uploads", headers=api.h())):
        assert (r.status_code, r.json()) == (status, {"error": code})


def test_account_fault_on_and_off(profiled_emulator):
    """Files fail while the account is refused, and complete once it is fixed (both profiles)."""
    emu = profiled_emulator
    api = Api(emu)
    uid = api.open()
    emu.set_account(403, "tariff_does_not_allow_api", ["put_file", "create_project"])
    assert emu.account() == {"status": 403, "error": "tariff_does_not_allow_api",
                             "endpoints": ["put_file", "create_project"]}
    r = api.put(uid, "a.jpg", b"abc")
    assert (r.status_code, r.json()) == (403, {"error": "tariff_does_not_allow_api"})
    assert api.get_session(uid).json()["files"] == []  # other endpoints still answer
    emu.clear_account()
    assert emu.account() is None
    api.upload(uid, "a.jpg", b"abc")
    emu.set_account(402, "storage_quota_exceeded")  # every endpoint
    assert api.get_file(uid, "a.jpg").status_code == 402
    # clearing with an empty object works too, and reset clears it as well
    r = requests.post(emu.root_url + "/_emulator/account", json={})
    assert r.json() == {"account": None}
    assert api.get_file(uid, "a.jpg").json()["complete"] is True
    emu.set_account(401, "invalid_api_key")
    emu.reset()
    assert emu.account() is None
    for bad in ({"status": 500, "error": "x"}, {"status": 403}, {"status": 403, "error": "x", "endpoints": ["nope"]},
                {"status": 403, "error": "x", "extra": 1}, [1]):
        r = requests.post(emu.root_url + "/_emulator/account", json=bad)
        assert (r.status_code, r.json()["error"]) == (400, "invalid_account"), bad
    with pytest.raises(EmulatorError):
        emu.set_account(418, "teapot")


def test_get_projects(api, vendor_emu):
    uid = api.open()
    api.upload(uid, "a.jpg", b"x")
    name = api.project({"upload_id": uid, "title": "Listed"}).json()["name"]
    r = api.s.get(api.base + "/projects", headers=api.h())
    assert r.status_code == 200
    listed = [p for p in r.json()["projects"] if p["name"] == name]
    assert listed == [{"name": name, "title": "Listed", "status": 100, "privacy_mode": 0,
                       "created": listed[0]["created"], "deleted": False}]
    assert api.s.get(api.base + "/projects", headers=api.h("sk_write")).status_code == 403
    assert api.s.get(api.base + "/projects", headers=api.h("sk_read")).status_code == 200
    assert api.s.get(api.base + "/projects").json() == {"error": "missing_bearer_token"}
    assert vendor_emu.endpoint_counts()["GET list_projects"] == 4


def test_get_projects_absent_in_default_profile(emulator):
    api = Api(emulator)
    r = api.s.get(api.base + "/projects", headers=api.h())
    assert (r.status_code, r.json(), r.headers["Allow"]) == (405, {"error": "method_not_allowed"}, "POST")


def test_ready_record_types_and_public_default(api):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("room.e57", b"a" * 10)
    uid = api.open()
    api.upload(uid, "site.zip", buf.getvalue())
    api.upload(uid, "pano.jpg", b"b")
    r = api.project({"upload_id": uid, "coordinate_system": "EPSG:2056", "anonymize": True, "status": 7})
    body = api.get_project(r.json()["name"]).json()
    for k in ("potree", "glb", "obj", "ifc", "kml", "pdf", "geotiff", "threedgs", "video360", "public_project",
              "deleted"):
        assert isinstance(body[k], bool), k
    assert body["potree"] is True and body["glb"] is False and body["deleted"] is False
    assert body["privacy_mode"] == 0 and body["public_project"] is True  # no privacy_mode: public
    assert isinstance(body["errors"], int) and body["errors"] == 0
    for k in ("proj4", "created", "updated", "last_usage", "title", "name"):
        assert isinstance(body[k], str), k
    for k in ("id", "views", "setups_count", "size", "status"):
        assert isinstance(body[k], int) and not isinstance(body[k], bool), k
    assert body["status"] == 100 and body["setups_count"] == 1 and "redirect" in body
    assert body["coordinate_system"] == "EPSG:2056" and body["anonymize"] is True  # passed through
    # private when asked; an unreadable zip is one processing error
    uid = api.open()
    api.upload(uid, "bad.zip", b"not a zip")
    body = api.get_project(api.project({"upload_id": uid, "privacy_mode": 2}).json()["name"]).json()
    assert (body["privacy_mode"], body["public_project"], body["errors"]) == (2, False, 1)


def test_delete_discards_unready_projects(profiled_emulator):
    emu = profiled_emulator
    api = Api(emu)
    emu.set_flags(processing_seconds=0)
    ready_uid = api.open()
    api.upload(ready_uid, "r.jpg", b"r")
    ready = api.project({"upload_id": ready_uid}).json()["name"]
    emu.set_flags(processing_seconds=3600)
    uid = api.open()
    api.upload(uid, "a.jpg", b"a")
    name = api.project({"upload_id": uid}).json()["name"]
    before = api.get_project(name).json()
    assert before["status"] < 100
    for u in (uid, ready_uid):
        assert api.s.delete(f"{api.base}/uploads/{u}", headers=api.h()).json() == {"deleted": True}
    assert emu.endpoint_counts()["DELETE delete_session"] == 2
    assert api.get_project(ready).json()["status"] == 100  # a ready project is kept
    got = api.get_project(name).json()
    listed = {p["name"]: p for p in emu.projects()}
    if emu.profile == "vendor":
        assert got == {"name": name, "status": before["status"], "deleted": True, "errors": 1}
        assert listed[name]["discarded"] is True and listed[ready]["discarded"] is False
    else:
        assert got == {"name": name, "status": got["status"]} and got["status"] < 100
        assert listed[name]["discarded"] is False


def test_vendor_profile_without_werkzeug_says_what_to_install(tmp_path):
    """werkzeug is the vendor profile's extra (fs360[vendor-emulator]), not a dependency of the
    emulator: without it `--profile vendor` refuses to start in one line naming the extra."""
    hide_werkzeug = ("import sys; sys.modules['werkzeug'] = None; from fs360.emulator import main; "
                     f"sys.exit(main(['--port', '0', '--data-dir', {str(tmp_path / 'data')!r}, '--profile', 'vendor']))")
    result = subprocess.run([sys.executable, "-c", hide_werkzeug], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "emulator: cannot start: the vendor profile flattens names with werkzeug's secure_filename, and "
        "werkzeug is not installed: pip install 'fs360[vendor-emulator]'"]
