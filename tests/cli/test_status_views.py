"""`fs360 status` and `fs360 unmount --wait` as a user sees them: --json, errors, exit codes,
and the --watch view in a real terminal (tmux) at 80x24 and 200x50."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid

import pytest

from tests.harness import PYTHON, is_mounted, wait_until, write_random

pytestmark = pytest.mark.fuse


def run_fs360(*args, timeout=180):
    env = {k: v for k, v in os.environ.items() if k not in ("FS360_API_KEY", "API_KEY")}
    return subprocess.run([PYTHON, "-m", "fs360.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def status_doc(mountpoint) -> dict:
    shown = run_fs360("status", "--json", str(mountpoint))
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)


@pytest.mark.slow(10)
def test_json_names_every_session_in_natural_order_and_a_non_mount_is_an_error(tmp_path, mount):
    for name in ("scan_10", "scan_2", "Office scan"):
        (mount.mountpoint / name).mkdir()
        write_random(mount.mountpoint / name / "a.jpg", 50_000)
    for name in ("scan_10", "scan_2", "Office scan"):
        mount.wait_settled(name)
    doc = status_doc(mount.mountpoint)
    assert doc["mountpoint"] == str(mount.mountpoint)
    assert [s["session"] for s in doc["sessions"]] == ["Office scan", "scan_2", "scan_10"]
    assert doc["totals"]["complete"] == doc["totals"]["files"] == 3
    assert all(f["rate"] is None and f["eta_seconds"] is None for s in doc["sessions"] for f in s["files"])
    summary = run_fs360("status")
    assert summary.returncode == 0 and str(mount.mountpoint) in summary.stdout, summary.stderr
    files = run_fs360("status", "--files", str(mount.mountpoint))
    assert files.returncode == 0
    assert [line.split()[0] for line in files.stdout.splitlines() if "a.jpg" in line] == \
        ["Office", "scan_2/a.jpg", "scan_10/a.jpg"]
    root = run_fs360("release", str(mount.mountpoint))  # (it said "not inside an fs360 mount")
    assert root.returncode == 2 and f"{mount.mountpoint} is an fs360 mount itself: release takes the held files" \
        in root.stderr, root.stderr
    for not_a_mount in (tmp_path, tmp_path / "missing"):
        for command in ("status", "pause", "resume"):
            result = run_fs360(command, str(not_a_mount))
            assert result.returncode == 2
            assert f"{not_a_mount} is not an fs360 mount" in result.stderr
            assert "Traceback" not in result.stderr


def test_unmount_wait_with_a_refused_exe_exits_3_and_names_it(mount):
    session = mount.mountpoint / "Survey"
    session.mkdir()
    write_random(session / "a.jpg", 300_000)
    write_random(session / "setup.exe", 1000)  # the emulator takes no .exe (415, for good)
    result = run_fs360("unmount", "--wait", str(mount.mountpoint))
    assert result.returncode == 3, result.stderr
    assert "Survey/setup.exe rejected: the server does not take .exe files; allowed:" in result.stderr
    assert "1/2 file(s) on the server" in result.stderr
    assert not is_mounted(mount.mountpoint)


def test_names_that_would_act_on_a_terminal_are_escaped_in_every_view(mount):
    """Names from an archive unzipped into the mount are not the user's to vet: a C1 CSI or a
    right-to-left override in one must not reach the terminal through `fs360 status` or
    `cat status` (status.json keeps the name as written)."""
    session = mount.mountpoint / "Survey"
    session.mkdir()
    names = ("a\u009b2J.jpg", "b\u202egpj.exe.jpg", "c.jpg")
    for name in names:
        write_random(session / name, 1000)
    mount.wait_settled("Survey")
    shown = run_fs360("status", "--files", str(mount.mountpoint))
    assert shown.returncode == 0, shown.stderr
    text = (session / "status").read_text()
    for view in (shown.stdout, text):
        assert "\u009b" not in view and "\u202e" not in view
        assert "a\\u009b2J.jpg" in view and "b\\u202egpj.exe.jpg" in view, view
    # The escapes are laid out as the names' text: every row's state starts in one column.
    rows = [line for line in shown.stdout.splitlines() if line.startswith("Survey/")]
    assert len(rows) == 3 and len({row.index(" complete") for row in rows}) == 1, shown.stdout
    assert {f["name"] for f in status_doc(mount.mountpoint)["sessions"][0]["files"]} == set(names)


# --- the --watch view in tmux -----------------------------------------------------------------


class Tmux:
    """A tmux server of this test's own (its own socket), with one shell at a given size."""

    def __init__(self, tmp_path, width: int, height: int):
        if shutil.which("tmux") is None:
            pytest.skip("needs tmux (scripts/setup installs it)")
        self.socket = f"fs360-test-{uuid.uuid4().hex[:8]}"
        self.width, self.height = width, height
        self.tmux("-f", "/dev/null", "new-session", "-d", "-s", "t", "-x", str(width), "-y", str(height),
                  "sh", env={"HOME": str(tmp_path), "PS1": "$ "})

    def tmux(self, *args, env=None) -> str:
        full_env = dict(os.environ, TERM="xterm-256color", **(env or {}))
        return subprocess.run(["tmux", "-L", self.socket, *args], env=full_env, capture_output=True, text=True,
                              check=True, timeout=30).stdout

    def type(self, command: str) -> None:
        self.tmux("send-keys", "-t", "t", command, "Enter")

    def screen(self) -> list[str]:
        return self.tmux("capture-pane", "-p", "-t", "t").split("\n")[: self.height]

    def wait_for(self, matches, what: str) -> list[str]:
        """The screen, once one of its lines matches."""
        return wait_until(lambda: (lambda screen: screen if any(map(matches, screen)) else None)(self.screen()),
                          60, what=what)

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=30)


