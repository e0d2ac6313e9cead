"""One method per endpoint of the upload API, returning small dataclasses.

Every answer goes through `_translate`, the one place where HTTP statuses, the
server's error codes and transport exceptions become fs360 errors.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

import requests

from ..config import Settings
from ..errors import (API_ERROR_CLASSES, ApiError, MalformedResponse, RateLimited, ServerError,
                      TransportError, Unauthorized)
from .pacing import Pacer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UploadSession:
    upload_id: str
    expires_in_seconds: int


@dataclass(frozen=True)
class FileProgress:
    received: int
    total: int
    complete: bool


@dataclass(frozen=True)
class RemoteFile:
    name: str
    received: int
    total: int
    complete: bool


@dataclass(frozen=True)
class Project:
    name: str
    status: int
    record: dict = field(default_factory=dict)


def _require(body, key: str, kind: type):
    if not isinstance(body, dict) or key not in body or not isinstance(body[key], kind) \
            or (kind is int and isinstance(body[key], bool)):
        raise MalformedResponse(f"server response lacks a valid {key!r}")
    return body[key]


def _file_progress(body) -> FileProgress:
    received = _require(body, "received", int)
    total = _require(body, "total", int)
    complete = _require(body, "complete", bool)
    if received < 0 or total < 0 or received > total or complete != (received == total):
        raise MalformedResponse(f"server reports an impossible state: received {received} of {total}")
    return FileProgress(received, total, complete)


class ApiClient:
    """Thread-safe: each thread gets its own keep-alive `requests.Session`."""

    def __init__(self, settings: Settings, pacer: Pacer | None = None):
        self.base_url = settings.api_url.rstrip("/")
        self._auth = {"Authorization": f"Bearer {settings.api_key}"}
        self._timeout = (settings.connect_timeout, settings.read_timeout)
        self.pacer = pacer or Pacer(settings.rate_limits, settings.rate_limits_enabled,
                                    settings.rate_window_scale)
        self._local = threading.local()
        self._host = urlsplit(self.base_url).netloc
        # requests' own reading of the environment (proxies, no_proxy, CA bundle variables),
        # done once here; an explicit --ca-bundle wins over the variables.
        env = requests.Session().merge_environment_settings(self.base_url, {}, None, settings.ca_bundle or True, None)
        self._proxies: dict = env["proxies"]
        self._verify: bool | str = env["verify"]

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers.update(self._auth)
            session.verify = self._verify
            # The environment (proxies, CA bundle variables) is read once, not on every request:
            # requests would otherwise scan os.environ for each of thousands of PUTs.
            session.trust_env = False
            session.proxies = self._proxies
            # Retries are ours (they re-read the server's offset first), never urllib3's.
            adapter = requests.adapters.HTTPAdapter(max_retries=0, pool_connections=1, pool_maxsize=1)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            self._local.session = session
        return session

    def close(self) -> None:
        session = getattr(self._local, "session", None)
        if session is not None:
            session.close()
            self._local.session = None

    # --- the one translator ----------------------------------------------------

    def _request(self, endpoint: str, method: str, path: str, **kwargs) -> dict:
        self.pacer.acquire(endpoint)
        url = self.base_url + path
        try:
            response = self._session().request(method, url, timeout=self._timeout, **kwargs)
            content = response.content
        except requests.exceptions.SSLError as exc:
            # A certificate problem will not fix itself: report it, do not spin.
            raise ApiError(f"TLS verification failed for {self.base_url}: {_short(exc)}",
                           status=0, code="tls_error") from None
        except requests.exceptions.RequestException as exc:
            self.close()  # the connection may be half-dead: start clean
            raise TransportError(f"cannot reach {self._host}: {_short(exc)}") from None
        return self._translate(endpoint, response, content)

    def _translate(self, endpoint: str, response: requests.Response, content: bytes) -> dict:
        status = response.status_code
        try:
            body = json.loads(content) if content else None
        except ValueError:
            body = None
        if 200 <= status < 300:
            if not isinstance(body, dict):
                raise MalformedResponse(f"{endpoint}: HTTP {status} with a body that is not a JSON object")
            return body
        code = body.get("error") if isinstance(body, dict) and isinstance(body.get("error"), str) else ""
        extra = {k: v for k, v in body.items() if k != "error"} if isinstance(body, dict) else {}
        if status == 429:
            retry_after = _retry_after(response.headers.get("Retry-After"))
            self.pacer.rate_limited(endpoint, retry_after)
            raise RateLimited(f"{endpoint}: rate limited, retry after {retry_after:g} s", retry_after=retry_after)
        if status >= 500:
            raise ServerError(f"{endpoint}: HTTP {status}" + (f" {code}" if code else ""), status=status)
        if status == 401:
            raise Unauthorized("the API key was refused (401 unauthorized)", status=401, code=code or "unauthorized")
        cls = API_ERROR_CLASSES.get(code, ApiError)
        detail = f"{endpoint}: HTTP {status} {code or 'without an error code'}"
        if "limit" in extra:
            detail += f" (limit {extra['limit']} bytes)"
        if "extension" in extra:
            detail += f" (extension {extra['extension']!r})"
        raise cls(detail, status=status, code=code or f"http_{status}", **extra)

    # --- endpoints ---------------------------------------------------------------

    def open_session(self) -> UploadSession:
        body = self._request("open_session", "POST", "/uploads")
        upload_id = _require(body, "upload_id", str)
        expires = body.get("expires_in_seconds", 259200)
        if not upload_id or not isinstance(expires, int) or isinstance(expires, bool):
            raise MalformedResponse("open_session: invalid upload_id or expires_in_seconds")
        return UploadSession(upload_id, expires)

    def put(self, upload_id: str, name: str, data, start: int, total: int, whole: bool = False) -> FileProgress:
        """Sends `data` (bytes-like) as bytes start..start+len-1 of a file of `total` bytes."""
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(len(data))}
        if not whole:
            headers["Content-Range"] = f"bytes {start}-{start + len(data) - 1}/{total}"
        body = self._request("put_file", "PUT", _file_path(upload_id, name), data=data, headers=headers)
        return _file_progress(body)

    def file_status(self, upload_id: str, name: str) -> FileProgress:
        return _file_progress(self._request("get_file", "GET", _file_path(upload_id, name)))

    def session_status(self, upload_id: str) -> list[RemoteFile]:
        body = self._request("get_session", "GET", f"/uploads/{quote(upload_id, safe='')}")
        files = _require(body, "files", list)
        out = []
        for entry in files:
            name = _require(entry, "name", str)
            progress = _file_progress(entry)
            out.append(RemoteFile(name, progress.received, progress.total, progress.complete))
        return out

    def delete_session(self, upload_id: str) -> None:
        self._request("delete_session", "DELETE", f"/uploads/{quote(upload_id, safe='')}")

    def create_project(self, fields: dict) -> Project:
        body = self._request("create_project", "POST", "/projects", json=fields)
        return Project(_require(body, "name", str), int(_require(body, "status", int)), body)

    def project_status(self, name: str) -> Project:
        body = self._request("get_project", "GET", f"/projects/{quote(name, safe='')}")
        status = _require(body, "status", int)
        if not 0 <= status <= 100:
            raise MalformedResponse(f"get_project: status {status} outside 0..100")
        return Project(_require(body, "name", str), status, body)

    def check_credentials(self) -> None:
        """Raises at once if the URL is not the API or the key is refused.

        Asks for a session that does not exist: a good key gets a JSON 404, a bad
        one a 401; anything else means the URL is wrong. Costs no upload session.
        """
        try:
            self._request("get_session", "GET", "/uploads/fs360credentialcheck")
        except ApiError as exc:
            if isinstance(exc, Unauthorized) or exc.status == 403:
                raise
            if exc.status == 404 and exc.code == "upload_session_not_found":
                return
            if exc.status in (400, 404) and exc.code in ("invalid_upload_id", "upload_session_not_found"):
                return
            raise ApiError(f"{self.base_url} does not answer like the 360-for-you API ({exc})",
                           status=exc.status, code="not_the_api") from None
        except MalformedResponse:
            raise ApiError(f"{self.base_url} does not answer like the 360-for-you API",
                           code="not_the_api") from None


def _file_path(upload_id: str, name: str) -> str:
    return f"/uploads/{quote(upload_id, safe='')}/{quote(name, safe='')}"


def _retry_after(value: str | None) -> float:
    try:
        seconds = float(value) if value is not None else 1.0
    except ValueError:
        seconds = 1.0  # an HTTP date or garbage: a second, then ask again
    return min(max(seconds, 0.5), 3600.0)


def _short(exc: BaseException) -> str:
    """A readable cause for a transport error, with nothing that could carry headers (and so the key)."""
    chain, seen = [], exc
    while seen is not None and len(chain) < 8:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__ or (seen.args[0] if seen.args and
                                                        isinstance(seen.args[0], BaseException) else None)
    text = " ".join(str(e) for e in chain).lower()
    for needle, reason in _TRANSPORT_REASONS:
        if needle in text:
            return reason
    if isinstance(exc, requests.exceptions.Timeout):
        return "timed out"
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return first[:200]


# Substrings of urllib3/socket messages, and what they mean to a user.
_TRANSPORT_REASONS = (
    ("connection refused", "connection refused (is the server running?)"),
    ("name or service not known", "unknown host name"),
    ("temporary failure in name resolution", "the host name cannot be resolved now"),
    ("connection reset", "connection reset by the server"),
    ("connection aborted", "connection closed by the server"),
    ("remotedisconnected", "connection closed by the server without an answer"),
    ("network is unreachable", "network unreachable"),
    ("read timed out", "timed out waiting for the server"),
    ("connect timeout", "timed out connecting to the server"),
    ("certificate verify failed", "certificate verify failed"),
)
