"""Shared pieces of the reliability suite.

Sizes: CI sizes by default; `FS360_CHAOS=1` (scripts/chaos) scales every
scenario up. The one end-of-scenario check is `assert_accounted`.
"""

from __future__ import annotations

import os
import subprocess

from fs360.emulator.harness import EmulatorProcess
from tests.harness import Mount

MiB = 1024 * 1024
KiB = 1024
CHAOS = os.environ.get("FS360_CHAOS", "") not in ("", "0")
# States in which a file that did not reach the server must be listed, with a reason.
UNFINISHED_STATES = ("failed", "rejected", "interrupted", "lost")


def pick(ci, chaos):
    """The CI value, or the chaos value under FS360_CHAOS=1."""
    return chaos if CHAOS else ci


def assert_accounted(mount: Mount, emulator: EmulatorProcess, written: dict[str, dict[str, str]], *,
                     violations_before: list | None = None) -> None:
    """The check that ends every scenario.

    `written` is {session: {name: sha256 of the source}} for every file the test
    wrote into the mount (and did not delete itself). Each one is either complete
    on the emulator, in the session's current upload session, with that sha256
    (and `complete` in status.json), or listed in status.json as
    failed/rejected/interrupted/lost with a non-empty reason. A file the server
    holds complete with other bytes is always a failure. The emulator must record
    no protocol violation (`violations_before`: those read before an emulator
    restart, which clears them).
    """
    problems = []
    remote = emulator.files()
    for session, files in written.items():
        status = mount.status_json(session)
        upload_id = status["upload_id"]
        listed = {f["name"]: f for f in status["files"]}
        mine = {f["name"]: f for f in remote if upload_id is not None and f["upload_id"] == upload_id}
        for name, sha in files.items():
            entry = listed.get(name)
            # The server holds a file under the name fs360 chose for it (see doc/SEMANTICS.md).
            held = mine.get((entry or {}).get("server_name") or name)
            if held is not None and held["complete"] and held["sha256"] != sha:
                problems.append(f"{session}/{name}: complete on the server with OTHER bytes "
                                f"(sha {held['sha256']}, source {sha})")
                continue
            if held is not None and held["complete"]:
                if entry is None or entry["state"] != "complete":
                    problems.append(f"{session}/{name}: complete on the server but status.json says "
                                    f"{entry and entry['state']!r}")
                continue
            if entry is None:
                problems.append(f"{session}/{name}: not complete on the server ({held}) and not in status.json")
            elif entry["state"] not in UNFINISHED_STATES:
                problems.append(f"{session}/{name}: status.json says {entry['state']!r} but the server has "
                                f"{held and {k: held[k] for k in ('received', 'total', 'complete')}} "
                                f"in upload {upload_id}")
            elif not (entry.get("error") or "").strip():
                problems.append(f"{session}/{name}: {entry['state']} without a reason in status.json")
    violations = list(violations_before or []) + emulator.violations()
    if violations:
        problems.append(f"protocol violations: {violations[:5]}")
    assert not problems, "not every file is accounted for:\n  " + "\n  ".join(problems[:30])


def settle(mount: Mount, session: str, timeout: float | None = None) -> dict[str, str]:
    """Waits until nothing is writing/pending/uploading/failed (the harness's definition)."""
    try:
        return mount.wait_settled(session, timeout=timeout or pick(120, 900))
    except AssertionError as exc:
        try:
            files = mount.status_json(session)["files"]
        except (OSError, ValueError) as read_error:
            files = f"(status.json unreadable: {read_error})"
        raise AssertionError(f"{exc}; files: {files}") from None


def run_bounded(cmd: list[str], what: str, hang_after: float = 30.0) -> subprocess.CompletedProcess:
    """Runs a tool against the mount. `hang_after` only detects a hang: it is never a performance bound."""
    try:
        return subprocess.run(cmd, capture_output=True, timeout=hang_after)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{what} did not complete within {hang_after} s: the mount hangs") from None
