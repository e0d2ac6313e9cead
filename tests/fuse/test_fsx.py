"""fsx (xfstests' file system exerciser) on a file of a real mount: thousands of random reads,
writes, mapped reads and writes, truncates, fallocate's modes and copy_file_range on one open
file, every read checked against fsx's own model of the content. What fs360 does not offer
(fallocate's collapse and insert, clones) fsx finds refused at its start and leaves out.

When fsx exits 0 (its exit is the commit point), the file is uploaded: the server must then
hold exactly what a read through the mount returns, which fsx's last checks vouched for.
Built from its source in a temporary dir (tests/harness.build_fsx)."""

from __future__ import annotations

import hashlib
import subprocess

import pytest

from tests.harness import assert_uploaded, build_fsx

pytestmark = [pytest.mark.fuse, pytest.mark.slow(25)]


@pytest.fixture(scope="module")
def fsx(tmp_path_factory):
    built = build_fsx(tmp_path_factory.mktemp("fsx") / "build")
    if built is None:
        pytest.skip("fsx's source is not here (set XFSTESTS_GIT_DIR to a git dir of xfstests)")
    return built


def run_fsx(fsx, path, logs, *options: str) -> None:
    """fsx on `path` with `options`, its logs in `logs`; fails with the tail of its report."""
    logs.mkdir(exist_ok=True)
    result = subprocess.run([str(fsx), "-q", "-P", str(logs), *options, str(path)], capture_output=True,
                            text=True, timeout=600)
    # Its report: what went wrong comes first, then the last operations (the tail of its log).
    assert result.returncode == 0, f"fsx {' '.join(options)} failed ({result.returncode}):\n" \
                                   f"{result.stdout[:2000]}\n...\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"


@pytest.mark.parametrize("options", [
    pytest.param(("-N", "4000", "-l", "1048576", "-S", "7"), id="every-op"),
    # Closed and opened again one op in 20: each close is a flush the commit point reads.
    pytest.param(("-N", "2000", "-l", "524288", "-c", "20", "-S", "11"), id="close-open"),
    # Large writes past the spool's cached head go direct (spool.py), with unaligned ones between.
    pytest.param(("-N", "600", "-l", "16777216", "-o", "2097152", "-S", "13"), id="large"),
    # O_DIRECT reads, writes and truncates on page boundaries (no mapped ops: they need the cache).
    pytest.param(("-N", "1000", "-Z", "-R", "-W", "-r", "4096", "-w", "4096", "-t", "4096", "-S", "17"), id="o-direct"),
    # An fsync after every change, the whole file read back and checked after every op.
    pytest.param(("-N", "400", "-y", "-X", "-S", "19"), id="fsync-and-check-all"),
])
def test_fsx_runs_clean_and_the_server_gets_what_it_left(fsx, mount_factory, emulator, tmp_path, options):
    # Only fsx's exit commits the file: a write-back delay that passed between one of its closes
    # and the open after it (a stall of the test machine) would commit the file while fsx runs
    # on, and its next write would rightly be refused (EACCES, doc/SEMANTICS.md).
    mount = mount_factory(emulator, writeback_delay=600)
    session = mount.mountpoint / "fsx"
    session.mkdir()
    path = session / "scan.e57"
    run_fsx(fsx, path, tmp_path / "logs", *options)
    content = path.read_bytes()
    assert mount.wait_settled("fsx") == {"scan.e57": "complete"}
    assert_uploaded(emulator, mount.status_json("fsx")["upload_id"],
                    {"scan.e57": hashlib.sha256(content).hexdigest()})
