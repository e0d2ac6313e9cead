"""The `fs360` command: argument parsing and dispatch, nothing else.

The daemon's life is in daemon.py, status rendering in fs/status.py, the config
file and mount(8) options in settings_file.py, the demo in demo.py.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from . import __version__, control
from .completion import DIRECTORY, FILE, MOUNTS, SHELLS, mark
from .config import DEFAULT_LOCAL_ONLY_PATTERNS, MiB, Settings, default_cache_dir
PRIVACY = {"private": 2, "link": 1, "public": 0}
# Mount flags that are not settings a user keeps in a file (-f is how a mount is run, e.g. by systemd).
NOT_CONFIG_KEYS = {"mountpoint", "func", "emulator_arg", "rate_window_scale", "help", "foreground"}


class CliError(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "emulator":
        from .emulator import main as emulator_main
        return emulator_main(argv[1:])
    if argv and argv[0] == "_serve":
        from .daemon import child_main
        return child_main(argv[1:])
    parser = build_parser()
    try:
        args = parse(parser, argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except CliError as exc:
        print(f"fs360: {exc}", file=sys.stderr)
        return 2


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parses twice for mount and doctor: the config file's values become the defaults
    of their options, so whatever the command line says wins."""
    from .settings_file import ConfigError, load_config
    args = parser.parse_args(argv)
    options_parser = getattr(args, "options_parser", None)
    if options_parser is None:
        return args
    mountpoint = os.path.abspath(args.mountpoint) if args.mountpoint else ""
    try:
        values = load_config(mountpoint, config_keys(options_parser))
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    if values:
        options_parser.set_defaults(**{key: _as_default(options_parser, key, value) for key, value in values.items()})
        args = parser.parse_args(argv)
    return args


def config_keys(options_parser: argparse.ArgumentParser) -> set[str]:
    return {a.dest for a in options_parser._actions if a.option_strings and a.dest not in NOT_CONFIG_KEYS}


def _action(options_parser: argparse.ArgumentParser, dest: str) -> argparse.Action:
    return next(a for a in options_parser._actions if a.dest == dest)


