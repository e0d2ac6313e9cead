"""fs360 side by side with a direct API client, on one emulator, in one run.

    scripts/bench [quick|full|smoke] [big eight small rsync ls]

For each workload: the baseline (bench/baseline.py, sequential, straight from
the source files), then `cp` (or `rsync -a`) into a real fs360 mount, timed when
the copy returns and when the last file is complete on the server, and a plain
local `cp` of the same data (the ceiling for "the copy returns"). The daemon's
CPU seconds per workload (user+sys of the daemon and every process it
starts), the peak RSS of the daemon plus its children and the latency of
reading `status` during uploads are sampled too.
The floor, in the same run: the same copy into bench/floor_fs.py, a Python FUSE with
fs360's FUSE setup that drops the bytes (its time and its process's CPU), plus the least
an upload costs: per GiB, staging each byte past the page cache and reading it back (the
commit point keeps every byte until the writer's exit) and a loopback `sendfile`; per small
file, a spool file of its own (made, read back, deleted) and one PUT of it through urllib3's
pool, the HTTP library fs360 sends through. The floor
journals nothing and waits for no writer's exit: a target its FUSE, staging and sendfile parts
miss is out of reach for any fs360 on mfusepy here; what fs360 costs above it is its own.
The emulator runs with --discard --no-rate-limits so that neither its disk nor
the documented rate limits are what is measured.
"""

from __future__ import annotations

import json
import mmap
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import urllib3

from fs360.emulator.harness import EmulatorProcess

from .baseline import upload_files

MiB = 1024 * 1024
GiB = 1024 * MiB
EMULATOR_ARGS = ["--discard", "--no-rate-limits"]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
REPO_ROOT = Path(__file__).resolve().parent.parent
LOOPBACK_SEND_SIZE = 512 * MiB
# Accepts one connection on loopback, prints its port first, reads until EOF and drops the bytes.
DISCARDING_RECEIVER = """
import socket
server = socket.create_server(("127.0.0.1", 0))
print(server.getsockname()[1], flush=True)
connection, _ = server.accept()
buffer = memoryview(bytearray(1 << 20))
while connection.recv_into(buffer):
    pass
"""

SIZES = {
    "quick": {"big": (1, 512 * MiB), "eight": (8, 64 * MiB), "small": (500, 100 * 1024), "rsync": (100, None),
              "ls": 10_000},
    "full": {"big": (1, 2048 * MiB), "eight": (8, 256 * MiB), "small": (2000, 100 * 1024), "rsync": (500, None),
             "ls": 10_000},
    # Every step of a run, on too little data to measure anything: tests/ops/test_bench_runs.py.
    "smoke": {"big": (1, 16 * MiB), "eight": (8, 2 * MiB), "small": (20, 100 * 1024), "rsync": (10, None),
              "ls": 200},
}
# Issue 21's loopback targets: complete / the direct client; the copy of a large file returning at
# this fraction of a local cp's speed; daemon + workers CPU per GiB of large files and per small
# file; the peak summed RSS; `ls -l` of 10,000 files; the slowest `status` read during uploads.
TARGETS = {"big": 3.5, "eight": 2.0, "small": 1.5, "rsync": None}
COPY_SPEED_TARGET = 0.60
CPU_PER_GIB_TARGET = 1.0
CPU_PER_SMALL_FILE_TARGET = 0.0015
RSS_TARGET = 150 * MiB
LS_TARGET = 0.5
STATUS_READ_TARGET = 0.020
WORKLOADS = ("big", "eight", "small", "rsync", "ls")
# Judged per GiB (their floor's upload part is staging and a sendfile), the others per file.
LARGE_FILE_WORKLOADS = ("big", "eight")
# RECENTLY_DELETED_NOTE: on an ext4 without a journal (this machine's root), each new inode skips
# every inode of its group deleted in the last 1-6 minutes, looking each one up (the kernel's
# `recently_deleted`): after 4,000 deletions, fs360's spool file per small file cost 0.4 ms more
# CPU (BENCHMARKS.md). So a workload deletes what it made (the local copy, the floor's files)
# only after fs360's run, and the floor deletes its spool files after making them all.


