"""`.create` through a real mount, once per emulator profile: the rule's smoke test. Every case of
the rule (contents, sizes, fields, refusals, rewrites, unlink before and after): tests/unit/test_rule_create.py."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request

from tests.harness import make_sources, remote_files, request_count, wait_until, write_marker, write_random
from tests.ops.common import harness_runtime, run_fs360


def server_project(emulator, name: str) -> dict:
    request = urllib.request.Request(f"{emulator.base_url}/projects/{name}",
                                     headers={"Authorization": f"Bearer {emulator.api_key}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def sh(script: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", script, "sh", *map(str, args)], capture_output=True, text=True, timeout=60)


def test_create_through_cp_touch_and_echo(tmp_path, mount_factory, profiled_emulator):
    """cp of an invalid or >64 KiB marker fails (EINVAL, EFBIG) and status says why, and `echo
    '{json}' > .create` then makes a project with its fields; `touch .create` makes a private project
    titled by the folder (the vendor's server defaults to public), also right after a refused one
    (the kernel may still cache its entry); then the session is sealed and `rm -r` removes it."""
    emulator = profiled_emulator
    mount = mount_factory(emulator)
    plain, options = mount.mountpoint / "Plain Title", mount.mountpoint / "folder"
    again = mount.mountpoint / "again"
    for folder in (plain, options, again):
        folder.mkdir()
    write_random(again / "b.jpg", 1000)
    write_random(plain / "a.jpg", 20_000)
    write_random(options / "cloud.las", 3 * 1024 * 1024)
    (tmp_path / "bad.json").write_bytes(b"{broken")
    (tmp_path / "huge.json").write_bytes(b'{"title": "' + b"x" * (80 * 1024) + b'"}')

    refused = sh('cp "$1" "$2/.create"', tmp_path / "bad.json", options)
    assert refused.returncode != 0 and "Invalid argument" in refused.stderr, refused
    assert ".create" not in os.listdir(options)
    project = mount.status_json("folder")["project"]
    assert project["state"] == "refused" and "invalid .create" in project["refused"], project
    # bash ignores errors of close(): the refusal comes at the write, so the shell sees it.
    echoed = sh("echo '{bad' > \"$1/.create\"", options)
    assert echoed.returncode != 0 and "Invalid argument" in echoed.stderr, echoed
    assert f"project   refused: {project['refused']}" in (options / "status").read_text()
    too_big = sh('cp "$1" "$2/.create"', tmp_path / "huge.json", options)
    assert too_big.returncode != 0 and "File too large" in too_big.stderr, too_big
    assert mount.status_json("folder")["project"]["state"] == "refused"

    assert sh('touch "$1/.create"', plain).returncode == 0
    assert sh('cp "$1" "$2/.create"', tmp_path / "bad.json", again).returncode != 0
    assert sh('touch "$1/.create"', again).returncode == 0
    assert sh('echo \'{"title": "Bridge survey", "privacy_mode": 1}\' > "$1/.create"', options).returncode == 0
    assert json.loads((options / ".create").read_text()) == {"title": "Bridge survey", "privacy_mode": 1}
    for session, title, privacy in (("Plain Title", "Plain Title", 2), ("folder", "Bridge survey", 1),
                                    ("again", "again", 2)):
        project = mount.wait_project(session)
        assert project["state"] == "ready" and project["status"] == 100 and "refused" not in project, project
        assert project["url"].startswith(emulator.root_url + "/projects/")
        record = server_project(emulator, project["name"])
        assert (record["title"], record["privacy_mode"], record["status"]) == (title, privacy, 100)
    assert sorted(p["title"] for p in emulator.projects()) == ["Bridge survey", "Plain Title", "again"]

    # Sealed: no new file, .create read-only; rm -r hides the marker and forgets the folder.
    late = sh('echo late > "$1/b.jpg"', plain)
    assert late.returncode != 0 and "Permission denied" in late.stderr, late
    rewrite = sh('echo "{}" > "$1/.create"', plain)
    assert rewrite.returncode != 0 and "Permission denied" in rewrite.stderr, rewrite
    # The kernel may answer from the attributes it cached at the `touch` (attr_timeout, 1 s).
    wait_until(lambda: os.stat(plain / ".create").st_mode & 0o777 == 0o444, 10,
               what=".create to show read-only once the project is created")
    removed = sh('rm -rf "$1"', plain)
    assert removed.returncode == 0, removed.stderr
    assert sorted(os.listdir(mount.mountpoint)) == ["again", "folder", "status"]
    assert len(emulator.projects()) == 3


def test_a_create_whose_post_may_have_gone_cannot_be_taken_back(tmp_path, mount_factory, profiled_emulator):
    """The POST's answer is lost and the server cannot say for a while whether it made the project.
    Meanwhile `rm .create` only hides the marker (the project may exist), a new file or a new
    .create is refused, and `rm -r` sends no DELETE: the project is made once, of a.jpg, and kept."""
    emulator = profiled_emulator
    mount = mount_factory(emulator)
    session = mount.mountpoint / "S"
    session.mkdir()
    write_random(session / "a.jpg", 5000)
    assert mount.wait_settled("S") == {"a.jpg": "complete"}
    unanswered = [{"endpoint": "create_project", "kind": "drop_response", "count": 1}] + [
        {"endpoint": endpoint, "kind": "error_503"} for endpoint in ("list_projects", "get_project")]
    emulator.set_faults(unanswered)
    assert sh('echo "{}" > "$1/.create"', session).returncode == 0
    wait_until(lambda: emulator.faults()["rules"][0].get("fired"), 30, what="the POST to go out")
    assert sh('rm "$1/.create"', session).returncode == 0
    assert ".create" not in os.listdir(session)
    for script in ('echo late > "$1/b.jpg"', 'echo "{}" > "$1/.create"'):
        refused = sh(script, session)
        assert refused.returncode != 0 and "Permission denied" in refused.stderr, (script, refused)
    assert mount.status_json("S")["project"]["state"] == "waiting"  # still requested: never forgotten
    emulator.clear_faults()
    project = mount.wait_project("S")
    assert project["state"] == "ready", project
    assert [(p["name"], p["create_count"]) for p in emulator.projects()] == [(project["name"], 1)]
    assert [f["name"] for f in emulator.files()] == ["a.jpg"]
    removed = sh('rm -rf "$1"', session)
    assert removed.returncode == 0, removed.stderr
    assert not [key for key in emulator.stats()["requests"] if key.startswith("DELETE")]


def test_a_project_refused_for_the_account_then_kept_waiting_by_a_deletion_says_only_why_it_waits(
        tmp_path, mount_factory, profiled_emulator):
    """The plan's project limit refuses the POST; the user deletes a file the server holds, which
    keeps the project waiting for good; then the account is fixed (`fs360 resume` checks it at
    once). Status must then give the deletion as the one reason: neither "held back" nor the
    project's "last error" may still say that the account refuses it."""
    emulator = profiled_emulator
    mount = mount_factory(emulator)
    session = mount.mountpoint / "Limit"
    make_sources(session, {"a.jpg": 20_000, "b.jpg": 10_000})
    wait_until(lambda: mount.file_states("Limit") == {"a.jpg": "complete", "b.jpg": "complete"}, what="both up")
    emulator.set_account(403, "project_limit_reached", endpoints=["create_project"])
    write_marker(session / ".create", b"")
    wait_until(lambda: (mount.status_json("Limit")["project"] or {}).get("error"), what="the refusal in status")
    subprocess.run(["rm", str(session / "a.jpg")], check=True)
    emulator.clear_account()
    assert run_fs360(tmp_path, "resume", str(mount.mountpoint), env=harness_runtime()).returncode == 0

    def settled():
        status = mount.status_json("Limit")
        return status if status["project"]["error"] is None and not status["held_back"] else None
    try:
        status = wait_until(settled, 30, what="the account's refusal gone from status")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; status:\n{(session / 'status').read_text()}") from None
    assert status["project"]["state"] == "waiting" and "a.jpg" in status["project"]["waiting_for"]
    assert "last error" not in (session / "status").read_text()
    assert request_count(emulator, "POST create_project 2") == 0


def test_rsync_a_of_a_prepared_folder_holding_create(tmp_path, mount_factory, profiled_emulator):
    """`rsync -a` of a folder that holds its .create: rsync writes `.create.XXXXXX` and renames
    it onto .create, which requests the project with its fields as writing .create does, so
    rsync exits 0 and its files are not held by its failure. An invalid one fails that rename
    with the reason in status, as a written one fails its close."""
    emulator = profiled_emulator
    mount = mount_factory(emulator)
    prepared, invalid = tmp_path / "prepared", tmp_path / "invalid"
    sources = make_sources(prepared, {"a.jpg": 300_000, "b.jpg": 20_000})
    (prepared / ".create").write_text('{"title": "Prepared", "privacy_mode": 1}\n')
    make_sources(invalid, {"c.jpg": 1000})
    (invalid / ".create").write_text('{"title": "Prepared",}\n')

    copied = subprocess.run(["rsync", "-a", f"{prepared}/", f"{mount.mountpoint}/P/"],
                            capture_output=True, text=True, timeout=120)
    assert copied.returncode == 0, copied.stderr
    project = mount.wait_project("P")
    assert project["state"] == "ready", project
    assert sorted(os.listdir(mount.mountpoint / "P")) == [".create", "a.jpg", "b.jpg", "status", "status.json"]
    assert mount.file_states("P") == {"a.jpg": "complete", "b.jpg": "complete"}
    record = server_project(emulator, project["name"])
    assert (record["title"], record["privacy_mode"]) == ("Prepared", 1)
    uploaded = remote_files(emulator, mount.status_json("P")["upload_id"])
    assert {name: f["sha256"] for name, f in uploaded.items()} == sources

    refused = subprocess.run(["rsync", "-a", f"{invalid}/", f"{mount.mountpoint}/I/"],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 23 and "Invalid argument" in refused.stderr, refused
    status = mount.status_json("I")
    assert status["project"]["state"] == "refused" and "invalid .create" in status["project"]["refused"], status
    assert ".create" not in os.listdir(mount.mountpoint / "I")


def test_rsync_a_of_a_prepared_folder_with_a_tree_holding_create(tmp_path, mount_factory, profiled_emulator):
    """rsync sends dot-names first: its `.create` comes before the tree's files. Renamed into place,
    it is taken at rsync's exit, not at the rename, so the tree is frozen whole: rsync exits 0 and
    the project's archive holds every file of the tree, next to the complete top-level files."""
    from tests.fuse.test_trees import SESSION, archive_entry, archive_of, check_project, make_tree

    emulator = profiled_emulator
    mount = mount_factory(emulator)
    source = make_tree(tmp_path / "src")
    (source / ".create").write_text('{"title": "Prepared scan"}\n')
    copied = subprocess.run(["rsync", "-a", f"{source}/", f"{mount.mountpoint / SESSION}/"],
                            capture_output=True, text=True, timeout=120)
    assert copied.returncode == 0, copied.stderr
    check_project(mount, emulator)
    assert archive_entry(mount)["sha256"] == archive_of(source, zip64=False)
    assert mount.file_states(SESSION) == {"top.jpg": "complete", f"{SESSION}.zip": "complete"}
    assert server_project(emulator, mount.status_json(SESSION)["project"]["name"])["title"] == "Prepared scan"


RENAME_THEN_FAIL = """
import os, sys
folder = sys.argv[1]
with open(os.path.join(folder, ".create.Xy12ab"), "w") as f:
    f.write('{"title": "Half"}')
os.rename(os.path.join(folder, ".create.Xy12ab"), os.path.join(folder, ".create"))
print(sorted(os.listdir(folder)), flush=True)
sys.exit(1)
"""


def test_a_create_renamed_into_place_by_a_program_that_then_fails_is_not_taken(tmp_path, mount_factory,
                                                                              profiled_emulator):
    """A program renames its scratch file onto .create and exits 1: the folder may be incomplete,
    so no project is requested, .create leaves the listing and status says why in words."""
    emulator = profiled_emulator
    mount = mount_factory(emulator)
    session = mount.mountpoint / "Half"
    session.mkdir()
    write_random(session / "a.jpg", 20_000)
    run = subprocess.run(["python3", "-c", RENAME_THEN_FAIL, str(session)], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 1 and "'.create'" in run.stdout, run  # renamed, listed while pending
    project = wait_until(lambda: (mount.status_json("Half")["project"] or {}).get("refused"), 30,
                         what="the refusal of .create")
    assert project.startswith("python3 exited with status 1 after it put .create here, so .create was not "
                              "taken: the folder may be incomplete"), project
    assert mount.status_json("Half")["project"]["state"] == "refused"
    assert ".create" not in os.listdir(session)
    assert "project   refused: python3 exited with status 1" in (session / "status").read_text()
    assert request_count(emulator, "POST create_project") == 0


def non_get_requests(emulator) -> dict:
    """What a re-run could have sent (polling a project GETs on its own)."""
    return {key: n for key, n in emulator.stats()["requests"].items() if not key.startswith("GET")}


def test_a_re_run_of_the_same_copy_of_a_prepared_folder_is_a_no_op(tmp_path, mount_factory, profiled_emulator):
    """rsync -a of a folder holding .create and a tree made the project; the same rsync again, its
    -c (checksum) for .create, and cp -a of .create and the top-level files find nothing to do: exit
    0, nothing sent, nothing requested. .create reads back the source's bytes, size and mtime (not
    the fields rendered anew, which rsync took for a change it could not write), also after a
    remount."""
    emulator = profiled_emulator
    mount = mount_factory(emulator)
    prepared, session = tmp_path / "prepared", mount.mountpoint / "S"
    make_sources(prepared, {"a.jpg": 200_000, "b.jpg": 20_000})
    make_sources(prepared / "sub" / "deep", {"c.e57": 30_000})
    marker = prepared / ".create"
    marker.write_bytes(b'{"title":"T"}\n')                          # compact: fs360 renders it with a blank
    os.utime(marker, ns=(1_600_000_000_000_000_000, 1_600_000_000_123_456_789))
    rsync = ["rsync", "-a", "-i", f"{prepared}/", f"{session}/"]
    copied = subprocess.run(rsync, capture_output=True, text=True, timeout=120)
    assert copied.returncode == 0, copied.stderr
    project = mount.wait_project("S")
    assert project["state"] == "ready" and project["title"] == "T", project
    sent = non_get_requests(emulator)

    def check_marker():
        st = os.stat(session / ".create")
        assert (session / ".create").read_bytes() == marker.read_bytes()
        assert (st.st_size, st.st_mtime_ns) == (14, marker.stat().st_mtime_ns)

    def check_no_op(command):
        again = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0, (command, again.stderr)
        assert not [line for line in again.stdout.splitlines() if line.startswith((">", "c"))], again.stdout

    check_marker()
    check_no_op(rsync)
    check_no_op(["rsync", "-a", "-i", "-c", str(marker), f"{session}/"])
    check_no_op(["cp", "-a", str(marker), str(prepared / "a.jpg"), str(prepared / "b.jpg"), f"{session}/"])
    check_marker()
    mount.unmount()
    mount.start()
    check_marker()
    check_no_op(rsync)
    check_no_op(["cp", "-a", str(marker), f"{session}/"])
    assert non_get_requests(emulator) == sent
    assert mount.status_json("S")["refused_names"] == []


def test_rsync_delete_that_removes_create_says_the_request_was_cancelled(tmp_path, mount_factory, profiled_emulator):
    """`rsync -a --delete` of a source without .create removes the session's .create: the waiting
    request is cancelled (SEMANTICS: unlink .create cancels), and status says so, who removed it
    and what to do, instead of showing no project at all."""
    mount = mount_factory(profiled_emulator)
    session = mount.mountpoint / "s"
    src = tmp_path / "src"
    make_sources(src, {"a.jpg": 2000})
    session.mkdir()
    with open(session / "open.jpg", "wb") as held_open:  # still written: the request waits for it
        held_open.write(b"x" * 100)
        held_open.flush()
        assert sh('echo "{}" > "$1/.create"', session).returncode == 0
        assert mount.status_json("s")["project"]["state"] == "waiting"
        synced = sh('rsync -a --delete --exclude "status*" --exclude open.jpg "$1/" "$2/"', src, session)
        assert synced.returncode == 0, synced
        assert ".create" not in os.listdir(session)
        project = mount.status_json("s")["project"]
        assert project["state"] == "cancelled", project
        assert "cancelled because .create was removed by rsync" in project["cancelled"], project
        assert "write .create again" in project["cancelled"] and "--exclude .create" in project["cancelled"]
        assert f"project   cancelled: {project['cancelled']}" in (session / "status").read_text()
