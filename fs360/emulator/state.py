"""The emulator's state shared by the request handlers: sessions, files and
projects (in the Store), flags, rate limits, faults, stats and violations."""

from __future__ import annotations

import hashlib
import math
import random
import secrets
import string
import threading
import time
from collections import deque

from .faults import FaultSet
from .pipeline import RunningHash
from .profiles import PROFILES
from .store import Store

# The server's own copy of api.md's table (endpoint -> (limit, window seconds)). Kept apart from
# the client's fs360.config on purpose: the emulator stands for a foreign server, so a client
# bug in its table must not be mirrored here.
RATE_LIMITS = {
    "open_session": (30, 3600.0),
    "put_file": (1200, 60.0),
    "get_file": (600, 60.0),
    "get_session": (120, 60.0),
    "delete_session": (60, 60.0),
    "create_project": (10, 3600.0),
    "get_project": (60, 60.0),
    "list_projects": (60, 60.0),  # not in api.md's table (vendor profile only): as polling a project
}
ID_ALPHABET = string.ascii_letters + string.digits

# Body arrivals kept for /_emulator/arrivals: the latest this many segments (1 MiB each at most).
ARRIVALS_KEPT = 100_000


class RateLimiter:
    def __init__(self):
        self.lock = threading.Lock()
        self.windows: dict = {}

    def check(self, key: str, endpoint: str, scale: float):
        limit, window = RATE_LIMITS[endpoint]
        window *= scale
        now = time.monotonic()
        with self.lock:
            dq = self.windows.get((key, endpoint))
            if dq is None:
                dq = self.windows[(key, endpoint)] = deque()
            while dq and dq[0] <= now - window:
                dq.popleft()
            if len(dq) >= limit:
                return max(1, math.ceil(dq[0] + window - now))
            dq.append(now)
            return None

    def reset(self):
        with self.lock:
            self.windows.clear()