def _as_default(options_parser, key: str, value):
    """A config value as argparse takes a default: strings go through the option's type,
    lists stay lists for repeatable options."""
    action = _action(options_parser, key)
    if isinstance(action, argparse._AppendAction):
        return [str(v) for v in value] if isinstance(value, list) else [str(value)]
    if isinstance(value, list):
        raise CliError(f"config key {key} takes one value, not a list")
    if isinstance(action, argparse._StoreTrueAction):
        return bool(value)
    return str(value) if action.type is not None else value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fs360", description="Upload to 360-for-you.com by writing files.")
    parser.add_argument("--version", action="version", version=f"fs360 {__version__}")
    sub = parser.add_subparsers(metavar="COMMAND")

    m = sub.add_parser("mount", help="mount the upload API at MOUNTPOINT")
    mark(m.add_argument("mountpoint", help="an empty directory to mount at"), DIRECTORY)
    add_mount_options(m)
    m.set_defaults(func=cmd_mount, options_parser=m)

    u = sub.add_parser("unmount", help="unmount; unfinished uploads resume at the next mount",
                       epilog="exit codes: 0 done; 2 error (not a mount, unmount failed); 3 unmounted, but files "
                              "were refused, held, interrupted or lost (named, with what to do); 4 gave up "
                              "waiting (--timeout), still mounted")
    mark(u.add_argument("mountpoint", help="the fs360 mount to unmount"), MOUNTS)
    u.add_argument("--wait", action="store_true",
                   help="first wait until no file is on its way (one progress line), then sum up")
    u.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="with --wait: give up after this many seconds (exit 4, still mounted)")
    u.set_defaults(func=cmd_unmount)

    s = sub.add_parser("status", help="your mounts' progress: a line per mount, or MOUNTPOINT's sessions")
    mark(s.add_argument("mountpoint", nargs="?", help="show this mount's sessions (default: a line per mount)"),
         MOUNTS)
    s.add_argument("--files", action="store_true", help="with MOUNTPOINT: a row per file instead of per session")
    s.add_argument("--json", action="store_true",
                   help="the whole mount as one JSON document (schema: doc/STATUS-JSON.md)")
    s.add_argument("--watch", action="store_true", help="redraw in place every --interval seconds (Ctrl-C ends)")
    s.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                   help="seconds between redraws with --watch (default 1)")
    s.set_defaults(func=cmd_status)

    w = sub.add_parser("web", help="open the mount's dashboard in the browser (served by the daemon on loopback)")
    mark(w.add_argument("mountpoint", help="the fs360 mount whose dashboard to open"), MOUNTS)
    w.add_argument("--print-url", action="store_true",
                   help="print the URL (it carries the dashboard's token) instead of opening a browser")
    w.set_defaults(func=cmd_web)

    for name, help_text in (("pause", "uploads stop after their current chunk; the mount keeps taking files"),
                            ("resume", "uploads go on")):
        p = sub.add_parser(name, help=help_text)
        mark(p.add_argument("mountpoint", help=f"the fs360 mount to {name}"), MOUNTS)
        p.set_defaults(func=cmd_control, control=name)

    st = sub.add_parser("set", help="change a running mount: fs360 set MOUNTPOINT bwlimit=5M")
    mark(st.add_argument("mountpoint", help="the fs360 mount to change"), MOUNTS)
    st.add_argument("assignments", nargs="+", metavar="KEY=VALUE", help="what to change: bwlimit=RATE (e.g. 5M, off)")
    st.set_defaults(func=cmd_control, control="set")

    d = sub.add_parser("doctor", help="check this machine and configuration, with a fix for each failure")
    mark(d.add_argument("mountpoint", nargs="?", help="the mount to check the configuration of"), DIRECTORY)
    add_mount_options(d)
    d.set_defaults(func=cmd_doctor, options_parser=d)

    iu = sub.add_parser("install-unit", help="write and enable the systemd user unit for MOUNTPOINT")
    mark(iu.add_argument("mountpoint", help="the directory the unit mounts at"), DIRECTORY)
    iu.add_argument("--print", action="store_true", help="print the unit instead")
    iu.set_defaults(func=cmd_install_unit)

    ih = sub.add_parser("install-helper", help="(root) write /sbin/mount.fuse.fs360 for mount(8) and fstab")
    mark(ih.add_argument("--prefix", default="/", help="write PREFIX/sbin/mount.fuse.fs360 (default /)"), DIRECTORY)
    ih.add_argument("--force", action="store_true", help="replace another installation's helper")
    ih.set_defaults(func=cmd_install_helper)

    mh = sub.add_parser("mount-helper")  # hidden (no help=): mount(8) runs it as: none MOUNTPOINT -o OPTIONS
    mh.add_argument("source")
    mh.add_argument("mountpoint")
    mh.add_argument("-o", dest="options", action="append", default=[])
    for flag in ("-n", "-s", "-f", "-v", "-r", "-w"):  # mount(8)'s own flags: nothing for fs360
        mh.add_argument(flag, action="store_true", dest=f"ignored{flag[1]}")
    mh.add_argument("-N", dest="namespace")
    mh.set_defaults(func=cmd_mount_helper)

    c = sub.add_parser("completion", help="print a shell completion script: fs360 completion bash|zsh|fish")
    c.add_argument("shell", choices=SHELLS, help="the shell to complete in")
    c.set_defaults(func=cmd_completion)

    dm = sub.add_parser("demo", help="emulator, mount, sample files, a project: the whole flow")
    dm.add_argument("--keep", action="store_true", help="keep the temporary directory")
    dm.set_defaults(func=cmd_demo)

    sub.add_parser("emulator", help="run the local emulator of the API (see: fs360 emulator --help)")
    return parser


def add_mount_options(m: argparse.ArgumentParser) -> None:
    m.add_argument("--api-url", default=None, help="base URL of the API (default: the real service)")
    mark(m.add_argument("--api-key-file", type=_path, help="file holding the API key, mode 600 "
                        "(else $CREDENTIALS_DIRECTORY/fs360-api-key, $FS360_API_KEY or $API_KEY)"), FILE)
    m.add_argument("--local", action="store_true", help="start an emulator and mount against it (no key needed)")
    mark(m.add_argument("--cache-dir", type=_path, default=None,
                        help=f"spool and journal (default {default_cache_dir()})"), DIRECTORY)
    m.add_argument("-f", "--foreground", action="store_true",
                   help="stay in the foreground, log to stderr, speak sd_notify")
    m.add_argument("--workers", type=int, default=4, help="files uploaded at once (default 4)")
    m.add_argument("--chunk-size", type=_size, default=8 * MiB, help="e.g. 8M (default)")
    m.add_argument("--writeback-delay", type=float, default=1.5, help="seconds a closed file waits (default 1.5)")
    m.add_argument("--local-only", action="append", default=[], metavar="PATTERN",
                   help="extra names never uploaded (fnmatch pattern, repeatable)")
    m.add_argument("-o", dest="options", action="append", default=[], metavar="OPTIONS",
                   help="allow_other, or any option as key=value (as in fstab)")
    m.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="of the log in the cache dir (default info: a line per uploaded file)")
    mark(m.add_argument("--ca-bundle", help="CA certificates to verify the server with"), FILE)
    m.add_argument("--no-rate-limits", action="store_true", help="no client pacing (emulator without limits)")
    m.add_argument("--rate-window-scale", type=float, default=1.0, help=argparse.SUPPRESS)
    m.add_argument("--poll-interval", type=float, default=5.0, help="seconds between project polls")
    m.add_argument("--max-file-size", type=_size, default=0, help="known per-file cap of the server")
    m.add_argument("--privacy", choices=sorted(PRIVACY), default="private",
                   help="of projects whose .create does not say (default private)")
    m.add_argument("--bwlimit", default="off", type=_bwlimit,
                   help='all uploads together: 10M, 500k, off, or a timetable "08:00,5M 18:00,off"')
    m.add_argument("--no-notify", action="store_true", help="no desktop notice (notify-send)")
    m.add_argument("--web-address", default="127.0.0.1:0", type=_web_address, metavar="HOST:PORT",
                   help="the dashboard's address, on loopback only (default 127.0.0.1:0, any free port), or off")
    m.add_argument("--zip64-archives", action="store_true",
                   help="always write folder-tree archives in ZIP64 form (else only when needed)")
    m.add_argument("--emulator-arg", action="append", default=[], help=argparse.SUPPRESS)


