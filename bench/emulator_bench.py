"""Emulator ingest benchmark: one keep-alive connection, curl as the client.

Uploads SIZE bytes (default 2 GiB) as 8 MiB chunks, every chunk a PUT with
Content-Range on the same connection (curl --config with one block per chunk),
first to an emulator in --discard mode, then to one that stores the bytes.
Prints MB/s (MB = 10**6 bytes) and the target lines.  A third run shows
--discard without the running sha256 (the hash alone costs about as much CPU
as the receive path on a 2-core machine).  "connections" is the number of TCP
connections curl opened (1 = everything went over one keep-alive connection).

    python -m bench.emulator_bench [--size-mib 2048] [--chunk-mib 8]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

from fs360.emulator.harness import EmulatorProcess

TARGETS = {"discard": 1000.0, "storing": 400.0}


def _open_session(emu) -> str:
    req = urllib.request.Request(emu.base_url + "/uploads", data=b"", method="POST",
                                 headers={"Authorization": f"Bearer {emu.api_key}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())["upload_id"]


def _one_run(mode: str, size: int, chunk: int, chunk_file: str, workdir: str) -> dict:
    data_dir = os.path.join(workdir, f"data-{mode}")
    args = ["--no-rate-limits"] + {"discard": ["--discard"], "discard-nohash": ["--discard", "--no-sha256"],
                                   "storing": []}[mode]
    with EmulatorProcess(data_dir, args=args) as emu:
        uid = _open_session(emu)
        url = f"{emu.base_url}/uploads/{uid}/bench.e57"
        cfg_path = os.path.join(workdir, f"curl-{mode}.cfg")
        with open(cfg_path, "w") as f:
            off = 0
            first = True
            while off < size:
                n = min(chunk, size - off)
                if not first:
                    f.write("next\n")
                first = False
                f.write(f'url = "{url}"\n')
                f.write(f'upload-file = "{chunk_file if n == chunk else chunk_file + ".tail"}"\n')
                f.write(f'header = "Authorization: Bearer {emu.api_key}"\n')
                f.write('header = "Content-Type: application/octet-stream"\n')
                f.write('header = "Expect:"\n')
                f.write(f'header = "Content-Range: bytes {off}-{off + n - 1}/{size}"\n')
                f.write('output = "/dev/null"\n')
                f.write('silent\nshow-error\nfail\nwrite-out = "%{num_connects}\\n"\n')
                off += n
        if size % chunk:
            with open(chunk_file, "rb") as src, open(chunk_file + ".tail", "wb") as dst:
                dst.write(src.read(size % chunk))
        t0 = time.perf_counter()
        r = subprocess.run(["curl", "--config", cfg_path], capture_output=True, text=True)
        dt = time.perf_counter() - t0
        if r.returncode != 0:
            raise RuntimeError(f"curl failed ({r.returncode}): {r.stderr[-2000:]}")
        connects = sum(int(x) for x in r.stdout.split() if x.isdigit())
        files = [f for f in emu.files() if f["upload_id"] == uid]
        ok = bool(files) and files[0]["complete"] and files[0]["received"] == size
        return {"mode": mode, "bytes": size, "seconds": dt, "mb_s": size / dt / 1e6,
                "connections": connects, "complete": ok, "sha256": files[0]["sha256"] if files else None}


def run(report=print, size_mib: int = 2048, chunk_mib: int = 8) -> dict:
    if shutil.which("curl") is None:
        raise RuntimeError("curl is needed for the emulator benchmark")
    size = size_mib << 20
    chunk = chunk_mib << 20
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    chunk_dir = tempfile.mkdtemp(prefix="fs360-bench-chunk-", dir=shm)
    workdir = tempfile.mkdtemp(prefix="fs360-bench-emu-")
    results = {}
    try:
        chunk_file = os.path.join(chunk_dir, "chunk.bin")
        with open(chunk_file, "wb") as f:
            f.write(os.urandom(chunk))
        for mode in ("discard", "storing", "discard-nohash"):
            res = _one_run(mode, size, chunk, chunk_file, workdir)
            results[mode] = res
            report(f"emulator {mode:14s}: {res['bytes'] / 1e6:8.0f} MB in {res['seconds']:6.2f} s = "
                   f"{res['mb_s']:7.0f} MB/s  (connections: {res['connections']}, complete: {res['complete']})")
            shutil.rmtree(os.path.join(workdir, f"data-{mode}"), ignore_errors=True)
        for mode, target in TARGETS.items():
            mb = results[mode]["mb_s"]
            verdict = "OK" if mb >= target and results[mode]["complete"] else "MISSED"
            report(f"target >= {target:.0f} MB/s {mode}: {mb:.0f} MB/s {verdict}")
    finally:
        shutil.rmtree(chunk_dir, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-mib", type=int, default=2048)
    p.add_argument("--chunk-mib", type=int, default=8)
    a = p.parse_args(argv)
    res = run(print, a.size_mib, a.chunk_mib)
    return 0 if all(r["complete"] for r in res.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
