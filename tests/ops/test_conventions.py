"""Conventions: --version, the wheel, status of several mounts (completion: test_completion.py)."""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

import pytest

import fs360
from tests.harness import PYTHON

from .common import harness_runtime, run_fs360

ROOT = Path(__file__).resolve().parents[2]


def test_version(tmp_path):
    result = run_fs360(tmp_path, "--version")
    assert result.returncode == 0 and result.stdout.strip() == f"fs360 {fs360.__version__}"


@pytest.mark.slow(20)
def test_the_wheel_holds_every_module_and_the_script(tmp_path):
    result = subprocess.run([PYTHON, "-m", "pip", "wheel", str(ROOT), "-w", str(tmp_path), "--no-deps",
                             "-q"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    wheel = next(tmp_path.glob("fs360-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "fs360").rglob("*.py")}
    assert modules <= names, modules - names
    assert {"fs360/web/static/index.html", "fs360/web/static/dashboard.js"} <= names  # the dashboard, no CDN
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "fs360 = fs360.cli:main" in entry_points


@pytest.mark.fuse
@pytest.mark.slow(8)
def test_status_lists_every_mount(tmp_path, emulator, mount_factory):
    one = mount_factory(emulator, name="one")
    two = mount_factory(emulator, name="two")
    (one.mountpoint / "first").mkdir()
    (two.mountpoint / "second").mkdir()
    result = run_fs360(tmp_path, "status", env=harness_runtime())
    assert result.returncode == 0, result.stderr
    assert str(one.mountpoint) in result.stdout and str(two.mountpoint) in result.stdout
    for mount, session in ((one, "first"), (two, "second")):
        result = run_fs360(tmp_path, "status", str(mount.mountpoint), env=harness_runtime())
        assert result.returncode == 0 and session in result.stdout, result.stderr
