"""The errno a real program sees through a real mount: the rule's smoke test. Every refusal and its
errno against the path model: tests/unit/test_rule_errno.py."""

from __future__ import annotations

import os
import subprocess

from tests.harness import make_sources, wait_until


def refused(*command) -> str:
    """Runs a real tool that must fail; returns its error message."""
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0, f"{command} succeeded"
    return result.stderr


def test_refusals_through_cp_ln_mv_rmdir_and_the_shell(tmp_path, emulator, mount_factory):
    """EPERM for files and links outside a session and links anywhere, EFBIG past the file cap, EEXIST,
    ENOTEMPTY, ENOENT, EISDIR, and EACCES for a file the server holds: as cp, ln, mv, rmdir, truncate
    and `echo >` report them."""
    mount = mount_factory(emulator, extra_args=["--max-file-size", "100000"])
    root = mount.mountpoint
    src = tmp_path / "src"
    make_sources(src, {"a.jpg": 1000, "big.e57": 100_001, "ok.e57": 100_000})
    (root / "s").mkdir()
    (root / "s" / "sub").mkdir()
    subprocess.run(["cp", src / "a.jpg", src / "ok.e57", root / "s"], check=True)   # up to the cap is fine

    assert "Operation not permitted" in refused("cp", src / "a.jpg", root)
    assert "Operation not permitted" in refused("ln", "-s", "/etc/passwd", root / "link")
    assert "Operation not permitted" in refused("ln", "-s", "/etc/passwd", root / "s" / "link.jpg")
    assert "Operation not permitted" in refused("ln", "-s", "/etc/passwd", root / "s" / "sub" / "l.jpg")
    assert "Operation not permitted" in refused("ln", root / "s" / "a.jpg", root / "s" / "hard.jpg")
    assert "File too large" in refused("cp", src / "big.e57", root / "s")
    assert "File exists" in refused("mkdir", root / "s")
    assert "Directory not empty" in refused("rmdir", root / "s")
    assert "No such file or directory" in refused("cp", src / "a.jpg", root / "s" / "nowhere" / "a.jpg")
    assert "Is a directory" in refused("bash", "-c", f'echo x > "{root}/s/sub"')

    wait_until(lambda: mount.file_states("s").get("a.jpg") == "complete", 30, what="a.jpg to be on the server")
    assert "Permission denied" in refused("bash", "-c", f'echo other > "{root}/s/a.jpg"')
    assert "Permission denied" in refused("truncate", "-s", "0", root / "s" / "a.jpg")
    assert "Permission denied" in refused("mv", root / "s" / "a.jpg", root / "s" / "b.jpg")
    assert (root / "s" / "a.jpg").read_bytes() == (src / "a.jpg").read_bytes()
    assert sorted(os.listdir(root / "s")) == ["a.jpg", "big.e57", "ok.e57", "status", "status.json", "sub"]
    assert mount.file_states("s")["big.e57"] == "interrupted"    # cp's partial copy is never uploaded
