"""Conventions: --version, the bash completion, the wheel, status of several mounts."""

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


def complete(tmp_path, line: str) -> list[str]:
    script = run_fs360(tmp_path, "completion", "bash").stdout
    words = line.split(" ")
    program = (script + f"\nCOMP_WORDS=({' '.join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}\n"
               "_fs360; printf '%s\\n' \"${COMPREPLY[@]}\"\n")
    result = subprocess.run(["bash", "-c", program], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_bash_completion_knows_commands_and_options(tmp_path):
    (tmp_path / "mnt").mkdir()
    assert set(complete(tmp_path, "fs360 ")) >= {"mount", "unmount", "status", "pause", "resume", "set", "doctor"}
    assert "mount-helper" not in complete(tmp_path, "fs360 ")
    assert complete(tmp_path, "fs360 mount --bw") == ["--bwlimit"]
    assert complete(tmp_path, "fs360 unmount mn") == ["mnt"]


@pytest.mark.slow
def test_the_wheel_holds_every_module_and_the_script(tmp_path):
    result = subprocess.run([PYTHON, "-m", "pip", "wheel", str(ROOT), "-w", str(tmp_path), "--no-deps",
                             "-q"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    wheel = next(tmp_path.glob("fs360-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "fs360").rglob("*.py")}
    assert modules <= names, modules - names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "fs360 = fs360.cli:main" in entry_points


@pytest.mark.fuse
def test_status_lists_every_mount(tmp_path, emulator, mount_factory):
    one = mount_factory(emulator, name="one")
    two = mount_factory(emulator, name="two")
    (one.mountpoint / "first").mkdir()
    (two.mountpoint / "second").mkdir()
    result = run_fs360(tmp_path, "status", env=harness_runtime())
    assert result.returncode == 0, result.stderr
    assert f"== {one.mountpoint} (bwlimit off)" in result.stdout
    assert f"== {two.mountpoint} (bwlimit off)" in result.stdout
    assert "session   first" in result.stdout and "session   second" in result.stdout
