"""What the daemon tells people of the engine's progress events: a log line per uploaded file
and per ready project (as rclone and mountpoint-s3 log each), and desktop notices.

Both are listeners of the engine (engine/progress.py), told on the listeners' thread; the
engine knows nothing of them.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
import time

from .engine.projects import project_page
from .fs.rates import RateBook
from .fs.status import human_bytes, human_duration

log = logging.getLogger("fs360")

# Refusals that come within this many seconds of the first one share one notice.
NOTICE_BATCH_SECONDS = 3.0


class UploadLog:
    """One INFO line per file the server holds complete (session/name, size, time, rate), one per
    project that is ready (with its page)."""

    def __init__(self, engine, rates: RateBook):
        self.engine = engine
        self.rates = rates
        self._ready: set[int] = set()
        engine.listeners.add(self.on_event)

    def _session_name(self, record) -> str:
        try:
            return self.engine.registry.session_of(record).name
        except KeyError:  # the session was removed meanwhile
            return "?"

    def on_event(self, event: str, **details) -> None:
        if event == "file_complete":
            record = details["file"]
            started = self.rates.started_at(record.id)
            self.rates.finished(record.id)
            if not log.isEnabledFor(logging.INFO):
                return  # (--log-level warning: a line per file nobody reads, not worth its formatting)
            took = ""
            if started is not None:
                elapsed = max(time.time() - started, 0.001)
                took = f" in {human_duration(elapsed) if elapsed >= 1 else f'{elapsed:.2f}s'}, " \
                       f"{human_bytes(record.size / elapsed)}/s"
            log.info("uploaded %s/%s: %s%s", self._session_name(record), record.name, human_bytes(record.size), took)
        elif event == "project_status" and details["status"] >= 100:
            session = details["session"]
            project = session.project
            if session.id in self._ready or project is None or not project.name:
                return
            self._ready.add(session.id)
            files = session.uploads()
            log.info("session %r: project %s is ready (%d file(s), %s): %s", session.name, project.name, len(files),
                     human_bytes(sum(f.size for f in files)), project_page(self.engine.settings.api_url, project.name))


# How long the last notices' notify-sends may take once the mount ends.
NOTICE_WAIT_SECONDS = 5.0


class DesktopNotices:
    """notify-send when a project is ready, and once per batch of refused files (not once per
    file); silent without a session bus or notify-send."""

    def __init__(self, listeners, mountpoint: str):
        self.mountpoint = mountpoint
        self.told: set = set()
        self.command = shutil.which("notify-send") if os.environ.get("DBUS_SESSION_BUS_ADDRESS") else None
        self._lock = threading.Lock()
        self._refused: list[tuple[str, str]] = []
        self._timer: threading.Timer | None = None
        self._shown: list[subprocess.Popen] = []  # notify-sends that may still run (reaped at close)
        if self.command:
            listeners.add(self.on_event)

    def on_event(self, event: str, **details) -> None:
        if event == "project_status" and details["status"] >= 100:
            session = details["session"]
            if ("project", session.id) not in self.told:
                self.told.add(("project", session.id))
                self.show(f"fs360: {session.name} is ready", f"The project of {session.name} is ready.")
        elif event == "file_rejected":
            with self._lock:
                self._refused.append((details["file"].name, str(details["error"])))
                if self._timer is None:
                    self._timer = threading.Timer(NOTICE_BATCH_SECONDS, self.flush)
                    self._timer.name = "fs360-notices"
                    self._timer.daemon = True
                    self._timer.start()

    def flush(self) -> None:
        """One notice for the refusals gathered so far."""
        with self._lock:
            refused, self._refused, self._timer = self._refused, [], None
        if not refused:
            return
        if len(refused) == 1:
            title = f"fs360: {refused[0][0]} was not uploaded"
        else:
            names = ", ".join(name for name, _ in refused[:3]) + (", …" if len(refused) > 3 else "")
            title = f"fs360: {len(refused)} files were not uploaded ({names})"
        more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
        self.show(title, f"{refused[0][0]}: {refused[0][1]}{more}. See: fs360 status --files {self.mountpoint}",
                  urgency="critical")

    def close(self) -> None:
        with self._lock:
            timer = self._timer
        if timer is not None:
            timer.cancel()
            self.flush()
        # A notify-send that hangs (a desktop's notification service that never answers) would
        # outlive the mount: each gets a few seconds to show its notice, then is ended.
        deadline = time.monotonic() + NOTICE_WAIT_SECONDS
        with self._lock:
            shown, self._shown = self._shown, []
        for process in shown:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.info("notify-send did not end within %g s: ended", NOTICE_WAIT_SECONDS)
                process.kill()
                process.wait()

    def show(self, title: str, body: str, urgency: str = "normal") -> None:
        try:
            process = subprocess.Popen([self.command, "--app-name=fs360", f"--urgency={urgency}", title, body],
                                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except OSError as exc:
            log.warning("notify-send failed: %s", exc)
            return
        with self._lock:
            self._shown = [p for p in self._shown if p.poll() is None] + [process]
