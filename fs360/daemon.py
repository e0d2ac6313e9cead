"""The mount's process life: launching the daemon, and the daemon itself.

`fs360 mount` (cli.py) builds one `Settings` and calls `launch()`, which starts
`python -m fs360.cli _serve MOUNTPOINT --report-fd N` with the settings as JSON
on its stdin (key included) and an environment without the key: the daemon
never has the key in its argv or in `/proc/PID/environ`. The daemon answers
on the report pipe: `ok` or `error REASON` once, then (foreground only)
`status LINE` every few seconds and `stopping` at the end.

In the foreground (`-f`, e.g. under systemd) the same child serves the mount and
the foreground process supervises it: it relays SIGTERM/SIGINT/SIGHUP, turns
the report lines into sd_notify messages, and returns the child's exit code.
Why a child and not serving in place: the environment a process was started
with stays readable in `/proc/PID/environ` whatever it unsets later, so a key
given as `FS360_API_KEY` (e.g. `Environment=` in a unit) would stay there; and
only the main process may notify systemd under the default NotifyAccess=main.

Threads of the daemon beside the engine's (engine/__init__.py), the API client's
(api/__init__.py), the commit point's (fs/exits.py) and WebDAV's (webdav/__init__.py), each under its name in
/proc/PID/task/*/comm (thread_names.py; the main thread and libfuse's keep the process's name):
  fs360-control   the control socket (control.py): pause, resume, set, release, status, web
  fs360-web       the dashboard's HTTP server (web/server.py), each request on a short-lived
                  thread of its own (socketserver's, Thread-N)
  fs360-status    foreground only: the status line to the supervisor every STATUS_INTERVAL
  fs360-notices   short-lived: one desktop notice for a batch of refusals (notices.py)
`fs360 serve webdav` runs the threads of webdav/__init__.py instead of libfuse's.

Locks: Reporter's lock (the report pipe) and DesktopNotices' (notices.py) are leaves.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import logging
import logging.handlers
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from . import control
from .api.client import ApiClient
from .config import Settings
from .engine.engine import Engine
from .errors import Fs360Error, JournalUnwritable, SettingError
from .fs import status as status_files
from .fs.fuse_ops import mount as fuse_mount
from .fs.model import MountModel
from .fuse_host import refusal_reason
from .notices import DesktopNotices, UploadLog
from .options import parse_loopback_address, runtime_value
from .systemd import Notifier
from .thread_names import name_threads_for_the_kernel
from .web.metrics import Counters
from .web.server import Dashboard

log = logging.getLogger("fs360")

# Where a key may come from in the environment; never passed on to the daemon.
KEY_ENV_VARS = ("FS360_API_KEY", "API_KEY")
# Also kept from the daemon: only the foreground process talks to systemd.
SUPERVISOR_ONLY_ENV = ("NOTIFY_SOCKET", "CREDENTIALS_DIRECTORY", "WATCHDOG_USEC", "WATCHDOG_PID")
STATUS_INTERVAL = 3.0
PR_SET_PDEATHSIG = 1
# How often a journal that refuses writes is said in the log (JournalTroubleFilter).
JOURNAL_TROUBLE_LOG_SECONDS = 60.0


class LaunchError(Exception):
    """The daemon could not mount; the message says why (never holds the key)."""


# --- the launching side ------------------------------------------------------------------


def launch(settings: Settings, mountpoint: str, foreground: bool, webdav: str | None = None) -> int:
    """Starts the daemon; returns once it is mounted (background) or has ended (foreground).
    `webdav`: the address to serve WebDAV at instead of mounting (its URL is printed first)."""
    read_end, write_end = os.pipe()
    env = {k: v for k, v in os.environ.items() if k not in KEY_ENV_VARS + SUPERVISOR_ONLY_ENV}
    # glibc gives each thread that allocates an arena of its own; the daemon's FUSE threads then
    # keep ~12 MiB more resident (measured with 10,000 files) for no speed we could measure.
    env.setdefault("MALLOC_ARENA_MAX", "2")
    command = [sys.executable, "-m", "fs360.cli", "_serve", mountpoint, "--report-fd", str(write_end)]
    if webdav is not None:
        command += ["--webdav", webdav]
    if foreground:
        command.append("--foreground")
    quiet = None if foreground else subprocess.DEVNULL
    process = subprocess.Popen(command, env=env, pass_fds=(write_end,), stdin=subprocess.PIPE, stdout=quiet,
                               stderr=quiet, start_new_session=True,
                               preexec_fn=_end_with_parent if foreground else None)
    os.close(write_end)
    try:
        process.stdin.write(settings.to_json().encode())
        process.stdin.close()
    except BrokenPipeError:
        pass  # it died at once: the report pipe says nothing and its exit code tells
    notifier = Notifier() if foreground else Notifier("")
    if foreground:
        _relay_signals(process, notifier)
    with os.fdopen(read_end, encoding="utf-8", errors="replace") as reports:
        try:
            first, _, url = reports.readline().strip().partition(" ")
            while first == "note":
                print(f"fs360: {url}", file=sys.stderr)
                first, _, url = reports.readline().strip().partition(" ")
        except KeyboardInterrupt:
            # Ctrl-C while it starts (a slow server): the user wants no mount, so the daemon, in a
            # session of its own that the terminal's SIGINT never reaches, is ended too.
            # (SIGTERM: before its mount, Python's default ends it; once mounted, libfuse's handler unmounts.)
            end_process(process, 30)
            print(f"fs360: interrupted: {mountpoint or 'the WebDAV server'} was not started", file=sys.stderr)
            raise
        if first != "ok":
            process.wait(60)
            raise LaunchError(url if first == "error" else f"the fs360 process exited ({process.returncode})")
        if webdav is not None:
            print(url, flush=True)  # the first line of stdout: what a script or a test reads
            what = f"serving WebDAV at {url}"
            if not foreground:
                print(f"fs360: {what} (pid {process.pid}, log: {settings.log_path})", file=sys.stderr)
                return 0
        else:
            what = f"mounted {mountpoint}"
            if not foreground:
                # Answered by the daemon: the mount is up, not just registered. (In the foreground a
                # signal relayed meanwhile may already be unmounting it: the daemon's exit tells.)
                try:
                    os.listdir(mountpoint)
                except OSError as exc:
                    raise LaunchError(f"{mountpoint} was mounted but does not answer: {exc.strerror}") from None
                print(f"fs360: mounted {mountpoint} (log: {settings.log_path})")
                return 0
        print(f"fs360: {what}", file=sys.stderr)
        notifier.send("READY=1", f"STATUS={what}", f"MAINPID={os.getpid()}")
        for line in reports:
            kind, _, text = line.rstrip("\n").partition(" ")
            if kind == "status":
                notifier.send(f"STATUS={text}")
            elif kind == "stopping":
                notifier.send("STOPPING=1")
    return process.wait()


def end_process(process: subprocess.Popen, grace: float) -> None:
    """SIGTERM, then SIGKILL should it not end within `grace` seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _end_with_parent() -> None:
    """In the child before exec: if the foreground process dies, the daemon gets SIGTERM and unmounts."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _relay_signals(process: subprocess.Popen, notifier: Notifier) -> None:
    def relay(signum, frame):
        notifier.send("STOPPING=1")
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # the daemon unmounts; its exit ends our loop
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, relay)


# --- the daemon side ---------------------------------------------------------------------


class Reporter:
    """The daemon's half of the report pipe (or stderr, when serve() runs without one)."""

    def __init__(self, fd: int | None, keep_open: bool):
        self.pipe = os.fdopen(fd, "w", encoding="utf-8", errors="replace") if fd is not None else None
        self.keep_open = keep_open
        self._lock = threading.Lock()
        self.reported = False

    def _send(self, line: str) -> None:
        with self._lock:
            if self.pipe is None:
                return
            try:
                self.pipe.write(line.replace("\n", " ") + "\n")
                self.pipe.flush()
            except (OSError, ValueError):
                self.pipe = None  # the launcher has gone: nobody to tell

    def ready(self, error: str | None, detail: str = "") -> None:
        """`ok [DETAIL]` (a WebDAV server's URL) or `error REASON`, once."""
        if self.reported:
            return
        self.reported = True
        if self.pipe is None and error:
            print(f"fs360: {error}", file=sys.stderr)
        self._send(f"ok {detail}".strip() if error is None else f"error {error}")
        if not self.keep_open or error is not None:
            self.close()

    def note(self, text: str) -> None:
        """`note TEXT` before the verdict: something the user should hear though the mount works."""
        if self.pipe is None:
            print(f"fs360: {text}", file=sys.stderr)
        self._send(f"note {text}")

    def status(self, line: str) -> None:
        self._send(f"status {line}")

    def stopping(self) -> None:
        self._send("stopping")

    @property
    def wants_status(self) -> bool:
        return self.pipe is not None and self.keep_open

    def close(self) -> None:
        with self._lock:
            if self.pipe is not None:
                try:
                    self.pipe.close()
                except OSError:
                    pass
                self.pipe = None


