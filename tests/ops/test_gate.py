"""--bwlimit and pause/resume: the TransferGate, alone and behind a real mount."""

from __future__ import annotations

import threading

import pytest

from fs360.api.transport import BODY_PIECE
from fs360.engine.gate import TransferGate, rate_at
from fs360.options import parse_bwlimit, parse_rate
from tests.harness import assert_uploaded, remote_files, request_count, wait_until, write_random

from .common import harness_runtime, run_fs360

KiB, MiB = 1024, 1024 * 1024


def test_rates_and_timetables_parse_like_rsync_and_rclone():
    assert parse_rate("10M") == 10 * MiB and parse_rate("500k") == 500 * KiB and parse_rate("2.5M") == 2.5 * MiB
    assert parse_rate("100") == 100 * KiB and parse_rate("800b") == 800 and parse_rate("1GiB") == 1024 * MiB
    assert parse_rate("off") is None and parse_rate("0") is None
    table = parse_bwlimit("18:00,off 08:00,5M 12:30,1M")
    assert table == [(480, 5 * MiB), (750, MiB), (1080, None)]
    assert rate_at(table, 7 * 60) is None          # before 08:00: yesterday's 18:00 entry
    assert rate_at(table, 9 * 60) == 5 * MiB
    assert rate_at(table, 13 * 60) == MiB
    assert rate_at(table, 23 * 60) is None
    for bad in ("fast", "25:00,1M", "08:00,lots", "8M/h"):
        with pytest.raises(ValueError):
            parse_bwlimit(bad)


def test_pause_blocks_until_resume_or_stop():
    gate = TransferGate("off")
    gate.set_paused(True)
    passed = threading.Event()
    stop = threading.Event()
    results = []

    def worker():
        results.append(gate.wait_turn(1000, stop.is_set))
        passed.set()

    thread = threading.Thread(target=worker)
    thread.start()
    assert not passed.wait(0.3)  # a state that must hold, not a delay to wait out
    gate.set_paused(False)
    assert passed.wait(5) and results == [True]
    gate.set_paused(True)
    passed.clear()
    thread = threading.Thread(target=worker)
    thread.start()
    stop.set()
    assert passed.wait(5) and results == [True, False]
    with pytest.raises(ValueError):
        gate.set_bwlimit("nonsense")
    assert gate.bwlimit == "off"


class FakeClock:
    """The gate's time in a test: a wait moves the clock on at once, so no test waits out a rate."""

    def __init__(self):
        self.now = 0.0

    def time(self) -> float:
        return self.now

    def wait(self, seconds: float) -> bool:
        self.now += seconds
        return False


def piece_starts(gate: TransferGate, clock: FakeClock, size: int, chunk: int) -> list[float]:
    """Sends `size` bytes in PUTs of `chunk` through the gate as send_file and the body do
    (before_put before each PUT, wait_turn and sent for each 256 KiB piece of its body); returns
    the clock at the start of each piece."""
    sent = []
    turns = gate.turns(lambda: False, sent.append)
    starts, offset = [], 0
    while offset < size:
        n = min(chunk, size - offset)
        assert not turns.before_put(n)
        for piece in range(0, n, BODY_PIECE):
            length = min(BODY_PIECE, n - piece)
            turns.wait_turn(length)
            starts.append(clock.now)
            turns.sent(length)
        offset += n
    turns.flush()
    assert sum(sent) == size
    if gate.bwlimit != "off":  # told as they went (every 0.1 s at most), not once at the end
        assert len(sent) > 1
    return starts


def test_bwlimit_holds_every_piece_of_a_transfer_to_its_rate():
    clock = FakeClock()
    gate = TransferGate("2M", clock=clock.time, wait=clock.wait)
    chunk = MiB
    # Each 256 KiB piece of each PUT's body starts once the bytes before it had their time at
    # 2 MiB/s: 1/8 s apart, within a chunk as across chunks.
    starts = piece_starts(gate, clock, 8 * MiB, chunk)
    assert starts == pytest.approx([i / 8 for i in range(32)])
    # A limit set at run time paces the pieces after the one under way (512 KiB/s: 1/2 s apart).
    gate.set_bwlimit("512k")
    assert piece_starts(gate, clock, MiB, chunk) == pytest.approx([4.0, 4.5, 5.0, 5.5])
    # Idle time earns no credit: after a minute of nothing, no burst above the limit.
    clock.now += 60
    assert piece_starts(gate, clock, MiB, chunk) == pytest.approx([65.5, 66.0, 66.5, 67.0])
    # Lifted, nothing waits.
    gate.set_bwlimit("off")
    clock.now += 1
    assert piece_starts(gate, clock, MiB, chunk) == [68.0] * 4
    # A small file's one piece takes its own bytes' time, not a whole piece's.
    gate.set_bwlimit("1M")
    assert piece_starts(gate, clock, 3 * 64 * KiB, 64 * KiB) == pytest.approx([68.0, 68.0625, 68.125])


def test_a_pause_holds_the_next_put_not_the_piece_under_way():
    clock = FakeClock()
    gate = TransferGate("2M", clock=clock.time, wait=clock.wait)
    turns = gate.turns(lambda: False, lambda n: None)
    assert not turns.before_put(MiB)
    turns.wait_turn(BODY_PIECE)
    gate.set_paused(True)
    turns.wait_turn(BODY_PIECE)  # the body goes on (the server would drop a body that stops)
    assert clock.now == pytest.approx(1 / 8)
    stopping = threading.Event()
    stopping.set()
    assert gate.turns(stopping.is_set, lambda n: None).before_put(MiB)  # the next PUT waits: here, stopped


