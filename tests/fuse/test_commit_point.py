"""The commit point with real programs (issue 19): a program that fails never uploads its file;
one that succeeds uploads at once (the write-back delay of these mounts is a minute, so only a
writer's exit can commit a file here).

rsync, curl, wget, unzip and a Python writer each fail in the way users meet: cut off by a
signal, by a server that drops the connection, by a damaged archive, by an error after the close.
Nothing of theirs may ever be complete on the server, on either emulator profile.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import shutil
import signal
import socketserver
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

from fs360.engine.records import HELD_WAY_OUT
from tests.harness import assert_uploaded, make_sources, remote_files, request_count, wait_until
from tests.ops.common import harness_runtime, run_fs360

MiB = 1024 * 1024
# Long enough that no file here is committed by the delay: only its writer's exit commits it.
WINDOW = 60.0
SETTLED = ("complete", "held", "interrupted", "rejected", "local")


def state_of(mount, session: str, name: str) -> dict:
    """The file's entry in status.json (a file of the session's tree by its path, `d/a.jpg`)."""
    doc = mount.status_json(session)
    return next((f for f in doc["files"] + doc.get("tree_files", []) if f["name"] == name), {})


def wait_state(mount, session: str, name: str, states=SETTLED, timeout: float = 60) -> dict:
    return wait_until(lambda: (lambda f: f if f.get("state") in states else None)(state_of(mount, session, name)),
                      timeout, 0.1, what=f"{session}/{name} to reach {states}")


def wait_exit(proc: subprocess.Popen, timeout: float = 60) -> int:
    try:
        return proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()


def rsync_processes(marker: str) -> list[int]:
    """The pids of every rsync whose command line holds `marker` (the parent and its children)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if cmdline.startswith(b"rsync\0") and marker.encode() in cmdline:
                pids.append(int(entry))
    return pids


class CutOffServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """Serves `body` on loopback, announcing all of it and dropping the connection after `cut` bytes."""
    daemon_threads = True

    def __init__(self, body: bytes, cut: int):
        self.body, self.cut = body, cut

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(handler):
                handler.send_response(200)
                handler.send_header("Content-Length", str(len(body)))
                handler.end_headers()
                handler.wfile.write(body[:cut])
                handler.wfile.flush()
                handler.close_connection = True

            def log_message(handler, *args):
                pass
        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/scan.e57"


def damaged_zip(folder: Path) -> Path:
    """A zip of one member whose stored data has one byte flipped: unzip writes it whole-sized,
    says "bad CRC" and exits 2."""
    archive = folder / "damaged.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("photo.jpg", os.urandom(256 * 1024))
    data = bytearray(archive.read_bytes())
    data[30 + len("photo.jpg") + 1000] ^= 0xFF  # inside the member's data, after its local header
    archive.write_bytes(bytes(data))
    return archive


