"""The ``/_emulator`` introspection API (no auth): what tests read and switch.
doc/EMULATOR.md lists each route."""

from __future__ import annotations

import json
import time

from .faults import ENDPOINTS, FaultSet, FaultSpecError
from .framing import Abort

ACCOUNT_STATUSES = (401, 402, 403)


def parse_account_fault(d):
    """A runtime account fault from its JSON ({} or null clears it); raises ValueError."""
    if d is None or d == {}:
        return None
    if not isinstance(d, dict):
        raise ValueError("expected a JSON object")
    unknown = set(d) - {"status", "error", "endpoints"}
    if unknown:
        raise ValueError(f"unknown fields {sorted(unknown)}")
    status = d.get("status")
    if status not in ACCOUNT_STATUSES or isinstance(status, bool):
        raise ValueError(f"status must be one of {list(ACCOUNT_STATUSES)}")
    error = d.get("error")
    if not isinstance(error, str) or not error:
        raise ValueError("error must be a non-empty string")
    eps = d.get("endpoints")
    if eps == "*":
        eps = None
    if eps is not None:
        if not isinstance(eps, list) or not eps or any(e not in ENDPOINTS for e in eps):
            raise ValueError(f"endpoints must be '*' or a list of {list(ENDPOINTS)}")
    return {"status": status, "error": error, "endpoints": eps}


def _flags_error(flags: dict, changes: dict):
    """Why `changes` cannot be applied to `flags`, or None."""
    for k, v in changes.items():
        if k not in flags:
            return f"unknown flag {k!r}; known: {sorted(flags)}"
        if isinstance(flags[k], bool):
            if not isinstance(v, bool):
                return f"flag {k!r} must be a boolean"
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            return f"flag {k!r} must be a non-negative number"
    return None