def _size(text: str) -> int:
    units = {"k": 1024, "m": MiB, "g": 1024 * MiB}
    text = text.strip().lower().rstrip("ib")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def _path(text: str) -> Path:
    return Path(os.path.expanduser(text))


def _checked_by(parse):
    """An argparse type that keeps the text once `parse` accepts it (its ValueError is the message)."""
    def check(text: str) -> str:
        try:
            parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text
    return check


def _web_address(text: str) -> str:
    from .web.server import parse_address
    return _checked_by(parse_address)(text)


def _bwlimit(text: str) -> str:
    from .engine.gate import parse_bwlimit
    return _checked_by(parse_bwlimit)(text)


# --- mount ---------------------------------------------------------------------------------


def apply_mount_options(args) -> None:
    """`-o key=value` sets the option `key` as its flag would (fstab's fourth column)."""
    from .settings_file import parse_mount_options
    values, fuse = parse_mount_options(args.options)
    keys = config_keys(args.options_parser) - {"options"}
    for key, text in values.items():
        if key not in keys:
            raise CliError(f"unknown mount option {key!r} (known: allow_other, {', '.join(sorted(keys))})")
        action = _action(args.options_parser, key)
        if isinstance(action, argparse._StoreTrueAction):
            value = text.lower() in ("", "1", "true", "yes", "on")
        else:
            try:
                value = action.type(text) if action.type else text
            except (ValueError, argparse.ArgumentTypeError) as exc:
                raise CliError(f"mount option {key}: {exc}") from None
            if action.choices and value not in action.choices:
                raise CliError(f"mount option {key} must be one of {', '.join(action.choices)}")
        if isinstance(action, argparse._AppendAction):
            value = getattr(args, key) + [value]
        setattr(args, key, value)
    args.fuse_options = fuse


def settings_from_args(args) -> Settings:
    from .daemon import KEY_ENV_VARS
    from .settings_file import ConfigError, read_api_key
    apply_mount_options(args)
    if args.local:
        api_key = os.environ.get("FS360_API_KEY") or "sk_local_demo"
    else:
        try:
            api_key = read_api_key(args.api_key_file, KEY_ENV_VARS)
        except ConfigError as exc:
            raise CliError(str(exc)) from None
    cache_dir = args.cache_dir or (default_cache_dir() / "local" if args.local else default_cache_dir())
    kwargs = dict(
        api_key=api_key, cache_dir=cache_dir.resolve(), workers=max(1, args.workers), chunk_size=args.chunk_size,
        writeback_delay=args.writeback_delay, local_only_patterns=DEFAULT_LOCAL_ONLY_PATTERNS + tuple(args.local_only),
        ca_bundle=args.ca_bundle, rate_limits_enabled=not args.no_rate_limits,
        rate_window_scale=args.rate_window_scale, project_poll_interval=args.poll_interval,
        max_file_size=args.max_file_size, allow_other="allow_other" in args.fuse_options,
        log_level=args.log_level, default_privacy=PRIVACY[args.privacy], bwlimit=args.bwlimit,
        desktop_notify=not args.no_notify, archive_zip64=args.zip64_archives, local_emulator=args.local, emulator_args=tuple(args.emulator_arg),
        web_address=args.web_address)
    if args.api_url and not args.local:
        kwargs["api_url"] = args.api_url
    return Settings(**kwargs)


