"""What tests (and the benchmarks) ask of an engine or a path model that the product never
asks: waiting until the engine is idle, the count of files in each state, one file's state."""

from __future__ import annotations

import time

from fs360.engine.records import CLOSED, FAILED, PENDING, UPLOADING

# Files in these states still have work ahead of them: waiting for their commit point, or an upload.
BUSY_STATES = (CLOSED, PENDING, UPLOADING, FAILED)


def wait_idle(engine, timeout: float | None = None, poll: float = 0.2, on_tick=None) -> bool:
    """Waits until no file of `engine` is waiting for its commit point, queued or uploading;
    returns whether that happened. `on_tick(busy)` is called with the busy files at each look."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        with engine.lock:
            busy = [f for f in engine.registry.files_locked() if f.state in BUSY_STATES]
        if on_tick is not None:
            on_tick(busy)
        if not busy:
            return True
        if deadline is not None and time.monotonic() > deadline:
            return False
        time.sleep(poll)


def state_counts(engine) -> dict[str, int]:
    """How many files of `engine` are in each state."""
    out: dict[str, int] = {}
    with engine.lock:
        for record in engine.registry.files_locked():
            out[record.state] = out.get(record.state, 0) + 1
    return out


def file_state(model, session: str, name: str) -> str:
    """The state of the file `name` (a path inside the session) of the path model `model`."""
    with model.engine.lock:
        return model.tree.file(model.tree.session(session), name).state
