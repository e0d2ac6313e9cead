"""Fixtures of the reliability suite."""

from __future__ import annotations

import pytest


@pytest.fixture
def small_tmpfs(tmpfs):
    """A 32 MiB tmpfs for the spool. Request it BEFORE mount_factory so it is torn down after the mounts."""
    return tmpfs("32m")
