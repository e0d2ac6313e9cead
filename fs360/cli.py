"""The `fs360` command: argument parsing and dispatch, nothing else.

The daemon's life is in daemon.py, the status files in fs/status.py and their terminal view in
status_view.py, the config file and mount(8) options in settings_file.py, the demo in demo.py.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from . import __version__, control
from .completion import DIRECTORY, FILE, MOUNTS, SHELLS, Suggested, mark
from .config import DEFAULT_LOCAL_ONLY_PATTERNS, Settings, default_cache_dir
from .errors import SettingError
from .options import (MOUNT_OPTIONS, OPTIONS, PRIVACY, WEBDAV_OPTIONS, Origin, check_api_url, runtime_value,
                      timings, without_credentials)


class CliError(Exception):
    pass


def seconds_from(minimum: float):
    """An argparse type: a finite number of seconds, at least `minimum`."""
    def seconds(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
        if not math.isfinite(value) or value < minimum:
            raise argparse.ArgumentTypeError(f"{text} seconds: give a number of seconds from {minimum:g} up")
        return value
    return seconds


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, never the whole usage."""

    def error(self, message: str):
        self.exit(2, f"fs360: {message} (see: {self.prog} --help)\n")


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
    except (CliError, SettingError) as exc:
        print(f"fs360: {exc}", file=sys.stderr)
        return 2


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """The command line as given: mount options are checked, with the config file's, by
    `mount_values`."""
    return parser.parse_args(argv)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="fs360", description="Upload to 360-for-you.com by writing files.")
    parser.add_argument("--version", action="version", version=f"fs360 {__version__}")
    sub = parser.add_subparsers(metavar="COMMAND")

    m = sub.add_parser("mount", help="mount the upload API at MOUNTPOINT")
    mark(m.add_argument("mountpoint", help="an empty directory to mount at"), DIRECTORY)
    add_mount_options(m)
    m.set_defaults(func=cmd_mount)

    u = sub.add_parser("unmount", help="unmount; unfinished uploads resume at the next mount",
                       epilog="exit codes: 0 done; 2 error (not a mount, unmount failed); 3 unmounted, but files "
                              "were refused, held, interrupted or lost (named, with what to do); 4 gave up "
                              "waiting (--timeout), still mounted")
    mark(u.add_argument("mountpoint", help="the fs360 mount to unmount"), MOUNTS)
    u.add_argument("--wait", action="store_true",
                   help="first wait until no file is on its way (one progress line), then sum up")
    u.add_argument("--timeout", type=seconds_from(0), default=None, metavar="SECONDS",
                   help="with --wait: give up after this many seconds (exit 4, still mounted)")
    u.set_defaults(func=cmd_unmount)

    s = sub.add_parser("status", help="your mounts' progress: a line per mount, or MOUNTPOINT's sessions")
    mark(s.add_argument("mountpoint", nargs="?", help="show this mount's sessions (default: a line per mount)"),
         MOUNTS)
    s.add_argument("--files", action="store_true", help="with MOUNTPOINT: a row per file instead of per session")
    s.add_argument("--json", action="store_true",
                   help="the whole mount as one JSON document (schema: doc/STATUS-JSON.md)")
    s.add_argument("--watch", action="store_true", help="redraw in place every --interval seconds (Ctrl-C ends)")
    s.add_argument("--interval", type=seconds_from(0.1), default=None, metavar="SECONDS",
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

    r = sub.add_parser("release", help="upload held files you know are whole (a program failed right "
                                       "after writing them, e.g. cp of several files where one was missing)")
    r.add_argument("paths", nargs="+", metavar="PATH", help="held files inside a mount")
    r.set_defaults(func=cmd_release)

    st = sub.add_parser("set", help="change a running mount: fs360 set MOUNTPOINT bwlimit=5M")
    mark(st.add_argument("mountpoint", help="the fs360 mount to change"), MOUNTS)
    st.add_argument("assignments", nargs="+", metavar="KEY=VALUE", help="what to change: bwlimit=RATE (e.g. 5M, off)")
    st.set_defaults(func=cmd_control, control="set")

    d = sub.add_parser("doctor", help="check this machine and configuration, with a fix for each failure")
    mark(d.add_argument("mountpoint", nargs="?", help="the mount to check the configuration of"), DIRECTORY)
    add_mount_options(d)
    d.set_defaults(func=cmd_doctor)

    rc = sub.add_parser("recover", help="release MOUNTPOINT if the daemon that mounted it is gone (kill -9, "
                        "a crash); a live mount is left alone")
    rc.add_argument("mountpoint", help="the mountpoint of the dead mount")
    rc.set_defaults(func=cmd_recover)

    iu = sub.add_parser("install-unit", help="write and enable the systemd user unit for MOUNTPOINT")
    mark(iu.add_argument("mountpoint", help="the directory the unit mounts at"), DIRECTORY)
    iu.add_argument("--print", action="store_true", help="print the unit instead")
    iu.set_defaults(func=cmd_install_unit)

    ih = sub.add_parser("install-helper", help="(root) write /sbin/mount.fuse.fs360 for mount(8) and fstab")
    mark(ih.add_argument("--prefix", default="/", help="write PREFIX/sbin/mount.fuse.fs360 (default /)"), DIRECTORY)
    ih.add_argument("--force", action="store_true", help="replace another installation's helper")
    ih.set_defaults(func=cmd_install_helper)

    sv = sub.add_parser("serve", help="serve the sessions over another protocol: fs360 serve webdav")
    served = sv.add_subparsers(metavar="PROTOCOL")
    w = served.add_parser("webdav", help="serve the sessions over WebDAV (Windows, macOS, davfs2)")
    add_mount_options(w, WEBDAV_OPTIONS + MOUNT_OPTIONS)
    w.set_defaults(func=cmd_serve_webdav)

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


def add_mount_options(parser: argparse.ArgumentParser, options=MOUNT_OPTIONS) -> None:
    """The options of options.MOUNT_OPTIONS as flags. They are taken as written (no default,
    no type): `mount_values` checks them with the config file's and -o's, in one schema. The
    completion learns what each takes: files, directories, the choices (offered, not checked here)."""
    for option in options:
        flags = [option.short, option.flag] if option.short else [option.flag]
        kwargs = dict(dest=option.name, default=argparse.SUPPRESS,
                      help=argparse.SUPPRESS if option.hidden else option.help)
        if option.kind == "bool":
            parser.add_argument(*flags, action="store_true", **kwargs)
            continue
        if option.repeatable:
            action = parser.add_argument(*flags, action="append", metavar=option.metavar, **kwargs)
        else:
            action = parser.add_argument(*flags, metavar=option.metavar or option.name.upper(), **kwargs)
        if option.kind == "choice":
            action.choices = Suggested(sorted(option.choices))
        elif option.kind in ("file", "path"):
            mark(action, FILE if option.kind == "file" else DIRECTORY)


# --- mount ---------------------------------------------------------------------------------


def mount_values(args, webdav: bool = False) -> tuple[dict, list[str]]:
    """Every mount option's value and the FUSE options (allow_other). Later sources win: the
    defaults, the config file's global keys, the mountpoint's table, the command line's flags,
    then its -o. Each value is checked where it is read (SettingError names its source).
    `webdav`: `fs360 serve webdav`'s options too, and the file's [webdav] table for a mountpoint's."""
    from .settings_file import load_config, mount_option_values
    options = MOUNT_OPTIONS + (WEBDAV_OPTIONS if webdav else ())
    values = {o.name: list(o.default) if o.repeatable else o.default for o in options}
    origins: dict[str, Origin] = {}
    fuse: list[str] = []

    def take(entries) -> None:
        for option, value, origin in entries:
            if option.name == "options":  # -o items, from the file or the command line
                found, fuse_options = mount_option_values(value, replace(origin, kind="-o"))
                fuse.extend(fuse_options)
                take(found)
                continue
            values[option.name] = values[option.name] + value if option.repeatable else value
            origins[option.name] = origin

    mountpoint = getattr(args, "mountpoint", None)
    take(load_config(os.path.abspath(mountpoint) if mountpoint else "", webdav=webdav))
    given = vars(args)
    flag = Origin("flag")
    take((option, option.check(given[option.name], flag), flag)
         for option in sorted(options, key=lambda o: o.name == "options") if option.name in given)
    if values["api_url"] and not values["local"]:
        why = check_api_url(values["api_url"], values["insecure_http"])
        if why:
            shown = without_credentials(values["api_url"])
            raise SettingError(f"{origins['api_url'].show(OPTIONS['api_url'], shown)}: {why}")
    return values, fuse


def settings_from_values(values: dict, fuse: list[str]) -> Settings:
    from .daemon import KEY_ENV_VARS
    from .settings_file import read_api_key
    local = values["local"]
    if local:
        # The embedded emulator's own key: a real one exported for other mounts is never sent to it.
        api_key = "sk_local_demo"
    else:
        try:
            api_key = read_api_key(values["api_key_file"], KEY_ENV_VARS)
        except SettingError as exc:
            raise CliError(str(exc)) from None
    cache_dir = values["cache_dir"] or (default_cache_dir() / "local" if local else default_cache_dir())
    kwargs = dict(
        api_key=api_key, cache_dir=cache_dir.resolve(), workers=values["workers"], chunk_size=values["chunk_size"],
        max_chunk_size=values["max_chunk_size"], writeback_delay=values["writeback_delay"],
        local_only_patterns=DEFAULT_LOCAL_ONLY_PATTERNS + tuple(values["local_only"]),
        ca_bundle=str(values["ca_bundle"]) if values["ca_bundle"] else None,
        rate_limits_enabled=not values["no_rate_limits"], rate_window_scale=values["rate_window_scale"],
        project_poll_interval=values["poll_interval"], max_file_size=values["max_file_size"],
        allow_other="allow_other" in fuse, log_level=values["log_level"], default_privacy=PRIVACY[values["privacy"]],
        bwlimit=values["bwlimit"], desktop_notify=not values["no_notify"], archive_zip64=values["zip64_archives"],
        local_emulator=local, emulator_args=tuple(values["emulator_arg"]), insecure_http=values["insecure_http"],
        web_address=values["web_address"])
    kwargs.update(timings(values["timing"]))
    if values["api_url"] and not local:
        kwargs["api_url"] = values["api_url"]
    return Settings(**kwargs)


def settings_from_args(args) -> Settings:
    return settings_from_values(*mount_values(args))


def cmd_mount(args) -> int:
    from .daemon import LaunchError, launch
    from .fuse_host import cache_dir_problem, prepare_mountpoint
    values, fuse = mount_values(args)
    settings = settings_from_values(values, fuse)
    mountpoint = os.path.abspath(args.mountpoint)
    problem, note = prepare_mountpoint(mountpoint, values["allow_non_empty"])
    if note:
        print(f"fs360: {note}", file=sys.stderr)
    problem = problem or cache_dir_problem(settings.cache_dir, mountpoint)
    if problem:
        raise CliError(problem)
    try:
        return launch(settings, mountpoint, values["foreground"])
    except LaunchError as exc:
        raise CliError(str(exc)) from None


def cmd_serve_webdav(args) -> int:
    from .daemon import LaunchError, launch
    from .fuse_host import cache_dir_problem
    values, fuse = mount_values(args, webdav=True)
    settings = settings_from_values(values, fuse).with_(
        webdav_password_file=str(values["password_file"]) if values["password_file"] else None,
        webdav_tls_cert=str(values["tls_cert"]) if values["tls_cert"] else None,
        webdav_tls_key=str(values["tls_key"]) if values["tls_key"] else None,
        webdav_empty_put_grace=values["empty_put_grace"])
    problem = cache_dir_problem(settings.cache_dir)
    if problem:
        raise CliError(problem)
    try:
        return launch(settings, "", values["foreground"], webdav=values["addr"])
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
    if args.timeout is not None and not args.wait:  # (it was ignored without a word)
        raise CliError("--timeout goes with --wait (how long to wait for the uploads)")
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
        from .fuse_host import is_dead_mount
        if is_dead_mount(mountpoint):
            raise CliError(f"the daemon of {mountpoint} is gone (killed?) and a program still has a file open there "
                           f"({result.stderr.strip()}): run fs360 recover {mountpoint}; unfinished uploads resume at "
                           f"the next mount")
        raise CliError(f"unmount failed: {result.stderr.strip()}")
    if pid:
        _wait_for_daemon(pid, mountpoint)
    if final is not None:
        from .status_view import needs_you_lines, terminal_console, wait_summary
        console = terminal_console(stderr=True)
        for line in wait_summary(final, time.monotonic() - started):
            console.print(line, overflow="fold")
        print(f"fs360: unmounted {mountpoint}")
        return EXIT_NEEDS_YOU if needs_you_lines(final) else 0
    print(f"fs360: unmounted {mountpoint}")
    return 0


# The daemon normally ends at once after its mount is gone; one that does not within this is
# ending uploads in flight (each stops after the piece it is sending, or at its deadline), which
# the user is told instead of waiting in silence.
DAEMON_QUIET_SECONDS = 1.0
DAEMON_END_SECONDS = 60.0


def _wait_for_daemon(pid: int, mountpoint: str, quiet: float = DAEMON_QUIET_SECONDS,
                     timeout: float = DAEMON_END_SECONDS) -> bool:
    """Waits for the unmounted mount's daemon to end, saying why when it takes a while. Returns
    whether it ended."""
    if _wait_pid_gone(pid, quiet):
        return True
    print(f"fs360: {mountpoint} is unmounted; its uploads in flight are ending (each stops after the "
          f"piece it is sending, within about half a minute); what is not sent waits for the next mount",
          file=sys.stderr, flush=True)
    if _wait_pid_gone(pid, timeout - quiet):
        return True
    print(f"fs360: the daemon (pid {pid}) has not ended after {timeout:.0f} s; nothing is lost: every "
          f"unfinished upload waits in its journal for the next mount; `kill {pid}` ends it",
          file=sys.stderr, flush=True)
    return False


def _wait_pid_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while control.pid_running(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


# --- status, pause, resume, set ------------------------------------------------------------


def _my_mount(path: str) -> str:
    """The absolute mountpoint of one of this user's fs360 mounts, or a CliError saying what it is."""
    mountpoint = os.path.abspath(path)
    if mountpoint not in control.fs360_mounts():
        raise CliError(f"{mountpoint} is not an fs360 mount (mounted: {', '.join(control.fs360_mounts(True)) or 'none'})")
    if mountpoint not in control.fs360_mounts(mine_only=True):
        raise CliError(f"{mountpoint} is another user's fs360 mount")
    return mountpoint


def unreachable(mountpoint: str, exc: OSError) -> CliError:
    return CliError(f"cannot reach the daemon of {mountpoint} ({exc.strerror or exc}): is it still running? "
                    f"`fs360 doctor {mountpoint}` checks the mount")


def _mount_status(mountpoint: str) -> dict:
    try:
        return control.mount_status(mountpoint)
    except OSError as exc:
        raise unreachable(mountpoint, exc) from None


def cmd_status(args) -> int:
    import json
    if args.json and args.watch:
        raise CliError("--json and --watch do not go together (--json prints one document)")
    if args.interval is not None and not args.watch:  # (it was ignored without a word)
        raise CliError("--interval goes with --watch (the seconds between redraws)")
    if args.files and not args.mountpoint:
        raise CliError("--files goes with a MOUNTPOINT (a row per file of that mount)")
    mounts = [_my_mount(args.mountpoint)] if args.mountpoint else control.fs360_mounts(mine_only=True)
    if not mounts:
        raise CliError("none of your fs360 mounts is up (fs360 mount MOUNTPOINT)")
    if args.json:
        docs = [_mount_status(m) for m in mounts] if args.mountpoint else _every_status(mounts)
        print(json.dumps(docs[0] if args.mountpoint else {"mounts": docs}, indent=2, ensure_ascii=False))
        return 0
    from .status_view import terminal_console
    console = terminal_console()
    if not console.is_terminal:
        # Piped or redirected: whole names rather than a terminal's width (a COLUMNS inherited
        # from the parent, as under a test runner, says nothing of where the text goes).
        console.width = 200
    if not args.watch:
        docs = [_mount_status(mounts[0])] if args.mountpoint else _every_status(mounts)
        console.print(_status_view(args, docs, None, console.width))
        return 0
    from .status_view import watch

    def fetch() -> list[dict]:
        return [control.mount_status(mounts[0])] if args.mountpoint else _every_status(mounts)
    gone = watch(console, fetch, lambda docs: _status_view(args, docs, console.height, console.width),
                 lambda: [m for m in mounts if m not in control.fs360_mounts()], args.interval or 1.0)
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
            docs.append({"mountpoint": mountpoint, "error": f"its daemon does not answer ({exc.strerror or exc}): "
                                                            f"fs360 doctor {mountpoint}"})
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
        raise unreachable(mountpoint, exc) from None
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
    message: dict = {"cmd": args.control}
    if args.control == "set":
        values = {}
        for assignment in args.assignments:
            key, sep, value = assignment.partition("=")
            if not sep or not key.strip():
                raise CliError(f"{assignment!r} is not KEY=VALUE (e.g. bwlimit=5M)")
            key, checked = runtime_value(key, value.strip())
            values[key] = checked
        message["values"] = values
    mountpoint = _my_mount(args.mountpoint)  # (after the values: a bad one is said without a daemon)
    try:
        answer = control.request(mountpoint, message)
    except OSError as exc:
        raise unreachable(mountpoint, exc) from None
    if not answer.get("ok"):
        raise CliError(answer.get("error", "refused"))
    state = "paused" if answer["paused"] else "uploading"
    print(f"fs360: {mountpoint}: {state}, bwlimit {answer['bwlimit']}")
    return 0


def cmd_release(args) -> int:
    """Each PATH goes to the daemon of the mount it lies in, as a path from that mount's root."""
    by_mount: dict[str, list[str]] = {}
    mounts = sorted(control.fs360_mounts(), key=len, reverse=True)
    for path in args.paths:
        absolute = os.path.abspath(path)
        mountpoint = next((m for m in mounts if absolute.startswith(m.rstrip("/") + "/")), None)
        if mountpoint is None:
            if absolute in mounts:
                raise CliError(f"{path} is an fs360 mount itself: release takes the held files inside it "
                               f"(fs360 status --files {path} lists them)")
            raise CliError(f"{path} is not inside an fs360 mount")
        by_mount.setdefault(mountpoint, []).append(absolute[len(mountpoint.rstrip("/")):])
    failed = False
    for mountpoint, paths in by_mount.items():
        try:
            answer = control.request(mountpoint, {"cmd": "release", "paths": paths})
        except OSError as exc:
            raise unreachable(mountpoint, exc) from None
        for line in answer.get("released", []):
            print(f"fs360: {line}")
        if not answer.get("ok"):
            print(f"fs360: {answer.get('error', 'refused')}", file=sys.stderr)
            failed = True
    return 1 if failed else 0


# --- setting up ------------------------------------------------------------------------------


def cmd_doctor(args) -> int:
    from .doctor import report, run_checks
    settings, failed = None, None
    try:
        values, fuse = mount_values(args)
    except SettingError as exc:
        failed = ("settings", str(exc))
    else:
        try:
            settings = settings_from_values(values, fuse)
        except CliError as exc:
            failed = ("key", str(exc))
    mountpoint = os.path.abspath(args.mountpoint) if args.mountpoint else None
    given = vars(args)
    cache_dir = Path(given.get("cache_dir") or default_cache_dir())
    text, healthy = report(run_checks(settings, failed[1] if failed else None, _config_state(mountpoint),
                                      cache_dir, given.get("api_url"), mountpoint))
    sys.stdout.write(text)
    return 0 if healthy else 1


def cmd_recover(args) -> int:
    from .fuse_host import is_dead_mount, release_dead_mount
    mountpoint = os.path.abspath(args.mountpoint)
    if not is_dead_mount(mountpoint):
        if not os.path.lexists(mountpoint):  # (a typo said "nothing to do" and exit 0)
            raise CliError(f"{mountpoint} does not exist")
        print(f"fs360: {mountpoint} is not a dead mount: nothing to do")
        return 0
    problem = release_dead_mount(mountpoint)
    if problem:
        raise CliError(problem)
    print(f"fs360: released the dead mount at {mountpoint} (its daemon was gone)")
    return 0


def _config_state(mountpoint: str | None) -> tuple[Path, str | None]:
    """The config file doctor names, and what is wrong with it (None: nothing, or there is none)."""
    from .settings_file import config_path, load_config
    try:
        load_config(mountpoint or "")
    except SettingError as exc:
        return config_path(), str(exc)
    return config_path(), None


def cmd_install_unit(args) -> int:
    from .settings_file import load_config
    from .systemd import install_unit
    mountpoint = os.path.abspath(args.mountpoint)
    key_files = [value for option, value, _ in load_config(mountpoint) if option.name == "api_key_file"]
    key_file = key_files[-1] if key_files else None
    try:
        print(install_unit(mountpoint, args.print, str(key_file) if key_file else None))
    except OSError as exc:
        raise CliError(f"cannot write {exc.filename}: {exc.strerror} (is XDG_CONFIG_HOME or ~/.config writable?)") \
            from None
    return 0


def cmd_install_helper(args) -> int:
    from .systemd import HelperExists, install_helper
    try:
        path = install_helper(args.prefix, args.force)
    except HelperExists as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        as_root = " (run it as root)" if os.geteuid() != 0 and exc.errno in (errno.EACCES, errno.EPERM) else ""
        raise CliError(f"cannot write {exc.filename}: {exc.strerror}{as_root}") from None
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
