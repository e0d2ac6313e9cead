"""Fixtures of the reliability suite: a small tmpfs, unmounted whatever happens."""

from __future__ import annotations

import shutil
import subprocess

import pytest


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 32 MiB tmpfs for the spool. Request it BEFORE mount_factory so it is torn down after the mounts."""
    if shutil.which("mount") is None:
        pytest.skip("needs mount(8) for a tmpfs")
    target = tmp_path / "tmpfs"
    target.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m,mode=0700", "tmpfs", str(target)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {result.stderr.strip()}")
    try:
        yield target
    finally:
        # Any FUSE mount using it is gone by now (mount_factory tears down first); lazy in any case.
        subprocess.run(["umount", "-l", str(target)], capture_output=True)
