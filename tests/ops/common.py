"""Helpers of the ops tests: the `fs360` command run as a user runs it."""

from __future__ import annotations

import os
import subprocess

from tests.harness import PYTHON

KEY_VARS = ("FS360_API_KEY", "API_KEY", "NOTIFY_SOCKET", "CREDENTIALS_DIRECTORY", "XDG_CONFIG_HOME")


def fs360_env(tmp_path, **extra) -> dict:
    """The environment without any key, with a private config and runtime dir."""
    env = {k: v for k, v in os.environ.items() if k not in KEY_VARS}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    env["XDG_RUNTIME_DIR"] = str(tmp_path / "run")
    (tmp_path / "run").mkdir(mode=0o700, exist_ok=True)
    env.update(extra)
    return env


def harness_runtime() -> dict:
    """The runtime dir that `tests.harness.Mount` daemons (started with this process's
    environment) register in, for a CLI run through run_fs360 to find them."""
    return {"XDG_RUNTIME_DIR": os.environ.get("XDG_RUNTIME_DIR", "")}


def run_fs360(tmp_path, *args, env=None, timeout=120):
    return subprocess.run([PYTHON, "-m", "fs360.cli", *args], env=fs360_env(tmp_path, **(env or {})),
                          capture_output=True, text=True, timeout=timeout)


def proc_bytes(pid: int, name: str) -> bytes:
    with open(f"/proc/{pid}/{name}", "rb") as f:
        return f.read()