class Emulator:
    """All state shared by the request handlers."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.profile = PROFILES[getattr(cfg, "profile", "default")]()
        self.store = Store(cfg.data_dir)
        self.discard = cfg.discard
        self.keys = cfg.keys
        self.allowed = list(cfg.allowed_extensions)
        self.allowed_set = set(self.allowed)
        self.flags_lock = threading.Lock()
        self.flags = dict(
            quota_exceeded=cfg.quota_exceeded,
            tariff_forbids_upload=cfg.tariff_forbids_upload,
            project_tariff=cfg.project_tariff,
            project_name_collision=cfg.project_name_collision,
            max_file_size=cfg.max_file_size,
            max_session_size=cfg.max_session_size,
            rate_limits=cfg.rate_limits,
            rate_window_scale=cfg.rate_window_scale,
            processing_seconds=cfg.processing_seconds,
            session_lifetime=cfg.session_lifetime,
        )
        self.initial_flags = dict(self.flags)
        self.rate = RateLimiter()
        self.faults = FaultSet(cfg.faults)
        self.rng = random.Random(cfg.seed) if cfg.seed is not None else None
        self.rng_lock = threading.Lock()
        self.stats_lock = threading.Lock()
        self.stats: dict[str, int] = {}
        self.violations: list[dict] = []
        # (epoch seconds, bytes) of each segment of a PUT body as it arrived (see /_emulator/arrivals).
        self.arrivals: deque[tuple[float, int]] = deque(maxlen=ARRIVALS_KEPT)
        self.file_locks: dict = {}
        self.file_locks_lock = threading.Lock()
        self.after409: dict = {}  # (upload_id, name) -> received given in the 409
        self.hashes: dict[int, RunningHash] = {}
        self.projects_lock = threading.Lock()
        self.log = cfg.log and not cfg.quiet
        # A runtime account fault: {"status", "error", "endpoints"} or None (see /_emulator/account).
        self.account_lock = threading.Lock()
        self.account = None

    # -- helpers ----------------------------------------------------------
    def flag(self, name):
        with self.flags_lock:
            return self.flags[name]

    def new_id(self, n=8) -> str:
        with self.rng_lock:
            if self.rng is not None:
                return "".join(self.rng.choice(ID_ALPHABET) for _ in range(n))
        return "".join(secrets.choice(ID_ALPHABET) for _ in range(n))

    def count(self, method, endpoint, status):
        k = f"{method} {endpoint} {status}"
        with self.stats_lock:
            self.stats[k] = self.stats.get(k, 0) + 1

    def arrived(self, nbytes: int) -> None:
        self.arrivals.append((time.time(), nbytes))

    def violation(self, kind, upload_id, name, detail):
        with self.stats_lock:
            self.violations.append(
                {"kind": kind, "upload_id": upload_id, "name": name, "detail": detail, "time": time.time()}
            )

    def file_lock(self, key) -> threading.Lock:
        with self.file_locks_lock:
            lk = self.file_locks.get(key)
            if lk is None:
                lk = self.file_locks[key] = threading.Lock()
            return lk

    def live_session(self, upload_id):
        """The session's row, or None when it is unknown or expired (then purged).
        Every API request to a session comes through here: with idle expiry
        (vendor profile) this is where its clock restarts."""
        row = self.store.session(upload_id)
        if row is None:
            return None
        now = time.time()
        if row["expires_at"] <= now:
            self.purge(upload_id)
            return None
        if self.profile.idle_expiry:
            self.store.run("UPDATE sessions SET expires_at=? WHERE upload_id=?",
                           (now + self.flag("session_lifetime"), upload_id))
        return row

    def account_fault(self, endpoint):
        """The runtime account fault's (status, error) when it covers `endpoint`, else None."""
        with self.account_lock:
            a = self.account
        if a is None or (a["endpoints"] is not None and endpoint not in a["endpoints"]):
            return None
        return a["status"], a["error"]

    def discard_projects_of(self, upload_id):
        """Vendor DELETE /uploads/{id}: the projects made from the session that are
        not ready yet lose their input; their status stays where it was."""
        with self.projects_lock:
            for prow in self.store.all("SELECT * FROM projects WHERE upload_id=? AND discarded_status IS NULL",
                                       (upload_id,)):
                st = self.project_status(prow)
                if st < 100:
                    self.store.run("UPDATE projects SET discarded_status=? WHERE id=?", (st, prow["id"]))

    def purge(self, upload_id=None):
        """Forget a session (or, with None, every session and project) with its
        in-memory file state."""
        if upload_id is None:
            self.store.wipe()
            self.hashes.clear()
        else:
            for fid in self.store.purge_session(upload_id):
                self.hashes.pop(fid, None)
        with self.file_locks_lock:
            for table in (self.after409, self.file_locks):
                for k in [k for k in table if upload_id is None or k[0] == upload_id]:
                    del table[k]

    def file_sha256(self, row):
        """sha256 of a complete file, computing it from the blob if needed."""
        if not row["complete"]:
            return None
        if row["sha256"]:
            return row["sha256"]
        if self.discard:
            return None
        h = hashlib.sha256()
        try:
            with open(self.store.blob_path(row["id"]), "rb") as f:
                left = row["total"]
                while left > 0:
                    b = f.read(min(left, 8 << 20))
                    if not b:
                        break
                    h.update(b)
                    left -= len(b)
        except FileNotFoundError:
            if row["total"] != 0:
                return None
        hx = h.hexdigest()
        self.store.run("UPDATE files SET sha256=? WHERE id=?", (hx, row["id"]))
        return hx

    def project_status(self, prow) -> int:
        if "discarded_status" in prow.keys() and prow["discarded_status"] is not None:
            return prow["discarded_status"]
        ps = prow["processing_seconds"]
        if ps <= 0:
            return 100
        el = time.time() - prow["created"]
        if el <= 0:
            return 0
        return min(100, int(el * 100 / ps))
