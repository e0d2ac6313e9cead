"""Fault injection for the emulator.

Format (the same for ``--fault JSON`` and ``POST /_emulator/faults``)::

    {"seed": 1, "rules": [
        {"endpoint": "put_file",        # an endpoint name or "*"
         "kind": "error_503",
         "probability": 0.1,            # default 1.0
         "count": 3,                    # optional: fires at most this many times
         "seconds": 2.0,                # latency / trickle duration (default 1.0)
         "retry_after": 2,              # rate_limit_burst: Retry-After value (default 1)
         "burst": 5}                    # rate_limit_burst: how many requests get 429 (default 1)
    ]}

A bare list of rules is accepted too (seed 1).

Rules are evaluated in order for every API request (never for ``/_emulator``).
``latency`` and ``trickle`` are *modifiers*: when they fire they apply and the
evaluation goes on.  Every other kind is *terminal*: the first one that fires
decides the request.  Each rule rolls its own die from one RNG seeded with
``seed``, so a given sequence of requests sees the same faults on every run.

What each terminal kind does (none of them does the work, except
``drop_response``; a PUT body is always read and discarded first, so the
connection stays usable):

- ``error_500`` / ``error_502`` / ``error_503``: that status,
  ``{"error": "internal_error"}``.
- ``cut_body``: PUT: read part of the body (half, at most 1 MiB), commit
  nothing and reset the connection.  Other requests: the connection is reset
  without a response.
- ``drop_response``: do the work and commit it, then close the connection
  without sending any response.
- ``rate_limit_burst``: this request and the next ``burst - 1`` requests to the
  same endpoint get 429 ``rate_limited`` with ``Retry-After: retry_after``.
- ``invalid_json``: 200 with ``Content-Type: application/json`` and a body that
  is not JSON.
- ``html_error``: 502 with an HTML page (``Content-Type: text/html``).
- ``received_gt_total``: only for ``put_file`` / ``get_file`` (ignored on other
  endpoints): 200 ``{"received": total + 1, "total": total, "complete": true}``;
  the work is NOT done (a PUT's bytes are discarded).
- ``missing_fields``: 200 JSON lacking the endpoint's key field(s)
  (``received``/``complete`` for files, ``upload_id`` for sessions, ``name``
  for projects, ``status`` for project polls, ``deleted`` for delete).

Modifiers: ``latency`` sleeps ``seconds`` before the request is handled;
``trickle`` sends the response body a byte at a time spread over ``seconds``.
"""

from __future__ import annotations

import random
import threading

ENDPOINTS = (
    "open_session",
    "put_file",
    "get_file",
    "get_session",
    "delete_session",
    "create_project",
    "get_project",
)

MODIFIER_KINDS = ("latency", "trickle")
TERMINAL_KINDS = (
    "error_500",
    "error_502",
    "error_503",
    "cut_body",
    "drop_response",
    "rate_limit_burst",
    "invalid_json",
    "html_error",
    "received_gt_total",
    "missing_fields",
)
KINDS = MODIFIER_KINDS + TERMINAL_KINDS
FILE_ONLY_KINDS = ("received_gt_total",)


class FaultSpecError(ValueError):
    pass


class Decision:
    __slots__ = ("latency", "trickle", "kind", "retry_after")

    def __init__(self):
        self.latency = 0.0
        self.trickle = 0.0
        self.kind = None
        self.retry_after = 1


def _num(rule, key, default, typ, lo=None, hi=None):
    v = rule.get(key, default)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise FaultSpecError(f"rule field {key!r} must be a number")
    if typ is int:
        if v != int(v):
            raise FaultSpecError(f"rule field {key!r} must be an integer")
        v = int(v)
    else:
        v = float(v)
    if lo is not None and v < lo:
        raise FaultSpecError(f"rule field {key!r} must be >= {lo}")
    if hi is not None and v > hi:
        raise FaultSpecError(f"rule field {key!r} must be <= {hi}")
    return v


def parse_spec(spec) -> dict:
    """Validate and normalise a fault spec; raises FaultSpecError."""
    if spec is None:
        spec = {}
    if isinstance(spec, list):
        spec = {"seed": 1, "rules": spec}
    if not isinstance(spec, dict):
        raise FaultSpecError("fault spec must be a JSON object or a list of rules")
    unknown = set(spec) - {"seed", "rules"}
    if unknown:
        raise FaultSpecError(f"unknown fault spec fields: {sorted(unknown)}")
    seed = spec.get("seed", 1)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise FaultSpecError("seed must be an integer")
    rules_in = spec.get("rules", [])
    if not isinstance(rules_in, list):
        raise FaultSpecError("rules must be a list")
    rules = []
    for r in rules_in:
        if not isinstance(r, dict):
            raise FaultSpecError("each rule must be an object")
        extra = set(r) - {"endpoint", "kind", "probability", "count", "seconds", "retry_after", "burst"}
        if extra:
            raise FaultSpecError(f"unknown rule fields: {sorted(extra)}")
        ep = r.get("endpoint", "*")
        if ep != "*" and ep not in ENDPOINTS:
            raise FaultSpecError(f"unknown endpoint {ep!r}; one of {list(ENDPOINTS)} or '*'")
        kind = r.get("kind")
        if kind not in KINDS:
            raise FaultSpecError(f"unknown kind {kind!r}; one of {list(KINDS)}")
        rules.append(
            {
                "endpoint": ep,
                "kind": kind,
                "probability": _num(r, "probability", 1.0, float, 0.0, 1.0),
                "count": _num(r, "count", None, int, 0),
                "seconds": _num(r, "seconds", 1.0, float, 0.0, 3600.0),
                "retry_after": _num(r, "retry_after", 1, int, 1, 86400),
                "burst": _num(r, "burst", 1, int, 1, 1_000_000),
            }
        )
    return {"seed": seed, "rules": rules}


class FaultSet:
    """Thread-safe, seeded fault decisions."""

    def __init__(self, spec=None):
        self.spec = parse_spec(spec)
        self.rng = random.Random(self.spec["seed"])
        self.fired = [0] * len(self.spec["rules"])
        self.bursts: dict[str, list] = {}
        self.lock = threading.Lock()

    def describe(self) -> dict:
        with self.lock:
            rules = []
            for r, n in zip(self.spec["rules"], self.fired):
                d = dict(r)
                d["fired"] = n
                rules.append(d)
            return {"seed": self.spec["seed"], "rules": rules}

    def decide(self, endpoint: str) -> Decision:
        d = Decision()
        with self.lock:
            b = self.bursts.get(endpoint)
            if b and b[0] > 0:
                b[0] -= 1
                d.kind = "rate_limit_burst"
                d.retry_after = b[1]
                return d
            for i, r in enumerate(self.spec["rules"]):
                if r["endpoint"] != "*" and r["endpoint"] != endpoint:
                    continue
                if r["kind"] in FILE_ONLY_KINDS and endpoint not in ("put_file", "get_file"):
                    continue
                if r["count"] is not None and self.fired[i] >= r["count"]:
                    continue
                if self.rng.random() >= r["probability"]:
                    continue
                self.fired[i] += 1
                k = r["kind"]
                if k == "latency":
                    d.latency += r["seconds"]
                    continue
                if k == "trickle":
                    d.trickle = r["seconds"]
                    continue
                d.kind = k
                if k == "rate_limit_burst":
                    d.retry_after = r["retry_after"]
                    self.bursts[endpoint] = [r["burst"] - 1, r["retry_after"]]
                return d
        return d
