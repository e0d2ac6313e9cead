"""scripts/bench runs to its end: it is how issue 21's targets are shown, so a change that breaks
a step of it (a signature, a floor, a table) is found here rather than at the next measurement.
Every step runs on too little data to measure anything, and no figure is checked: nothing is
timed in a test."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.harness import PYTHON

pytestmark = [pytest.mark.fuse, pytest.mark.slow(6)]

REPO = Path(__file__).resolve().parents[2]


def run_bench(tmp_path: Path, *args: str) -> str:
    """`scripts/bench ARGS` (past its setup step), its work dir inside `tmp_path`; its output."""
    result = subprocess.run([PYTHON, "-m", "bench", *args], cwd=REPO, capture_output=True, text=True,
                            env=dict(os.environ, FS360_BENCH_DIR=str(tmp_path)), timeout=600)
    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    assert "Traceback" not in result.stdout + result.stderr
    return result.stdout


def test_a_run_of_every_workload_prints_its_tables_and_leaves_nothing_behind(tmp_path):
    out = run_bench(tmp_path, "smoke")
    assert "## fs360 benchmark, smoke run" in out
    for workload in ("big", "eight", "small", "rsync"):
        # One row in the times table, one in the CPU table (with its floor).
        assert len(re.findall(rf"^\| {workload} \|", out, re.MULTILINE)) == 2, workload
    assert re.search(r"^\| small \|.*ms/file \([0-9.]+ \+ spool file [0-9.]+ \+ PUT [0-9.]+\)", out, re.MULTILINE)
    assert "- ls -l of 200 files" in out
    assert "staged (O_DIRECT" in out or "staged (buffered" in out
    assert list(tmp_path.iterdir()) == []


def test_a_scale_run_on_a_few_files(tmp_path):
    out = run_bench(tmp_path, "scale", "0", "200")
    assert "journal" in out and "daemon RSS" in out
    assert list(tmp_path.iterdir()) == []