def child_main(argv: list[str]) -> int:
    """`fs360 _serve MOUNTPOINT --report-fd N [--foreground]`, settings JSON on stdin."""
    parser = argparse.ArgumentParser(prog="fs360 _serve")
    parser.add_argument("mountpoint")
    parser.add_argument("--report-fd", type=int, required=True)
    parser.add_argument("--foreground", action="store_true")
    parser.add_argument("--webdav", metavar="ADDRESS", help="serve WebDAV at ADDRESS instead of mounting")
    args = parser.parse_args(argv)
    name_threads_for_the_kernel()
    settings = Settings.from_json(sys.stdin.read())
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    reporter = Reporter(args.report_fd, keep_open=args.foreground)
    try:
        setup_logging(settings, settings.log_level, to_stderr=args.foreground)
    except OSError as exc:
        reporter.ready(f"cannot write the log in {settings.cache_dir}: {exc.strerror}")
        return 2
    if args.webdav is not None:
        return serve_webdav(settings, args.webdav, reporter)
    return serve(settings, args.mountpoint, reporter)


class SecretFilter(logging.Filter):
    """Defence in depth: whatever a log line carries, the key is masked."""

    def __init__(self, secret: str):
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secret and len(self.secret) >= 4:
            message = record.getMessage()
            if self.secret in message:
                record.msg, record.args = message.replace(self.secret, "***"), ()
            if record.exc_info and not record.exc_text:
                # Formatted here, before any handler's formatter does (which caches it unmasked).
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text and self.secret in record.exc_text:
                record.exc_text = record.exc_text.replace(self.secret, "***")
            if record.stack_info and self.secret in record.stack_info:
                record.stack_info = record.stack_info.replace(self.secret, "***")
        return True


