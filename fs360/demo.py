"""`fs360 demo`: the whole flow against the built-in emulator, narrated step by step."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .config import MiB
from .fs.status import human_bytes


class DemoError(Exception):
    pass


def run_demo(keep: bool) -> int:
    """Emulator, mount, sample files, a project: the whole flow, narrated."""
    work = Path(tempfile.mkdtemp(prefix="fs360-demo-"))
    mountpoint = work / "mnt"
    mountpoint.mkdir()
    cache = work / "cache"
    env_args = ["mount", str(mountpoint), "--local", "--cache-dir", str(cache), "--writeback-delay", "0.5",
                "--poll-interval", "1", "--emulator-arg=--processing-seconds=6"]
    print(f"== fs360 demo in {work}")
    mounted = False
    try:
        code = subprocess.call([sys.executable, "-m", "fs360.cli", *env_args])
        if code != 0:
            raise DemoError("the demo mount failed")
        mounted = True
        session = mountpoint / "Demo scan"
        print(f"== mkdir '{session.name}' (one folder = one upload session)")
        session.mkdir()
        samples = {"facade-001.jpg": 6 * MiB, "facade-002.jpg": 6 * MiB, "site.e57": 20 * MiB,
                   "notes.ifc": 300 * 1024}
        for name, size in samples.items():
            print(f"== writing {name} ({human_bytes(size)})")
            with open(session / name, "wb") as f:
                remaining = size
                while remaining:
                    block = os.urandom(min(remaining, MiB))
                    f.write(block)
                    remaining -= len(block)
        tree = {"Scans/scan 1.e57": 4 * MiB, "Scans/Raw/notes été.txt": 2 * 1024, "Panoramas/pano-001.jpg": 3 * MiB}
        print("== a tree: " + ", ".join(tree) + ", and an empty folder 'Control'")
        for path, size in tree.items():
            (session / path).parent.mkdir(parents=True, exist_ok=True)
            (session / path).write_bytes(os.urandom(size))
        (session / "Control").mkdir()
        print("   its files wait 'in tree': nothing of a tree is uploaded before .create")
        for line in (session / "status").read_text().splitlines():
            if "→ in" in line:
                print(f"   {line.strip()}")
        print('== echo \'{"title": "fs360 demo", "privacy_mode": 1}\' > .create')
        (session / ".create").write_text('{"title": "fs360 demo", "privacy_mode": 1}')
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            snap = json.loads((session / "status.json").read_text())
            project = snap["project"] or {}
            print(f"   {snap['totals']['complete']}/{snap['totals']['files']} files complete, "
                  f"project {project.get('state')} {project.get('status')}%")
            if project.get("state") == "ready":
                break
            if project.get("state") == "failed":
                raise DemoError(f"project failed: {project.get('error')}")
            time.sleep(1)
        else:
            raise DemoError("the project was not ready within 180 s")
        archive = [f for f in snap["files"] if f.get("archive")]
        if archive:
            print(f"== the tree went up as one archive, {archive[0]['server_name']} (sha256 {archive[0]['sha256']}); "
                  f"the project lists: {', '.join(project['record'].get('files', []))}")
        print("== cat status")
        print((session / "status").read_text())
        print("== fs360 unmount --wait")
        subprocess.check_call([sys.executable, "-m", "fs360.cli", "unmount", "--wait", str(mountpoint)])
        mounted = False
        print("== demo complete: the project is ready")
        return 0
    finally:
        if mounted:
            subprocess.call(["fusermount3", "-u", str(mountpoint)], stderr=subprocess.DEVNULL)
            time.sleep(1)
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
