"""The rate `fs360 status` shows is what the server receives: under --bwlimit 2M, both measured
over the same stretch of one upload."""

from __future__ import annotations

import time

import pytest

from fs360 import control
from tests.harness import write_random

pytestmark = [pytest.mark.fuse, pytest.mark.slow(35)]

MiB = 1024 * 1024
LIMIT = 2 * MiB
WINDOW = 20.0  # fs/rates.py WINDOW: the status rate is over the last 20 s


def server_rate(samples: list[tuple[float, int]], end: float, span: float) -> float:
    """Bytes per second the server received over (end - span, end], from (time, received) samples."""
    def received_at(t: float) -> float:
        before = [s for s in samples if s[0] <= t]
        after = [s for s in samples if s[0] >= t]
        (t0, r0), (t1, r1) = before[-1], after[0]
        return r0 if t1 == t0 else r0 + (r1 - r0) * (t - t0) / (t1 - t0)
    return (received_at(end) - received_at(end - span)) / span


def test_status_shows_the_rate_the_server_receives_under_a_bwlimit(mount_factory, emulator):
    mount = mount_factory(emulator, extra_args=["--bwlimit", "2M", "--chunk-size", "1M"])
    session = mount.mountpoint / "Survey"
    session.mkdir()
    write_random(session / "big.jpg", 64 * MiB)
    samples: list[tuple[float, int]] = []
    shown: list[tuple[float, float]] = []
    started = None
    while True:
        doc = control.mount_status(str(mount.mountpoint))
        entry = doc["sessions"][0]["files"][0]
        now = time.monotonic()
        upload_id = doc["sessions"][0]["upload_id"]
        if upload_id:
            samples.append((now, emulator.progress(upload_id)["received"]))
            started = started or now
        if entry["rate"]:
            shown.append((now, entry["rate"]))
        if entry["state"] == "complete" or entry["sent"] >= 60 * MiB:
            break
        time.sleep(0.5)
    # Compared once a whole window of the upload lies behind both measurements.
    late = [(t, rate) for t, rate in shown if t - started >= WINDOW + 2]
    assert len(late) >= 8, f"too few samples past the first {WINDOW:.0f} s: {shown}"
    for t, rate in late:
        received = server_rate(samples, t, WINDOW)
        assert received == pytest.approx(LIMIT, rel=0.10), f"the server received {received / MiB:.2f} MiB/s"
        assert rate == pytest.approx(received, rel=0.15), \
            f"status showed {rate / MiB:.2f} MiB/s, the server received {received / MiB:.2f} MiB/s"
    mount.wait_settled("Survey")
    doc = control.mount_status(str(mount.mountpoint))
    assert doc["sessions"][0]["files"][0]["rate"] is None  # finished: no rate
    assert doc["totals"]["rate"] is None