@dataclass
class Row:
    workload: str
    files: int
    total: int
    baseline: float = 0.0
    copy_returns: float = 0.0
    complete: float = 0.0
    local_cp: float = 0.0
    baseline_cpu: float = 0.0  # the baseline client's user+sys (it runs in this process)
    daemon_cpu: float = 0.0  # the daemon's and its workers' user+sys while fs360 did the workload
    local_cp_cpu: float = 0.0  # the local cp's user+sys: one copy of the data into the page cache
    floor_copy: float = 0.0  # the same copy into the floor (bench/floor_fs.py)
    floor_cpu: float = 0.0  # the floor process's user+sys during that copy
    floor_put_cpu: float = 0.0  # per file: a lean PUT of a file of the workload's mean size (put_cpu_per_file)
    floor_spool_cpu: float = 0.0  # per file: a spool file of that size made, read back, deleted (spool_file_cpu)


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


def process_cpu_seconds(pid: int) -> float:
    """user+sys of a process and of the children it has reaped; OSError once it has ended."""
    # Fields after the ")" that ends the command name: utime is the 12th, then stime,
    # cutime, cstime (reaped workers' time lands in their parent's cutime/cstime).
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / CLOCK_TICKS


class Daemon:
    def __init__(self, work: Path, emulator: EmulatorProcess, extra_args: list[str] = ()):
        self.mountpoint = work / "mnt"
        self.cache = work / "cache"
        self.mountpoint.mkdir(exist_ok=True)
        self.emulator = emulator
        env = dict(os.environ, FS360_API_KEY=emulator.api_key)
        subprocess.run([sys.executable, "-m", "fs360.cli", "mount", str(self.mountpoint), "--api-url",
                        emulator.base_url, "--cache-dir", str(self.cache), "--no-rate-limits",
                        "--log-level", "warning", *extra_args], env=env, check=True)
        self.pid = int((self.cache / "lock").read_text())

    def peak_rss(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0

    def processes(self) -> list[int]:
        """The daemon and its children (an emulator started by --local, say)."""
        pids = [self.pid]
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            try:
                pids += [int(p) for p in (task / "children").read_text().split()]
            except OSError:
                pass  # a thread that ended meanwhile
        return pids

    def cpu_seconds(self) -> float:
        """user+sys of the daemon, its live children and the children it has reaped."""
        total = 0.0
        for pid in self.processes():
            try:
                total += process_cpu_seconds(pid)
            except OSError:
                continue  # a worker that just ended: its time is in the daemon's cutime once reaped
        return total

    def memory_by_process(self) -> list[tuple[int, int]]:
        """(RSS, PSS) of the daemon, then of each of its children, now."""
        each = []
        for pid in self.processes():
            try:
                rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE
                pss = 0
                for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                    if line.startswith("Pss:"):
                        pss = int(line.split()[1]) * 1024
                        break
            except OSError:
                continue  # a worker that just ended
            each.append((rss, pss))
        return each

    def upload_id(self, session: str) -> str:
        import json
        return json.loads((self.mountpoint / session / "status.json").read_text())["upload_id"]

    def close(self) -> None:
        subprocess.run([sys.executable, "-m", "fs360.cli", "unmount", str(self.mountpoint)], check=False)


class FloorMount:
    """bench/floor_fs.py mounted under the work dir, in the foreground in a child process."""

    def __init__(self, work: Path, timeout: float = 30, args: tuple[str, ...] = ()):
        """`args`: floor_fs's options (--stage DIR, --direct)."""
        self.mountpoint = work / "floor"
        self.mountpoint.mkdir(exist_ok=True)
        self.stderr_path = work / "floor.stderr"  # a file, not a pipe: nobody reads it while it runs
        with open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen([sys.executable, "-m", "bench.floor_fs", str(self.mountpoint), *args],
                                            cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            stderr=stderr)
        deadline = time.monotonic() + timeout
        while not os.path.ismount(self.mountpoint):
            if time.monotonic() > deadline:
                self.close(grace=0)
                raise RuntimeError(f"floor_fs: not mounted within {timeout} s: {self.stderr()}")
            try:
                returncode = self.process.wait(timeout=0.02)  # the poll's pause, cut short if it exits
            except subprocess.TimeoutExpired:
                continue
            raise RuntimeError(f"floor_fs exited with {returncode} before mounting: {self.stderr()}")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace").strip()

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.process.pid)

    def close(self, grace: float = 30) -> None:
        """Unmounts; the process then exits. One that has not within `grace` s is killed, its mount detached."""
        subprocess.run(["fusermount3", "-u", str(self.mountpoint)], stderr=subprocess.DEVNULL, check=False)
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], check=False)