class TerminalSafeFormatter(logging.Formatter):
    """Log lines with names' terminal-unsafe characters escaped (fs.status.terminal_safe): the log
    is read with `tail -f`, and a file's name goes into its lines."""

    def format(self, record: logging.LogRecord) -> str:
        return status_files.terminal_safe(super().format(record))


def setup_logging(settings: Settings, level: str, to_stderr: bool) -> None:
    settings.cache_dir.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    for handler in list(root.handlers):
        root.removeHandler(handler)
    fd = os.open(settings.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.close(fd)
    handlers: list[logging.Handler] = [
        logging.handlers.RotatingFileHandler(settings.log_path, maxBytes=20 * 1024 * 1024, backupCount=2)]
    if to_stderr:
        handlers.append(logging.StreamHandler(sys.stderr))
    secret_filter = SecretFilter(settings.api_key)
    journal_filter = JournalTroubleFilter()
    formatter = TerminalSafeFormatter("%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s")
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(secret_filter)
        handler.addFilter(journal_filter)
        root.addHandler(handler)
    # A log file on a disk that fails must not print a traceback to stderr for every line.
    logging.raiseExceptions = False
    # urllib3 would log URLs at debug level only, but keep it quiet in any case.
    logging.getLogger("urllib3").setLevel(logging.WARNING)


class JournalTroubleFilter(logging.Filter):
    """A journal that refuses writes (a read-only or failing cache disk) fails nearly every
    operation: what is logged with it is said once a minute, with the reason and no traceback."""

    def __init__(self):
        super().__init__()
        self._said_at = -JOURNAL_TROUBLE_LOG_SECONDS

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, JournalUnwritable):
            return True
        now = time.monotonic()
        if now < self._said_at + JOURNAL_TROUBLE_LOG_SECONDS:
            return False
        self._said_at = now
        record.msg, record.args = f"{record.getMessage()}: {exc}", ()
        record.exc_info = record.exc_text = None
        return True


