"""fs360 side by side with a direct API client, on one emulator, in one run.

    scripts/bench [quick|full] [big eight small rsync ls]

For each workload: the baseline (bench/baseline.py, sequential, straight from
the source files), then `cp` (or `rsync -a`) into a real fs360 mount, timed when
the copy returns and when the last file is complete on the server, and a plain
local `cp` of the same data (the ceiling for "the copy returns"). The daemon's
peak RSS and the latency of reading `status` during uploads are sampled too.
The emulator runs with --discard --no-rate-limits so that neither its disk nor
the documented rate limits are what is measured.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from fs360.emulator.harness import EmulatorProcess

from .baseline import upload_files

MiB = 1024 * 1024

SIZES = {
    "quick": {"big": (1, 512 * MiB), "eight": (8, 64 * MiB), "small": (500, 100 * 1024), "rsync": (100, None),
              "ls": 10_000},
    "full": {"big": (1, 2048 * MiB), "eight": (8, 256 * MiB), "small": (2000, 100 * 1024), "rsync": (500, None),
             "ls": 10_000},
}
TARGETS = {"big": 2.5, "eight": 1.5, "small": 0.6, "rsync": None}
WORKLOADS = ("big", "eight", "small", "rsync", "ls")


@dataclass
class Row:
    workload: str
    files: int
    total: int
    baseline: float = 0.0
    copy_returns: float = 0.0
    complete: float = 0.0
    local_cp: float = 0.0
    notes: list[str] = field(default_factory=list)


def make_sources(directory: Path, count: int, size: int | None, seed: int = 0) -> list[Path]:
    """Incompressible files; for rsync sizes vary from 1 to 4 MiB."""
    directory.mkdir(parents=True, exist_ok=True)
    block = os.urandom(MiB)
    paths = []
    for index in range(count):
        this_size = size if size is not None else MiB + (index * 7919 * 4096) % (3 * MiB)
        path = directory / f"file{index:05d}.jpg"
        with open(path, "wb") as f:
            remaining = this_size
            prefix = index.to_bytes(8, "little")
            while remaining:
                part = (prefix + block)[:min(remaining, MiB)]
                f.write(part)
                remaining -= len(part)
        paths.append(path)
    subprocess.run(["sync"])
    return paths


class Daemon:
    def __init__(self, work: Path, emulator: EmulatorProcess):
        self.mountpoint = work / "mnt"
        self.cache = work / "cache"
        self.mountpoint.mkdir(exist_ok=True)
        self.emulator = emulator
        env = dict(os.environ, FS360_API_KEY=emulator.api_key)
        subprocess.run([sys.executable, "-m", "fs360.cli", "mount", str(self.mountpoint), "--api-url",
                        emulator.base_url, "--cache-dir", str(self.cache), "--no-rate-limits",
                        "--log-level", "warning"], env=env, check=True)
        self.pid = int((self.cache / "lock").read_text())

    def peak_rss(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0

    def upload_id(self, session: str) -> str:
        import json
        return json.loads((self.mountpoint / session / "status.json").read_text())["upload_id"]

    def close(self) -> None:
        subprocess.run([sys.executable, "-m", "fs360.cli", "unmount", str(self.mountpoint)], check=False)


def wait_complete(emulator: EmulatorProcess, daemon: Daemon, session: str, count: int, timeout: float = 900) -> float:
    deadline = time.monotonic() + timeout
    upload_id = None
    while time.monotonic() < deadline:
        if upload_id is None:
            upload_id = daemon.upload_id(session)
        if upload_id and emulator.progress(upload_id)["complete"] >= count:
            return time.monotonic()
        time.sleep(0.05)
    raise RuntimeError(f"{session}: not complete within {timeout} s")


def run_copy_workload(name: str, sources: list[Path], emulator, daemon: Daemon, work: Path, use_rsync=False,
                      status_samples: list[float] | None = None) -> Row:
    row = Row(name, len(sources), sum(p.stat().st_size for p in sources))
    src_dir = sources[0].parent
    # Baseline: the direct client.
    start = time.monotonic()
    upload_files(emulator.base_url, emulator.api_key, [str(p) for p in sources])
    row.baseline = time.monotonic() - start
    # Plain local cp of the same data (same disk).
    local = work / f"local-{name}"
    start = time.monotonic()
    subprocess.run(["cp", "-r", str(src_dir), str(local)], check=True)
    row.local_cp = time.monotonic() - start
    shutil.rmtree(local)
    # fs360.
    session = daemon.mountpoint / name
    session.mkdir()
    stop_sampling = threading.Event()
    sampler = None
    if status_samples is not None:
        sampler = threading.Thread(target=sample_status, args=(session, status_samples, stop_sampling))
    start = time.monotonic()
    if sampler:
        sampler.start()
    if use_rsync:
        subprocess.run(["rsync", "-a", f"{src_dir}/", f"{session}/"], check=True)
    else:
        subprocess.run(["cp", *[str(p) for p in sources], str(session)], check=True)
    row.copy_returns = time.monotonic() - start
    row.complete = wait_complete(emulator, daemon, name, len(sources)) - start
    stop_sampling.set()
    if sampler:
        sampler.join()
    return row


def sample_status(session: Path, samples: list[float], stop: threading.Event) -> None:
    while not stop.is_set():
        start = time.monotonic()
        try:
            (session / "status").read_bytes()
        except OSError:
            pass
        else:
            samples.append(time.monotonic() - start)
        stop.wait(0.1)


def run_ls(count: int, daemon: Daemon, emulator) -> tuple[float, float]:
    session = daemon.mountpoint / "ls"
    session.mkdir()
    for index in range(count):
        with open(session / f"img{index:05d}.jpg", "wb") as f:
            f.write(b"x" * 16)
    wait_complete(emulator, daemon, "ls", count, timeout=1200)
    time.sleep(1.5)  # past the attribute timeout: the first ls asks the daemon for everything
    start = time.monotonic()
    subprocess.run(["ls", "-l", str(session)], stdout=subprocess.DEVNULL, check=True)
    cold = time.monotonic() - start
    start = time.monotonic()
    subprocess.run(["ls", "-l", str(session)], stdout=subprocess.DEVNULL, check=True)
    warm = time.monotonic() - start
    return cold, warm


def mbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6 if seconds > 0 else 0.0


def main(argv: list[str]) -> int:
    mode = "quick"
    if argv and argv[0] in SIZES:
        mode, argv = argv[0], argv[1:]
    chosen = [w for w in argv if w in WORKLOADS] or list(WORKLOADS)
    sizes = SIZES[mode]
    work = Path(tempfile.mkdtemp(prefix="fs360-bench-", dir=os.environ.get("FS360_BENCH_DIR", "/var/tmp")))
    print(f"fs360 benchmark ({mode}) in {work}; emulator --discard --no-rate-limits", flush=True)
    rows: list[Row] = []
    status_samples: list[float] = []
    ls_times = None
    peak_rss = 0
    try:
        with EmulatorProcess(work / "emulator", args=["--discard", "--no-rate-limits"]) as emulator:
            daemon = Daemon(work, emulator)
            try:
                for workload in chosen:
                    if workload == "ls":
                        ls_times = run_ls(sizes["ls"], daemon, emulator)
                        print(f"  ls -l of {sizes['ls']} files: cold {ls_times[0]:.3f} s, warm {ls_times[1]:.3f} s",
                              flush=True)
                        continue
                    count, size = sizes[workload]
                    sources = make_sources(work / f"src-{workload}", count, size)
                    row = run_copy_workload(workload, sources, emulator, daemon, work,
                                            use_rsync=(workload == "rsync"),
                                            status_samples=status_samples if workload in ("eight", "big") else None)
                    rows.append(row)
                    print(f"  {workload}: baseline {row.baseline:.2f} s, copy returns {row.copy_returns:.2f} s, "
                          f"complete {row.complete:.2f} s, local cp {row.local_cp:.2f} s", flush=True)
                    shutil.rmtree(work / f"src-{workload}")
                peak_rss = daemon.peak_rss()
            finally:
                daemon.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_table(mode, rows, status_samples, ls_times, peak_rss)
    return 0


def print_table(mode, rows, status_samples, ls_times, peak_rss) -> None:
    print()
    print(f"## fs360 benchmark, {mode} run")
    print()
    print("| workload | data | baseline | fs360 copy returns | fs360 complete | ratio complete/baseline | target |"
          " copy MB/s vs local cp |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        target = TARGETS.get(row.workload)
        ratio = row.complete / row.baseline if row.baseline else 0
        verdict = "" if target is None else (" ok" if ratio <= target else " MISSED")
        copy_pct = 100 * row.local_cp / row.copy_returns if row.copy_returns else 0
        print(f"| {row.workload} | {row.files} files, {row.total / MiB:.0f} MiB | {row.baseline:.2f} s "
              f"({mbps(row.total, row.baseline):.0f} MB/s) | {row.copy_returns:.2f} s "
              f"({mbps(row.total, row.copy_returns):.0f} MB/s) | {row.complete:.2f} s | {ratio:.2f} x |"
              f" {'<= ' + str(target) + ' x' + verdict if target else '-'} |"
              f" {mbps(row.total, row.copy_returns):.0f} vs {mbps(row.total, row.local_cp):.0f} = {copy_pct:.0f}%"
              f"{' ok' if copy_pct >= 25 else ' MISSED'} (target >= 25%) |")
    print()
    print(f"- daemon peak RSS: {peak_rss / MiB:.1f} MiB (target < 150 MiB){' ok' if peak_rss < 150 * MiB else ' MISSED'}")
    if ls_times:
        print(f"- ls -l of 10,000 files: {ls_times[0]:.3f} s cold, {ls_times[1]:.3f} s warm (target < 1 s)"
              f"{' ok' if ls_times[0] < 1 else ' MISSED'}")
    if status_samples:
        print(f"- reading status during uploads: median {statistics.median(status_samples) * 1000:.1f} ms, "
              f"max {max(status_samples) * 1000:.1f} ms over {len(status_samples)} reads (target < 50 ms)"
              f"{' ok' if max(status_samples) < 0.05 else ' MISSED (max)'}")
    sys.stdout.flush()
