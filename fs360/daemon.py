"""The mount's process: logging, the optional embedded emulator, the engine and FUSE.

`fs360 mount` starts this in a child process (the key goes through the
environment, never the command line) and returns once the child reports the
mount ready through a pipe, or reports its error.
"""

from __future__ import annotations

import fcntl
import logging
import logging.handlers
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from .api.client import ApiClient
from .config import Settings
from .engine.engine import Engine
from .errors import Fs360Error
from .fs.fuse_ops import mount as fuse_mount
from .fs.model import MountModel

log = logging.getLogger("fs360")

LOCAL_KEY = "sk_local_demo"


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
            if record.exc_text and self.secret in record.exc_text:
                record.exc_text = record.exc_text.replace(self.secret, "***")
        return True


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
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s")
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(secret_filter)
        root.addHandler(handler)
    # urllib3 would log URLs at debug level only, but keep it quiet in any case.
    logging.getLogger("urllib3").setLevel(logging.WARNING)


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
                 "--data-dir", str(self.data_dir), "--quiet", *self.extra_args],
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
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def lock_cache_dir(settings: Settings):
    """One mount per cache dir: two engines on one journal would send files twice."""
    settings.cache_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(settings.cache_dir, 0o700)
    handle = open(settings.cache_dir / "lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise Fs360Error(f"another fs360 mount uses the cache dir {settings.cache_dir}") from None
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def serve(settings: Settings, mountpoint: str, *, ready=None, embedded: EmbeddedEmulator | None = None) -> int:
    """Runs the mount until it is unmounted. `ready(error_or_None)` is called once."""
    reported = threading.Event()
    # FUSE callbacks are short and a program waits on each one; with upload workers
    # busy in Python, the default 5 ms GIL switch interval would queue every callback.
    sys.setswitchinterval(0.0005)

    def report(error: str | None) -> None:
        if not reported.is_set():
            reported.set()
            if ready is not None:
                ready(error)

    engine = None
    lock = None
    try:
        lock = lock_cache_dir(settings)
        if embedded is not None:
            settings = settings.with_(api_url=embedded.start())
            log.info("embedded emulator at %s", settings.api_url)
        client = ApiClient(settings)
        client.check_credentials()
        engine = Engine(settings, client)
        model = MountModel(engine, settings)
    except (Fs360Error, OSError) as exc:
        log.error("cannot mount: %s", exc)
        report(str(exc))
        if embedded:
            embedded.stop()
        return 2

    def on_init():
        engine.start()
        log.info("mounted %s (api %s, cache %s)", mountpoint, settings.api_url, settings.cache_dir)
        report(None)

    def on_destroy():
        log.info("unmounting %s: unfinished uploads stay in the journal", mountpoint)

    # fusermount -u ends the FUSE loop; SIGTERM/SIGINT ask for the same.
    def on_signal(signum, frame):
        subprocess.run(["fusermount3", "-u", "-z", mountpoint], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)

    signal.signal(signal.SIGTERM, on_signal)
    code = 0
    try:
        fuse_mount(model, mountpoint, allow_other=settings.allow_other,
                   on_init=on_init, on_destroy=on_destroy)
    except Exception as exc:  # mfusepy raises RuntimeError when the mount fails
        log.error("FUSE failed for %s: %s", mountpoint, exc)
        report(f"mounting {mountpoint} failed: {exc}")
        code = 1
    finally:
        engine.stop()
        if embedded:
            embedded.stop()
        if lock:
            lock.close()
    return code
