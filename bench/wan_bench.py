"""The side by side on a shaped link: scripts/bench wan [RATE_MBIT RTT_MS] (defaults 200 and 40).

The whole benchmark re-executes itself inside a private network namespace
(`unshare -n`), whose loopback is shaped with a token bucket:

    ip link set lo up
    tc qdisc add dev lo root tbf rate RATEmbit burst 512kb latency 100ms

This kernel has no netem, so the round trip is the emulator's `latency` fault on
every API request (`{"endpoint": "*", "kind": "latency", "seconds": RTT/1000}`):
each request waits RTT before it is handled, as a request on a real link waits
for its first byte to cross and its answer to come back. The workloads run as in
`scripts/bench quick` (bench/mount_bench.py: the guide's sequential client, then
`cp` into a real fs360 mount with the default settings, timed until complete on
the server), and each is compared with the baseline and with the link limit
(bytes x 8 / rate).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from fs360.emulator.harness import EmulatorProcess

from .mount_bench import EMULATOR_ARGS, MiB, Daemon, Row, make_work_dir, mbps, run_sourced_workload

DEFAULT_RATE_MBIT = 200.0
DEFAULT_RTT_MS = 40.0
# (files, bytes each)
WORKLOADS = {"big": (1, 384 * MiB), "eight": (8, 32 * MiB), "small": (200, MiB)}
# Issue 12's targets: x the guide's client, and (small files only) x the link limit.
BASELINE_TARGETS = {"big": 1.10, "eight": 1.05, "small": 0.50}
LINK_TARGETS = {"small": 1.15}
# Marks the re-executed process that already runs inside its own namespace.
IN_NETNS = "FS360_BENCH_WAN_NETNS"


def main(argv: list[str]) -> int:
    rate_mbit = float(argv[0]) if len(argv) > 0 else DEFAULT_RATE_MBIT
    rtt_ms = float(argv[1]) if len(argv) > 1 else DEFAULT_RTT_MS
    if os.environ.get(IN_NETNS) != "1":
        return reexec_in_netns(rate_mbit, rtt_ms)
    shape_loopback(rate_mbit)
    return run(rate_mbit, rtt_ms)


def reexec_in_netns(rate_mbit: float, rtt_ms: float) -> int:
    if shutil.which("unshare") is None or shutil.which("tc") is None:
        print("scripts/bench wan needs unshare and tc (iproute2)", file=sys.stderr)
        return 2
    env = dict(os.environ, **{IN_NETNS: "1"})
    command = ["unshare", "-n", "--", sys.executable, "-m", "bench", "wan", str(rate_mbit), str(rtt_ms)]
    return subprocess.run(command, env=env).returncode


def shape_loopback(rate_mbit: float) -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    # burst 512 KiB is 21 ms at 200 Mbit/s (a loopback GSO packet is up to 64 KiB); latency
    # 100 ms sizes the queue so that TCP is paced by the bucket rather than by drops.
    subprocess.run(["tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", f"{rate_mbit:g}mbit",
                    "burst", "512kb", "latency", "100ms"], check=True)


def link_limit(nbytes: int, rate_mbit: float) -> float:
    return nbytes * 8 / (rate_mbit * 1e6)


def run(rate_mbit: float, rtt_ms: float) -> int:
    work = make_work_dir()
    print(f"fs360 benchmark on a shaped link ({rate_mbit:g} Mbit/s, {rtt_ms:g} ms per request) in {work}; "
          f"emulator {' '.join(EMULATOR_ARGS)}", flush=True)
    rows: list[Row] = []
    try:
        with EmulatorProcess(work / "emulator", args=EMULATOR_ARGS) as emulator:
            emulator.set_faults([{"endpoint": "*", "kind": "latency", "seconds": rtt_ms / 1000}])
            daemon = Daemon(work, emulator)
            try:
                for workload, (count, size) in WORKLOADS.items():
                    rows.append(run_sourced_workload(workload, count, size, emulator, daemon, work))
            finally:
                daemon.close()
            dropped = qdisc_stats()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_table(rows, rate_mbit, rtt_ms, dropped)
    return 0


def qdisc_stats() -> str:
    result = subprocess.run(["tc", "-s", "qdisc", "show", "dev", "lo"], capture_output=True, text=True)
    return " ".join(result.stdout.split())


def verdict(value: float, target: float | None) -> str:
    if target is None:
        return "-"
    return f"<= {target:.2f} x: {'MET' if value <= target else 'MISSED'}"


def print_table(rows: list[Row], rate_mbit: float, rtt_ms: float, qdisc: str) -> None:
    print()
    print(f"## fs360 on a shaped link: {rate_mbit:g} Mbit/s, {rtt_ms:g} ms per request")
    print()
    print("| workload | data | link limit | baseline | fs360 copy returns | fs360 complete |"
          " complete / baseline | target | complete / link limit | target | daemon CPU |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        limit = link_limit(row.total, rate_mbit)
        to_baseline = row.complete / row.baseline
        to_link = row.complete / limit
        print(f"| {row.workload} | {row.files} x {row.total // row.files / MiB:g} MiB | {limit:.2f} s |"
              f" {row.baseline:.2f} s ({row.baseline / limit:.2f} x link) | {row.copy_returns:.2f} s |"
              f" {row.complete:.2f} s ({mbps(row.total, row.complete):.1f} MB/s) |"
              f" **{to_baseline:.2f} x** | {verdict(to_baseline, BASELINE_TARGETS.get(row.workload))} |"
              f" {to_link:.2f} x | {verdict(to_link, LINK_TARGETS.get(row.workload))} | {row.daemon_cpu:.2f} s |")
    print()
    print(f"- loopback qdisc at the end: {qdisc}")
    sys.stdout.flush()
