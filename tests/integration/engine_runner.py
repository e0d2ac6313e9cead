"""Drives an Engine the way the fs layer does, in-process or as a subprocess.

In-process (tests):  `queue_files(engine, "session", {"a.jpg": "/src/a.jpg"})`
Subprocess (kill tests, benchmarks):

    FS360_API_KEY=... python -m tests.integration.engine_runner \
        --url URL --cache DIR --src DIR --session NAME [--chunk-size N] [--workers N]

queues every file of --src (once: a restart finds them in the journal), prints
`QUEUED`, then waits until the engine is idle and prints `DONE {counts}` and
`RSS <peak kB>`. The key comes from the environment, never the command line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
from pathlib import Path

from fs360.config import Settings
from fs360.engine.engine import Engine
from fs360.engine.records import SessionRecord
from tests.engine_helpers import state_counts, wait_idle

COPY_BLOCK = 8 << 20


def queue_files(engine: Engine, session_name: str, files: dict[str, str | os.PathLike],
                project: dict | None = None) -> SessionRecord:
    """Creates the session (if new) and one file per entry, as mkdir/create/write/close would."""
    with engine.lock:
        session = engine.registry.sessions.get(session_name) or engine.registry.create_session_locked(session_name, 0o755)
    for name, source in files.items():
        with engine.lock:
            record = engine.registry.create_file_locked(session, name, 0o644, os.getuid(), os.getgid(), local_only=False)
            engine.registry.open_for_write_locked(record)
            spool_path = engine.spool.path(record.id)
        size = _copy(source, spool_path)
        with engine.lock:
            engine.registry.wrote_locked(record, 0, size)
        engine.registry.content_digest(record)  # as the path model's last close does: hashed off the lock
        with engine.lock:
            engine.registry.close_writer_locked(record, size)
    if project is not None:
        with engine.lock:
            engine.request_project_locked(session, project)
    return session


def _copy(source, target) -> int:
    """Copies with copy_file_range where it works (page cache to page cache), read/write else."""
    size = os.path.getsize(source)
    with open(source, "rb") as src, open(target, "r+b") as dst:
        done = 0
        try:
            while done < size:
                n = os.copy_file_range(src.fileno(), dst.fileno(), size - done)
                if n == 0:
                    break
                done += n
        except OSError:
            src.seek(done)
            dst.seek(done)
            while True:
                block = src.read(COPY_BLOCK)
                if not block:
                    break
                dst.write(block)
                done += len(block)
    return done


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--cache", required=True)
    p.add_argument("--src", required=True)
    p.add_argument("--session", default="runner")
    p.add_argument("--chunk-size", type=int, default=8 << 20)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--timeout", type=float, default=600.0)
    args = p.parse_args(argv)
    settings = Settings(api_url=args.url, api_key=os.environ.get("FS360_API_KEY", ""), cache_dir=Path(args.cache),
                        chunk_size=args.chunk_size, workers=args.workers, writeback_delay=0.0,
                        backoff_base=0.05, backoff_cap=1.0, rate_limits_enabled=False)
    engine = Engine(settings)
    if args.session not in engine.registry.sessions:
        src = Path(args.src)
        queue_files(engine, args.session, {f.name: f for f in sorted(src.iterdir()) if f.is_file()})
    print("QUEUED", flush=True)
    engine.start()
    ok = wait_idle(engine, timeout=args.timeout, poll=0.05)
    counts = state_counts(engine)
    engine.stop()
    print("DONE" if ok else "TIMEOUT", json.dumps(counts), flush=True)
    print("RSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
