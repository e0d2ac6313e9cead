"""Progress listeners: callbacks told of bytes sent, state changes and errors.

Events are delivered on a thread of their own, in order, a batch at a time
(at most every DELIVERY_PAUSE seconds): `emit` only queues, so
the engine may emit with its state lock held, and a slow listener (a desktop
notice spawns a process) never holds up an upload or a FUSE callback.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time

log = logging.getLogger(__name__)

# Seconds the delivery thread rests after each batch of events.
DELIVERY_PAUSE = 0.02


class Listeners:
    def __init__(self):
        self._callbacks: list = []
        self._lock = threading.Lock()
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def add(self, callback) -> None:
        """`callback(event: str, **details)`; events: session_opened, file_uploading, bytes_sent
        (a piece of a PUT body went out: its nbytes), chunk_acknowledged (the server's received
        after a PUT), chunk_refused (a proxy refused a PUT's body as too large: the server's
        received, unchanged), file_complete, file_failed (with retry_in seconds), file_rejected, project_created, project_status.
        Every event also carries `at`, the monotonic time it was emitted (rates must not depend on
        when a listener got to it)."""
        with self._lock:
            self._callbacks.append(callback)
            if self._thread is None:
                self._thread = threading.Thread(target=self._deliver, name="fs360-listeners", daemon=True)
                self._thread.start()

    def remove(self, callback) -> None:
        with self._lock:
            self._callbacks.remove(callback)

    def emit(self, event: str, **details) -> None:
        if self._callbacks:  # nobody listens (the usual case): nothing to queue
            details["at"] = time.monotonic()
            self._events.put((event, details))

    def close(self, timeout: float = 5.0) -> None:
        """Delivers what is queued, then stops the delivery thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._events.put(None)
            thread.join(timeout)

    def _deliver(self) -> None:
        while True:
            batch = [self._events.get()]
            with contextlib.suppress(queue.Empty):
                while True:
                    batch.append(self._events.get_nowait())
            with self._lock:
                callbacks = list(self._callbacks)
            for item in batch:
                if item is None:
                    return
                event, details = item
                for callback in callbacks:
                    try:
                        callback(event, **details)
                    except Exception:  # a listener's bug must not stop an upload
                        log.exception("progress listener failed on %s", event)
            # Events come in bursts (several per small file, one per piece of a PUT); taking them a
            # batch at a time costs one wake-up per pause instead of one per event. Each carries
            # its own time, so rates do not depend on when they are delivered.
            time.sleep(DELIVERY_PAUSE)
