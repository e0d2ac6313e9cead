"""Progress listeners: callbacks told of bytes sent, state changes and errors."""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)


class Listeners:
    def __init__(self):
        self._callbacks: list = []
        self._lock = threading.Lock()

    def add(self, callback) -> None:
        """`callback(event: str, **details)`; events: session_opened, file_pending, file_uploading,
        bytes_sent, file_complete, file_failed (with retry_in seconds), file_rejected, project_created, project_status."""
        with self._lock:
            self._callbacks.append(callback)

    def remove(self, callback) -> None:
        with self._lock:
            self._callbacks.remove(callback)

    def emit(self, event: str, **details) -> None:
        with self._lock:
            callbacks = list(self._callbacks)
        for callback in callbacks:
            try:
                callback(event, **details)
            except Exception:  # a listener's bug must not stop an upload
                log.exception("progress listener failed on %s", event)
