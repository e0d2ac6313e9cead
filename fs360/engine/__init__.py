"""The upload engine: records and their journal, the queue, transfers and housekeeping.

Modules, each behind a small API (`engine.py` only wires them):
  registry.py      every session/file/folder/project record and its state machine; the only
                   writer of record state, written through to the journal (journal.py)
  scheduler.py     the due-time queue: which file is sent next, one upload per file at a time
  transfer.py      one upload attempt of one file and how its outcome settles the file
  uploader.py      the PUTs of an attempt, in the worker thread that runs it
  chunk_sizes.py   how large each PUT is: grown while PUTs are fast, within a proxy's limit
  housekeeping.py  projects (projects.py), spool eviction, the journal's reserve and checkpoints
  archive_plan.py  a session's tree as its one archive (archive.py streams it)

Threads (each under its name in /proc/PID/task/*/comm, cut to 15 bytes: thread_names.py)
  FUSE threads (libfuse's)     call the path model, which calls the engine with the state lock
                               held for short steps: never network, never a wait on the disk
                               beyond one journal commit; named as the process (libfuse's own)
  fs360-upload-N (workers)     open a folder's server session as its first file is written
                               (Transfer.open_early), take a due file from the scheduler, run
                               Transfer.attempt: the network I/O (the PUTs too: sendall, file
                               reads and hashing large buffers release the GIL) runs with no
                               engine lock held; a
                               hold on a kind of request that ends (api/troubles.py) brings
                               waiting files forward from whichever thread saw it end (it holds
                               no engine lock then)
  fs360-maintenance            Housekeeping.loop: projects, eviction, reserve, WAL checkpoints;
                               every half second, or when a project may be due
  fs360-commits                the commit clock: commits closed files whose write-back delay passed
                               with a writer still running (Engine._commit_loop); woken only by a
                               sooner first entry, and takes entries due within 50 ms together
  fs360-listeners              delivers progress events (progress.py), a batch at a time with a
                               20 ms rest between batches; emitting only queues; started with the
                               first event
  fs360-spool                  writes the spool's direct writes behind their writers, in order
                               (spool.py, WritesBehind); started with the first; a full disk
                               makes it take the state lock to evict
  fs360-delete-session         short-lived: DELETE of a dead server session, with retries

The daemon's other threads are listed where their code is: fs360-deadlines in api/__init__.py,
fs360-exits in fs/exits.py; fs360-control, fs360-web, fs360-status, fs360-notices and
fs360-webdav in daemon.py (tests/fuse/test_thread_names.py holds each list to a running mount).

Lock order (take only rightwards; never leftwards while holding one on the right)
  Transfer's per-session open guard  ->  the state lock (`engine.lock`, locking.StateLock)
      ->  Journal._lock  ->  Journal._behind_lock
  The path model's Writers._lock (fs/exits.py) is taken inside the state lock, never around it,
  and takes the exit watch's PidfdWatch._lock inside it (fs/exits.py).
  The spool's WritesBehind condition is a leaf; waiting on it (`drain`, `settle`, a `submit`
  that waits for a buffer) is never done with the state lock held (its thread may need it).
  Leaf locks, taken alone and never around another: Listeners._lock, TransferGate's
  condition, ChunkSizes._lock (chunk_sizes.py), the pacer's lock (api/pacing.py), the
  troubles' lock (api/troubles.py: its listeners are told with it released), the
  transport's lock and its deadlines' condition (api/transport.py), the pacer's counts
  (api/pacing.py), RequestCounts' (api/client.py), a RunningDigest's (spool.py), the
  RateBook's (fs/rates.py), the FUSE adapter's listings (fs/fuse_ops.py).
  The path model's HandleTable._lock (fs/handles.py) is a leaf, taken with or without the state
  lock held. A FileHandle's `io` lock (held by a write, truncate, fallocate or fsync through the
  handle from reading its descriptors to the end of their use, and by its release while it takes
  them) is taken before the state lock (a write's eviction on a full disk) and the WritesBehind
  condition, never while either is held.

The state lock is a plain lock: taking it twice from one thread raises `LockReentered`
instead of deadlocking. Helpers whose names end in `_locked` need it held. Work that may
be slow happens outside it: HTTP, listener callbacks, progress commits (journaled by the
worker after releasing it), WAL checkpoints (on a connection of their own), the archive's
sha256, rendering status files (the model renders from a snapshot).
"""

# Loaded on first use: importing a submodule (fs360.engine.processes) loads only what it needs.
_EXPORTS = {"Engine": ".engine", "FileRecord": ".records", "ProjectRequest": ".records",
            "SessionRecord": ".records", "project_page": ".projects"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
