"""Scale: one very large file and very many small files through one mount (issue 21, item 6).

    scripts/bench scale [GIB [FILES]]      (defaults 20 and 100000)

1. One GIB GiB file: the source is sparse (`truncate`), copied with `dd bs=1M` so that every
   byte goes through FUSE, the spool and the upload in 1 MiB writes, as `cp` writes a regular
   file (`cp --sparse=never` would fill the holes with 128 KiB writes).
2. FILES files of 1,000 bytes, copied with `cp -r` in five equal batches into one folder, so
   what a file costs can be compared between the first batch and the last (nothing should
   grow with the files already there).
Then `ls -l` of that folder (cold: past the attribute timeout; warm), reads of its `status`
and `status.json` (time and size), the journal's size, and the daemon's memory.

For each step: the time until the copy returns and until the emulator holds every file
complete, the CPU seconds (user+sys) of the daemon and every process it starts, and the
peak of their summed RSS (sampled every 0.25 s). The emulator runs with --discard
--no-rate-limits, as in `scripts/bench quick`.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from fs360.emulator.harness import EmulatorProcess

from .mount_bench import EMULATOR_ARGS, GiB, MiB, Daemon, RssSampler, make_work_dir, wait_complete

BATCHES = 5
SMALL_SIZE = 1000


def load() -> str:
    return "load %.1f" % os.getloadavg()[0]


def timed_copy(command: list[str], daemon: Daemon) -> tuple[float, float]:
    """(seconds until the copy returns, daemon + workers CPU seconds meanwhile)."""
    cpu, start = daemon.cpu_seconds(), time.monotonic()
    subprocess.run(command, check=True)
    return time.monotonic() - start, daemon.cpu_seconds() - cpu


def one_big_file(gib: int, daemon: Daemon, emulator, work: Path) -> None:
    source = work / "big.src"
    with open(source, "wb") as f:
        f.truncate(gib * GiB)
    session = daemon.mountpoint / "big"
    session.mkdir()
    cpu, start = daemon.cpu_seconds(), time.monotonic()
    with RssSampler(daemon) as rss:
        subprocess.run(["dd", f"if={source}", f"of={session / 'scan.las'}", "bs=1M", "status=none"], check=True)
        copied = time.monotonic() - start
        complete = wait_complete(emulator, daemon, "big", 1, timeout=4 * 3600) - start
    used = daemon.cpu_seconds() - cpu
    print(f"- one file of {gib} GiB: copy returns {copied:.1f} s ({gib * GiB / copied / 1e6:.0f} MB/s), "
          f"complete {complete:.1f} s; daemon + workers CPU {used:.1f} s ({used / gib:.2f} s per GiB); "
          f"peak summed RSS {rss.peak / MiB:.1f} MiB; {load()}", flush=True)
    source.unlink()


def many_small_files(count: int, daemon: Daemon, emulator, work: Path) -> None:
    per_batch = count // BATCHES
    sources = work / "small.src"
    for batch in range(BATCHES):
        folder = sources / f"batch{batch}"
        folder.mkdir(parents=True)
        for index in range(per_batch):
            (folder / f"img{batch}_{index:06d}.jpg").write_bytes(index.to_bytes(8, "little") * (SMALL_SIZE // 8))
    session = daemon.mountpoint / "small"
    session.mkdir()
    start = time.monotonic()
    with RssSampler(daemon) as rss:
        for batch in range(BATCHES):
            seconds, cpu = timed_copy(["cp", "-r", f"{sources / f'batch{batch}'}/.", f"{session}/"], daemon)
            print(f"  batch {batch + 1}/{BATCHES} ({per_batch} files, {batch * per_batch} there before): copy "
                  f"{seconds:.1f} s ({1000 * seconds / per_batch:.2f} ms per file), CPU meanwhile "
                  f"{1000 * cpu / per_batch:.2f} ms per file; {load()}", flush=True)
        copied = time.monotonic() - start
        cpu = daemon.cpu_seconds()
        complete = wait_complete(emulator, daemon, "small", BATCHES * per_batch, timeout=4 * 3600) - start
    print(f"- {BATCHES * per_batch} files of {SMALL_SIZE} bytes: copies return {copied:.1f} s, complete "
          f"{complete:.1f} s; peak summed RSS {rss.peak / MiB:.1f} MiB; {load()}", flush=True)
    del cpu
    time.sleep(1.5)  # past the attribute timeout: the first ls asks the daemon for everything
    for kind in ("cold", "warm"):
        start = time.monotonic()
        subprocess.run(["ls", "-l", str(session)], stdout=subprocess.DEVNULL, check=True)
        print(f"  ls -l of {BATCHES * per_batch} files, {kind}: {time.monotonic() - start:.2f} s", flush=True)
    for name in ("status", "status.json"):
        start = time.monotonic()
        size = len((session / name).read_bytes())
        print(f"  read {name}: {1000 * (time.monotonic() - start):.0f} ms, {size / MiB:.1f} MiB", flush=True)


def main(argv: list[str]) -> int:
    gib = int(argv[0]) if argv else 20
    count = int(argv[1]) if len(argv) > 1 else 100_000
    work = make_work_dir()
    print(f"fs360 scale benchmark in {work}; emulator {' '.join(EMULATOR_ARGS)}; {load()}", flush=True)
    try:
        with EmulatorProcess(work / "emulator", args=EMULATOR_ARGS) as emulator:
            daemon = Daemon(work, emulator)
            try:
                if gib:
                    one_big_file(gib, daemon, emulator, work)
                if count:
                    many_small_files(count, daemon, emulator, work)
                journal = sum(p.stat().st_size for p in daemon.cache.glob("journal*"))
                status = dict(line.split(":", 1) for line in Path(f"/proc/{daemon.pid}/status").read_text().splitlines())
                print(f"- journal {journal / MiB:.1f} MiB; daemon RSS {status['VmRSS'].strip()} "
                      f"(peak {status['VmHWM'].strip()}); daemon + workers CPU in all {daemon.cpu_seconds():.1f} s",
                      flush=True)
            finally:
                daemon.close()
    finally:
        subprocess.run(["rm", "-rf", str(work)])
    return 0