class RssSampler:
    """Samples the daemon's RSS plus its children's every `interval` s in a thread; keeps the peak.
    (VmHWM alone would miss the children, which come and go.)"""

    def __init__(self, daemon: Daemon, interval: float = 0.25):
        self.daemon = daemon
        self.interval = interval
        self.peak = 0  # RSS
        self.peak_pss = 0
        self.workload = ""  # set by the caller: which workload runs now
        self.at_peak: tuple[str, list[tuple[int, int]]] = ("", [])  # the workload and each process at the RSS peak
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                each = self.daemon.memory_by_process()
                rss, pss = sum(r for r, _ in each), sum(p for _, p in each)
                if rss > self.peak:
                    self.at_peak = (self.workload, each)
                self.peak, self.peak_pss = max(self.peak, rss), max(self.peak_pss, pss)
            except OSError:
                pass  # the daemon is going away
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class UploadFloor:
    """CPU-s per GiB of what any upload of a large file costs this process at the least."""
    stage: float  # written to a spool file past the page cache and read back (O_DIRECT), as fs360 does
    staged_direct: bool  # False: this file system refuses O_DIRECT, and the staging was buffered
    send: float  # sent with sendfile over loopback TCP from the page cache


def measure_upload_floor(work: Path, size: int = LOOPBACK_SEND_SIZE) -> UploadFloor:
    directory = work / "upload-floor"
    [path] = make_sources(directory, 1, size)
    try:
        stage, staged_direct = staging_cpu_per_gib(directory / "spool", size)
        return UploadFloor(stage=stage, staged_direct=staged_direct, send=loopback_send_cpu_per_gib(path))
    finally:
        shutil.rmtree(directory)


def staging_cpu_per_gib(path: Path, size: int) -> tuple[float, bool]:
    """CPU-s of this process per GiB written in 1 MiB pieces with O_DIRECT and read back in 8 MiB
    pieces: the spool's own cost, which the commit point makes unavoidable (no byte may go before
    the writer's exit, so every byte is kept until then); and whether O_DIRECT was taken (where
    it is refused, the spool too is buffered, and so is this)."""
    piece = mmap.mmap(-1, 8 * MiB)  # page-aligned, as O_DIRECT wants
    view = memoryview(piece)
    cpu_before = own_cpu_seconds()
    direct = True
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600)
    except OSError:
        direct = False
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for offset in range(0, size, MiB):
            os.pwrite(fd, view[:MiB], offset)
    finally:
        os.close(fd)
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECT if direct else 0))
    try:
        for offset in range(0, size, 8 * MiB):
            os.preadv(fd, [view], offset)
    finally:
        os.close(fd)
    cpu = own_cpu_seconds() - cpu_before
    view.release()
    piece.close()
    path.unlink()
    return cpu / (size / GiB), direct


def loopback_send_cpu_per_gib(path: Path) -> float:
    """CPU-s of this process per GiB of `path` sent with sendfile over loopback TCP from the page
    cache: the least an upload of a large file costs its sender. The receiver is another
    process, not counted."""
    size = path.stat().st_size
    receiver = subprocess.Popen([sys.executable, "-c", DISCARDING_RECEIVER], stdout=subprocess.PIPE, text=True)
    try:
        port = int(receiver.stdout.readline())
        with open(path, "rb", buffering=0) as f:  # read once: the file is in the page cache, as a copied one is
            buffer = memoryview(bytearray(8 * MiB))
            while f.readinto(buffer):
                pass
        cpu_before = own_cpu_seconds()
        with socket.create_connection(("127.0.0.1", port)) as connection, open(path, "rb") as f:
            connection.sendfile(f)
        cpu = own_cpu_seconds() - cpu_before
        receiver.wait(timeout=60)
    finally:
        if receiver.poll() is None:
            receiver.kill()
        receiver.wait()
        receiver.stdout.close()
    return cpu / (size / GiB)


