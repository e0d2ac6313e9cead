"""Real WebDAV clients against `fs360 serve webdav`: litmus (the WebDAV test suite) and davfs2
(the Linux WebDAV filesystem) with cp -r, rsync -a and tar, sha256 checked on the emulator.

What litmus reports and why is listed in doc/SEMANTICS.md ("WebDAV"); these tests hold the
server to exactly that list.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from fs360.engine.archive import archive_names
from tests.harness import make_sources, remote_files, sha256_of, wait_until
from tests.webdav.conftest import require

SUITES = ["basic", "copymove", "props", "locks"]
RESULT = re.compile(r"(\d+)\. (\w+)\.{2,} *(pass|FAIL|SKIPPED|WARNING)(?: \((.*)\))?$")


def litmus(url: str, workdir: Path) -> tuple[dict[str, dict[str, tuple[str, str]]], str]:
    """Runs litmus's four suites at `url`: suite -> test -> (result, litmus's reason), and its output."""
    run = subprocess.run([require("litmus", "litmus"), url], cwd=workdir, env=dict(os.environ, TESTS=" ".join(SUITES)),
                         capture_output=True, text=True, timeout=600)
    results: dict[str, dict[str, tuple[str, str]]] = {}
    suite = None
    for line in run.stdout.splitlines():
        if line.startswith("-> running `"):
            suite = line.split("`")[1].split("'")[0]
            results[suite] = {}
        elif suite and (match := RESULT.search(line)):
            results[suite][match.group(2)] = (match.group(3), match.group(4) or "")
    return results, run.stdout


def failures(results) -> dict[str, str]:
    return {f"{suite}/{test}": reason for suite, tests in results.items()
            for test, (result, reason) in tests.items() if result == "FAIL"}


def test_litmus_passes_every_suite_in_a_sessions_folder(tmp_path, emulator, dav):
    """Inside a session's folder (the tree, uploaded as one archive at .create) every file may
    still change, so the WebDAV protocol is all that is tested: no failure (doc/SEMANTICS.md)."""
    dav.curl("-X", "MKCOL", path="Litmus", check_status=201)
    results, output = litmus(dav.url + "Litmus/", tmp_path)
    assert list(results) == SUITES, output
    assert failures(results) == {}, output
    assert all(result in ("pass",) for tests in results.values() for result, _ in tests.values()), output


def test_litmus_at_the_root_meets_the_upload_rules(tmp_path, emulator, dav):
    """At the root, litmus's folder is a session: its files are uploads. Once the server has said
    which extensions it takes (any 415 teaches fs360), litmus's names without an extension are
    refused at PUT with 403 and the reason, and litmus stops after its `basic` suite."""
    (tmp_path / "probe").write_bytes(b"x")
    dav.curl("-X", "MKCOL", path="Probe", check_status=201)
    dav.curl("-T", str(tmp_path / "probe"), path="Probe/noextension", check_status=201)
    dav.wait_state("Probe/noextension", "rejected")
    status, text = dav.curl("-T", str(tmp_path / "probe"), path="Probe/another")
    assert status == 403 and "the server does not take files without an extension" in text, text

    results, output = litmus(dav.url, tmp_path)
    assert failures(results) == {
        "basic/put_get": "PUT of `/litmus/res' failed: 403 Forbidden",
        "basic/put_get_utf8_segment": "PUT of `/litmus/res-%e2%82%ac' failed: 403 Forbidden",
    }, output
    assert list(results) == ["basic"], output  # litmus runs no suite after a failed one


# --- davfs2 ----------------------------------------------------------------------------------------

TREE = {"a.jpg": 300_000, "b.e57": 1_000_003, "c.png": 5_000, "Raw/d.jpg": 70_000, "Raw/deep/e.jpg": 10}


@pytest.fixture
def davfs(tmp_path):
    """mount(url) -> a davfs2 mount of `url` (root, /dev/fuse and mount.davfs needed)."""
    require("mount.davfs", "davfs2")
    if os.geteuid() != 0:
        pytest.skip("mount.davfs needs root here (or an fstab line with the user option)")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("davfs2 needs /dev/fuse")
    mounted = []
    # davfs2 keeps its cache as its own user (davfs2), who cannot enter pytest's 0700 tmp dirs.
    cache = Path(tempfile.mkdtemp(prefix="fs360-davfs-cache-"))
    cache.chmod(0o777)

    def mount(url: str) -> Path:
        point = tmp_path / "davfs"
        point.mkdir()
        secrets = tmp_path / "davfs-secrets"
        secrets.write_text(f"{url} anonymous anonymous\n")
        secrets.chmod(0o600)
        conf = tmp_path / "davfs2.conf"
        conf.write_text(f"secrets {secrets}\ncache_dir {cache}\ndelay_upload 0\nuse_locks 1\n")
        done = subprocess.run(["mount", "-t", "davfs", url, str(point), "-o", f"conf={conf}"],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], capture_output=True, timeout=120)
        if os.path.ismount(point):
            subprocess.run(["umount", "-l", str(point)], capture_output=True)
    shutil.rmtree(cache, ignore_errors=True)


def make_tree(folder: Path) -> dict[str, str]:
    return {path: make_sources((folder / path).parent, {Path(path).name: size})[Path(path).name]
            for path, size in TREE.items()}


@pytest.mark.slow(10)
def test_davfs2_cp_rsync_and_tar_upload_the_tree(tmp_path, emulator, dav, davfs):
    """Three sessions written through davfs2 (cp -r, rsync -a, tar): their top-level files reach
    the server with equal sha256, and each tree goes up as the session's archive at .create."""
    expected = make_tree(tmp_path / "src" / "Scan1")
    mnt = davfs(dav.url)
    subprocess.run(["cp", "-r", str(tmp_path / "src" / "Scan1"), str(mnt)], check=True, timeout=300)
    (mnt / "Scan2").mkdir()
    subprocess.run(["rsync", "-a", f"{tmp_path / 'src' / 'Scan1'}/", f"{mnt / 'Scan2'}/"], check=True, timeout=300)
    (mnt / "Scan3").mkdir()
    subprocess.run(f"tar -C '{tmp_path / 'src' / 'Scan1'}' -cf - . | tar -C '{mnt / 'Scan3'}' -xf -",
                   shell=True, check=True, timeout=300)
    sessions = ["Scan1", "Scan2", "Scan3"]
    top = {path: sha for path, sha in expected.items() if "/" not in path}
    for session in sessions:
        for path in top:
            dav.wait_state(f"{session}/{path}", "complete")
        for path, sha in expected.items():  # the tree as it arrived, read back over HTTP
            out = tmp_path / "got"
            dav.curl("-o", str(out), path=f"{session}/{path}")
            assert sha256_of(out) == sha, f"{session}/{path}"
        (tmp_path / "create.json").write_text("{}")
        dav.curl("-T", str(tmp_path / "create.json"), path=f"{session}/.create", check_status=201)

    tree = [path for path in TREE if "/" in path]
    for session in sessions:
        def project():
            return json.loads(dav.curl(path=f"{session}/status.json")[1])["project"] or {}
        wait_until(lambda: project().get("state") == "ready", 180, 0.3, what=f"the project of {session}")
        mapped = archive_names(tree)
        assert sorted(project()["record"]["files"]) == sorted(list(top) + [n for n in mapped.values()
                                                                             if not n.endswith("/")])
        snapshot = json.loads(dav.curl(path=f"{session}/status.json")[1])
        (archive,) = [f for f in snapshot["files"] if f.get("archive")]
        upload_id = snapshot["upload_id"]
        remote = remote_files(emulator, upload_id)
        assert remote[f"{session}.zip"]["complete"] and remote[f"{session}.zip"]["sha256"] == archive["sha256"]
        for path, sha in top.items():
            assert remote[path]["complete"] and remote[path]["sha256"] == sha, (session, path)
        assert set(remote) == {*top, f"{session}.zip"}
    assert emulator.violations() == []
