"""The emulator's HTTP server: every endpoint of api.md Part A with the Part B
choices (or, with ``--profile vendor``, Part C's), plus the ``/_emulator``
introspection API.

Every choice made where api.md is silent, the profiles, the faults and the
introspection API are written down in doc/EMULATOR.md; keep it in step.

The parts, each in its module: ``framing`` (HTTP on one connection, the
server), ``pipeline`` (a PUT body to blob and hash), ``state`` (sessions,
files, projects, flags, rate limits, stats), ``uploads`` and ``projects`` (the
API endpoints and the project record), ``replies`` (what faults answer),
``introspect`` (``/_emulator``), ``profiles`` (default vs vendor).  This module
routes an API request through auth, rate limit, account and faults to its
endpoint.
"""

from __future__ import annotations

import ssl
import time

from .constants import API_PREFIX, EMU_PREFIX, SCOPE_READ, SCOPE_WRITE, GiB
from .framing import FramedHandler, Server
from .introspect import Introspection, parse_account_fault
from .profiles import DEFAULT_EXTENSIONS, EXT_GROUPS, extension_of, flatten_name
from .projects import ProjectEndpoints
from .replies import FaultReplies
from .state import RATE_LIMITS, Emulator, RateLimiter
from .uploads import UploadEndpoints

# What callers import from here (the CLI, tests, benchmarks), wherever it lives now.
__all__ = ["make_server", "Handler", "Emulator", "Server", "GiB", "RATE_LIMITS", "RateLimiter", "DEFAULT_EXTENSIONS",
           "EXT_GROUPS", "extension_of", "flatten_name", "parse_account_fault", "API_PREFIX", "EMU_PREFIX"]

class Handler(UploadEndpoints, ProjectEndpoints, FaultReplies, Introspection, FramedHandler):
    """One connection's handler: framing from FramedHandler, the rest from the mixins."""

    emu: Emulator = None  # set on the subclass made by make_server

    def dispatch(self):
        if not self._parse_framing():
            return
        path = self._request_path()
        m = self.command
        emu = self.emu
        if path == EMU_PREFIX or path.startswith(EMU_PREFIX + "/"):
            return self.introspect(m, path[len(EMU_PREFIX) :])
        if not path.startswith(API_PREFIX + "/"):
            return self.error(404, "not_found")
        rest = path[len(API_PREFIX) + 1 :]
        parts = rest.split("/", 2)
        route = None  # (endpoint, allowed methods, method->handler)
        if parts == ["uploads"]:
            route = {"POST": ("open_session", self.open_session, ())}
        elif len(parts) == 2 and parts[0] == "uploads" and parts[1]:
            route = {
                "GET": ("get_session", self.get_session, (parts[1],)),
                "DELETE": ("delete_session", self.delete_session, (parts[1],)),
            }
        elif len(parts) == 3 and parts[0] == "uploads" and parts[1]:
            route = {
                "PUT": ("put_file", self.put_file, (parts[1], parts[2])),
                "GET": ("get_file", self.get_file, (parts[1], parts[2])),
            }
        elif parts == ["projects"]:
            route = {"POST": ("create_project", self.create_project, ())}
            if emu.profile.list_projects:
                route["GET"] = ("list_projects", self.list_projects, ())
        elif len(parts) == 2 and parts[0] == "projects" and parts[1]:
            route = {"GET": ("get_project", self.get_project, (parts[1],))}
        if route is None:
            return self.error(404, "not_found")
        if m not in route:
            return self.respond(405, {"error": "method_not_allowed"}, headers=[("Allow", ", ".join(route))])
        endpoint, fn, args = route[m]
        self._endpoint = endpoint
        # auth
        auth = self.headers.get("Authorization", "")
        scheme, _, key = auth.strip().partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            return self.error(401, emu.profile.missing_key_error)
        scopes = emu.keys.get(key)
        if scopes is None:
            return self.error(401, emu.profile.unknown_key_error)
        need = SCOPE_READ if endpoint in ("get_project", "list_projects") else SCOPE_WRITE
        if need not in scopes:
            return self.error(403, "insufficient_scope")
        # rate limit
        if emu.flag("rate_limits"):
            ra = emu.rate.check(key, endpoint, emu.flag("rate_window_scale"))
            if ra is not None:
                return self.respond(429, {"error": "rate_limited"}, headers=[("Retry-After", str(ra))])
        # A runtime account fault is about the account, like auth: it comes before the faults
        # and uses up none of their rules.
        account = emu.account_fault(endpoint)
        if account is not None:
            return self.error(*account)
        # faults: the modifiers first, then a terminal one
        d = emu.faults.decide(endpoint, self._content_length or 0)
        if d.latency:
            time.sleep(d.latency)
        self._trickle = d.trickle
        self._extra_fields = d.extra_fields
        if d.rollback is not None:
            self._rollback_received(args, d.rollback)
        k = d.kind
        if k is not None and k != "drop_response":
            return self.apply_fault(k, d, endpoint, args)
        if k == "drop_response":
            self._dropped = True
        fn(*args)


def make_server(cfg):
    emu = Emulator(cfg)
    bound = {"emu": emu}
    if getattr(cfg, "idle_timeout", None):
        bound["timeout"] = cfg.idle_timeout  # tests of stalled links scale it down with their stall
    handler = type("BoundHandler", (Handler,), bound)
    ctx = None
    if cfg.tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
    srv = Server((cfg.host, cfg.port), handler, ctx)
    return srv, emu