def put_cpu_per_file(emulator: EmulatorProcess, size: int, count: int = 300) -> float:
    """CPU-s of this process per PUT of a `size`-byte file through urllib3's pool on one keep-alive
    connection, its answer read: the least a small file's upload costs with the HTTP library
    fs360 sends through (no deadline, pacing, journal or progress)."""
    parsed = urllib3.util.parse_url(emulator.base_url)
    headers = {"Authorization": f"Bearer {emulator.api_key}", "Content-Type": "application/octet-stream"}
    with urllib3.HTTPConnectionPool(parsed.host, parsed.port, maxsize=1) as pool:
        opened = pool.urlopen("POST", f"{parsed.path}/uploads", headers=headers, retries=False)
        upload_id = json.loads(opened.data)["upload_id"]
        body = os.urandom(size)
        cpu_before = own_cpu_seconds()
        for index in range(count):
            answer = pool.urlopen("PUT", f"{parsed.path}/uploads/{upload_id}/floor{index:05d}.jpg", body=body,
                                  headers=headers, retries=False)
            if answer.status != 200:
                raise RuntimeError(f"the emulator refused a PUT of the floor: HTTP {answer.status}")
        return (own_cpu_seconds() - cpu_before) / count


def spool_file_cpu(work: Path, size: int, count: int = 300) -> float:
    """CPU-s of this process per file of `size` bytes kept as a file of its own until it is sent:
    created, written, closed, opened and read back, deleted (after eviction), in the work dir's
    file system, where the daemon's spool is. The commit point keeps every byte until its writer
    exits, and a crash must not lose them: fs360 keeps each file as a spool file."""
    directory = work / "spool-floor"
    directory.mkdir()
    data = os.urandom(size)
    paths = [directory / str(index) for index in range(count)]
    try:
        cpu_before = own_cpu_seconds()
        for path in paths:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.pwrite(fd, data, 0)
            finally:
                os.close(fd)
            fd = os.open(path, os.O_RDONLY)
            try:
                os.pread(fd, size, 0)
            finally:
                os.close(fd)
        # Deleted after all are made, as fs360 evicts: a file deleted before the next is made
        # would make that creation dearer (RECENTLY_DELETED_NOTE).
        for path in paths:
            os.unlink(path)
        return (own_cpu_seconds() - cpu_before) / count
    finally:
        shutil.rmtree(directory)


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


def copy_into(sources: list[Path], destination: Path, use_rsync: bool) -> None:
    """`rsync -a` of the sources' folder, or one `cp` of all the files, into `destination`."""
    if use_rsync:
        subprocess.run(["rsync", "-a", f"{sources[0].parent}/", f"{destination}/"], check=True)
    else:
        subprocess.run(["cp", *[str(p) for p in sources], str(destination)], check=True)