def held_by_a_cut_off_curl(path: Path) -> bytes:
    """`curl -o path` of 2 MiB from a server that drops the connection after 0.5 MiB (exit 18):
    the file is held. Returns the whole body curl was sent."""
    body = os.urandom(2 * MiB)
    server = CutOffServer(body, cut=MiB // 2)
    try:
        curl = subprocess.run(["curl", "-sS", "-o", str(path), server.url], capture_output=True)
        assert curl.returncode == 18, curl.stderr
    finally:
        server.shutdown()
    return body


@pytest.fixture
def slow_source(tmp_path) -> tuple[Path, str]:
    sources = make_sources(tmp_path / "src", {"big.e57": 24 * MiB})
    return tmp_path / "src" / "big.e57", sources["big.e57"]


def test_failing_programs_never_upload_their_files(tmp_path, profiled_emulator, mount_factory):
    emulator = profiled_emulator
    mount = mount_factory(emulator, writeback_delay=WINDOW)
    session = mount.mountpoint / "s"
    session.mkdir()
    sources = make_sources(tmp_path / "src", {"ok.jpg": 3 * MiB + 1})

    # cp succeeds: uploaded at once, a minute before the write-back delay would have.
    subprocess.run(["cp", str(tmp_path / "src" / "ok.jpg"), str(session)], check=True)
    assert wait_state(mount, "s", "ok.jpg")["state"] == "complete"

    # A Python writer that closes its file, then exits 1.
    script = f"open({str(session / 'py.jpg')!r}, 'wb').write(b'x' * 1000); raise SystemExit(1)"
    assert subprocess.run([sys.executable, "-c", script]).returncode == 1
    held = wait_state(mount, "s", "py.jpg")
    assert held["state"] == "held" and "exited with status 1 right after writing it" in held["error"]

    # curl and wget cut off by a server that drops the connection.
    body = os.urandom(2 * MiB)
    server = CutOffServer(body, cut=MiB // 2)
    try:
        curl = subprocess.run(["curl", "-sS", "-o", str(session / "curl.e57"), server.url], capture_output=True)
        assert curl.returncode == 18, curl.stderr
        if shutil.which("wget"):
            wget = subprocess.run(["wget", "-q", "--tries=1", "-O", str(session / "wget.e57"), server.url])
            assert wget.returncode != 0
    finally:
        server.shutdown()
    for name in ("curl.e57", "wget.e57") if shutil.which("wget") else ("curl.e57",):
        info = wait_state(mount, "s", name)
        assert info["state"] == "held", info
        assert name.split(".")[0] in info["error"] and "probably incomplete" in info["error"]

    # unzip of a damaged archive: the member is written, "bad CRC", exit 2.
    unzip = subprocess.run(["unzip", "-o", str(damaged_zip(tmp_path)), "-d", str(session)], capture_output=True)
    assert unzip.returncode == 2, unzip.stdout
    assert wait_state(mount, "s", "photo.jpg")["state"] == "held"

    assert_uploaded(emulator, None, {"ok.jpg": sources["ok.jpg"]})


# A program whose forked helper (no exec: the same command line) writes half its file and closes
# it; the program exits 0 once the helper has closed it, and the helper exits 1 when the test says.
HALF_BY_A_HELPER = """
import os, sys
closed_r, closed_w = os.pipe()
if os.fork() == 0:
    os.close(closed_r)
    with open(sys.argv[2], "wb") as f:
        f.write(open(sys.argv[1], "rb").read()[:1000])
    os.write(closed_w, b"x")
    open(sys.argv[3], "rb").read()  # a FIFO: end of file once the test lets it go
    os._exit(1)
os.close(closed_w)
os.read(closed_r, 1)
"""


def test_a_file_a_forked_helper_left_half_written_is_held_though_its_program_exited_0(tmp_path, emulator,
                                                                                     mount_factory):
    """The hostile run's find: the program exited 0 while its helper had not finished (it exited
    1 after), and the program's exit alone committed the half file."""
    mount = mount_factory(emulator, writeback_delay=WINDOW)
    session = mount.mountpoint / "s"
    session.mkdir()
    make_sources(tmp_path / "src", {"whole.jpg": 2000})
    go = tmp_path / "go"
    os.mkfifo(go)
    program = subprocess.run([sys.executable, "-c", HALF_BY_A_HELPER, str(tmp_path / "src" / "whole.jpg"),
                              str(session / "half.jpg"), str(go)], timeout=60)
    assert program.returncode == 0
    # The mount has seen the program end before its helper (its log says so at debug level).
    wait_until(lambda: "ended before its helper" in mount.log_path.read_text(), 30, 0.05,
               what="the program's exit seen")
    with open(go, "wb"):
        pass  # the helper reads end of file, and exits 1
    held = wait_state(mount, "s", "half.jpg")
    assert held["state"] == "held" and "exited with status 1 right after writing it" in held["error"], held
    assert remote_files(emulator) == {}


# A writer that writes the first half of its source, waits for the test, then writes the rest.
IN_TWO_HALVES = """
import sys
data = open(sys.argv[1], "rb").read()
with open(sys.argv[2], "wb") as f:
    f.write(data[:len(data) // 2]); f.flush()
    open(sys.argv[3], "rb").read()  # a FIFO: end of file once the test lets it go on
    f.write(data[len(data) // 2:])
"""


def test_two_copies_to_one_name_at_once_are_held_not_uploaded_as_a_mix(tmp_path, profiled_emulator,
                                                                      mount_factory):
    """The hostile run's find: a slow writer of A and a `cp B` to the same name, both exiting 0,
    left a mix of A and B, which was uploaded as complete."""
    emulator = profiled_emulator
    mount = mount_factory(emulator, writeback_delay=WINDOW)
    session = mount.mountpoint / "s"
    session.mkdir()
    make_sources(tmp_path / "src", {"a.jpg": 40_000, "b.jpg": 30_000})
    go = tmp_path / "go"
    os.mkfifo(go)
    slow = subprocess.Popen([sys.executable, "-c", IN_TWO_HALVES, str(tmp_path / "src" / "a.jpg"),
                             str(session / "t.jpg"), str(go)])
    try:
        wait_until(lambda: (session / "t.jpg").exists() and (session / "t.jpg").stat().st_size == 20_000, 30,
                   what="the first half written")
        subprocess.run(["cp", str(tmp_path / "src" / "b.jpg"), str(session / "t.jpg")], check=True, timeout=60)
        with open(go, "wb"):
            pass
        assert wait_exit(slow) == 0
    finally:
        if slow.poll() is None:
            slow.kill()
    held = wait_state(mount, "s", "t.jpg")
    assert held["state"] == "held" and "wrote it at the same time" in held["error"], held
    assert remote_files(emulator) == {}


@pytest.mark.parametrize("mode", ["--inplace", "--append"])
def test_rsync_cut_off_in_place_is_never_uploaded_and_append_finishes_it(mode, tmp_path, slow_source,
                                                                         profiled_emulator, mount_factory):
    """rsync writing the final name itself, its parent stopped by SIGINT, SIGTERM or SIGKILL (as
    `kill` or a closed terminal would): its receiver closes the partial file and exits non-zero."""
    source, sha = slow_source
    emulator = profiled_emulator
    mount = mount_factory(emulator, writeback_delay=WINDOW)
    sessions = {}
    for how in ("SIGINT", "SIGTERM", "SIGKILL"):
        session = mount.mountpoint / how
        session.mkdir()
        marker = f"--log-file-format=cut-{how}{mode}"  # tells this run's rsync processes apart
        rsync = subprocess.Popen(["rsync", mode, "--bwlimit=3000", marker, str(source), str(session)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: state_of(mount, how, "big.e57").get("size", 0) >= 2 * MiB, 60,
                   what="rsync to write 2 MiB")
        rsync.send_signal(getattr(signal, how))  # the parent only
        assert wait_exit(rsync) != 0
        wait_until(lambda: not rsync_processes(marker), 30, what="rsync's children to end")
        cut = wait_state(mount, how, "big.e57")
        assert cut["state"] in ("held", "interrupted"), cut
        assert cut["size"] < 24 * MiB and "copy it again" in cut["error"]
        sessions[how] = session
    assert not remote_files(emulator), "a partial file reached the server"

    # rsync --append sends the rest to the same files: they are whole and upload.
    for how, session in sessions.items():
        done = subprocess.run(["rsync", "--append", str(source), str(session)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    for how in sessions:
        assert wait_state(mount, how, "big.e57")["state"] == "complete"
        assert_uploaded(emulator, mount.status_json(how)["upload_id"], {"big.e57": sha})


def test_a_file_moved_to_another_session_at_pick_up_goes_to_that_session(tmp_path, emulator, mount_factory):
    """Paused, a worker picks the file up and waits before its first PUT (having opened s1's
    server session): moved to s2 meanwhile, it must be sent into s2's session, never s1's."""
    mount = mount_factory(emulator, writeback_delay=WINDOW)
    sources = make_sources(tmp_path / "src", {"a.jpg": MiB})
    for name in ("s1", "s2"):
        (mount.mountpoint / name).mkdir()
    assert run_fs360(tmp_path, "pause", str(mount.mountpoint), env=harness_runtime()).returncode == 0
    subprocess.run(["cp", str(tmp_path / "src" / "a.jpg"), str(mount.mountpoint / "s1")], check=True)
    # The session opens with the file's first write, before cp's exit, and the worker picks the
    # file up at the exit: either may come first.
    wait_until(lambda: state_of(mount, "s1", "a.jpg")["state"] == "uploading" and mount.status_json("s1")["upload_id"],
               30, what="a.jpg picked up by a paused worker, and s1's server session open")
    os.rename(mount.mountpoint / "s1" / "a.jpg", mount.mountpoint / "s2" / "a.jpg")
    assert run_fs360(tmp_path, "resume", str(mount.mountpoint), env=harness_runtime()).returncode == 0
    assert wait_state(mount, "s2", "a.jpg")["state"] == "complete"
    s2 = mount.status_json("s2")["upload_id"]
    assert_uploaded(emulator, s2, {"a.jpg": sources["a.jpg"]})
    assert [f["upload_id"] for f in emulator.files()] == [s2]


def test_fs360_release_uploads_a_held_file_the_user_knows_is_whole(tmp_path, emulator, mount_factory):
    """`cp a missing.jpg b dest/` exits 1 though a and b are whole: both held; released, they upload."""
    mount = mount_factory(emulator, writeback_delay=WINDOW)
    session = mount.mountpoint / "s"
    session.mkdir()
    sources = make_sources(tmp_path / "src", {"a.jpg": 1000, "b.jpg": 2000})
    cp = subprocess.run(["cp", str(tmp_path / "src" / "a.jpg"), str(tmp_path / "src" / "missing.jpg"),
                         str(tmp_path / "src" / "b.jpg"), str(session)], capture_output=True)
    assert cp.returncode == 1
    for name in ("a.jpg", "b.jpg"):
        assert wait_state(mount, "s", name)["state"] == "held"
    assert "cp exited with status 1" in Path(session / "status").read_text()
    refused = run_fs360(tmp_path, "release", str(session / "status.json"), env=harness_runtime())
    assert refused.returncode != 0 and "status.json is not a file" in refused.stderr
    released = run_fs360(tmp_path, "release", str(session / "a.jpg"), str(session / "b.jpg"),
                         env=harness_runtime())
    assert released.returncode == 0, released.stderr
    for name in ("a.jpg", "b.jpg"):
        assert wait_state(mount, "s", name)["state"] == "complete"
    assert_uploaded(emulator, None, sources)
    outside = run_fs360(tmp_path, "release", str(tmp_path / "src" / "a.jpg"), env=harness_runtime())
    assert outside.returncode != 0 and "not inside an fs360 mount" in outside.stderr
    missing = run_fs360(tmp_path, "release", str(session / "nothere.jpg"), env=harness_runtime())
    assert missing.returncode != 0
    assert missing.stderr.strip() == "fs360: s/nothere.jpg: no such file in the mount: check the path", missing.stderr


def run_again_changing_nothing(mount, emulator, runs: list[list[str]], sources: dict) -> None:
    """Each command of `runs` run again over the session `s` holding `sources` complete: each exits
    0, and nothing changes (every file complete, none deleted, no PUT)."""
    puts = request_count(emulator, "PUT")
    for argv in runs:
        again = subprocess.run(argv, capture_output=True, text=True)
        assert again.returncode == 0, (argv, again.stderr)
    assert mount.wait_settled("s") == {name: "complete" for name in sources}
    assert mount.status_json("s")["deleted_but_held_by_server"] == []
    assert request_count(emulator, "PUT") == puts


def test_reruns_that_unlink_first_bring_the_servers_files_back(tmp_path, profiled_emulator, mount_factory):
    """tar -x, unzip -o, cp --remove-destination and install run twice: the second run deletes each
    complete file and writes it again. Identical, it is the server's file again: exit 0, no PUT,
    complete, and .create is not blocked by deleted files."""
    emulator = profiled_emulator
    mount = mount_factory(emulator)
    session = mount.mountpoint / "s"
    session.mkdir()
    src = tmp_path / "src"
    sources = make_sources(src, {"a.jpg": 300_000, "b.e57": MiB, "c.jpg": 5000, "d.jpg": 7000, "e.jpg": 9000})
    subprocess.run(["tar", "-cf", str(tmp_path / "t.tar"), "-C", str(src), "a.jpg", "b.e57"], check=True)
    subprocess.run(["zip", "-jq", str(tmp_path / "z.zip"), str(src / "c.jpg")], check=True)
    runs = [["tar", "-xf", str(tmp_path / "t.tar"), "-C", str(session)],
            ["unzip", "-oq", str(tmp_path / "z.zip"), "-d", str(session)],
            ["cp", "--remove-destination", str(src / "d.jpg"), str(session)],
            ["install", "-m", "0644", str(src / "e.jpg"), str(session)]]
    for argv in runs:
        subprocess.run(argv, check=True)
    assert mount.wait_settled("s") == {name: "complete" for name in sources}
    run_again_changing_nothing(mount, emulator, runs, sources)
    (session / ".create").write_text('{"title": "re-run"}')
    assert mount.wait_project("s")["state"] == "ready"
    assert_uploaded(emulator, None, sources)


def test_identical_rewrites_by_shell_redirection_and_dd_are_accepted(tmp_path, profiled_emulator, mount_factory):
    """`cat x > f`, `dd if=x of=f` and `rm f; cat x > f` again over files the server holds: the
    shell and dd close a first descriptor of the file before writing. Each failed with EACCES
    ("the server already holds a different ...") though the bytes were the same (hostile round 5)."""
    emulator = profiled_emulator
    mount = mount_factory(emulator)
    session = mount.mountpoint / "s"
    session.mkdir()
    src = tmp_path / "src"
    sources = make_sources(src, {"a.jpg": 300_000, "b.jpg": 5000, "c.jpg": 7000})
    for name in sources:
        shutil.copyfile(src / name, session / name)
    assert mount.wait_settled("s") == {name: "complete" for name in sources}
    runs = [["sh", "-c", 'cat "$0" > "$1"', str(src / "a.jpg"), str(session / "a.jpg")],
            ["dd", f"if={src / 'b.jpg'}", f"of={session / 'b.jpg'}", "status=none"],
            ["sh", "-c", 'rm "$1" && cat "$0" > "$1"', str(src / "c.jpg"), str(session / "c.jpg")]]
    run_again_changing_nothing(mount, emulator, runs, sources)
    different = subprocess.run(["sh", "-c", 'echo other > "$0"', str(session / "b.jpg")], capture_output=True)
    assert different.returncode != 0
    assert_uploaded(emulator, None, sources)


def test_a_touch_or_a_write_in_place_never_makes_a_partial_file_whole(tmp_path, profiled_emulator, mount_factory):
    """A held file (curl cut off) and an interrupted one (a writer killed holding it) stay so
    whatever opens them for writing and exits 0 without writing them to their end: touch, an
    append of nothing, truncate to the same size, fallocate, a write in place. An append of the
    rest by a program that exits 0 still makes the held one whole."""
    emulator = profiled_emulator
    mount = mount_factory(emulator, writeback_delay=WINDOW)
    session = mount.mountpoint / "s"
    session.mkdir()
    body = held_by_a_cut_off_curl(session / "scan.e57")
    killed = session / "photo.jpg"
    script = (f"import os; f = open({str(killed)!r}, 'wb'); f.write(os.urandom(300_000)); f.flush(); "
              f"os.kill(os.getpid(), 9)")
    assert subprocess.run([sys.executable, "-c", script]).returncode == -signal.SIGKILL
    assert wait_state(mount, "s", "scan.e57")["state"] == "held"
    assert wait_state(mount, "s", "photo.jpg")["state"] == "interrupted"

    pokes = [["touch", "{}"], ["sh", "-c", ': >> "$0"', "{}"], ["truncate", "-s", "+0", "{}"],
             [sys.executable, "-c", "import sys; open(sys.argv[1], 'r+b').close()", "{}"]]
    if shutil.which("fallocate"):
        pokes.append(["fallocate", "-l", "{size}", "{}"])
    in_place = [["dd", "if=/dev/zero", "of={}", "bs=100", "count=1", "conv=notrunc", "status=none"]]
    for name, state, commands in (("scan.e57", "held", pokes), ("photo.jpg", "interrupted", pokes + in_place)):
        for argv in commands:
            path = session / name
            argv = [a.format(path, size=path.stat().st_size) for a in argv]
            assert subprocess.run(argv, capture_output=True).returncode == 0, argv
            after = wait_state(mount, "s", name)
            assert after["state"] == state, (argv, after)
    assert not remote_files(emulator), "a partial file reached the server"

    subprocess.run(["sh", "-c", 'cat >> "$0"', str(session / "scan.e57")], input=body[MiB // 2:], check=True)
    assert wait_state(mount, "s", "scan.e57")["state"] == "complete"
    assert_uploaded(emulator, None, {"scan.e57": hashlib.sha256(body).hexdigest()})


def test_a_delta_rerun_of_rsync_in_place_leaves_a_held_file_held_and_says_why_now(tmp_path, emulator, mount_factory):
    """rsync --inplace --no-whole-file over a held file writes only the blocks that differ, and
    exits 0: its exit says nothing of the parts it did not write, so the file stays held, but the
    reason says what happened last and the way out (not the first writer's stale failure). A
    copy that writes it whole (`rsync -I --whole-file`) makes it whole."""
    mount = mount_factory(emulator, writeback_delay=WINDOW)
    session = mount.mountpoint / "s"
    session.mkdir()
    body = held_by_a_cut_off_curl(session / "scan.e57")
    assert "curl exited with status 18" in wait_state(mount, "s", "scan.e57")["error"]
    source = tmp_path / "scan.e57"
    source.write_bytes(body)
    # Blocks of 1000 bytes: the first differing one starts before the held file's end (no append).
    delta = subprocess.run(["rsync", "--inplace", "--no-whole-file", "--block-size=1000", str(source), str(session)],
                           capture_output=True, text=True, timeout=60)
    assert delta.returncode == 0, delta.stderr
    held = wait_state(mount, "s", "scan.e57")
    assert held["state"] == "held" and held["size"] == len(body), held
    assert held["error"].startswith("rsync changed parts of it in place after an earlier writing of it did not "
                                    "finish"), held
    assert held["error"].endswith(f"{HELD_WAY_OUT} (`rsync -I --whole-file` copies it whole)"), held
    assert not remote_files(emulator), "a file not known whole reached the server"

    whole = subprocess.run(["rsync", "--inplace", "-I", "--whole-file", str(source), str(session)],
                           capture_output=True, text=True, timeout=60)
    assert whole.returncode == 0, whole.stderr
    assert wait_state(mount, "s", "scan.e57")["state"] == "complete"
    assert_uploaded(emulator, None, {"scan.e57": hashlib.sha256(body).hexdigest()})


def test_a_touch_while_the_writer_runs_on_does_not_stand_in_for_its_exit(tmp_path, profiled_emulator,
                                                                        mount_factory):
    """A program closes its file, works on, then fails: a touch of the file meanwhile (another
    process, exit 0) must not commit it; the file is held at the program's failure."""
    emulator = profiled_emulator
    mount = mount_factory(emulator, writeback_delay=WINDOW)
    session = mount.mountpoint / "s"
    session.mkdir()
    go = tmp_path / "go"
    os.mkfifo(go)
    script = ("import sys; open(sys.argv[1], 'wb').write(b'x' * 100_000); open(sys.argv[2]).read(); "
              "raise SystemExit(1)")
    writer = subprocess.Popen([sys.executable, "-c", script, str(session / "half.jpg"), str(go)])
    try:
        assert wait_state(mount, "s", "half.jpg", ("closed",))["state"] == "closed"
        subprocess.run(["touch", str(session / "half.jpg")], check=True)
    finally:
        with open(go, "w"):  # lets the writer go on, to its failure
            pass
    assert wait_exit(writer) == 1
    held = wait_state(mount, "s", "half.jpg")
    assert held["state"] == "held" and "exited with status 1 right after writing it" in held["error"], held
    assert not remote_files(emulator), "the file reached the server before its writer failed"


def test_a_create_by_another_process_never_freezes_a_tree_file_whose_writer_runs_on(tmp_path, profiled_emulator,
                                                                                   mount_factory):
    """A program writes a file into the session's tree, closes it and works on; another process
    writes .create meanwhile. The file is not the .create writer's to declare done: the .create
    is refused ("still being written"), and the program's failure then holds the file. Nothing
    of it reaches the server, in an archive or otherwise."""
    emulator = profiled_emulator
    mount = mount_factory(emulator, writeback_delay=WINDOW)
    session = mount.mountpoint / "s"
    (session / "d").mkdir(parents=True)
    go = tmp_path / "go"
    os.mkfifo(go)
    script = ("import sys; open(sys.argv[1], 'wb').write(b'x' * 100_000); open(sys.argv[2]).read(); "
              "raise SystemExit(1)")
    writer = subprocess.Popen([sys.executable, "-c", script, str(session / "d" / "half.jpg"), str(go)])
    try:
        assert wait_state(mount, "s", "d/half.jpg", ("closed",))["state"] == "closed"
        create = subprocess.run([sys.executable, "-c", "import sys\nwith open(sys.argv[1], 'w') as f: f.write('{}')",
                                 str(session / ".create")], capture_output=True, text=True)
    finally:
        with open(go, "w"):  # lets the writer go on, to its failure
            pass
    assert wait_exit(writer) == 1
    assert create.returncode != 0 and "Invalid argument" in create.stderr, create.stderr
    assert "d/half.jpg: still being written" in mount.status_json("s")["project"]["refused"]
    held = wait_state(mount, "s", "d/half.jpg")
    assert held["state"] == "held" and "exited with status 1 right after writing it" in held["error"], held
    assert not remote_files(emulator) and not emulator.projects(), "the tree went up"


def test_a_create_by_the_tree_writer_or_its_child_freezes_the_tree_at_once(tmp_path, profiled_emulator,
                                                                          mount_factory):
    """A shell writes its tree files with a builtin and runs on; it (or a child of it) writing
    .create says the tree is done: the project is made from the tree at once, a minute before
    the write-back delay would have committed the files."""
    emulator = profiled_emulator
    mount = mount_factory(emulator, writeback_delay=WINDOW)
    for name, create in (("own", 'echo "{}" > "$1/.create"'),
                         ("child", f'{sys.executable} -c "import sys; open(sys.argv[1], \'w\').write(\'{{}}\')" '
                                   f'"$1/.create"')):
        session = mount.mountpoint / name
        (session / "d").mkdir(parents=True)
        script = f'echo scan > "$1/d/a.jpg"; {create}; sleep 30'  # the shell runs on past the test
        shell = subprocess.Popen(["bash", "-c", script, "sh", str(session)], start_new_session=True)
        try:
            project = mount.wait_project(name, timeout=25)
            assert project["state"] == "ready", project
        finally:
            os.killpg(shell.pid, signal.SIGKILL)
            shell.wait()
    assert sorted(f["name"] for f in emulator.files()) == ["child.zip", "own.zip"]


def test_an_append_never_finishes_a_file_whose_earlier_writer_left_a_hole(tmp_path, profiled_emulator,
                                                                          mount_factory):
    """A segmented downloader wrote two parts with a gap between and was killed: `curl -C -` or
    `cat rest >> f` appending the tail leaves the gap as zeros, so the file stays interrupted (a
    front-to-back writer's part is finished by the same append: the first test above)."""
    emulator = profiled_emulator
    mount = mount_factory(emulator, writeback_delay=WINDOW)
    session = mount.mountpoint / "s"
    session.mkdir()
    body = os.urandom(4 * MiB)
    script = ("import os, sys; fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)\n"
              "data = sys.stdin.buffer.read()\n"
              "os.pwrite(fd, data[:1 << 20], 0); os.pwrite(fd, data[2 << 20:3 << 20], 2 << 20)\n"
              "os.kill(os.getpid(), 9)")
    killed = subprocess.run([sys.executable, "-c", script, str(session / "cut.e57")], input=body)
    assert killed.returncode == -signal.SIGKILL
    assert wait_state(mount, "s", "cut.e57")["state"] == "interrupted"
    subprocess.run(["sh", "-c", 'cat >> "$0"', str(session / "cut.e57")], input=body[3 * MiB:], check=True)
    after = wait_state(mount, "s", "cut.e57")
    assert after["state"] == "interrupted" and after["size"] == 4 * MiB, after
    assert not remote_files(emulator), "a file with a hole reached the server"


def test_cat_rest_appended_from_a_shell_that_runs_on_finishes_a_held_file(tmp_path, profiled_emulator,
                                                                         mount_factory):
    """`cat rest >> f` typed in a shell: the shell's child opens the redirection and closes its
    first descriptor before it runs cat, and that shell never exits. Only cat wrote: its exit 0
    decides, and the held file is complete a minute before the write-back delay would say."""
    emulator = profiled_emulator
    mount = mount_factory(emulator, writeback_delay=WINDOW)
    session = mount.mountpoint / "s"
    session.mkdir()
    body = held_by_a_cut_off_curl(session / "scan.e57")
    assert wait_state(mount, "s", "scan.e57")["state"] == "held"
    (tmp_path / "rest").write_bytes(body[MiB // 2:])
    shell = subprocess.Popen(["bash", "-c", 'cat "$1" >> "$2"; sleep 60', "sh", str(tmp_path / "rest"),
                              str(session / "scan.e57")], start_new_session=True)
    try:
        assert wait_state(mount, "s", "scan.e57", ("complete",), timeout=40)["state"] == "complete"
    finally:
        os.killpg(shell.pid, signal.SIGKILL)
        shell.wait()
    assert_uploaded(emulator, None, {"scan.e57": hashlib.sha256(body).hexdigest()})



def test_a_file_written_through_a_mapping_after_its_close_waits_for_its_writers_exit(tmp_path, profiled_emulator,
                                                                                   mount_factory):
    """A program opens a file, maps it, closes the descriptor before writing, writes through the
    mapping and exits 1: nothing came through the file at its close, but its writes came later
    through the same open file, so its exit still decides: held, never uploaded."""
    emulator = profiled_emulator
    mount = mount_factory(emulator, writeback_delay=WINDOW)
    session = mount.mountpoint / "s"
    session.mkdir()
    assert run_fs360(tmp_path, "pause", str(mount.mountpoint), env=harness_runtime()).returncode == 0
    path = session / "mapped.e57"
    subprocess.run(["sh", "-c", 'head -c 65536 /dev/zero > "$0"', str(path)], check=True)
    # Committed at sh's exit; a paused worker may pick it up, and waits before its claim and PUT.
    assert wait_state(mount, "s", "mapped.e57", ("pending", "uploading"))["state"] in ("pending", "uploading")
    script = ("import mmap, os, sys\n"
              "fd = os.open(sys.argv[1], os.O_RDWR)\n"
              "m = mmap.mmap(fd, 65536)\n"
              "os.close(fd)\n"
              "m[:5] = b'fresh'\n"
              "m.flush()\n"
              "raise SystemExit(1)")
    assert subprocess.run([sys.executable, "-c", script, str(path)]).returncode == 1
    assert run_fs360(tmp_path, "resume", str(mount.mountpoint), env=harness_runtime()).returncode == 0
    held = wait_state(mount, "s", "mapped.e57")
    assert held["state"] == "held" and "exited with status 1" in held["error"], held
    assert not remote_files(emulator)
