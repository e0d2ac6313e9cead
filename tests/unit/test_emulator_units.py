"""Unit tests of the emulator's pure helpers (no server)."""

import pytest

from fs360.emulator.faults import FaultSet, FaultSpecError, parse_spec
from fs360.emulator.server import RateLimiter, extension_of, flatten_name


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
    for bad in ({"rules": [{"kind": "boom"}]}, {"rules": [{"kind": "error_500", "endpoint": "x"}]},
                {"rules": [{"kind": "error_500", "probability": 2}]}, {"rules": [{"kind": "latency", "oops": 1}]},
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
