"""Unit tests of the emulator's pure helpers (no server)."""

import pytest

from fs360.emulator.faults import FaultSet, FaultSpecError, parse_spec
from fs360.emulator.profiles import Profile, VendorProfile
from fs360.emulator.server import RateLimiter, extension_of, flatten_name, parse_account_fault


@pytest.mark.parametrize(
    "raw,want",
    [
        ("a.jpg", "a.jpg"),
        ("dir%2Fa.jpg", "dira.jpg"),
        ("dir/a.jpg", "dira.jpg"),
        ("a%5Cb%00c%7F%C2%85.jpg", "abc.jpg"),
        ("caf%C3%A9.jpg", "café.jpg"),
        ("%2E%2E", None),
        ("%2E", None),
        ("%2F%00", None),
        ("%FF.jpg", None),
        ("a" * 251 + ".jpg", "a" * 251 + ".jpg"),
        ("a" * 252 + ".jpg", None),
        ("%C3%A9" * 128, None),
    ],
)
def test_flatten_name(raw, want):
    assert flatten_name(raw) == want


def test_extension_of():
    assert extension_of("A.B.JPG") == "jpg"
    assert extension_of("README") == ""
    assert extension_of("trailing.") == ""
    assert extension_of(".e57") == "e57"


def test_fault_spec_validation():
    assert parse_spec([{"kind": "error_503"}])["rules"][0]["endpoint"] == "*"
    assert parse_spec([{"kind": "html_error", "status": 413, "early": True}])["rules"][0]["early"] is True
    assert "early" not in parse_spec([{"kind": "html_error", "status": 413}])["rules"][0]
    for bad in ({"rules": [{"kind": "boom"}]}, {"rules": [{"kind": "error_500", "endpoint": "x"}]},
                {"rules": [{"kind": "error_500", "probability": 2}]}, {"rules": [{"kind": "latency", "oops": 1}]},
                {"rules": [{"kind": "html_error", "status": 413, "early": "yes"}]},
                {"seed": "x"}, "nope"):
        with pytest.raises(FaultSpecError):
            parse_spec(bad)


def test_fault_decisions_seeded_and_counted():
    spec = {"seed": 7, "rules": [{"endpoint": "put_file", "kind": "error_503", "probability": 0.5, "count": 3},
                                 {"endpoint": "*", "kind": "latency", "seconds": 0.5, "probability": 1.0}]}
    fs1, fs2 = FaultSet(spec), FaultSet(spec)
    seq1 = [fs1.decide("put_file").kind for _ in range(40)]
    seq2 = [fs2.decide("put_file").kind for _ in range(40)]
    assert seq1 == seq2 and seq1.count("error_503") == 3
    d = fs1.decide("get_file")
    assert d.kind is None and d.latency == 0.5
    b = FaultSet([{"endpoint": "get_file", "kind": "rate_limit_burst", "burst": 3, "retry_after": 4, "count": 1}])
    kinds = [(b.decide("get_file").kind) for _ in range(4)]
    assert kinds == ["rate_limit_burst"] * 3 + [None]
    r = FaultSet([{"kind": "received_gt_total"}])
    assert r.decide("get_session").kind is None and r.decide("put_file").kind == "received_gt_total"


def test_rate_limiter_sliding_window():
    rl = RateLimiter()
    assert all(rl.check("k", "create_project", 1.0) is None for _ in range(10))
    ra = rl.check("k", "create_project", 1.0)
    assert ra is not None and 3590 <= ra <= 3600
    assert rl.check("other", "create_project", 1.0) is None
    assert rl.check("k", "get_project", 1.0) is None


@pytest.mark.parametrize(
    "raw,want",
    [
        ("scan%201.e57", "scan_1.e57"),
        ("scan_1.e57", "scan_1.e57"),
        ("Scan.E57", "Scan.e57"),
        ("%D0%A4%D0%BE%D1%82%D0%BE.jpg", "jpg"),  # Фото.jpg: nothing of the stem is ASCII
        ("%D0%A4%D0%BE%D1%82%D0%BE", None),
        ("..%2F..%2Fetc%2Fpasswd.TXT", "etc_passwd.txt"),
        ("dir/a.jpg", "dir_a.jpg"),
        ("caf%C3%A9.jpg", "cafe.jpg"),
        ("a%09b%00c.las", "a_bc.las"),
        ("_x_.las", "x_.las"),
        ("x.", "x"),
        ("%2E%2E", None),
        ("%FF.jpg", None),
        ("a" * 251 + ".jpg", "a" * 251 + ".jpg"),
        ("a" * 252 + ".jpg", None),
    ],
)
def test_vendor_flatten(raw, want):
    assert VendorProfile().flatten(raw) == want


