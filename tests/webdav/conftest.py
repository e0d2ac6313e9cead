"""`fs360 serve webdav` as a user runs it (the daemon, against the emulator), and real
WebDAV clients on loopback: curl, litmus, davfs2."""

from __future__ import annotations

import html
import os
import re
import shutil
import signal
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.harness import PYTHON, pid_alive, wait_until

DAV = "{DAV:}"
FS360 = "{urn:fs360}"


class DavServer:
    """A real `fs360 serve webdav` daemon; `url` is the first line it printed."""

    def __init__(self, tmp_path: Path, emulator, *, extra_args=(), name="dav", cache_dir: Path | None = None,
                 env=None):
        self.emulator = emulator
        self.cache_dir = cache_dir or tmp_path / f"{name}-cache"
        self.extra_args = list(extra_args)
        self.env = dict(os.environ, FS360_API_KEY=emulator.api_key, XDG_CONFIG_HOME=str(tmp_path / "config"),
                        **(env or {}))
        self.url = ""
        self.pid = 0
        self.expected_errors: list[str] = []

    def command(self) -> list[str]:
        return [PYTHON, "-m", "fs360.cli", "serve", "webdav", "--addr", "127.0.0.1:0",
                "--api-url", self.emulator.base_url, "--cache-dir", str(self.cache_dir),
                "--poll-interval", "0.3", "--log-level", "debug", "--no-rate-limits", "--no-notify",
                *self.extra_args]

    def start(self) -> "DavServer":
        result = subprocess.run(self.command(), env=self.env, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise AssertionError(f"serve webdav failed ({result.returncode}): {result.stderr}{result.stdout}")
        self.url = result.stdout.splitlines()[0]
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", self.url), result.stdout
        self.pid = int((self.cache_dir / "lock").read_text().strip())
        return self

    def stop(self) -> None:
        if self.pid and pid_alive(self.pid):
            os.kill(self.pid, signal.SIGTERM)
            wait_until(lambda: not pid_alive(self.pid), 60, what="the WebDAV server to stop")

    def logged_errors(self) -> list[str]:
        log = self.cache_dir / "fs360.log"
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        bad = [line for line in lines if " ERROR " in line or " CRITICAL " in line or line.startswith("Traceback")]
        return [line for line in bad if not any(re.search(p, line) for p in self.expected_errors)]

    # --- what a client sees ------------------------------------------------------------------------

    def curl(self, *args, path: str = "", check_status: int | None = None) -> tuple[int, str]:
        """curl ARGS URL/path -> (HTTP status, body)."""
        output = [] if "-o" in args else ["-o", "-"]
        result = subprocess.run(["curl", "-sS", *output, "-w", "\n%{http_code}", *args, self.url + path],
                                capture_output=True, timeout=300)
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        body, _, status = result.stdout.decode("utf-8", "replace").rpartition("\n")
        if int(status) >= 400:
            body = html.unescape(body)  # WsgiDAV's error pages are HTML: the reason as a user reads it
        if check_status is not None:
            assert int(status) == check_status, f"{args} {path}: {status} {body[-400:]}"
        return int(status), body

    def properties(self, path: str) -> dict[str, dict[str, str]]:
        """PROPFIND Depth 1 of `path`: href -> {property (Clark notation): text}."""
        status, body = self.curl("-X", "PROPFIND", "-H", "Depth: 1", path=path)
        assert status == 207, body
        found = {}
        for response in ET.fromstring(body).iter(f"{DAV}response"):
            href = response.find(f"{DAV}href").text
            props = {}
            for propstat in response.iter(f"{DAV}propstat"):
                if "200" in propstat.find(f"{DAV}status").text:
                    for prop in propstat.find(f"{DAV}prop"):
                        props[prop.tag] = prop.text or ""
            found[href] = props
        return found

    def state(self, path: str) -> str:
        return self.properties(path)["/" + path][f"{FS360}state"]

    def wait_state(self, path: str, state: str, timeout: float = 120) -> None:
        wait_until(lambda: self.state(path) == state, timeout, 0.2, what=f"{path} to be {state}")


@pytest.fixture
def dav_factory(request, tmp_path):
    """make(emulator, extra_args=...) -> a started DavServer; each is stopped at the end, and the
    test fails on an ERROR it logged that the test did not expect (unless the body failed)."""
    made: list[DavServer] = []

    def make(emulator, **kwargs) -> DavServer:
        server = DavServer(tmp_path, emulator, name=f"dav{len(made)}", **kwargs)
        made.append(server)
        return server.start()

    yield make
    for server in made:
        server.stop()
    body = getattr(request.node, "report_call", None)
    if body is None or not body.failed:
        for server in made:
            assert server.logged_errors() == [], "the WebDAV server logged errors"


@pytest.fixture
def dav(dav_factory, emulator):
    return dav_factory(emulator)


def require(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (Debian package {package}; scripts/setup installs it as root)")
    return path