def measure_floor(row: Row, sources: list[Path], emulator, floor: FloorMount, use_rsync: bool) -> None:
    """The very copy fs360 gets (same command, so the same syscalls) into a FUSE that drops it, and
    for many files a lean PUT each: the row's floor figures."""
    floor_target = floor.mountpoint / row.workload
    floor_target.mkdir()
    floor_cpu_before, start = floor.cpu_seconds(), time.monotonic()
    copy_into(sources, floor_target, use_rsync)
    row.floor_copy = time.monotonic() - start
    row.floor_cpu = floor.cpu_seconds() - floor_cpu_before
    if row.workload not in LARGE_FILE_WORKLOADS:  # many files: the least of their uploads, a lean PUT each
        row.floor_put_cpu = put_cpu_per_file(emulator, row.total // row.files, count=min(300, row.files))
        row.floor_spool_cpu = spool_file_cpu(floor.mountpoint.parent, row.total // row.files,
                                             count=min(300, row.files))


def run_copy_workload(name: str, sources: list[Path], emulator, daemon: Daemon, work: Path, use_rsync=False,
                      status_samples: list[float] | None = None, floor: FloorMount | None = None) -> Row:
    row = Row(name, len(sources), sum(p.stat().st_size for p in sources))
    src_dir = sources[0].parent
    # Baseline: the direct client.
    cpu_before = own_cpu_seconds()
    start = time.monotonic()
    upload_files(emulator.base_url, emulator.api_key, [str(p) for p in sources])
    row.baseline = time.monotonic() - start
    row.baseline_cpu = own_cpu_seconds() - cpu_before
    # Plain local cp of the same data (same disk). Its copy is deleted after fs360's run and the
    # floor's (RECENTLY_DELETED_NOTE).
    local = work / f"local-{name}"
    start, children_cpu = time.monotonic(), children_cpu_seconds()
    subprocess.run(["cp", "-r", str(src_dir), str(local)], check=True)
    row.local_cp = time.monotonic() - start
    row.local_cp_cpu = children_cpu_seconds() - children_cpu
    try:
        run_fs360(row, sources, emulator, daemon, use_rsync, status_samples)
        if floor is not None:
            measure_floor(row, sources, emulator, floor, use_rsync)
    finally:
        shutil.rmtree(local)
    return row


def run_fs360(row: Row, sources: list[Path], emulator, daemon: Daemon, use_rsync: bool,
              status_samples: list[float] | None) -> None:
    """The copy into a new session of the mount, until its last file is complete: the row's fs360 figures."""
    name = row.workload
    session = daemon.mountpoint / name
    session.mkdir()
    stop_sampling = threading.Event()
    sampler = None
    if status_samples is not None:
        sampler = threading.Thread(target=sample_status, args=(session, status_samples, stop_sampling))
    daemon_cpu_before = daemon.cpu_seconds()
    start = time.monotonic()
    if sampler:
        sampler.start()
    copy_into(sources, session, use_rsync)
    row.copy_returns = time.monotonic() - start
    row.complete = wait_complete(emulator, daemon, name, len(sources)) - start
    row.daemon_cpu = daemon.cpu_seconds() - daemon_cpu_before
    stop_sampling.set()
    if sampler:
        sampler.join()


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


def run_ls(count: int, daemon: Daemon, emulator) -> tuple[float, float, int]:
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
    return cold, warm, count


def mbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6 if seconds > 0 else 0.0


def main(argv: list[str]) -> int:
    mode = "quick"
    if argv and argv[0] in SIZES:
        mode, argv = argv[0], argv[1:]
    chosen = [w for w in argv if w in WORKLOADS] or list(WORKLOADS)
    sizes = SIZES[mode]
    work = make_work_dir()
    print(f"fs360 benchmark ({mode}) in {work}; emulator {' '.join(EMULATOR_ARGS)}; one file's creation there "
          f"takes {file_create_cost(work) * 1e6:.0f} us", flush=True)
    rows: list[Row] = []
    status_samples: list[float] = []
    ls_times = None
    peak_rss = 0
    peak_with_workers = (0, 0, ("", []))
    upload_floor = None
    try:
        if any(workload in LARGE_FILE_WORKLOADS for workload in chosen):
            # Before the emulator, the daemon and the sampling thread start: only the sender runs.
            upload_floor = measure_upload_floor(work)
            staged = "O_DIRECT" if upload_floor.staged_direct else "buffered: O_DIRECT refused here"
            print(f"  a cached {LOOPBACK_SEND_SIZE // MiB} MiB file costs {upload_floor.stage:.2f} CPU-s per GiB "
                  f"staged ({staged} write and read back) and {upload_floor.send:.2f} sent (loopback sendfile)",
                  flush=True)
        with EmulatorProcess(work / "emulator", args=EMULATOR_ARGS) as emulator:
            daemon = Daemon(work, emulator)
            floor = None
            try:
                floor = FloorMount(work)
                with RssSampler(daemon) as rss:
                    for workload in chosen:
                        rss.workload = workload
                        if workload == "ls":
                            ls_times = run_ls(sizes["ls"], daemon, emulator)
                            print(f"  ls -l of {sizes['ls']} files: cold {ls_times[0]:.3f} s, "
                                  f"warm {ls_times[1]:.3f} s", flush=True)
                            continue
                        count, size = sizes[workload]
                        rows.append(run_sourced_workload(
                            workload, count, size, emulator, daemon, work, use_rsync=(workload == "rsync"),
                            status_samples=status_samples if workload in ("eight", "big") else None, floor=floor))
                peak_rss = daemon.peak_rss()
                peak_with_workers = (rss.peak, rss.peak_pss, rss.at_peak)
            finally:
                if floor is not None:
                    floor.close()
                daemon.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_table(mode, rows, status_samples, ls_times, peak_rss, peak_with_workers, upload_floor)
    return 0


def make_work_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="fs360-bench-", dir=os.environ.get("FS360_BENCH_DIR", "/var/tmp")))


