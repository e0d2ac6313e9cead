"""Names through a real mount, on both emulator profiles: the rule's smoke test. The local name stays
as written, the server gets a name its flattening leaves unchanged, no two files share one, and bad
names are refused. Every case of the rule: tests/unit/test_rule_names.py."""

from __future__ import annotations

import errno
import os
import subprocess

from tests.harness import assert_uploaded, make_sources


def test_cp_of_colliding_and_non_ascii_names(profiled_emulator, mount_factory, tmp_path):
    """cp of colliding and non-ASCII names: each is uploaded under its own server name, shown in
    status and the xattr; touch, cp and mv onto a name with a control character, non-UTF-8 bytes or
    more than 255 bytes fail (EINVAL, ENAMETOOLONG)."""
    emulator = profiled_emulator
    mount = mount_factory(emulator)
    src = tmp_path / "src"
    local = ["scan 1.e57", "scan_1.e57", "Фото.JPG", "ab.jpg", "a\u0085b.jpg", "plan.ifc "]
    sources = make_sources(src, {name: 30_000 for name in local})  # one size: merging would hide
    session = mount.mountpoint / "Site A"
    session.mkdir()
    subprocess.run(["cp", *[str(src / name) for name in local], str(session)], check=True)
    assert sorted(os.listdir(session)) == sorted(local + ["status", "status.json"])
    states = mount.wait_settled("Site A")
    assert set(states.values()) == {"complete"}, states
    snapshot = mount.status_json("Site A")
    mapping = {f["name"]: f["server_name"] for f in snapshot["files"]}
    assert mapping["Фото.JPG"] == "Foto.jpg"
    assert mapping["plan.ifc "] == "plan.ifc"
    assert len({n.lower() for n in mapping.values()}) == len(local)
    for name in local:
        assert os.getxattr(session / name, "user.fs360.server_name").decode() == mapping[name]
    assert "Фото.JPG → Foto.jpg" in (session / "status").read_text()
    assert_uploaded(emulator, snapshot["upload_id"], {mapping[name]: sources[name] for name in local})

    refusals = [(["touch", f"{session}/tab\there.jpg"], "Invalid argument"),
                (["touch", os.fsencode(session) + b"/caf\xe9.jpg"], "Invalid argument"),
                (["cp", str(src / "ab.jpg"), f"{session}/{'b' * 252}.jpg"], "File name too long"),
                (["mkdir", f"{mount.mountpoint}/{'d' * 256}"], "File name too long"),
                # mv reports a rename's EINVAL as "cannot move ... to a subdirectory of itself".
                (["mv", f"{session}/ab.jpg", f"{session}/bad\x01.jpg"], "subdirectory of itself")]
    for command, message in refusals:
        result = subprocess.run(command, capture_output=True)
        assert result.returncode != 0 and message in result.stderr.decode(), (command, result)
    assert sorted(os.listdir(session)) == sorted(local + ["status", "status.json"])


def test_renaming_a_session_onto_an_empty_one_replaces_it(emulator, mount_factory, tmp_path):
    """POSIX rename of a directory onto an empty one (a file manager's "New Folder", renamed)."""
    mount = mount_factory(emulator)
    src = tmp_path / "src"
    sources = make_sources(src, {"a.jpg": 5000})
    (mount.mountpoint / "New Folder").mkdir()
    (mount.mountpoint / "Site B").mkdir()
    subprocess.run(["cp", str(src / "a.jpg"), str(mount.mountpoint / "New Folder")], check=True)
    os.rename(mount.mountpoint / "New Folder", mount.mountpoint / "Site B")
    assert sorted(os.listdir(mount.mountpoint)) == ["Site B", "status"]
    assert mount.wait_settled("Site B") == {"a.jpg": "complete"}
    (mount.mountpoint / "Other").mkdir()
    (mount.mountpoint / "Other" / "b.jpg").write_bytes(b"b")
    try:
        os.rename(mount.mountpoint / "Site B", mount.mountpoint / "Other")
        raise AssertionError("renamed onto a folder with files")
    except OSError as exc:
        assert exc.errno == errno.ENOTEMPTY
    assert_uploaded(emulator, mount.status_json("Site B")["upload_id"], sources)


def test_cp_a_of_a_folder_with_a_tab_in_a_name_lists_it_as_refused(profiled_emulator, mount_factory, tmp_path):
    """`cp -a` of a folder holding a name with a tab: that create is EINVAL, cp exits 1 and every
    file it copied is held. The refused name is in status's "refused" list with why and what to do,
    and the held files' reason points there (it was only "cp exited with status 1")."""
    from tests.harness import wait_until
    mount = mount_factory(profiled_emulator)
    src = tmp_path / "src"
    make_sources(src, {"a.jpg": 1000, "b.jpg": 2000, "tab\there.jpg": 300})
    copied = subprocess.run(["cp", "-a", f"{src}/.", str(mount.mountpoint / "s")], capture_output=True, text=True)
    assert copied.returncode == 1 and "Invalid argument" in copied.stderr, copied
    doc = mount.status_json("s")
    assert {"name": "tab\there.jpg", "reason": "not made: name has control characters (a tab), which no name on "
            "this mount may hold: rename the source without them and copy it again"} in doc["refused_names"], doc
    text = (mount.mountpoint / "s" / "status").read_text()
    assert "refused   tab\\u0009here.jpg: not made: name has control characters (a tab)" in text, text
    held = wait_until(lambda: [f for f in mount.status_json("s")["files"] if f["state"] == "held"] or None, 20,
                      what="the held files")
    for f in held:
        assert f["error"].startswith("cp exited with status 1 after the mount refused tab\there.jpg (invalid "
                                     "argument; see \"refused\" in its folder's status), right after writing this "
                                     "file: it may well be whole"), f