@pytest.fixture
def tmux_at(tmp_path):
    made = []

    def make(width: int, height: int) -> Tmux:
        made.append(Tmux(tmp_path, width, height))
        return made[-1]
    yield make
    for terminal in made:
        terminal.close()


def watch_command(*args) -> str:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    env = f"XDG_RUNTIME_DIR={runtime} " if runtime else ""
    return f"clear; {env}{PYTHON} -m fs360.cli status --watch --interval 0.3 {' '.join(args)}"


@pytest.mark.parametrize("width,height", [(80, 24), (200, 50)])
def test_watch_redraws_in_place_and_fits_the_terminal(tmux_at, mount, width, height):
    root = mount.mountpoint
    for index in range(1, 31):
        (root / f"scan_{index}").mkdir()
    write_random(root / "scan_2" / "photo.jpg", 100_000)
    write_random(root / "scan_2" / "setup.exe", 1000)
    mount.wait_settled("scan_2")
    terminal = tmux_at(width, height)
    terminal.type(watch_command(f"'{root}'"))

    # The whole view, not a screen caught while tmux still draws it: its last row of sessions.
    screen = terminal.wait_for(lambda line: line.startswith("scan_30 ") or "more session(s)" in line,
                               "the sessions view")
    assert screen[0].startswith("idle · 1/2 files · "), screen[:3]  # the header stays on the first line
    assert "1 need you" in screen[0]
    rows = [line for line in screen if line.startswith("scan_")]
    # Each session's row is whole on its line: name, count, project column (nothing wrapped).
    assert all(line.rstrip().endswith("no .create") for line in rows), rows
    if height == 24:  # 30 sessions do not fit: the ones that need the user first, a count of the rest
        assert any("more session(s)" in line for line in screen), screen
        assert len(rows) < 30
    else:  # in natural order; all 30, or as many as fit with a count of the rest
        names = [line.split()[0] for line in rows]
        assert names == [f"scan_{i}" for i in range(1, 31)] or (
            any("more session(s)" in line for line in screen) and names == sorted(names, key=lambda n: int(n[5:])))
    assert any("scan_2/setup.exe rejected: the server does not take .exe files" in line for line in screen)
    # A change is redrawn in place: the header is still the first line, the screen no longer.
    write_random(root / "scan_1" / "late.jpg", 1000)
    mount.wait_settled("scan_1")
    wait_until(lambda: any(line.startswith("scan_1 ") and " 1/1 " in line for line in terminal.screen()), 30,
               what="the new file in the view")
    assert terminal.screen()[0].startswith("idle · 2/3 files · ")
    # After an unmount, --watch says so and ends (no endless "no sessions").
    mount.unmount()
    wait_until(lambda: any(line.startswith("fs360: no longer mounted: ") for line in terminal.screen())
               and [line for line in terminal.screen() if line.strip()][-1].strip() in ("$", "#"), 30,
               what="--watch to end, back at the prompt")


def test_watch_of_the_files_at_80_columns_keeps_the_reasons(tmux_at, mount):
    session = mount.mountpoint / "Survey"
    session.mkdir()
    write_random(session / "a_very_long_file_name_of_a_scan_0001.jpg", 10_000)
    write_random(session / "setup.exe", 1000)
    mount.wait_settled("Survey")
    terminal = tmux_at(80, 24)
    terminal.type(watch_command("--files", f"'{mount.mountpoint}'"))
    screen = terminal.wait_for(lambda line: "setup.exe" in line, "the files view")
    assert any(line.startswith("Survey/a_very_long_file_name") and "complete" in line for line in screen), screen
    # The reason has a line of its own below the table, cut to the width rather than wrapped.
    reason = [line for line in screen if "Survey/setup.exe rejected:" in line]
    assert reason and len(reason[0]) <= 80