class EmbeddedEmulator:
    """`fs360 mount --local`: an emulator process with its data under the cache dir."""

    def __init__(self, data_dir: Path, extra_args: list[str]):
        self.data_dir = data_dir
        self.extra_args = extra_args
        self.process: subprocess.Popen | None = None
        self.base_url = ""

    def start(self) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        port_file = self.data_dir / "port"
        port = port_file.read_text().strip() if port_file.exists() else "0"
        for attempt_port in (port, "0"):
            self.process = subprocess.Popen(
                [sys.executable, "-m", "fs360.emulator", "--host", "127.0.0.1", "--port", attempt_port,
                 "--data-dir", str(self.data_dir), "--quiet", "--exit-with-parent", str(os.getpid()),
                 *self.extra_args],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                start_new_session=True)
            line = self.process.stdout.readline().decode().strip()
            if line.startswith("http"):
                self.base_url = line
                port_file.write_text(line.split(":")[2].split("/")[0])
                return line
            self.process.wait(5)
        raise Fs360Error("the embedded emulator did not start")

    def stop(self) -> None:
        if self.process:
            end_process(self.process, 10)


def hold_mountpoint(mountpoint: str):
    """The folder to mount on, locked for the daemon's life (its descriptor is returned): two `fs360 mount` at once on one
    mountpoint (each with its own cache dir) both found it free and stacked two mounts. The lock
    is on the folder itself, the one a mount covers; one made meanwhile is refused too."""
    try:
        fd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise Fs360Error(f"cannot use {mountpoint}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise Fs360Error(f"another fs360 mount is being made at {mountpoint}: use that one, or unmount it first") \
            from None
    if os.path.ismount(mountpoint):
        os.close(fd)
        raise Fs360Error(f"{mountpoint} was mounted meanwhile (unmount it first: fs360 unmount or umount)")
    return fd


def lock_cache_dir(settings: Settings):
    """One mount per cache dir: two engines on one journal would send files twice.
    Opened without O_TRUNC and rewritten only once the lock is ours, so a refused
    second mount leaves the running daemon's pid in place."""
    settings.cache_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(settings.cache_dir, 0o700)
    fd = os.open(settings.cache_dir / control.LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    handle = os.fdopen(fd, "r+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise Fs360Error(f"another fs360 mount or WebDAV server uses the cache dir {settings.cache_dir}: "
                         f"stop it, or give this one another --cache-dir") from None
    handle.truncate(0)
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def control_handler(engine: Engine, model: MountModel, mountpoint: str, dashboards: list[Dashboard]):
    """The answers of the control socket: pause, resume, set bwlimit=…, release, info, status (the
    whole mount's snapshot, doc/STATUS-JSON.md), web (the dashboard's URL with its token)."""
    def handle(request: dict) -> dict:
        command = request.get("cmd")
        if command == "release":
            return release_held(model, request.get("paths"))
        if command == "status":
            return {"ok": True, "status": dict(model.status.mount_snapshot(), mountpoint=mountpoint)}
        if command == "web":
            if not dashboards:
                return {"ok": False, "error": "this mount has no dashboard (web_address is off, or its "
                                              "address was taken: see the log)"}
            return {"ok": True, "url": dashboards[0].url}
        if command in ("pause", "resume"):
            engine.gate.set_paused(command == "pause")
            if command == "resume":
                engine.try_now()  # also ends every wait for a failure shared by all uploads
            log.info("uploads %s", "paused" if command == "pause" else "resumed")
        elif command == "set":
            try:  # the schema `fs360 set` checked with: any client's values are checked alike
                values = dict(runtime_value(str(key), str(value)) for key, value in request.get("values", {}).items())
            except SettingError as exc:
                return {"ok": False, "error": str(exc)}
            if "bwlimit" in values:
                engine.gate.set_bwlimit(values["bwlimit"])
                log.info("bwlimit set to %s", values["bwlimit"])
        elif command != "info":
            return {"ok": False, "error": f"unknown command {command!r}"}
        return {"ok": True, "pid": os.getpid(), "paused": engine.gate.paused, "bwlimit": engine.gate.bwlimit}
    return handle


def release_held(model: MountModel, paths) -> dict:
    """`fs360 release`: each path (inside the mount, from its root) released, or why not."""
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        return {"ok": False, "error": "release needs a list of paths inside the mount"}
    done, refused = [], []
    for path in paths:
        try:
            done.append(model.release_held(path))
        except Fs360Error as exc:
            refused.append(f"{path.lstrip('/')}: {exc}")
    return {"ok": not refused, "released": done, "error": "; ".join(refused)}


def start_dashboard(settings: Settings, engine: Engine, model: MountModel, mountpoint: str,
                    handle, tell=lambda text: None) -> Dashboard | None:
    """The dashboard on its loopback address, or None (off, or the address is taken: the mount
    works without it, and `tell` says why)."""
    address = parse_loopback_address(settings.web_address)  # checked with the settings
    if address is None:
        return None

    def counters() -> Counters:
        bytes_sent, events = model.status.rates.counters()
        pacer = engine.client.pacer
        return Counters(bytes_sent, events, engine.client.requests.snapshot(), pacer.waits, pacer.waited_seconds,
                        engine.gate.rate_now())
    try:
        return Dashboard(address, settings.cache_dir, mountpoint, lambda: model.status.mount_snapshot(history=True),
                         handle, counters)
    except OSError as exc:
        said = f"no dashboard: cannot listen on {settings.web_address} ({exc.strerror or exc}); the mount works " \
               f"without it (give another --web-address, or 127.0.0.1:0 for a free port)"
        log.warning("%s", said)
        tell(said)
        return None


def _report_status(model: MountModel, reporter: Reporter, stop: threading.Event) -> None:
    while not stop.wait(STATUS_INTERVAL):
        reporter.status(status_files.summary_line(model.status.mount_snapshot()))


def start_engine(settings: Settings, reporter: Reporter, mountpoint: str, dashboards: list[Dashboard]):
    """What a mount and a WebDAV server share: the cache dir's lock, the embedded emulator,
    the key checked, the engine (not started), its path model and the control socket (its
    handler answers for `mountpoint`, and gives the first of `dashboards`' URL once one runs).
    None when it cannot start (the reporter is told why)."""
    engine = lock = embedded = None
    try:
        lock = lock_cache_dir(settings)
        if settings.local_emulator:
            embedded = EmbeddedEmulator(settings.cache_dir / "emulator", list(settings.emulator_args))
            settings = settings.with_(api_url=embedded.start())
            log.info("embedded emulator at %s", settings.api_url)
        client = ApiClient(settings)
        client.check_credentials()
        engine = Engine(settings, client)
        model = MountModel(engine, settings)
        handle = control_handler(engine, model, mountpoint, dashboards)
        server = control.ControlServer(settings.cache_dir, handle)
    except (Fs360Error, OSError) as exc:
        log.error("cannot start: %s", exc)
        reporter.ready(str(exc))
        if engine:
            engine.stop()
        if embedded:
            embedded.stop()
        if lock:
            lock.close()
        return None
    UploadLog(engine, model.status.rates)
    return settings, lock, embedded, engine, model, server, handle


def serve(settings: Settings, mountpoint: str, reporter: Reporter | None = None) -> int:
    """Runs the mount until it is unmounted; `reporter.ready(error_or_None)` is told once."""
    reporter = reporter or Reporter(None, keep_open=False)
    # FUSE callbacks are short and a program waits on each one; with upload workers
    # busy in Python, the default 5 ms GIL switch interval would queue every callback.
    sys.setswitchinterval(0.0005)
    try:
        place = hold_mountpoint(mountpoint)
    except Fs360Error as exc:
        reporter.ready(str(exc))
        return 2
    dashboards: list[Dashboard] = []
    started = start_engine(settings, reporter, mountpoint, dashboards)
    if started is None:
        os.close(place)
        return 2
    settings, lock, embedded, engine, model, server, handle = started
    notices = DesktopNotices(engine.listeners, mountpoint) if settings.desktop_notify else None
    stop_reports = threading.Event()
    registered = []

    failed_init = []

    def on_init():
        try:
            start_mount()
        except Exception as exc:
            # mfusepy logs an init's exception and mounts all the same: the launcher would wait
            # for a ready that never comes. Told, then unmounted as SIGTERM does (libfuse's own
            # handler wakes its loop).
            log.exception("the mount could not start")
            failed_init.append(exc)
            reporter.ready(f"the mount of {mountpoint} could not start ({exc}); see the log, then mount again")
            os.kill(os.getpid(), signal.SIGTERM)

    def start_mount():
        engine.start()
        dashboard = start_dashboard(settings, engine, model, mountpoint, handle, reporter.note)
        if dashboard is not None:
            dashboards.append(dashboard)
        try:
            registered.append(control.register(mountpoint, settings.cache_dir))
        except OSError as exc:  # the mount works; only pause/set/unmount's pid lookup will not
            log.warning("cannot register %s in the runtime dir: %s", mountpoint, exc)
        log.info("mounted %s (api %s, cache %s)", mountpoint, settings.api_url, settings.cache_dir)
        reporter.ready(None)
        if reporter.wants_status:
            threading.Thread(target=_report_status, args=(model, reporter, stop_reports),
                             name="fs360-status", daemon=True).start()

    destroyed = threading.Event()

    def on_destroy():
        destroyed.set()
        log.info("unmounting %s: unfinished uploads stay in the journal", mountpoint)
        reporter.stopping()

    # SIGTERM, SIGINT and SIGHUP are left to libfuse (mfusepy resets SIGINT for it): its
    # handlers end the loop, which unmounts. A Python handler would never run: the main
    # thread stays inside fuse_main, and Python runs handlers only in the main thread.
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    code = 0
    try:
        fuse_mount(model, mountpoint, allow_other=settings.allow_other,
                   on_init=on_init, on_destroy=on_destroy)
    except RuntimeError as exc:
        # libfuse returns 8 when a signal ended the loop: after destroy, an orderly unmount.
        if not (destroyed.is_set() and exc.args == (8,)):
            # Before init, libfuse refused the mount and says only a number: find the cause.
            reason = refusal_reason(mountpoint, exc, settings.allow_other) if not reporter.reported \
                else f"FUSE failed for {mountpoint}: {exc}"
            log.error("%s", reason)
            reporter.ready(reason)
            code = 1
    except Exception as exc:  # mfusepy raises RuntimeError when the mount fails
        log.error("FUSE failed for %s: %s", mountpoint, exc)
        reporter.ready(f"mounting {mountpoint} failed: {exc}")
        code = 1
    finally:
        if failed_init:
            code = 1
        stop_reports.set()
        for dashboard in dashboards:
            dashboard.close()
        for entry in registered:
            entry.unlink(missing_ok=True)
        server.close()
        engine.stop()
        if notices is not None:
            notices.close()  # the last batch of refusals, told
        if embedded:
            embedded.stop()
        lock.close()
        os.close(place)
        reporter.close()
    return code


def serve_webdav(settings: Settings, address: str, reporter: Reporter | None = None) -> int:
    """Serves the path model over WebDAV at `address` until SIGTERM, SIGINT or SIGHUP;
    `reporter.ready(error_or_None, url)` is told once."""
    from .webdav.server import WebDavServer
    reporter = reporter or Reporter(None, keep_open=False)
    sys.setswitchinterval(0.0005)  # as for FUSE: requests must not queue behind upload workers
    started = start_engine(settings, reporter, "", [])
    if started is None:
        return 2
    settings, lock, embedded, engine, model, control_server, _ = started
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda signum, frame: stop.set())
    webdav = notices = None
    try:
        try:
            webdav = WebDavServer(model, settings, address)
            url = webdav.start()
        except Fs360Error as exc:
            log.error("cannot serve WebDAV: %s", exc)
            reporter.ready(str(exc))
            webdav = None
            stop.set()
        else:
            # Inside the outer try: whatever fails here still stops the server's threads below (left
            # serving, they kept the process alive with no main thread to take SIGTERM).
            engine.start()
            if settings.desktop_notify:
                notices = DesktopNotices(engine.listeners, url)
            log.info("serving WebDAV at %s (api %s, cache %s)", url, settings.api_url, settings.cache_dir)
            reporter.ready(None, url)
            if reporter.wants_status:
                threading.Thread(target=_report_status, args=(model, reporter, stop),
                                 name="fs360-status", daemon=True).start()
        while not stop.wait(1.0):
            pass
    finally:
        reporter.stopping()
        if webdav is not None:
            log.info("stopping the WebDAV server: unfinished uploads stay in the journal")
            webdav.stop()
        model.release_all()  # PUTs still receiving their body: unfinished, never uploaded
        control_server.close()
        engine.stop()
        if notices is not None:
            notices.close()  # the last batch of refusals, told
        if embedded:
            embedded.stop()
        lock.close()
        reporter.close()
    return 0 if webdav is not None else 2