def test_profiles_differ_only_where_documented():
    default, vendor = Profile(), VendorProfile()
    assert default.flatten("scan%201.e57") == "scan 1.e57"
    assert (default.expires_in(259200.0), type(default.expires_in(259200.0))) == (259200, int)
    assert default.expires_in(1.5) == 1.5
    assert (vendor.expires_in(259200), type(vendor.expires_in(259200))) == (259200.0, float)
    rec = {"potree": 1, "glb": 0, "public_project": 1, "errors": None, "proj4": None, "updated": "2026-01-01T00:00:00Z"}
    assert default.ready_record(dict(rec)) == rec
    out = vendor.ready_record(dict(rec))
    assert out["potree"] is True and out["glb"] is False and out["kml"] is False and out["public_project"] is True
    assert (out["errors"], out["proj4"], out["deleted"], out["redirect"], out["last_usage"]) == (
        0, "", False, None, "2026-01-01T00:00:00Z")
    assert vendor.ready_record(dict(rec, errors="could not unpack a.zip"))["errors"] == 1


def test_new_fault_kinds_spec_and_decisions():
    spec = parse_spec([{"kind": "html_error", "status": 504}, {"kind": "slow_loris", "seconds": 0.5},
                       {"kind": "huge_body"}, {"kind": "redirect"}, {"kind": "retry_after_huge"},
                       {"kind": "rollback_received", "fraction": 0.25}])
    status, loris, huge, redirect, huge_ra, rollback = spec["rules"]
    assert status["status"] == 504 and loris["duration"] == 300.0 and huge["size"] == 300_000_000
    assert redirect["location"] is None and huge_ra["retry_after"] == 86400 and rollback["fraction"] == 0.25
    assert "status" not in parse_spec([{"kind": "error_503"}])["rules"][0]  # older kinds read back as before
    with pytest.raises(FaultSpecError):
        parse_spec([{"kind": "latency", "size": 3}])
    fs = FaultSet([{"endpoint": "put_file", "kind": "rollback_received", "fraction": 0.5},
                   {"endpoint": "put_file", "kind": "extra_fields"},
                   {"endpoint": "put_file", "kind": "html_error", "status": 413}])
    d = fs.decide("put_file")
    assert (d.rollback, d.extra_fields, d.kind, d.rule["status"]) == (0.5, True, "html_error", 413)
    d = fs.decide("get_session")  # rollback_received is for files only
    assert (d.rollback, d.kind) == (None, None)


def test_a_rule_with_min_body_matches_only_bodies_that_large():
    """A proxy's body limit: an html_error 413 for bodies of min_body bytes or more."""
    fs = FaultSet([{"endpoint": "put_file", "kind": "html_error", "status": 413, "min_body": 1000, "every": 2}])
    assert [fs.decide("put_file", n).kind for n in (999, 1000, 0, 5000, 1000)] == \
        [None, None, None, "html_error", None]  # `every` counts only the requests it matches
    assert "min_body" not in parse_spec([{"kind": "error_503"}])["rules"][0]
    with pytest.raises(FaultSpecError):
        parse_spec([{"kind": "error_503", "min_body": -1}])


def test_account_fault_spec():
    assert parse_account_fault({}) is None and parse_account_fault(None) is None
    assert parse_account_fault({"status": 403, "error": "email_not_verified", "endpoints": "*"}) == {
        "status": 403, "error": "email_not_verified", "endpoints": None}
    for bad in ({"status": 404, "error": "x"}, {"status": True, "error": "x"}, {"status": 402, "error": ""},
                {"status": 402, "error": "x", "endpoints": []}, {"status": 402, "error": "x", "why": 1}):
        with pytest.raises(ValueError):
            parse_account_fault(bad)
