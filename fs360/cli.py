"""The `fs360` command: mount, unmount, status, emulator, demo."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .config import DEFAULT_LOCAL_ONLY_PATTERNS, MiB, Settings, default_cache_dir
from .fs.status import bar, human_bytes

KEY_ENV_VARS = ("FS360_API_KEY", "API_KEY")
# How the parent hands the key and the readiness pipe to the mount process.
CHILD_KEY_ENV = "FS360_API_KEY"
READY_FD_ENV = "FS360_READY_FD"
BUSY_STATES = ("writing", "pending", "uploading", "failed")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "emulator":
        from .emulator import main as emulator_main
        return emulator_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except CliError as exc:
        print(f"fs360: {exc}", file=sys.stderr)
        return 2


class CliError(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fs360", description="Upload to 360-for-you.com by writing files.")
    sub = parser.add_subparsers()

    m = sub.add_parser("mount", help="mount the upload API at MOUNTPOINT")
    m.add_argument("mountpoint")
    m.add_argument("--api-url", default=None, help="base URL of the API (default: the real service)")
    m.add_argument("--api-key-file", help="file holding the API key (else $FS360_API_KEY or $API_KEY)")
    m.add_argument("--local", action="store_true", help="start an emulator and mount against it (no key needed)")
    m.add_argument("--cache-dir", type=Path, default=None, help=f"spool and journal (default {default_cache_dir()})")
    m.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground, log to stderr")
    m.add_argument("--workers", type=int, default=4)
    m.add_argument("--chunk-size", type=_size, default=8 * MiB, help="e.g. 8M (default)")
    m.add_argument("--writeback-delay", type=float, default=1.5, help="seconds a closed file waits (default 1.5)")
    m.add_argument("--local-only", action="append", default=[], metavar="PATTERN",
                   help="extra names never uploaded (fnmatch pattern, repeatable)")
    m.add_argument("-o", dest="fuse_options", action="append", default=[], help="allow_other")
    m.add_argument("--log-level", default="info")
    m.add_argument("--ca-bundle", help="CA certificates to verify the server with")
    m.add_argument("--no-rate-limits", action="store_true", help="no client pacing (emulator without limits)")
    m.add_argument("--rate-window-scale", type=float, default=1.0, help=argparse.SUPPRESS)
    m.add_argument("--poll-interval", type=float, default=5.0, help="seconds between project polls")
    m.add_argument("--max-file-size", type=_size, default=0, help="known per-file cap of the server")
    m.add_argument("--emulator-arg", action="append", default=[], help=argparse.SUPPRESS)
    m.set_defaults(func=cmd_mount)

    u = sub.add_parser("unmount", help="unmount; unfinished uploads resume at the next mount")
    u.add_argument("mountpoint")
    u.add_argument("--wait", action="store_true", help="wait for the upload queue with a progress bar first")
    u.add_argument("--timeout", type=float, default=None, help="give up waiting after this many seconds")
    u.set_defaults(func=cmd_unmount)

    s = sub.add_parser("status", help="show every session's progress")
    s.add_argument("mountpoint", nargs="?")
    s.add_argument("--watch", action="store_true")
    s.add_argument("--interval", type=float, default=1.0)
    s.set_defaults(func=cmd_status)

    d = sub.add_parser("demo", help="emulator, mount, sample files, a project: the whole flow")
    d.add_argument("--keep", action="store_true", help="keep the temporary directory")
    d.set_defaults(func=cmd_demo)

    sub.add_parser("emulator", help="run the local emulator of the API (see: fs360 emulator --help)")
    return parser


def _size(text: str) -> int:
    units = {"k": 1024, "m": MiB, "g": 1024 * MiB}
    text = text.strip().lower().rstrip("ib")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


# --- mount ---------------------------------------------------------------------------------


def read_api_key(args) -> str:
    if args.api_key_file:
        try:
            key = Path(args.api_key_file).read_text().strip()
        except OSError as exc:
            raise CliError(f"cannot read the key file: {exc.strerror}") from None
        if not key:
            raise CliError("the key file is empty")
        return key
    for name in KEY_ENV_VARS:
        if os.environ.get(name):
            return os.environ[name].strip()
    raise CliError("no API key: set FS360_API_KEY, or give --api-key-file (or use --local)")


def settings_from_args(args, api_key: str) -> Settings:
    cache_dir = (args.cache_dir or default_cache_dir()).resolve()
    extra = tuple(args.local_only)
    kwargs = dict(
        api_key=api_key, cache_dir=cache_dir, workers=max(1, args.workers), chunk_size=args.chunk_size,
        writeback_delay=args.writeback_delay, local_only_patterns=DEFAULT_LOCAL_ONLY_PATTERNS + extra,
        ca_bundle=args.ca_bundle, rate_limits_enabled=not args.no_rate_limits,
        rate_window_scale=args.rate_window_scale, project_poll_interval=args.poll_interval,
        max_file_size=args.max_file_size, allow_other="allow_other" in ",".join(args.fuse_options).split(","))
    if args.api_url:
        kwargs["api_url"] = args.api_url
    return Settings(**kwargs)


def cmd_mount(args) -> int:
    mountpoint = os.path.abspath(args.mountpoint)
    if not os.path.isdir(mountpoint):
        raise CliError(f"{mountpoint} is not a directory")
    if os.path.ismount(mountpoint):
        raise CliError(f"{mountpoint} is already a mount point")
    if args.local:
        api_key = os.environ.get(CHILD_KEY_ENV) or "sk_local_demo"
        args.api_url = args.api_url or "http://127.0.0.1:0/api/v1"  # replaced by the emulator's own URL
    else:
        api_key = read_api_key(args)
    if args.cache_dir is None and args.local:
        args.cache_dir = default_cache_dir() / "local"
    settings = settings_from_args(args, api_key)
    if args.foreground or os.environ.get(READY_FD_ENV):
        return _serve_here(args, settings, mountpoint)
    return _spawn_daemon(args, settings, mountpoint)


def _serve_here(args, settings: Settings, mountpoint: str) -> int:
    from .daemon import EmbeddedEmulator, serve, setup_logging
    ready_fd = os.environ.pop(READY_FD_ENV, None)
    os.environ.pop(CHILD_KEY_ENV, None)  # not inherited by anything we start
    setup_logging(settings, args.log_level, to_stderr=args.foreground)
    embedded = None
    if args.local:
        embedded = EmbeddedEmulator(settings.cache_dir / "emulator", list(args.emulator_arg))

    def ready(error):
        if ready_fd is not None:
            with os.fdopen(int(ready_fd), "w") as pipe:
                pipe.write("ok\n" if error is None else f"error {error}\n")
        elif error:
            print(f"fs360: {error}", file=sys.stderr)
        else:
            print(f"fs360: mounted {mountpoint}", file=sys.stderr)

    return serve(settings, mountpoint, ready=ready, embedded=embedded)


def _spawn_daemon(args, settings: Settings, mountpoint: str) -> int:
    read_end, write_end = os.pipe()
    env = dict(os.environ)
    env[CHILD_KEY_ENV] = settings.api_key
    env[READY_FD_ENV] = str(write_end)
    for name in KEY_ENV_VARS:
        if name != CHILD_KEY_ENV:
            env.pop(name, None)
    child_args = _rebuild_args(args, mountpoint)
    process = subprocess.Popen([sys.executable, "-m", "fs360.cli", *child_args], env=env, pass_fds=(write_end,),
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        line = pipe.readline().strip()
    if line == "ok":
        print(f"fs360: mounted {mountpoint} (log: {settings.log_path})")
        return 0
    process.wait(30)
    reason = line[len("error "):] if line.startswith("error ") else f"the mount process exited ({process.returncode})"
    raise CliError(reason)


def _rebuild_args(args, mountpoint: str) -> list[str]:
    out = ["mount", mountpoint, "--workers", str(args.workers), "--chunk-size", str(args.chunk_size),
           "--writeback-delay", str(args.writeback_delay), "--log-level", args.log_level,
           "--poll-interval", str(args.poll_interval), "--rate-window-scale", str(args.rate_window_scale)]
    if args.api_url and not args.local:
        out += ["--api-url", args.api_url]
    if args.local:
        out.append("--local")
    if args.cache_dir:
        out += ["--cache-dir", str(args.cache_dir)]
    for pattern in args.local_only:
        out += ["--local-only", pattern]
    for option in args.fuse_options:
        out += ["-o", option]
    if args.ca_bundle:
        out += ["--ca-bundle", args.ca_bundle]
    if args.no_rate_limits:
        out.append("--no-rate-limits")
    if args.max_file_size:
        out += ["--max-file-size", str(args.max_file_size)]
    for extra in args.emulator_arg:
        out.append(f"--emulator-arg={extra}")
    return out


# --- unmount -----------------------------------------------------------------------------------


def cmd_unmount(args) -> int:
    mountpoint = os.path.abspath(args.mountpoint)
    if not _is_fs360_mount(mountpoint):
        raise CliError(f"{mountpoint} is not an fs360 mount")
    if args.wait:
        if not wait_for_queue(mountpoint, args.timeout):
            raise CliError("gave up waiting; unfinished uploads stay queued for the next mount")
    pid = _daemon_pid(mountpoint)
    result = subprocess.run(["fusermount3", "-u", mountpoint], capture_output=True, text=True)
    if result.returncode != 0:
        raise CliError(f"unmount failed: {result.stderr.strip()}")
    if pid:
        _wait_pid_gone(pid, 60)
    print(f"fs360: unmounted {mountpoint}")
    return 0


def _daemon_pid(mountpoint: str) -> int | None:
    """The daemon serving `mountpoint`: the `fs360 mount` process whose arguments name it
    (run as `python -m fs360.cli` or as the `fs360` script; never this process itself)."""
    try:
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                try:
                    cmd = (entry / "cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                runs_fs360 = b"fs360.cli" in cmd or any(os.path.basename(arg) == b"fs360" for arg in cmd[:2])
                if runs_fs360 and b"mount" in cmd and mountpoint.encode() in cmd:
                    return int(entry.name)
    except OSError:
        return None
    return None


def _wait_pid_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def _unescape(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def _is_fs360_mount(mountpoint: str) -> bool:
    return mountpoint in fs360_mounts()


def fs360_mounts() -> list[str]:
    out = []
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[2] == "fuse.fs360":
            out.append(_unescape(fields[1]))
    return out


def read_status(mountpoint: str) -> list[dict]:
    snapshots = []
    for entry in sorted(os.listdir(mountpoint)):
        path = os.path.join(mountpoint, entry)
        if entry == "status" or not os.path.isdir(path):
            continue
        try:
            with open(os.path.join(path, "status.json"), encoding="utf-8", errors="surrogateescape") as f:
                snapshots.append(json.load(f))
        except (OSError, ValueError):
            continue
    return snapshots


def wait_for_queue(mountpoint: str, timeout: float | None) -> bool:
    deadline = None if timeout is None else time.monotonic() + timeout
    interactive = sys.stderr.isatty()
    while True:
        snapshots = read_status(mountpoint)
        busy = [f for s in snapshots for f in s["files"] if not f["local_only"] and f["state"] in BUSY_STATES]
        total = sum(f["size"] for s in snapshots for f in s["files"] if not f["local_only"])
        sent = sum(f["sent"] for s in snapshots for f in s["files"] if not f["local_only"])
        line = f"{bar(sent, total)} {human_bytes(sent)}/{human_bytes(total)}, {len(busy)} file(s) to go"
        failing = [f for f in busy if f["state"] == "failed"]
        if failing:
            line += f"; retrying {failing[0]['name']}: {failing[0]['error']}"
        print(("\r" + line[:150].ljust(150)) if interactive else line, end="" if interactive else "\n",
              file=sys.stderr, flush=True)
        if not busy:
            if interactive:
                print(file=sys.stderr)
            return True
        if deadline is not None and time.monotonic() > deadline:
            if interactive:
                print(file=sys.stderr)
            return False
        time.sleep(0.5 if interactive else 2.0)


# --- status ------------------------------------------------------------------------------------


def cmd_status(args) -> int:
    mounts = [os.path.abspath(args.mountpoint)] if args.mountpoint else fs360_mounts()
    if not mounts:
        raise CliError("no fs360 mount is up")
    while True:
        text = "".join(render_status(m) for m in mounts)
        if args.watch:
            sys.stdout.write("\x1b[H\x1b[2J" + text)
            sys.stdout.flush()
            time.sleep(args.interval)
        else:
            sys.stdout.write(text)
            return 0


def render_status(mountpoint: str) -> str:
    lines = [f"{mountpoint}"]
    for snap in read_status(mountpoint):
        totals = snap["totals"]
        lines.append(f"  {snap['session']}  {totals['complete']}/{totals['files']} files  "
                     f"{bar(totals['sent'], totals['bytes'])} {human_bytes(totals['sent'])}/"
                     f"{human_bytes(totals['bytes'])}" + (f"  {human_bytes(totals['rate'])}/s" if totals['rate'] else ""))
        for f in snap["files"]:
            if f["local_only"]:
                continue
            line = f"    {f['name'][:40]:<40} {f['state']:<9} {bar(f['sent'], f['size'])} {human_bytes(f['size'])}"
            if f["rate"]:
                line += f" {human_bytes(f['rate'])}/s"
            lines.append(line)
            if f["error"]:
                lines.append(f"      error: {f['error']}")
        project = snap["project"]
        if project:
            if project["state"] == "waiting":
                lines.append(f"    project: requested, {project['waiting_for'] or 'creating'}")
            elif project["state"] == "failed":
                lines.append(f"    project: FAILED: {project['error']}")
            else:
                lines.append(f"    project {project['name']}: {bar(project['status'], 100)} {project['status']}%"
                             + (f"  {project['url']}" if project["url"] else ""))
    return "\n".join(lines) + "\n"


# --- demo --------------------------------------------------------------------------------------


def cmd_demo(args) -> int:
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
            raise CliError("the demo mount failed")
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
        print("== mkdir 'Demo scan/nested' (a tree is refused: the server takes flat names)")
        try:
            (session / "nested").mkdir()
        except OSError as exc:
            print(f"   refused as expected: {exc.strerror} (send an archive for a tree)")
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
                raise CliError(f"project failed: {project.get('error')}")
            time.sleep(1)
        else:
            raise CliError("the project was not ready within 180 s")
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
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
