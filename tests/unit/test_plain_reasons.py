"""Every reason in words (hostile round 5): what status says when fs360 itself holds something
back or refuses something, with what happened and what to do, never only a code or nothing."""

from __future__ import annotations

import json
import os
import re

from fs360.api.pacing import Pacer
from fs360.api.troubles import pacing_waits
from fs360.config import DOCUMENTED_RATE_LIMITS
from fs360.fs import status
from tests.harness import wait_until
from tests.unit.test_model import write_file


class SleepClock:
    def __init__(self):
        self.now = 1000.0
        self.during_sleep: list[dict] = []
        self.pacer = None

    def __call__(self):
        return self.now

    def sleep(self, seconds: float) -> None:
        self.during_sleep.append(self.pacer.waiting())
        self.now += seconds


# --- 1. fs360's own PUT pacing says so, with when it ends -------------------------------------------

def test_a_request_asleep_for_its_turn_is_told_with_when_its_wait_ends():
    clock = SleepClock()
    pacer = Pacer({"put_file": (4, 60.0)}, sleep=clock.sleep, clock=clock)
    clock.pacer = pacer
    for _ in range(3):  # 95% of 4: three go at once
        assert pacer.acquire("put_file") == 0
    assert pacer.waiting() == {}
    assert pacer.acquire("put_file") > 59
    (seen,) = clock.during_sleep
    count, first, last = seen["put_file"]
    assert count == 1 and 59 < first <= last < 61
    assert pacer.waiting() == {}  # over once it slept

    class Asleep:
        limits = {"put_file": (1200, 60.0)}

        @staticmethod
        def waiting():
            return {"put_file": (4, 40.0, 52.0)}
    (wait,) = pacing_waits(Asleep(), wall=lambda: 1_700_000_000.0)
    assert wait["reason"].startswith("waiting for the server's rate limit: fs360 keeps to the documented "
                                     "budget of 1,200 upload requests (PUTs) a minute")
    assert "4 requests wait their turn until " in wait["reason"] and "(in 52 s)" in wait["reason"]
    assert "nothing to do" in wait["reason"]
    assert wait["until"] == 1_700_000_052.0


def test_status_says_uploads_wait_for_the_put_budget_and_drops_the_eta(make_model, emulator):
    """1,500 tiny files used up the documented PUT budget (95% of 1,200 a minute): the four files
    whose PUTs sleep for their turn showed "uploading 0 B", the rest "pending", no reason and an
    ETA of 47 min. The same here with a budget of 4 PUTs in 20 s."""
    limits = dict(DOCUMENTED_RATE_LIMITS, put_file=(4, 20.0))
    model = make_model(emulator, rate_limits_enabled=True, rate_limits=limits, workers=2)
    model.mkdir("/s", 0o755)
    for i in range(8):
        write_file(model, f"/s/{i}.jpg", b"x" * 100)

    def waiting():
        return model.engine.pacing_waits() or None
    wait_until(waiting, 20, what="a PUT asleep for its turn")
    text = b"".join(part() for part in _status(model, "status")).decode()
    line = next(line for line in text.splitlines() if line.startswith("waiting for the server's rate limit"))
    assert "documented budget of 4 upload requests (PUTs) per 20 s" in line
    assert re.search(r"until \d\d:\d\d:\d\d \(in \d+ s\)", line), line
    assert "eta" not in text.split("\n\n")[0].split("files     ")[1].splitlines()[0]
    doc = json.loads(b"".join(part() for part in _status(model, "status.json")))
    (wait,) = doc["rate_limit_waits"]
    assert wait["endpoint"] == "put_file" and wait["waiting"] >= 1 and wait["reason"] == line
    assert doc["totals"]["eta_seconds"] is None
    mount = model.status.mount_snapshot()
    assert mount["rate_limit_waits"][0]["endpoint"] == "put_file" and mount["totals"]["eta_seconds"] is None
    root = b"".join(part() for part in _status(model, "root")).decode()
    assert "waiting for the server's rate limit" in root


def _status(model, name: str):
    with model.engine.lock:
        if name == "root":
            return model.status.prepare_locked(None, ("status",), fresh=True)
        return model.status.prepare_locked(model.engine.registry.sessions["s"], (name,), fresh=True)


def test_rendered_wait_lines_come_first_and_no_eta_while_paced():
    capture = {
        "now": 1_700_000_000.0, "session": "scans", "id": 1, "upload_id": "u1", "expires_at": None,
        "sealed": False, "files": [], "unlinked": [], "refused_names": [], "tree_members": [], "archive_name": None,
        "tree_files": [], "project": None, "notice": "", "marker_refused": "", "api_url": "http://127.0.0.1:1",
        "default_privacy": 2, "paused": False, "held_back": [],
        "rate_limit_waits": [{"endpoint": "put_file", "waiting": 2, "until_seconds": 30.0, "until": 1_700_000_030.0,
                              "reason": "waiting for the server's rate limit: words"}],
    }
    snapshot = status.snapshot_of(capture)
    assert snapshot["rate_limit_waits"][0]["until"] == "2023-11-14T22:13:50Z"
    assert status.render_text(snapshot).decode().startswith("waiting for the server's rate limit: words\n")
    assert os.linesep == "\n"


# --- 3. a tree's folder moved to another session: EXDEV (mv copies), or a refusal in status -----------

def test_a_tree_folder_moved_to_another_session_is_exdev_and_a_frozen_one_is_refused_in_status(make_model, emulator):
    import errno

    from tests.unit.test_model import errno_of
    model = make_model(emulator)
    for folder in ("/s", "/s/t", "/x"):
        model.mkdir(folder, 0o755)
    write_file(model, "/s/t/a.jpg", b"a" * 100)
    write_file(model, "/s/top.jpg", b"b" * 100)
    assert errno_of(model.rename, "/s/t", "/x/t") == errno.EXDEV
    assert {name for name, _ in model.readdir("/s/t")} == {"a.jpg"}  # nothing moved: mv copies
    model.engine.gate.set_paused(True)  # the archive waits: the tree stays frozen
    fh = model.create("/s/.create", 0o644, os.O_WRONLY)
    model.write(fh, b"{}", 0)
    model.finish_writer(fh, True)
    assert errno_of(model.rename, "/s/t", "/x/t") == errno.EACCES
    refused = json.loads(b"".join(part() for part in _status(model, "status.json")))["refused_names"]
    assert refused[-1]["name"] == "t" and refused[-1]["reason"].startswith("not moved to x: ")
    model.engine.gate.set_paused(False)