class Introspection:
    """Handler mixin: the introspection routes, dispatched from ROUTES / PREFIX_ROUTES."""

    def introspect(self, m, sub):
        self._endpoint = None
        sub = sub.rstrip("/")
        methods, arg = ROUTES.get(sub), None
        if methods is None:
            for prefix, table in PREFIX_ROUTES:
                if sub.startswith(prefix):
                    methods, arg = table, sub[len(prefix) :]
                    break
        if methods is None:
            return self.error(404, "not_found")
        name = methods.get(m) or methods.get("*")
        if name is None:
            return self.error(405, "method_not_allowed")
        fn = getattr(self, name)
        return fn() if arg is None else fn(arg)

    def _body_json(self):
        """The request's JSON (None when empty), or Abort once an error is answered."""
        b = self._read_small_body()
        if b is None:
            return Abort
        if not b.strip():
            return None
        try:
            return json.loads(b.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            self.error(400, "invalid_json")
            return Abort

    def _i_files(self):
        emu = self.emu
        rows = emu.store.all("SELECT * FROM files ORDER BY id")
        self.respond(200, [
            {
                "upload_id": r["upload_id"],
                "name": r["name"],
                "received": r["received"],
                "total": r["total"],
                "complete": bool(r["complete"]),
                "sha256": emu.file_sha256(r),
                "overwritten_bytes": r["overwritten"],
                "put_count": r["put_count"],
            }
            for r in rows
        ])

    def _i_progress(self, upload_id):
        # Counts only: cheap enough to poll while a benchmark runs.
        row = self.emu.store.one(
            "SELECT COUNT(*), COALESCE(SUM(complete), 0), COALESCE(SUM(received), 0) FROM files WHERE upload_id=?",
            (upload_id,))
        self.respond(200, {"upload_id": upload_id, "files": row[0], "complete": row[1], "received": row[2]})

    def _i_arrivals(self):
        self.respond(200, [[at, nbytes] for at, nbytes in list(self.emu.arrivals)])

    def _i_stats(self):
        emu = self.emu
        with emu.stats_lock:
            requests = dict(emu.stats)
            violations = list(emu.violations)
        endpoints: dict[str, int] = {}  # "METHOD endpoint" -> count, whatever the answer
        for k, n in requests.items():
            ep = k.rsplit(" ", 1)[0]
            endpoints[ep] = endpoints.get(ep, 0) + n
        self.respond(200, {"requests": requests, "endpoints": endpoints, "violations": violations})

    def _i_violations(self):
        with self.emu.stats_lock:
            violations = list(self.emu.violations)
        self.respond(200, violations)

    def _i_projects(self):
        emu = self.emu
        rows = emu.store.all("SELECT * FROM projects ORDER BY id")
        self.respond(200, [
            {"name": r["name"], "upload_id": r["upload_id"], "download_link": r["download_link"],
             "title": r["title"], "status": emu.project_status(r), "create_count": r["create_count"],
             "polls": r["poll_count"], "discarded": r["discarded_status"] is not None}
            for r in rows
        ])

    def _i_sessions(self):
        now = time.time()
        rows = self.emu.store.all("SELECT * FROM sessions ORDER BY created")
        self.respond(200, [
            {"upload_id": r["upload_id"], "created": r["created"], "expires_at": r["expires_at"],
             "expires_in": r["expires_at"] - now}
            for r in rows
        ])

    def _i_faults_get(self):
        self.respond(200, self.emu.faults.describe())

    def _i_faults_set(self):
        spec = self._body_json()
        if spec is Abort:
            return
        try:
            self.emu.faults = FaultSet(spec)
        except FaultSpecError as e:
            return self.error(400, "invalid_faults", detail=str(e))
        self.respond(200, self.emu.faults.describe())

    def _i_faults_clear(self):
        self.emu.faults = FaultSet(None)
        self.respond(200, {"faults": "cleared"})

    def _i_flags_get(self):
        with self.emu.flags_lock:
            flags = dict(self.emu.flags)
        self.respond(200, flags)

    def _i_flags_set(self):
        emu = self.emu
        d = self._body_json()
        if d is Abort:
            return
        if not isinstance(d, dict):
            return self.error(400, "invalid_flags", detail="expected a JSON object")
        with emu.flags_lock:
            err = _flags_error(emu.flags, d)
            if err is None:
                emu.flags.update(d)
                out = dict(emu.flags)
        if err:
            return self.error(400, "invalid_flags", detail=err)
        self.respond(200, out)

    def _i_account_get(self):
        with self.emu.account_lock:
            account = self.emu.account
        self.respond(200, {"account": account})

    def _i_account_set(self):
        d = self._body_json() if self.command == "POST" else None  # DELETE clears
        if d is Abort:
            return
        try:
            account = parse_account_fault(d)
        except ValueError as e:
            return self.error(400, "invalid_account", detail=str(e))
        with self.emu.account_lock:
            self.emu.account = account
        self.respond(200, {"account": account})

    def _i_expire(self, upload_id):
        emu = self.emu
        if emu.store.session(upload_id) is None:
            return self.error(404, "upload_session_not_found")
        emu.store.run("UPDATE sessions SET expires_at=? WHERE upload_id=?", (time.time() - 1, upload_id))
        self.respond(200, {"expired": True})

    def _i_reset(self):
        emu = self.emu
        d = self._body_json()
        if d is Abort:
            return
        with emu.stats_lock:
            emu.stats.clear()
            emu.violations.clear()
        emu.arrivals.clear()
        emu.rate.reset()
        emu.faults = FaultSet(None)
        with emu.account_lock:
            emu.account = None
        with emu.flags_lock:
            emu.flags = dict(emu.initial_flags)
        if isinstance(d, dict) and d.get("data"):
            emu.purge()
        self.respond(200, {"reset": True})

    def _i_health(self):
        emu = self.emu
        self.respond(200, {"ok": True, "discard": emu.discard, "profile": emu.profile.name})

    def _i_redirected(self, rest):
        self.redirected("/" + rest)


# path -> {method: handler name}; a known path with another method is 405, an unknown one 404.
ROUTES = {
    "/files": {"GET": "_i_files"},
    "/stats": {"GET": "_i_stats"},
    "/arrivals": {"GET": "_i_arrivals"},
    "/violations": {"GET": "_i_violations"},
    "/projects": {"GET": "_i_projects"},
    "/sessions": {"GET": "_i_sessions"},
    "/faults": {"GET": "_i_faults_get", "POST": "_i_faults_set", "DELETE": "_i_faults_clear"},
    "/flags": {"GET": "_i_flags_get", "POST": "_i_flags_set"},
    "/account": {"GET": "_i_account_get", "POST": "_i_account_set", "DELETE": "_i_account_set"},
    "/reset": {"POST": "_i_reset"},
    "/health": {"GET": "_i_health"},
}
# prefix -> {method: handler name}, the rest of the path as its argument; "*" is any method.
PREFIX_ROUTES = (
    ("/progress/", {"GET": "_i_progress"}),
    ("/expire/", {"POST": "_i_expire"}),
    ("/redirected/", {"*": "_i_redirected"}),
)
