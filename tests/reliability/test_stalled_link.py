"""A stalled link: every packet dropped mid-upload (10 s on a 40 Mbit/s line; 30 s on a 20 Mbit/s
one, also with a PUT abandoned mid-body as the stall begins), then the link comes back.

Issue 12 saw the emulator record `concurrent_put` after a network stall: a
timed-out PUT's connection still delivered its body while the resynced PUT of the
same file ran. Here the engine uploads to the emulator inside a private network
namespace whose loopback is shaped with a token bucket; mid-upload the bucket is
replaced by one that passes nothing (`tbf rate 8bit burst 10 limit 1`: every
packet, SYNs and ACKs included, is dropped), for 10 s, so the client's requests
time out while the server still holds them; then the shaping is restored. Every
file must then complete with its sha256, and the emulator must have seen no
protocol violation.

pytest cannot enter a namespace itself, so the test re-runs this module under
`unshare -n` (`python -m tests.reliability.test_stalled_link`): `run_in_netns`
starts the emulator and the engine there and prints one JSON line that the test
asserts on. The test is skipped where `unshare -n` or `tc` is not available.

The production timings (60 s of server idle timeout and of quiet after an abandoned
PUT, a stall longer than the client's timeouts and shorter than the server's) are
scaled down together, in the same order: client read timeout < stall < server idle
timeout <= quiet period (the server's idle timeout is the stall's plus 4 s). With no
quiet period (ABANDONED_UPLOAD_QUIET = 0) the test failed 4 runs of 5 with a
concurrent_put.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from tests.engine_helpers import state_counts, wait_idle

REPO = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024
# (id, the line's rate, seconds everything is dropped, whether a PUT is abandoned mid-body
# before the stall, while the link works, and another as the stall begins)
SCENARIOS = {
    "40mbit-10s": ("40mbit", 10, False),
    "20mbit-30s": ("20mbit", 30, False),
    "20mbit-30s-put-abandoned": ("20mbit", 30, True),
}
# The server drops a silent connection this long after the stall's length (the emulator's
# default is 60 s, longer than any stall here)...
SERVER_IDLE_BEYOND_STALL = 4.0
# ...and a file whose PUT fs360 abandoned waits at least as long before its next PUT.


def shaped(rate: str) -> list[str]:
    """Slow enough that every file is still on its way when the stall starts."""
    return ["tbf", "rate", rate, "burst", "256kb", "latency", "100ms"]


DROP_EVERYTHING = ["tbf", "rate", "8bit", "burst", "10", "limit", "1"]
FILE_COUNT = 6
FILE_SIZE = 6 * MiB
# The stall starts once this much has reached the server (a few chunks into the files)...
STALL_AFTER_BYTES = 10 * MiB
# ...and a PUT is abandoned (where it is) once this much has: its socket's queue is full then.
ABANDON_AFTER_BYTES = 4 * MiB
RESULT_PREFIX = "STALLED_LINK_RESULT "


def set_loopback_qdisc(spec: list[str]) -> None:
    subprocess.run(["tc", "qdisc", "replace", "dev", "lo", "root", *spec], check=True)


def loopback_drops() -> int:
    out = subprocess.run(["tc", "-s", "qdisc", "show", "dev", "lo"], capture_output=True, text=True).stdout
    match = re.search(r"dropped (\d+)", out)
    return int(match.group(1)) if match else 0


def connections_to(port: int) -> list[str]:
    """TCP connections to or from `port` (both ends' views), with their owners and queues: what
    the violation report needs to tell an orphaned server-side request from an unclosed client one."""
    if shutil.which("ss") is None:
        return []
    out = subprocess.run(["ss", "-tnpH", "state", "all", f"( sport = :{port} or dport = :{port} )"],
                         capture_output=True, text=True).stdout
    lines = [" ".join(line.split()) for line in out.splitlines() if line.strip()]
    return [line for line in lines if not line.startswith(("TIME-WAIT", "LISTEN"))]


def run_in_netns(scenario: str) -> dict:
    """Runs inside the private namespace: emulator, engine, stall, restore; returns the result."""
    rate, stall_seconds, abandon_put = SCENARIOS[scenario]
    from fs360.config import Settings
    from fs360.emulator.harness import EmulatorProcess
    from fs360.engine.engine import Engine
    from tests.harness import FAST_EMULATOR_ARGS, make_sources, wait_until
    from tests.integration.engine_runner import queue_files

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    set_loopback_qdisc(shaped(rate))
    work = Path(tempfile.mkdtemp(prefix="fs360-stall-"))
    try:
        sources = work / "src"
        expected = make_sources(sources, {f"scan-{i:02d}.ply": FILE_SIZE + i for i in range(FILE_COUNT)})
        server_idle_timeout = stall_seconds + SERVER_IDLE_BEYOND_STALL
        emulator_args = FAST_EMULATOR_ARGS + ["--idle-timeout", str(server_idle_timeout)]
        with EmulatorProcess(work / "emulator", args=emulator_args) as emulator:
            # Timeouts much shorter than the stall, so that requests do time out during it and the
            # engine resyncs while the abandoned requests' bytes may still be on their way (with the
            # defaults, 60 s per read, a stall shorter than a minute times nothing out).
            settings = Settings(api_url=emulator.base_url, api_key=emulator.api_key, cache_dir=work / "cache",
                                chunk_size=2 * MiB, max_chunk_size=2 * MiB,  # PUTs the same size throughout
                                workers=4, writeback_delay=0.0, connect_timeout=1.0, read_timeout=3.0,
                                request_deadline=8.0, backoff_base=0.2, backoff_cap=2.0,
                                abandoned_upload_quiet=server_idle_timeout, rate_limits_enabled=False)
            engine = Engine(settings)
            queue_files(engine, "stall", {name: sources / name for name in expected})
            engine.start()
            try:
                abandoned = []
                if abandon_put:
                    wait_until(lambda: sum(f["received"] for f in emulator.files()) >= ABANDON_AFTER_BYTES, 60,
                               0.05, what="uploads under way")
                    abandoned.append(abandon_one_put(settings))
                wait_until(lambda: sum(f["received"] for f in emulator.files()) >= STALL_AFTER_BYTES, 60, 0.05,
                           what="uploads under way")
                at_stall = {f["name"]: f["received"] for f in emulator.files()}
                drops_before = loopback_drops()
                if abandon_put:
                    # A PUT under way when everything starts being dropped, to cut during the stall
                    # (under load, all workers were once between PUTs at that instant, and no new
                    # PUT can connect during the stall).
                    # 60 s, not 10: a CI run under load once found none for 10 s (cause unknown; a hold
                    # of every PUT behind one probe after the first cut would explain it), so a
                    # timeout says what each file was doing.
                    try:
                        wait_until(lambda: running_puts(settings.request_deadline), 60, 0.01, what="a PUT under way")
                    except AssertionError as exc:
                        raise AssertionError(f"{exc}; the files then: {files_now(engine)}") from None
                set_loopback_qdisc(DROP_EVERYTHING)
                if abandon_put:  # its reset is lost too: the server waits for the rest of its body
                    abandoned.append(abandon_one_put(settings))
                time.sleep(stall_seconds)  # nothing, not even the emulator's own control API, passes now
                drops_during = loopback_drops()  # the qdisc was replaced: its counter started at 0
                sockets_at_end_of_stall = connections_to(emulator.port)
                set_loopback_qdisc(shaped(rate))
                time.sleep(2)
                sockets_after_restore = connections_to(emulator.port)
                idle = wait_idle(engine, timeout=240, poll=0.2)
                counts = state_counts(engine)
            finally:
                engine.stop()
            remote = {f["name"]: f for f in emulator.files()}
            return {
                "abandoned_puts": abandoned,
                "idle": idle,
                "counts": counts,
                "incomplete_at_stall": sum(1 for name in expected if at_stall.get(name, 0) < FILE_SIZE),
                "drops_before": drops_before,
                "drops_during_stall": drops_during,
                "files": {name: {"complete": bool(remote.get(name, {}).get("complete")),
                                 "sha256_matches": remote.get(name, {}).get("sha256") == sha}
                          for name, sha in expected.items()},
                "unexpected_names": sorted(set(remote) - set(expected)),
                "violations": emulator.violations(),
                "sockets_at_end_of_stall": sockets_at_end_of_stall,
                "sockets_2s_after_restore": sockets_after_restore,
            }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def files_now(engine) -> list[tuple]:
    """(name, state, bytes the server took, last error) of every file: what a failed wait shows."""
    with engine.lock:
        return [(r.name, r.state, r.server_received, r.last_error) for r in engine.registry.files_locked()]


def running_puts(longer_than: float) -> list:
    """The deadlines of the connected requests running whose deadline is longer than
    `longer_than` s: PUTs, whose deadline grows with their body (the transport's watchdog holds
    every running request's)."""
    from fs360.api import transport
    with transport._watchdog._wake:
        running = [entry[2] for entry in transport._watchdog._heap if not entry[2].finished]
    return [deadline for deadline in running if deadline.seconds > longer_than and deadline._connection is not None]


def abandon_one_put(settings) -> bool:
    """Ends a PUT in the middle of its body, as a killed client would: its socket closed with a
    reset while its queue is full on the slow line (every worker is busy sending then). Its
    deadline is longer than any small request's (the floor plus its body's time)."""
    from tests.harness import wait_until

    def cut_running_put() -> bool:
        """Ends one running PUT exactly as its deadline would."""
        for deadline in running_puts(settings.request_deadline):
            deadline.expire()
            return True
        return False
    return wait_until(cut_running_put, 10, 0.01, what="a PUT under way")


def netns_unavailable() -> str | None:
    """Why this machine cannot run the test, or None."""
    for tool in ("unshare", "ip", "tc"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    probe = ("ip link set lo up && tc qdisc add dev lo root " + " ".join(shaped("20mbit"))
             + " && tc qdisc replace dev lo root " + " ".join(DROP_EVERYTHING))
    result = subprocess.run(["unshare", "-n", "sh", "-c", probe], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        return f"no private network namespace with tc shaping here: {result.stderr.strip()}"
    return None


# Found by this test (1 to 3 concurrent_put in each of 3 runs, before the fix): at the end of
# the stall the client's abandoned PUTs sat in FIN-WAIT-1 with up to 1.9 MB of body still
# queued (closed gracefully), and the server held abandoned PUTs whose client socket was gone;
# either kept the file's lock on the server when the link returned, and the resynced PUT of that
# file was a second one. Now an abandoned request ends with a reset (nothing queued is sent
# later), and a file whose PUT fs360 gave up on waits `abandoned_upload_quiet` (the default
# 60 s, the emulator's own idle timeout too; both the stall plus 4 s here) before its next PUT.
# The PUT abandoned mid-body (a killed upload process, when PUTs ran in processes): before the fix
# its socket closed gracefully, so the kernel kept sending the queued rest of its body once the
# link was back, while the file's next PUT went; now every connection ends with a reset (SO_LINGER
# 0, from its connect), and an abandoned PUT counts as given up without an answer (the file's
# next one waits until that one surely ended).
@pytest.mark.slow(50)
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_everything_dropped_mid_upload_every_file_completes_without_violations(scenario):
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    result = subprocess.run(["unshare", "-n", "--", sys.executable, "-m", "tests.reliability.test_stalled_link",
                             scenario], cwd=REPO, capture_output=True, text=True, timeout=420,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    lines = [line for line in result.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    assert result.returncode == 0 and lines, f"the run in the namespace failed:\n{result.stdout}\n{result.stderr}"
    outcome = json.loads(lines[-1][len(RESULT_PREFIX):])
    # The scenario really happened: files were mid-upload and the stall dropped packets.
    assert outcome["incomplete_at_stall"] > 0, outcome
    assert outcome["drops_during_stall"] > 0, outcome
    assert all(outcome["abandoned_puts"]) and len(outcome["abandoned_puts"]) == 2 * SCENARIOS[scenario][2], outcome
    assert outcome["idle"], f"the engine did not settle after the link came back: {outcome['counts']}"
    assert outcome["counts"] == {"complete": len(outcome["files"])}, outcome["counts"]
    bad = {name: f for name, f in outcome["files"].items() if not (f["complete"] and f["sha256_matches"])}
    assert not bad, f"files not complete with their sha256 on the server: {bad}"
    assert not outcome["unexpected_names"], outcome["unexpected_names"]
    assert outcome["violations"] == [], (
        f"protocol violations: {outcome['violations'][:5]}\nconnections at the end of the stall:\n"
        + "\n".join(outcome["sockets_at_end_of_stall"]) + "\n2 s after the link came back:\n"
        + "\n".join(outcome["sockets_2s_after_restore"]))


if __name__ == "__main__":
    print(RESULT_PREFIX + json.dumps(run_in_netns(sys.argv[1])), flush=True)