def cmd_mount(args) -> int:
    from .daemon import LaunchError, launch
    mountpoint = os.path.abspath(args.mountpoint)
    if not os.path.isdir(mountpoint):
        raise CliError(f"{mountpoint} is not a directory")
    if os.path.ismount(mountpoint):
        raise CliError(f"{mountpoint} is already a mount point")
    settings = settings_from_args(args)
    try:
        return launch(settings, mountpoint, args.foreground)
    except LaunchError as exc:
        raise CliError(str(exc)) from None


def cmd_mount_helper(args) -> int:
    """mount(8) runs `mount.fuse.fs360 none MOUNTPOINT -o OPTIONS`: the same as `fs360 mount`."""
    return main(["mount", args.mountpoint, *(f"-o{o}" for o in args.options)])


# --- unmount -----------------------------------------------------------------------------------

# `fs360 unmount --wait` exit codes (README, "unmount"): 0 everything reached the server; 2 an
# error (not an fs360 mount, unmount failed); 3 unmounted, but files need you (refused, held,
# interrupted, lost, or a refused .create: each named with what to do); 4 gave up waiting
# (--timeout): still mounted, uploads go on.
EXIT_NEEDS_YOU = 3
EXIT_GAVE_UP = 4


def cmd_unmount(args) -> int:
    mountpoint = _my_mount(args.mountpoint)
    final = None
    if args.wait:
        started = time.monotonic()
        from .status_view import wait_for_queue
        final = wait_for_queue(lambda: _mount_status(mountpoint), args.timeout)
        if final is None:
            print("fs360: gave up waiting; still mounted, uploads go on (unmount without --wait "
                  "keeps the unfinished ones for the next mount)", file=sys.stderr)
            return EXIT_GAVE_UP
    pid = control.daemon_pid(mountpoint)
    result = subprocess.run(["fusermount3", "-u", mountpoint], capture_output=True, text=True)
    if result.returncode != 0:
        raise CliError(f"unmount failed: {result.stderr.strip()}")
    if pid:
        _wait_pid_gone(pid, 60)
    if final is not None:
        from rich.console import Console
        from .status_view import needs_you_lines, wait_summary
        console = Console(stderr=True, highlight=False)
        for line in wait_summary(final, time.monotonic() - started):
            console.print(line, overflow="fold")
        print(f"fs360: unmounted {mountpoint}")
        return EXIT_NEEDS_YOU if needs_you_lines(final) else 0
    print(f"fs360: unmounted {mountpoint}")
    return 0


def _wait_pid_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and control.pid_running(pid):
        time.sleep(0.05)


# --- status, pause, resume, set ------------------------------------------------------------


def _my_mount(path: str) -> str:
    """The absolute mountpoint of one of this user's fs360 mounts, or a CliError saying what it is."""
    mountpoint = os.path.abspath(path)
    if mountpoint not in control.fs360_mounts():
        raise CliError(f"{mountpoint} is not an fs360 mount (mounted: {', '.join(control.fs360_mounts(True)) or 'none'})")
    if mountpoint not in control.fs360_mounts(mine_only=True):
        raise CliError(f"{mountpoint} is another user's fs360 mount")
    return mountpoint


def _mount_status(mountpoint: str) -> dict:
    try:
        return control.mount_status(mountpoint)
    except OSError as exc:
        raise CliError(f"cannot reach the daemon of {mountpoint}: {exc}") from None


def cmd_status(args) -> int:
    import json
    if args.json and args.watch:
        raise CliError("--json and --watch do not go together (--json prints one document)")
    mounts = [_my_mount(args.mountpoint)] if args.mountpoint else control.fs360_mounts(mine_only=True)
    if not mounts:
        raise CliError("none of your fs360 mounts is up (fs360 mount MOUNTPOINT)")
    if args.json:
        docs = [_mount_status(m) for m in mounts] if args.mountpoint else _every_status(mounts)
        print(json.dumps(docs[0] if args.mountpoint else {"mounts": docs}, indent=2, ensure_ascii=False))
        return 0
    from rich.console import Console
    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 200  # piped or redirected: whole names rather than a terminal's width
    if not args.watch:
        docs = [_mount_status(mounts[0])] if args.mountpoint else _every_status(mounts)
        console.print(_status_view(args, docs, None, console.width))
        return 0
    from .status_view import watch

    def fetch() -> list[dict]:
        return [control.mount_status(mounts[0])] if args.mountpoint else _every_status(mounts)
    gone = watch(console, fetch, lambda docs: _status_view(args, docs, console.height, console.width),
                 lambda: [m for m in mounts if m not in control.fs360_mounts()], args.interval)
    print(f"fs360: no longer mounted: {', '.join(gone)}")
    return 0