def file_create_cost(directory: Path, count: int = 200) -> float:
    """Seconds one empty file's creation takes in `directory` (where the spool will be): every
    spooled file is one. On an ext4 without a journal, a directory whose block group holds many
    inodes deleted in the last minutes pays about 1 ms each (the allocator skips them); elsewhere
    tens of microseconds. Printed with the figures, since it moves the per-file ones."""
    probe = directory / "create-probe"
    probe.mkdir()
    start = time.perf_counter()
    for index in range(count):
        os.close(os.open(probe / str(index), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    took = (time.perf_counter() - start) / count
    shutil.rmtree(probe)
    return took


def run_sourced_workload(workload: str, count: int, size: int | None, emulator, daemon: Daemon, work: Path,
                         **options) -> Row:
    """Makes the workload's source files, runs the side by side, prints one line, removes the sources."""
    sources = make_sources(work / f"src-{workload}", count, size)
    try:
        row = run_copy_workload(workload, sources, emulator, daemon, work, **options)
    finally:
        shutil.rmtree(work / f"src-{workload}")
    floor = f"floor copy {row.floor_copy:.2f} s (CPU {row.floor_cpu:.2f} s), " if row.floor_copy else ""
    print(f"  {workload}: baseline {row.baseline:.2f} s, copy returns {row.copy_returns:.2f} s, "
          f"complete {row.complete:.2f} s, local cp {row.local_cp:.2f} s, {floor}daemon CPU {row.daemon_cpu:.2f} s; "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
    return row


def cpu_verdict(cost: float, floor: float, target: float, unit: str, scale: float) -> str:
    """The target with fs360's verdict, and whether the floor alone already costs more than it."""
    text = f"<= {scale * target} {unit} {'ok' if cost <= target else 'MISSED'}"
    if floor > target:
        text += f"; the floor is {scale * (floor - target):.2f} {unit} above it"
    return text


def print_cpu_table(rows: list[Row], upload_floor: UploadFloor | None) -> None:
    print("| workload | daemon + workers CPU | per file | per GiB | target | floor (FUSE + upload) |"
          " baseline client CPU (per file) | local cp CPU per GiB |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        gib = row.total / GiB
        per_file, per_gib = row.daemon_cpu / row.files, row.daemon_cpu / gib
        client_per_file = row.baseline_cpu / row.files
        target = "-"
        if row.workload in LARGE_FILE_WORKLOADS:
            # Large files: the least is staging each byte (the commit point) and a loopback sendfile of it.
            floor_cost = row.floor_cpu / gib + upload_floor.stage + upload_floor.send
            floor_text = (f"{floor_cost:.2f} s/GiB ({row.floor_cpu / gib:.2f} + stage {upload_floor.stage:.2f}"
                          f" + send {upload_floor.send:.2f})")
            target = cpu_verdict(per_gib, floor_cost, CPU_PER_GIB_TARGET, "s/GiB", 1)
        else:
            # Many files: the least of their uploads is a spool file and one lean PUT each.
            floor_cost = row.floor_cpu / row.files + row.floor_spool_cpu + row.floor_put_cpu
            floor_text = (f"{1000 * floor_cost:.2f} ms/file ({1000 * row.floor_cpu / row.files:.2f}"
                          f" + spool file {1000 * row.floor_spool_cpu:.2f} + PUT {1000 * row.floor_put_cpu:.2f})")
            if row.workload == "small":
                target = cpu_verdict(per_file, floor_cost, CPU_PER_SMALL_FILE_TARGET, "ms/file", 1000)
        print(f"| {row.workload} | {row.daemon_cpu:.2f} s | {1000 * per_file:.2f} ms |"
              f" {per_gib:.2f} s | {target} | {floor_text} | {row.baseline_cpu:.2f} s"
              f" ({1000 * client_per_file:.2f} ms) | {row.local_cp_cpu / gib:.2f} s |")


def print_table(mode, rows, status_samples, ls_times, peak_rss, peak_with_workers, upload_floor) -> None:
    print()
    print(f"## fs360 benchmark, {mode} run")
    print()
    print("| workload | data | baseline | fs360 copy returns | fs360 complete | ratio complete/baseline | target |"
          " copy MB/s vs local cp | floor copy MB/s (a Python FUSE that drops the bytes) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        target = TARGETS.get(row.workload)
        ratio = row.complete / row.baseline if row.baseline else 0
        verdict = "" if target is None else (" ok" if ratio <= target else " MISSED")
        copy_pct = 100 * row.local_cp / row.copy_returns if row.copy_returns else 0
        floor_pct = 100 * row.local_cp / row.floor_copy if row.floor_copy else 0
        copy_verdict = "" if row.workload != "big" else (
            f"{' ok' if copy_pct >= 100 * COPY_SPEED_TARGET else ' MISSED'} (target >= {100 * COPY_SPEED_TARGET:.0f}%"
            f"; {'reachable' if floor_pct >= 100 * COPY_SPEED_TARGET else 'out of reach'}: the floor copies at"
            f" {floor_pct:.0f}%)")
        print(f"| {row.workload} | {row.files} files, {row.total / MiB:.0f} MiB | {row.baseline:.2f} s "
              f"({mbps(row.total, row.baseline):.0f} MB/s) | {row.copy_returns:.2f} s "
              f"({mbps(row.total, row.copy_returns):.0f} MB/s) | {row.complete:.2f} s | {ratio:.2f} x |"
              f" {'<= ' + str(target) + ' x' + verdict if target else '-'} |"
              f" {mbps(row.total, row.copy_returns):.0f} vs {mbps(row.total, row.local_cp):.0f} = {copy_pct:.0f}%"
              f"{copy_verdict} | {mbps(row.total, row.floor_copy):.0f} = {floor_pct:.0f}% of local cp |")
    print()
    print_cpu_table(rows, upload_floor)
    print()
    print("- floor: the same cp / rsync into bench/floor_fs.py, a Python FUSE with fs360's FUSE setup (mfusepy with"
          " fs360's overrides, 1 MiB writes, 10 threads) that drops the bytes; per GiB plus the least the upload"
          " costs: each byte staged past the page cache and read back (no byte may go before the writer's exit) and"
          " sent with a loopback sendfile; per file plus a spool file of the workload's mean size (made, read"
          " back, deleted) and one PUT of it through urllib3's pool, as fs360 sends them (no deadline, pacing or"
          " progress). The floor journals nothing and waits for no writer's exit.")
    print(f"- daemon peak RSS (VmHWM): {peak_rss / MiB:.1f} MiB")
    peak_rss_sum, peak_pss_sum, (peak_workload, each) = peak_with_workers
    print(f"- daemon + its children, peak of the summed RSS (sampled every 0.25 s): "
          f"{peak_rss_sum / MiB:.1f} MiB (target <= {RSS_TARGET // MiB} MiB)"
          f"{' ok' if peak_rss_sum <= RSS_TARGET else ' MISSED'}; "
          f"summed PSS (shared pages split): {peak_pss_sum / MiB:.1f} MiB")
    if each:
        daemon, workers = each[0], each[1:]
        print(f"  at the RSS peak ({peak_workload}): daemon {daemon[0] / MiB:.1f} MiB RSS / {daemon[1] / MiB:.1f} PSS; "
              f"{len(workers)} workers: " + ", ".join(f"{r / MiB:.1f} / {p / MiB:.1f}" for r, p in workers))
    if ls_times:
        print(f"- ls -l of {ls_times[2]:,} files: {ls_times[0]:.3f} s cold, {ls_times[1]:.3f} s warm"
              f" (target <= {LS_TARGET} s for 10,000)"
              f"{' ok' if ls_times[0] <= LS_TARGET else ' MISSED'}")
    if status_samples:
        print(f"- reading status during uploads: median {statistics.median(status_samples) * 1000:.1f} ms, "
              f"max {max(status_samples) * 1000:.1f} ms over {len(status_samples)} reads "
              f"(target <= {STATUS_READ_TARGET * 1000:.0f} ms){' ok' if max(status_samples) <= STATUS_READ_TARGET else ' MISSED (max)'}")
    sys.stdout.flush()
