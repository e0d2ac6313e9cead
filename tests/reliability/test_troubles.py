"""A failure shared by every upload, on a real mount: what `status` shows and what clears it.

A `Retry-After: 1000000000` on one PUT (a server that asks to be left alone for 31 years) holds
every upload, not only that file's, for as long as fs360 honours a wait (an hour); every file it
holds shows the wait and its end, `status` says it at the top, and `fs360 resume` lifts it.
"""

from __future__ import annotations

import subprocess

from tests.harness import make_sources, wait_until
from tests.ops.common import harness_runtime, run_fs360

from .common import assert_accounted, settle

FILES = 12
WAIT = "the server asked to wait 31.7 years before more uploads (HTTP 429): they wait until"


def test_a_huge_retry_after_is_shown_on_every_file_it_holds_and_resume_lifts_it(tmp_path, emulator,
                                                                                mount_factory):
    sources = make_sources(tmp_path / "src", {f"photo-{i:02d}.jpg": 5000 + i for i in range(FILES)})
    # One worker: no other PUT is under way when the 429 comes, so every file is held, none slips through.
    mount = mount_factory(emulator, extra_args=["--workers", "1"])
    (mount.mountpoint / "s").mkdir()
    emulator.set_faults([{"endpoint": "put_file", "kind": "retry_after_huge", "retry_after": 10**9,
                          "count": 1}])
    subprocess.run(["cp", *(str(tmp_path / "src" / name) for name in sources), str(mount.mountpoint / "s")],
                   check=True)

    def every_file_held():
        """Every file not complete: with one worker, every file, the one that met the 429 too."""
        status = mount.status_json("s")
        files = [f for f in status["files"] if f["state"] != "complete"]
        return files if files and all(f["state"] == "failed" and WAIT in (f["error"] or "") for f in files) else None
    try:
        held = wait_until(every_file_held, 120, 0.2, what="every file to show the server's wait")
    except AssertionError:
        print([(f["name"], f["state"], f["error"]) for f in mount.status_json("s")["files"]])
        raise
    assert len(held) == FILES  # the wait holds every upload, not only the file that met it
    assert len({f["error"] for f in held}) == 1  # one reason, the same everywhere
    status = mount.status_json("s")
    assert [reason for reason in status["held_back"] if WAIT in reason]
    text = (mount.mountpoint / "s" / "status").read_text()
    assert text.startswith("held back: " + WAIT)
    assert "fs360 resume" in text

    assert run_fs360(tmp_path, "resume", str(mount.mountpoint), env=harness_runtime()).returncode == 0
    assert set(settle(mount, "s").values()) == {"complete"}
    assert mount.status_json("s")["held_back"] == []
    assert_accounted(mount, emulator, {"s": sources})
