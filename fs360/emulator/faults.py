"""Fault injection for the emulator.

Format (the same for ``--fault JSON`` and ``POST /_emulator/faults``)::

    {"seed": 1, "rules": [
        {"endpoint": "put_file",        # an endpoint name or "*"
         "kind": "error_503",
         "probability": 0.1,            # default 1.0
         "count": 3,                    # optional: fires at most this many times
         "every": 2,                    # optional: only every 2nd request the rule matches may fire
         "min_body": 1048576,           # optional: only requests whose body is at least this many bytes
         "seconds": 2.0,                # latency / trickle duration (default 1.0)
         "retry_after": 2,              # rate_limit_burst / retry_after_date: seconds (default 1;
                                        #   retry_after_huge: 86400)
         "burst": 5,                    # rate_limit_burst: how many requests get 429 (default 1)
         "status": 504,                 # html_error: 413, 500, 502, 503 or 504 (default 502)
         "duration": 300,               # slow_loris: how long the answer takes in all (default 300)
         "size": 300000000,             # huge_body: body bytes (default 300 MB)
         "location": "http://...",      # redirect: the Location (default: see below)
         "fraction": 0.5}               # rollback_received: received goes back to this share (default 0)
    ]}

A bare list of rules is accepted too (seed 1).

``every: n`` makes a rule deterministic in time: of the requests it matches
(endpoint and kind), only the n-th, 2n-th, ... are considered (then
``probability`` and ``count`` apply as usual); the others pass it by without
rolling its die, e.g. a ``rollback_received`` with ``every: 2`` loses bytes
before every second PUT, so a client sees progress and loss alternate.

``min_body: n`` makes a rule match only requests whose ``Content-Length`` is at
least n: an ``html_error`` 413 with it is a proxy's body limit (nginx's
``client_max_body_size``) in front of the API.

Rules are evaluated in order for every API request (never for ``/_emulator``).
``latency``, ``trickle``, ``rollback_received`` and ``extra_fields`` are
*modifiers*: when they fire they apply and the evaluation goes on.  Every other kind is *terminal*: the first one that fires
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
- ``html_error``: ``status`` (default 502: 413, 500, 502, 503 or 504) with a
  proxy's HTML page (``Content-Type: text/html``). With ``early: true`` the answer
  goes as soon as the headers are read, and the connection is then reset without
  reading the body (a proxy that refuses a body's size from its Content-Length and
  closes hard); the client may be still sending.
- ``received_gt_total``: only for ``put_file`` / ``get_file`` (ignored on other
  endpoints): 200 ``{"received": total + 1, "total": total, "complete": true}``;
  the work is NOT done (a PUT's bytes are discarded).
- ``missing_fields``: 200 JSON lacking the endpoint's key field(s)
  (``received``/``complete`` for files, ``upload_id`` for sessions, ``name``
  for projects, ``status`` for project polls, ``deleted`` for delete).
- ``retry_after_none``: 429 ``rate_limited`` without a ``Retry-After`` header.
- ``retry_after_date``: 429 ``rate_limited`` whose ``Retry-After`` is an
  HTTP-date ``retry_after`` seconds ahead.
- ``retry_after_huge``: 429 ``rate_limited`` with ``Retry-After: retry_after``
  (default 86400, up to 10**10).
- ``slow_loris``: the status line and headers at once, then the body (a JSON
  503 ``internal_error`` padded in front with spaces to ``round(duration /
  seconds)`` bytes, made as it goes) one byte every ``seconds`` (at least
  0.001): a client whose timeout is per read never finishes.  Other connections are served meanwhile (a thread per connection).
- ``huge_body``: 200 with a ``Content-Length: size`` body that looks like JSON
  (``{"received":0,"padding":"xxx…"}``, junk when ``size`` is too small for
  that), streamed from one small buffer.
- ``redirect``: 307 with ``Location: location``.  By default the location is
  the same path on this emulator's ``/_emulator/redirected`` sink under another
  host name (``localhost`` for ``127.0.0.1`` and the other way round); the sink
  answers every request 200, a PUT or GET of a file ``complete: true`` without
  storing anything, and records a ``redirect_followed`` violation.  A
  ``{path}`` in ``location`` is replaced by the request's path.

Modifiers: ``latency`` sleeps ``seconds`` before the request is handled;
``trickle`` sends the response body a byte at a time spread over ``seconds``;
``rollback_received`` (``put_file`` / ``get_file`` only) makes the server lose
bytes of the file first: an incomplete file's ``received`` drops to
``floor(received * fraction)`` (complete files are final and stay as they are),
so the PUT that follows may get a 409 and the client must resync;
``extra_fields`` adds ``message`` and ``detail`` strings to the request's error
body (a fault's or the endpoint's own; auth, rate-limit and account errors come
before the faults and stay plain).
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
    "list_projects",
)

MODIFIER_KINDS = ("latency", "trickle", "rollback_received", "extra_fields")
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
    "retry_after_none",
    "retry_after_date",
    "retry_after_huge",
    "slow_loris",
    "huge_body",
    "redirect",
)
KINDS = MODIFIER_KINDS + TERMINAL_KINDS
FILE_ONLY_KINDS = ("received_gt_total", "rollback_received")
HTML_STATUSES = (413, 500, 502, 503, 504)
RULE_FIELDS = {"endpoint", "kind", "probability", "count", "every", "min_body", "seconds", "retry_after", "burst",
               "status", "duration", "size", "location", "fraction", "early"}


class FaultSpecError(ValueError):
    pass


class Decision:
    __slots__ = ("latency", "trickle", "kind", "retry_after", "rule", "rollback", "extra_fields")

    def __init__(self):
        self.latency = 0.0
        self.trickle = 0.0
        self.kind = None
        self.retry_after = 1
        self.rule = None  # the terminal rule that fired: its own fields (status, size, ...)
        self.rollback = None  # rollback_received: the share of `received` that stays
        self.extra_fields = False


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
        extra = set(r) - RULE_FIELDS
        if extra:
            raise FaultSpecError(f"unknown rule fields: {sorted(extra)}")
        ep = r.get("endpoint", "*")
        if ep != "*" and ep not in ENDPOINTS:
            raise FaultSpecError(f"unknown endpoint {ep!r}; one of {list(ENDPOINTS)} or '*'")
        kind = r.get("kind")
        if kind not in KINDS:
            raise FaultSpecError(f"unknown kind {kind!r}; one of {list(KINDS)}")
        rule = {
            "endpoint": ep,
            "kind": kind,
            "probability": _num(r, "probability", 1.0, float, 0.0, 1.0),
            "count": _num(r, "count", None, int, 0),
            "seconds": _num(r, "seconds", 1.0, float, 0.0, 3600.0),
            # A huge one may be absurd (10**9 s: 31 years), as a misconfigured server's is.
            "retry_after": _num(r, "retry_after", 86400 if kind == "retry_after_huge" else 1, int, 1,
                                10**10 if kind == "retry_after_huge" else 86400),
            "burst": _num(r, "burst", 1, int, 1, 1_000_000),
        }
        if "every" in r:  # only when given: the rules without it read back exactly as before
            rule["every"] = _num(r, "every", 1, int, 1, 1_000_000)
        if "min_body" in r:
            rule["min_body"] = _num(r, "min_body", 0, int, 0)
        # Fields of the newer kinds appear in a rule only when it is of that kind, so
        # the rules of the older kinds read back exactly as before.
        if kind == "html_error":
            rule["status"] = _num(r, "status", 502, int)
            if rule["status"] not in HTML_STATUSES:
                raise FaultSpecError(f"html_error status must be one of {list(HTML_STATUSES)}")
            if "early" in r:
                if not isinstance(r["early"], bool):
                    raise FaultSpecError("html_error early must be true or false")
                rule["early"] = r["early"]
        if kind == "slow_loris":
            rule["duration"] = _num(r, "duration", 300.0, float, 0.0, 86400.0)
            if rule["seconds"] < 0.001:
                raise FaultSpecError("slow_loris needs seconds >= 0.001")
        if kind == "huge_body":
            rule["size"] = _num(r, "size", 300_000_000, int, 0, 1 << 40)
        if kind == "redirect":
            loc = r.get("location")
            if loc is not None and (not isinstance(loc, str) or not loc or any(c in loc for c in "\r\n")):
                raise FaultSpecError("location must be a one-line string")
            rule["location"] = loc
        if kind == "rollback_received":
            rule["fraction"] = _num(r, "fraction", 0.0, float, 0.0, 1.0)
        unused = set(r) & (RULE_FIELDS - set(rule))
        if unused:
            raise FaultSpecError(f"fields {sorted(unused)} do not apply to kind {kind!r}")
        rules.append(rule)
    return {"seed": seed, "rules": rules}


class FaultSet:
    """Thread-safe, seeded fault decisions."""

    def __init__(self, spec=None):
        self.spec = parse_spec(spec)
        self.rng = random.Random(self.spec["seed"])
        self.fired = [0] * len(self.spec["rules"])
        self.matched = [0] * len(self.spec["rules"])  # for `every`
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

    def decide(self, endpoint: str, body_bytes: int = 0) -> Decision:
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
                if body_bytes < r.get("min_body", 0):
                    continue
                if "every" in r:
                    self.matched[i] += 1
                    if self.matched[i] % r["every"]:
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
                if k == "rollback_received":
                    d.rollback = r["fraction"]
                    continue
                if k == "extra_fields":
                    d.extra_fields = True
                    continue
                d.kind = k
                d.rule = r
                if k == "rate_limit_burst":
                    d.retry_after = r["retry_after"]
                    self.bursts[endpoint] = [r["burst"] - 1, r["retry_after"]]
                return d
        return d