@pytest.mark.fuse
def test_a_transfer_under_bwlimit_arrives_whole(tmp_path, emulator, mount_factory):
    """The limit's pacing is the fake-clock test above; here a real mount's limit is the gate's,
    and the file it paces reaches the server whole."""
    mount = mount_factory(emulator, extra_args=["--chunk-size", "256k", "--max-chunk-size", "256k", "--bwlimit", "2M"], writeback_delay=0.1)
    (mount.mountpoint / "s").mkdir()
    sha = write_random(mount.mountpoint / "s" / "big.e57", MiB + 1)
    shown = run_fs360(tmp_path, "status", str(mount.mountpoint), env=harness_runtime())
    assert "bwlimit 2M" in shown.stdout and str(mount.mountpoint) in shown.stdout, shown.stdout + shown.stderr
    assert mount.wait_settled("s", timeout=60) == {"big.e57": "complete"}
    assert_uploaded(emulator, None, {"big.e57": sha})
    assert request_count(emulator, "PUT ") == 5  # four chunks and a byte


@pytest.mark.fuse
def test_bwlimit_changes_at_run_time(tmp_path, emulator, mount_factory):
    mount = mount_factory(emulator, extra_args=["--chunk-size", "256k", "--bwlimit", "64k"], writeback_delay=0.1)
    (mount.mountpoint / "s").mkdir()
    sha = write_random(mount.mountpoint / "s" / "a.e57", 4 * MiB)
    wait_until(lambda: remote_files(emulator).get("a.e57"), 60, 0.05, what="the first chunk")
    refused = run_fs360(tmp_path, "set", str(mount.mountpoint), "bwlimit=lots", env=harness_runtime())
    assert refused.returncode == 2 and "not a rate" in refused.stderr
    refused = run_fs360(tmp_path, "set", str(mount.mountpoint), "workers=9", env=harness_runtime())
    assert refused.returncode == 2 and "changes while mounted: bwlimit" in refused.stderr
    # At 64 KiB/s the file would need a minute; lifted, it completes within the wait below.
    changed = run_fs360(tmp_path, "set", str(mount.mountpoint), "bwlimit=off", env=harness_runtime())
    assert changed.returncode == 0, changed.stderr
    assert "bwlimit off" in changed.stdout
    mount.wait_settled("s", timeout=30)
    assert_uploaded(emulator, None, {"a.e57": sha})


@pytest.mark.slow
@pytest.mark.fuse
def test_pause_stops_puts_keeps_the_mount_writable_and_resume_loses_nothing(tmp_path, emulator, mount_factory):
    chunk = 256 * KiB
    # A chunk a second: the pause (a CLI run, seconds on a loaded machine) lands well before the
    # file's 16th chunk; the limit is lifted before the resume.
    mount = mount_factory(emulator, extra_args=["--chunk-size", "256k", "--max-chunk-size", "256k", "--bwlimit", "256k"], writeback_delay=0.1)
    session = mount.mountpoint / "s"
    session.mkdir()
    expected = {"a.e57": write_random(session / "a.e57", 4 * MiB)}
    wait_until(lambda: remote_files(emulator).get("a.e57", {}).get("received", 0) >= 2 * chunk, 60, 0.02,
               what="the upload to be under way")
    paused = run_fs360(tmp_path, "pause", str(mount.mountpoint), env=harness_runtime())
    assert paused.returncode == 0, paused.stderr
    assert "paused" in paused.stdout
    # The mount keeps taking files; workers take them up and stop at the gate.
    for i in range(3):
        expected[f"n{i}.jpg"] = write_random(session / f"n{i}.jpg", 100_000 + i)
    wait_until(lambda: all(mount.file_states("s")[f"n{i}.jpg"] == "uploading" for i in range(3)), 30,
               what="the new files to reach the paused workers")
    assert (mount.mountpoint / "status").read_text().startswith("paused")
    assert (session / "status").read_text().startswith("paused")
    assert "paused" in run_fs360(tmp_path, "status", str(mount.mountpoint), env=harness_runtime()).stdout
    remote = remote_files(emulator)
    assert not any(f"n{i}.jpg" in remote for i in range(3)), "a PUT went out while paused"
    # Nothing of n0.jpg was sent: waiting out the pause, it may still be written again.
    expected["n0.jpg"] = write_random(session / "n0.jpg", 120_000, seed=7)
    wait_until(lambda: mount.file_states("s")["n0.jpg"] == "uploading", 30, what="n0.jpg back at the gate")
    received = remote["a.e57"]["received"]
    assert received < 4 * MiB and received % chunk == 0
    assert request_count(emulator, "PUT ") == received // chunk
    lifted = run_fs360(tmp_path, "set", str(mount.mountpoint), "bwlimit=off", env=harness_runtime())
    assert lifted.returncode == 0, lifted.stderr
    assert request_count(emulator, "PUT ") == received // chunk, "a PUT went out while paused"
    resumed = run_fs360(tmp_path, "resume", str(mount.mountpoint), env=harness_runtime())
    assert resumed.returncode == 0, resumed.stderr
    assert mount.wait_settled("s", timeout=60) == {name: "complete" for name in expected}
    assert_uploaded(emulator, None, expected)
    # Every chunk sent exactly once: 16 chunks of a.e57, one whole-file PUT for each small file.
    assert request_count(emulator, "PUT ") == 4 * MiB // chunk + 3
    assert not (session / "status").read_text().startswith("paused")
