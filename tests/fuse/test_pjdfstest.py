"""pjdfstest on a shared mount (-o allow_other, as the README's fstab line): mkdir, rmdir, chmod,
chown, unlink, rename, open and truncate, run as root with pjdfstest switching users.

Every failure left is by design (doc/SEMANTICS.md, "What pjdfstest finds"): fs360 holds
folders and regular files only, so fifos, sockets, device nodes, symlinks and hard links are
EPERM; a test file that makes one then fails the checks it makes of it. Anything else fails
this test.

One test (a class: xdist's loadscope gives each to a worker of its own) per pjdfstest directory,
each on a mount of its own, with pjdfstest built once per run (`pjdfstest_built`). Its time is
pjdfstest's own `sleep 1`s (a ctime must move): 177 s of its 180 s run one file after another,
with the daemon busy 2.8 s of it. So the files of a directory run at once (FILES_AT_ONCE), each in
a session of its own (its checks of the folder's times see only its own steps): a directory
takes as long as its longest file (chown/00.t, ~90 s of sleeps; the rest 20 s at most).
prove -j would do the same, but this test reads each file's own TAP lines."""

from __future__ import annotations

import os
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.ops.common import harness_runtime, run_fs360

# Seconds each directory took in a parallel run here (chown/00.t alone is most of chown's): the
# scheduler (tests/scheduling.py) starts the longest first.
SUITES = {"chown": 100, "rename": 45, "unlink": 25, "chmod": 20, "open": 15, "rmdir": 10, "mkdir": 10,
          "truncate": 10}
# What fs360 refuses with EPERM: it holds folders and regular files only.
BY_DESIGN = {"mkfifo", "mknod", "symlink", "link", "bind", "connect"}
# The test files that make what fs360 refuses (and so fail the checks of it); every other passes whole.
BY_DESIGN_FILES = {
    "chmod/00.t", "chmod/01.t", "chmod/04.t", "chmod/06.t", "chmod/07.t", "chmod/11.t", "chown/00.t", "chown/01.t",
    "chown/04.t", "chown/06.t", "chown/07.t", "mkdir/01.t", "mkdir/07.t", "mkdir/10.t", "open/01.t", "open/06.t",
    "open/12.t", "open/16.t", "open/17.t", "open/22.t", "open/24.t", "rename/00.t", "rename/09.t", "rename/10.t",
    "rename/11.t", "rename/12.t", "rename/13.t", "rename/14.t", "rename/20.t", "rename/23.t", "rmdir/01.t",
    "rmdir/05.t", "rmdir/06.t", "truncate/07.t", "unlink/00.t", "unlink/07.t", "unlink/11.t"}
TRIED = re.compile(r"^not ok \d+ - tried '(?:-[ug] \S+ )*(?:-- )?(\w+) (.*?)', expected")


def unexplained(output: str) -> list[str]:
    """The failing lines of one .t file that no by-design refusal explains: neither the refusal
    itself, nor a later step on a name it touched (left missing, or the wrong kind: a step that
    fails on it taints the other names it names too), nor a bare check (a ctime compared) right
    after such a failure with no success in between."""
    missing: set[str] = set()
    left = []
    explained_run = False  # the failures since the last success are all explained
    linked = False  # a hard link was refused
    for line in output.splitlines():
        if line.startswith("ok "):
            explained_run = False
        if not line.startswith("not ok") or "# TODO" in line:
            continue
        tried = TRIED.match(line)
        if tried is None:
            if not explained_run:
                left.append(line)
            continue
        names = {part for arg in tried.group(2).split() for part in arg.split("/") if part.startswith("pjdfstest_")}
        # A refused hard link leaves every later count of links one short, whatever the name
        # became since (a rename is an "ok" line, its names unseen).
        counts_links = "nlink" in tried.group(2) and linked
        if tried.group(1) in BY_DESIGN or names & missing or counts_links:
            missing |= names
            linked = linked or tried.group(1) == "link"
            explained_run = True
        else:
            left.append(line)
            explained_run = False
    return left


FILES_AT_ONCE = 8


def outcome(output: str, name: str) -> tuple[str, list[str]]:
    """("passed" | "by design" | "failed", the failing lines to show) of one .t file's output."""
    left = unexplained(output)
    if left:
        return "failed", left[:5]
    failing = [line for line in output.splitlines() if line.startswith("not ok") and "# TODO" not in line]
    if not failing:
        return "passed", []
    if name not in BY_DESIGN_FILES:  # a failure that only looks explained: show it
        return "failed", failing[:5]
    return "by design", []


class PjdfstestDirectory:
    directory = ""

    @pytest.mark.fuse
    def test_pjdfstest_directory(self, tmp_path, emulator, mount_factory, pjdfstest_built):
        if os.getuid() != 0:
            pytest.skip("pjdfstest switches users: it runs as root")
        tests = sorted((pjdfstest_built / "tests" / self.directory).glob("*.t"))
        assert tests, f"pjdfstest has no {self.directory} tests"
        mount = mount_factory(emulator, extra_args=["-o", "allow_other"])
        # Its files are scratch: paused, nothing goes up (pjdfstest's names have no extension anyway).
        assert run_fs360(tmp_path, "pause", str(mount.mountpoint), env=harness_runtime()).returncode == 0

        def run(test):
            name = f"{self.directory}/{test.name}"
            session = mount.mountpoint / f"pjdfstest-{test.stem}"
            session.mkdir()
            os.chmod(session, 0o777)  # any user may make names in it, as on a shared disk
            result = subprocess.run(["sh", str(test)], cwd=session, capture_output=True, text=True, timeout=600)
            return name, *outcome(result.stdout, name)

        with ThreadPoolExecutor(FILES_AT_ONCE) as pool:
            outcomes = list(pool.map(run, tests))
        failures = {name: lines for name, verdict, lines in outcomes if verdict == "failed"}
        assert failures == {}, "\n".join(f"{name}: {lines}" for name, lines in failures.items())
        # Of pjdfstest's 135 files of these directories (doc/SEMANTICS.md, "What pjdfstest finds"),
        # 98 pass whole and 37 fail by design only.
        passed = {name for name, verdict, _ in outcomes if verdict == "passed"}
        expected_to_pass = {f"{self.directory}/{test.name}" for test in tests} - BY_DESIGN_FILES
        assert expected_to_pass <= passed


# One class per directory (TestChown, ...), each a work unit of its own with its estimate.
for _directory, _seconds in SUITES.items():
    globals()[f"Test{_directory.title()}"] = type(f"Test{_directory.title()}", (PjdfstestDirectory,),
                                                   {"directory": _directory,
                                                    "pytestmark": [pytest.mark.slow(_seconds)]})


def test_the_classifier_leaves_a_real_failure_in():
    """What this test would pass over: a refusal and its cascade; what it must report: the rest."""
    output = "\n".join([
        "ok 1",
        "not ok 2 - tried 'mkfifo pjdfstest_a 0644', expected 0, got EPERM",
        "not ok 3 - tried 'chmod pjdfstest_a 0111', expected 0, got ENOENT",
        "not ok 4",
        "ok 5",
        "not ok 6",
        "not ok 7 - tried 'stat pjdfstest_b/pjdfstest_c mode', expected ENAMETOOLONG, got ENOENT",
    ])
    assert unexplained(output) == ["not ok 6", output.splitlines()[-1]]