def _every_status(mounts: list[str]) -> list[dict]:
    """Each mount's snapshot; one whose daemon does not answer (a dead mount, or one registered in
    another runtime dir) is listed with why, so the others still show."""
    docs = []
    for mountpoint in mounts:
        try:
            docs.append(control.mount_status(mountpoint, timeout=3))
        except OSError as exc:
            docs.append({"mountpoint": mountpoint, "error": f"its daemon does not answer ({exc}): fs360 doctor"})
    return docs


def _status_view(args, docs: list[dict], height: int | None, width: int):
    from .status_view import files_view, sessions_view, summary_view
    if not args.mountpoint:
        return summary_view(docs, width)
    return (files_view if args.files else sessions_view)(docs[0], height, width)


def cmd_web(args) -> int:
    mountpoint = _my_mount(args.mountpoint)
    try:
        answer = control.request(mountpoint, {"cmd": "web"})
    except OSError as exc:
        raise CliError(f"cannot reach the daemon of {mountpoint}: {exc}") from None
    if not answer.get("ok"):
        raise CliError(answer.get("error", "the daemon has no dashboard"))
    if args.print_url:
        print(answer["url"])
        return 0
    import webbrowser
    if not webbrowser.open(answer["url"]):
        print(f"fs360: no browser found; open {answer['url']}", file=sys.stderr)
    return 0


def cmd_control(args) -> int:
    mountpoint = os.path.abspath(args.mountpoint)
    message: dict = {"cmd": args.control}
    if args.control == "set":
        values = {}
        for assignment in args.assignments:
            key, sep, value = assignment.partition("=")
            if not sep:
                raise CliError(f"{assignment!r} is not KEY=VALUE (e.g. bwlimit=5M)")
            values[key.strip()] = value.strip()
        message["values"] = values
    try:
        answer = control.request(mountpoint, message)
    except OSError as exc:
        raise CliError(f"cannot reach the daemon of {mountpoint}: {exc}") from None
    if not answer.get("ok"):
        raise CliError(answer.get("error", "refused"))
    state = "paused" if answer["paused"] else "uploading"
    print(f"fs360: {mountpoint}: {state}, bwlimit {answer['bwlimit']}")
    return 0


# --- setting up ------------------------------------------------------------------------------


def cmd_doctor(args) -> int:
    from .doctor import report, run_checks
    try:
        settings, error = settings_from_args(args), None
    except CliError as exc:
        settings, error = None, str(exc)
    text, healthy = report(run_checks(settings, error, _config_state(args), args.cache_dir or default_cache_dir(),
                                      args.api_url, os.path.abspath(args.mountpoint) if args.mountpoint else None))
    sys.stdout.write(text)
    return 0 if healthy else 1


def _config_state(args) -> tuple[Path, str | None]:
    """The config file doctor names, and what is wrong with it (None: nothing, or there is none)."""
    from .settings_file import ConfigError, config_path, load_config
    try:
        load_config(os.path.abspath(args.mountpoint) if args.mountpoint else "", config_keys(args.options_parser))
    except ConfigError as exc:
        return config_path(), str(exc)
    return config_path(), None


def cmd_install_unit(args) -> int:
    from .settings_file import ConfigError, load_config
    from .systemd import install_unit
    mountpoint = os.path.abspath(args.mountpoint)
    try:
        options = argparse.ArgumentParser()
        add_mount_options(options)
        key_file = load_config(mountpoint, config_keys(options)).get("api_key_file")
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    print(install_unit(mountpoint, args.print, os.path.expanduser(key_file) if key_file else None))
    return 0


def cmd_install_helper(args) -> int:
    from .systemd import HelperExists, install_helper
    try:
        path = install_helper(args.prefix, args.force)
    except HelperExists as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"cannot write {exc.filename}: {exc.strerror} (run it as root)") from None
    print(f"fs360: wrote {path}; fstab line: none /mnt/360 fuse.fs360 "
          "api_url=URL,api_key_file=/root/.config/fs360/api-key,_netdev,nofail 0 0")
    return 0


def cmd_completion(args) -> int:
    from .completion import script
    sys.stdout.write(script(build_parser(), args.shell))
    return 0


def cmd_demo(args) -> int:
    from .demo import DemoError, run_demo
    try:
        return run_demo(args.keep)
    except DemoError as exc:
        raise CliError(str(exc)) from None


if __name__ == "__main__":
    sys.exit(main())
