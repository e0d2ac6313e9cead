"""The dashboard's HTTP server: one page, its two static files, a JSON API and /metrics.

- Loopback only: the address must be 127.0.0.0/8, ::1 or localhost (`options.parse_loopback_address`), and a
  request whose Host header names anything else is refused (a DNS-rebinding page cannot
  reach it under its own name).
- Every request carries the token, as `?token=` (the URL `fs360 web` opens) or as
  `Authorization: Bearer` (scrapers, the page's own requests): none is 401, a wrong one 403.
  The token is kept in the cache dir (`web-token`, mode 0600), so only the mount's owner can
  read it; compared in constant time.
- Changes (pause, resume, bwlimit) are POSTs with the bearer header, which a page of another
  site cannot send; they go through the daemon's control handler, as `fs360 pause` does.
- Nothing from a CDN: the page, its script and its style are files of this package.
"""

from __future__ import annotations

import hmac
import html
import json
import logging
import os
import secrets
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from .metrics import render_metrics

log = logging.getLogger(__name__)

TOKEN_NAME = "web-token"
STATIC = Path(__file__).parent / "static"
STATIC_TYPES = {"dashboard.js": "text/javascript; charset=utf-8", "dashboard.css": "text/css; charset=utf-8"}
# A request body is at most a bandwidth limit in JSON.
MAX_BODY = 4096
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    # The URL carries the token: never sent on to the project page a link opens.
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
}


def load_token(cache_dir: Path) -> str:
    """The dashboard's token, made once (mode 0600 from its creation) and kept in the cache dir."""
    path = cache_dir / TOKEN_NAME
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        token = path.read_text().strip()
        if len(token) >= 32 and path.stat().st_mode & 0o077 == 0:
            return token
        path.unlink()  # short, or readable by others: replaced
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


class Dashboard:
    """`snapshot()` gives the mount's snapshot with its rate history; `control(request)` is the
    daemon's control handler; `counters()` the numbers /metrics adds to the snapshot."""

    def __init__(self, address: tuple[str, int], cache_dir: Path, mountpoint: str, snapshot, control, counters):
        self.mountpoint = mountpoint
        self.snapshot = snapshot
        self.control = control
        self.counters = counters
        self.token = load_token(cache_dir)
        family_host = address[0] if address[0] != "localhost" else "127.0.0.1"
        server_class = _V6Server if ":" in family_host else ThreadingHTTPServer
        self.server = server_class((family_host, address[1]), _Handler)
        self.server.daemon_threads = True
        self.server.dashboard = self
        host, port = self.server.server_address[:2]
        self.port = port
        self.allowed_hosts = {f"{name}:{port}" for name in ("127.0.0.1", "localhost", "[::1]", f"[{host}]", host)}
        self._thread = threading.Thread(target=self.server.serve_forever, name="fs360-web", daemon=True)
        self._thread.start()
        log.info("dashboard at %s (token in %s)", self.base_url, cache_dir / TOKEN_NAME)

    @property
    def base_url(self) -> str:
        host = self.server.server_address[0]
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}/"

    @property
    def url(self) -> str:
        return f"{self.base_url}?token={self.token}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _V6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server_version = "fs360"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    @property
    def dashboard(self) -> Dashboard:
        return self.server.dashboard

    def log_message(self, format, *args) -> None:  # the request line carries the token: debug only, cut
        log.debug("web: %s", (format % args).split("?", 1)[0])

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        url = urlsplit(self.path)
        if self.headers.get("Host", "") not in self.dashboard.allowed_hosts:
            return self._send(HTTPStatus.FORBIDDEN, "text/plain", b"this dashboard answers under its loopback address only\n")
        status = self._authorised(parse_qs(url.query).get("token", [""])[0])
        if status is not None:
            text = b"the dashboard needs its token: open the URL of `fs360 web MOUNTPOINT --print-url`\n"
            return self._send(status, "text/plain", text, {"WWW-Authenticate": "Bearer"} if status == 401 else None)
        route = (method, url.path)
        try:
            if route == ("GET", "/"):
                return self._send(HTTPStatus.OK, "text/html; charset=utf-8", self._page())
            if method == "GET" and url.path.startswith("/static/") and url.path[8:] in STATIC_TYPES:
                return self._send(HTTPStatus.OK, STATIC_TYPES[url.path[8:]], (STATIC / url.path[8:]).read_bytes())
            if route == ("GET", "/api/status"):
                doc = dict(self.dashboard.snapshot(), mountpoint=self.dashboard.mountpoint)
                return self._json(HTTPStatus.OK, doc)
            if route == ("GET", "/metrics"):
                text = render_metrics(self.dashboard.snapshot(), self.dashboard.counters())
                return self._send(HTTPStatus.OK, "text/plain; version=0.0.4; charset=utf-8", text.encode())
            if method == "POST" and url.path in ("/api/pause", "/api/resume", "/api/bwlimit"):
                return self._change(url.path.rsplit("/", 1)[1])
        except Exception:  # a bug here must not end the daemon's dashboard thread
            log.exception("dashboard request %s %s failed", method, url.path)
            return self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"ok": False, "error": "internal error (see the log)"})
        self._send(HTTPStatus.NOT_FOUND, "text/plain", b"not found\n")

    def _authorised(self, query_token: str) -> HTTPStatus | None:
        given = query_token
        header = self.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            given = header[7:].strip()
        if not given:
            return HTTPStatus.UNAUTHORIZED
        if not hmac.compare_digest(given.encode(), self.dashboard.token.encode()):
            return HTTPStatus.FORBIDDEN
        return None

    def _change(self, what: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            return self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"ok": False, "error": "body too large"})
        if what == "bwlimit":
            try:
                value = json.loads(self.rfile.read(length) or b"{}").get("bwlimit")
            except (ValueError, AttributeError):
                value = None
            if not isinstance(value, str):
                return self._json(HTTPStatus.BAD_REQUEST, {"ok": False, "error": 'send {"bwlimit": "2M"} (or "off")'})
            answer = self.dashboard.control({"cmd": "set", "values": {"bwlimit": value}})
        else:
            self.rfile.read(length)
            answer = self.dashboard.control({"cmd": what})
        self._json(HTTPStatus.OK if answer.get("ok") else HTTPStatus.BAD_REQUEST, answer)

    def _page(self) -> bytes:
        """The page with the sessions as they are now (the script keeps it up to date)."""
        doc = self.dashboard.snapshot()
        token = html.escape(self.dashboard.token, quote=True)
        names = "".join(f'<li class="session-name">{html.escape(s["session"])}</li>' for s in doc["sessions"])
        page = (STATIC / "index.html").read_text(encoding="utf-8")
        return (page.replace("{{TOKEN}}", token).replace("{{MOUNTPOINT}}", html.escape(self.dashboard.mountpoint))
                .replace("{{SESSIONS}}", names or "<li>no sessions yet</li>")).encode("utf-8", "surrogateescape")

    def _json(self, status: HTTPStatus, body: dict) -> None:
        self._send(status, "application/json", json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogateescape"))

    def _send(self, status: HTTPStatus, content_type: str, body: bytes, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in {**SECURITY_HEADERS, **(extra or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
