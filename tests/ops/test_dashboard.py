"""The dashboard (`fs360 web`) and /metrics: served by the daemon on loopback, every request
with its token, the page checked in a real headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import pytest

from tests.harness import PYTHON, write_random

pytestmark = pytest.mark.fuse

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


def dashboard_url(mountpoint) -> str:
    result = subprocess.run([PYTHON, "-m", "fs360.cli", "web", str(mountpoint), "--print-url"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def fetch(url: str, token: str | None = None, method: str = "GET", body: dict | None = None,
          host: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body is not None else None)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if host:
        request.add_header("Host", host)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def busy_mount(mount):
    session = mount.mountpoint / "Office scan"
    session.mkdir()
    write_random(session / "a.jpg", 200_000)
    write_random(session / "setup.exe", 1000)
    mount.wait_settled("Office scan")
    return mount


def test_the_page_needs_its_token_and_names_the_sessions(busy_mount):
    url = dashboard_url(busy_mount.mountpoint)
    parts = urlsplit(url)
    assert parts.hostname == "127.0.0.1" and parts.query.startswith("token=")
    token = parts.query[len("token="):]
    base = f"{parts.scheme}://{parts.netloc}"
    token_file = busy_mount.cache_dir / "web-token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600 and token_file.read_text().strip() == token

    status, page = fetch(url)
    assert status == 200 and "Office scan" in page
    assert fetch(f"{base}/")[0] == 401
    assert fetch(f"{base}/?token=wrong{token}")[0] == 403
    assert fetch(f"{base}/api/status")[0] == 401
    assert fetch(f"{base}/static/dashboard.js")[0] == 401
    # A page of another site reaching the port under its own name (DNS rebinding) is refused.
    assert fetch(url, host=f"evil.example:{parts.port}")[0] == 403

    status, text = fetch(f"{base}/metrics", token=token)
    assert status == 200
    samples = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert samples and all(line.startswith("fs360_") for line in samples)
    assert 'fs360_files{state="complete"} 1' in samples and 'fs360_files{state="rejected"} 1' in samples
    # Bytes sent, as they went out: the refused .exe's 1,000 went too (the server refused them whole).
    assert "fs360_bytes_sent_total 201000" in samples
    assert any(line.startswith('fs360_requests_total{endpoint="open_session",status="20') for line in samples), \
        [line for line in samples if "requests" in line]
    assert busy_mount.emulator.api_key not in text

    doc = json.loads(fetch(f"{base}/api/status", token=token)[1])
    assert [s["session"] for s in doc["sessions"]] == ["Office scan"]
    assert "does not take .exe files" in doc["sessions"][0]["files"][1]["error"]
    assert len(doc["rate_history"]) == 120

    # Pause, resume and the bandwidth limit, as the page's buttons send them.
    assert fetch(f"{base}/api/pause", method="POST", body={})[0] == 401
    assert fetch(f"{base}/api/pause", token=token, method="POST", body={})[0] == 200
    assert json.loads(fetch(f"{base}/api/status", token=token)[1])["paused"] is True
    status, answer = fetch(f"{base}/api/bwlimit", token=token, method="POST", body={"bwlimit": "fast"})
    assert status == 400 and "not a rate" in json.loads(answer)["error"]
    assert fetch(f"{base}/api/bwlimit", token=token, method="POST", body={"bwlimit": "2M"})[0] == 200
    assert fetch(f"{base}/api/resume", token=token, method="POST", body={})[0] == 200
    doc = json.loads(fetch(f"{base}/api/status", token=token)[1])
    assert (doc["paused"], doc["bwlimit"]) == (False, "2M")


def test_the_page_in_headless_chromium(tmp_path, busy_mount):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium here (scripts/setup installs Debian's as root)")
    url = dashboard_url(busy_mount.mountpoint)

    def chromium(*args) -> subprocess.CompletedProcess:
        profile = tmp_path / f"profile-{len(os.listdir(tmp_path))}"
        return subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1200,900",
                               "--virtual-time-budget=10000", *args, url],
                              capture_output=True, text=True, timeout=120)
    shot = tmp_path / "dashboard.png"
    made = chromium(f"--screenshot={shot}")
    assert made.returncode == 0, made.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    dom = chromium("--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    # Drawn by the page's script from /api/status (not only the server's first list of names).
    assert 'data-rendered="yes"' in dom.stdout
    assert 'data-session="Office scan"' in dom.stdout
    assert "does not take .exe files" in dom.stdout
