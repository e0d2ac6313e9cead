"""One method per endpoint of the upload API, returning small dataclasses.

Every answer goes through `_translate` and every transport failure through
`_transport_error`: the one place where HTTP statuses, the server's error codes
and transport exceptions become fs360 errors. Each error class carries its own
retry policy (`retryable`); the engine decides from the class alone.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import logging
import math
import os
import ssl
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from urllib.parse import quote, urljoin, urlsplit

import requests
import urllib3

from .. import __version__
from ..config import MIN_CHUNK_SIZE, Settings
from ..errors import (ACCOUNT_ERROR_BY_STATUS, ACCOUNT_REASONS, API_ERROR_CLASSES, AccountError, ApiError,
                      BodyTooLarge, DeadlineExceeded, Fs360Error, InternalError, MalformedResponse, RateLimited,
                      Redirected, ResponseTooLarge, ServerError, SettingError, TlsError, TransportError,
                      UNKNOWN_REFUSAL, refusal_in_plain_words)
from ..options import check_api_url, without_credentials
from .pacing import Pacer
from .retry import Backoff
from .transport import (MAX_RESPONSE_BYTES, Answer, Channel, Exchange, PacedBody, failure_reason, is_tls_failure,
                        peer_ended, printable, went_through_proxy_failing)
from .troubles import Admission, Troubles

log = logging.getLogger(__name__)

# A Retry-After is honoured up to this; a longer one is waited in steps of it.
MAX_RETRY_AFTER = 3600.0
# ...and from this, so a "0" does not turn into a busy loop.
MIN_RETRY_AFTER = 0.5

# Listings grow with the session or the account: allowed more than a single answer.
LISTING_RESPONSE_BYTES = 32 * 1024 * 1024
_RESPONSE_CAPS = {"get_session": LISTING_RESPONSE_BYTES, "list_projects": LISTING_RESPONSE_BYTES}

# The key check at mount: a few quick tries, so a passing hiccup does not fail the mount, all
# within one deadline (Settings.credential_check_deadline).
CREDENTIAL_CHECK_ATTEMPTS = 3
CREDENTIAL_CHECK_MAX_WAIT = 5.0
# An attempt is not started with less time than this left.
CREDENTIAL_CHECK_MIN_ATTEMPT = 2.0

# Some firewalls block the User-Agent of HTTP libraries; fs360 says what it is.
USER_AGENT = f"fs360/{__version__}"

# Errors that end the key check at mount at once: retrying cannot fix them, the user must.
_FINAL_AT_MOUNT = (AccountError, Redirected, TlsError)

# How the API refuses a session that does not exist: the probe's proof that the key works.
_NO_SUCH_SESSION_CODES = ("upload_session_not_found", "invalid_upload_id")
# The made-up sessions the key check at mount and the account's probe ask for.
_CREDENTIAL_CHECK_PATH = "/uploads/fs360credentialcheck"
_ACCOUNT_CHECK_PATH = "/uploads/fs360accountcheck"

# The API's own list of projects may come bare or wrapped in an object under one of these.
_PROJECT_LIST_KEYS = ("projects", "data", "items", "results")

# Exceptions of an HTTP exchange that mean "no usable answer".
_TRANSPORT_EXCEPTIONS = (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError)


@dataclass(frozen=True)
class UploadSession:
    upload_id: str
    expires_in_seconds: float


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
    value = body.get(key) if isinstance(body, dict) else None
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)  # api.md Part C: a number may come as a JSON float (1048576.0)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise MalformedResponse(f"server response lacks a valid {key!r}")
    return value


def _file_progress(body) -> FileProgress:
    received = _require(body, "received", int)
    total = _require(body, "total", int)
    complete = _require(body, "complete", bool)
    if received < 0 or total < 0 or received > total or complete != (received == total):
        raise MalformedResponse(f"server reports an impossible state: received {received} of {total}")
    return FileProgress(received, total, complete)


def _seconds(value) -> float:
    """A JSON number of seconds (259200 or 259200.0): not a bool, not negative, NaN or infinite."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise MalformedResponse(f"open_session: expires_in_seconds {value!r} is not a number of seconds")
    return float(value)


class RequestCounts:
    """Requests by (endpoint, HTTP status, or "error" for no answer), for /metrics."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}

    def add(self, endpoint: str, status: str) -> None:
        with self._lock:
            self._counts[(endpoint, status)] = self._counts.get((endpoint, status), 0) + 1

    def snapshot(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._counts)


class ApiClient:
    """Thread-safe: each thread gets its own keep-alive connection (transport.Channel).

    Before each request its `admission` is asked (a failure shared by every request of its kind
    holds it back, then the pacer gives it its turn: api/troubles.py, api/pacing.py), and told
    how it ended."""

    def __init__(self, settings: Settings, pacer: Pacer | None = None, troubles: Troubles | None = None,
                 admission=None):
        self.base_url = settings.api_url.rstrip("/")
        unsafe = check_api_url(self.base_url, settings.insecure_http)
        if unsafe:
            raise SettingError(f"api_url {without_credentials(self.base_url)}: {unsafe}")
        unsendable = _unsendable_key(settings.api_key)
        if unsendable:
            raise SettingError(unsendable)
        self._auth = {"Authorization": f"Bearer {settings.api_key}"}
        self._timeout = (settings.connect_timeout, settings.read_timeout)
        self._deadline_floor = settings.request_deadline
        self._credential_check_deadline = settings.credential_check_deadline
        self._min_upload_rate = settings.min_upload_rate
        self.pacer = pacer or Pacer(settings.rate_limits, settings.rate_limits_enabled,
                                    settings.rate_window_scale)
        self.troubles = troubles or Troubles(settings.backoff_base, settings.backoff_cap)
        self.admission = admission or Admission(self.pacer, self.troubles)
        self._local = threading.local()
        self.requests = RequestCounts()
        self._host = urlsplit(self.base_url).netloc
        # requests' own reading of the environment (proxies, no_proxy, CA bundle variables),
        # done once here; an explicit --ca-bundle wins over the variables.
        env = requests.Session().merge_environment_settings(self.base_url, {}, None, settings.ca_bundle or True, None)
        self._proxies: dict = env["proxies"]
        self._verify: bool | str = env["verify"]
        self._proxy = _proxy_in_use(self.base_url, self._proxies)
        unreadable = _unreadable_ca_bundle(self._verify)
        if unreadable:
            raise SettingError(unreadable)

    def _channel(self) -> Channel:
        channel = getattr(self._local, "channel", None)
        if channel is None:
            # The answers are tiny JSON: a compressed one could only be a bomb (identity).
            headers = {**self._auth, "User-Agent": USER_AGENT, "Accept-Encoding": "identity", "Accept": "*/*",
                       "Connection": "keep-alive"}
            # The environment (proxies, CA bundle variables) was read once, in __init__.
            channel = Channel(self.base_url, headers, self._proxies, self._verify)
            self._local.channel = channel
        return channel

    def close(self) -> None:
        channel = getattr(self._local, "channel", None)
        if channel is not None:
            channel.close()
            self._local.channel = None

    def deadline_for(self, body_bytes: int) -> float:
        """The whole request's time limit by its kind: a small JSON request has the floor (30 s);
        a PUT the floor plus its body's time at the floor upload rate."""
        return self._deadline_floor + body_bytes / self._min_upload_rate

    # --- the one translator ----------------------------------------------------

    def _request(self, endpoint: str, method: str, path: str, *, expect=dict, deadline: float | None = None,
                 wait: bool = True, check: str = "", json=None, **kwargs):
        """One exchange. With wait=False an endpoint out of its rate budget raises WaitForRateLimit
        at once instead of sleeping: for callers that have other work to do meanwhile. A failure
        shared by every request of its kind raises HeldBack, unsent. `check`: "account" for the
        account's probe (let through while the account is held), "mount" for the key check at
        mount (never held; its outcome decides nothing for later requests). `json`: the body's
        fields, encoded before the request takes its turn (a body that cannot be sent takes none)."""
        if json is not None:
            kwargs["data"] = _json_body(endpoint, json)
            kwargs["headers"] = {**kwargs.get("headers", {}), "Content-Type": "application/json"}
        passed = self.admission.admit(endpoint, wait=wait, account_probe=check == "account",
                                      counted=check != "mount")
        error: BaseException | None = None
        try:
            return self._exchange(endpoint, method, path, expect, deadline, **kwargs)
        except Fs360Error as exc:
            exc.endpoint = endpoint
            error = exc
            raise
        finally:
            self.admission.report(passed, error, reached=not getattr(error, "never_connected", False))

    def _exchange(self, endpoint: str, method: str, path: str, expect, deadline: float | None, *, data=None,
                  headers: dict | None = None):
        body_length = len(data) if data is not None else 0
        exchange = Exchange(deadline or self.deadline_for(body_length))
        url = self.base_url + path
        content = None
        try:
            with exchange:
                response = exchange.send(self._channel(), method, path, timeout=self._timeout, data=data,
                                         headers=headers)
                content = exchange.read(_RESPONSE_CAPS.get(endpoint, MAX_RESPONSE_BYTES))
        except Exception as exc:
            # Once the watchdog cut the socket, whatever the reader raised is the deadline's doing.
            if not (exchange.expired or isinstance(exc, _TRANSPORT_EXCEPTIONS)):
                raise
            self.close()  # the connection may be half-dead: start clean
            self.requests.add(endpoint, "error")
            raise self._transport_error(endpoint, exc, exchange) from None
        if exchange.expired or content is None:
            self.close()
            self.requests.add(endpoint, "error")
            raise self._transport_error(endpoint, None, exchange)
        self.requests.add(endpoint, str(response.status))
        return self._translate(endpoint, Answer(response.status, response.headers, url, body_length), content, expect)

    def _transport_error(self, endpoint: str, exc: BaseException | None, exchange: Exchange) -> Fs360Error:
        """The error for an exchange without a usable answer: cut at its deadline, too large, or failed."""
        error = self._transport_error_of(endpoint, exc, exchange)
        connected = exchange.expired or exc is None or not failure_reason(exc)[1]
        error.never_connected = not connected
        # A reset or broken pipe after the deadline cut the socket is this end's own doing, not the peer's.
        peer_gone = exc is not None and peer_ended(exc) and not exchange.expired
        if endpoint == "put_file" and connected and not peer_gone:
            # The server may still be reading this PUT's body (its end went nowhere, or is lost on a
            # stalled link): the file's next PUT waits until that one is over (engine/transfer.py).
            error.gave_up_on_upload = True
        return error

    def _transport_error_of(self, endpoint: str, exc: BaseException | None, exchange: Exchange) -> Fs360Error:
        if exchange.expired:
            return DeadlineExceeded(f"{endpoint}: the server at {self._host} did not answer within "
                                    f"{exchange.deadline.seconds:.3g} s")  # a gate's waits extend it by a little
        if exc is None:
            return ResponseTooLarge(f"{endpoint}: the server at {self._host} sent an answer larger than "
                                    f"any API answer; dropped")
        reason, connecting = failure_reason(exc)
        if is_tls_failure(exc):
            # Final at mount; while mounted retried slowly, so no file is refused for it.
            if "WRONG_VERSION_NUMBER" in str(reason):  # nothing was verified: no TLS answered at all
                return TlsError(f"the server at {self._host} does not speak TLS (https) on that port ({reason}): "
                                f"check --api-url")
            return TlsError(f"TLS verification failed for {self.base_url}: {reason}")
        if self._proxy and went_through_proxy_failing(exc):
            return TransportError(f"cannot reach {self._host} through the proxy {self._proxy}: {reason}")
        if connecting:
            return TransportError(f"cannot reach {self._host}: {reason}")
        return TransportError(f"{endpoint} to {self._host}: {reason}")

    def _translate(self, endpoint: str, answer: Answer, content: bytes, expect=dict):
        status = answer.status
        try:
            body = json.loads(content) if content else None
        except ValueError:
            body = None
        if 200 <= status < 300:
            if not isinstance(body, expect):
                raise MalformedResponse(f"{endpoint}: HTTP {status} with a body that is not the expected JSON")
            return body
        if 300 <= status < 400:
            target = printable(urljoin(answer.url or self.base_url + "/", answer.headers.get("Location", "")))
            raise Redirected(f"{endpoint}: the server redirected to {target or '(nowhere)'}; fs360 does not "
                             f"follow redirects: check --api-url", status=status, location=target)
        error = body if isinstance(body, dict) else {}
        code = error["error"] if isinstance(error.get("error"), str) else ""
        fields = {k: v for k, v in error.items() if k != "error"}
        said = _server_says(fields)
        if status in ACCOUNT_ERROR_BY_STATUS:
            # About the account whatever the code: the status picks the class, the code the advice.
            raise _account_error(ACCOUNT_ERROR_BY_STATUS[status], status, code, said, fields)
        if status == 429:
            raise self._rate_limited(endpoint, answer.headers.get("Retry-After"), said)
        if status >= 500 or not code:
            # A failing server, or an answer without the API's error code: a proxy's HTML 413 or 502,
            # a gateway's JSON. Not the API's verdict on the file, so never a final refusal.
            kind = "an error code" if isinstance(body, dict) else "a JSON body"
            # A 413 to a PUT: a proxy's limit on the body's size (the API's own caps have their codes).
            cls = BodyTooLarge if status == 413 and endpoint == "put_file" else ServerError
            at_smallest = cls is BodyTooLarge and 0 < answer.sent_length <= MIN_CHUNK_SIZE
            detail = f"{endpoint}: HTTP {status}" + (f" {code}" if code else f" without {kind}") + said
            failure = cls(f"{_failure_in_plain_words(status, code, answer.sent_length, cls, at_smallest)} ({detail})",
                          status=status)
            if at_smallest:
                failure.outage = True  # every file would meet it
            raise _with_fields(failure, fields)
        cls = API_ERROR_CLASSES.get(code, ApiError)
        if issubclass(cls, AccountError):
            raise _account_error(cls, status, code, said, fields)
        # Plain words first (what happened, what to do); the exchange's particulars after them.
        plain = refusal_in_plain_words(code, {k: _printable_field(v) for k, v in fields.items()})
        if plain is None and cls is ApiError:  # a code fs360 does not know: still words first
            plain = UNKNOWN_REFUSAL
        detail = f"HTTP {status} {code}"
        if plain is None:
            if isinstance(fields.get("limit"), int):
                detail += f" (limit {fields['limit']} bytes)"
            if isinstance(fields.get("extension"), str):
                detail += f" (extension {printable(fields['extension'])!r})"
        message = f"{plain} ({endpoint}: {detail}{said})" if plain else f"{endpoint}: {detail}{said}"
        raise _with_fields(cls(message, status=status, code=code), fields)

    def _rate_limited(self, endpoint: str, header: str | None, said: str) -> RateLimited:
        asked = _retry_after(header)
        if asked is None:
            # No usable wait: the caller backs off exponentially, and the pacer is not told a made-up one.
            return RateLimited(f"{endpoint}: rate limited (HTTP 429) without a usable Retry-After; "
                               f"backing off{said}", retry_after=None)
        wait = min(max(asked, MIN_RETRY_AFTER), MAX_RETRY_AFTER)
        capped = f" (the server asked for {asked:.0f} s)" if asked > MAX_RETRY_AFTER else ""
        # The wait holds every request of this kind (api/troubles.py), through the outcome report.
        return RateLimited(f"{endpoint}: rate limited, retry after {wait:g} s{capped}{said}", retry_after=wait,
                           asked=asked)

    # --- endpoints ---------------------------------------------------------------

    def open_session(self, wait: bool = True) -> UploadSession:
        body = self._request("open_session", "POST", "/uploads", wait=wait)
        upload_id = _require(body, "upload_id", str)
        if not upload_id:
            raise MalformedResponse("open_session: empty upload_id")
        return UploadSession(upload_id, _seconds(body.get("expires_in_seconds", 259200)))

    def put(self, upload_id: str, name: str, data, start: int, total: int, whole: bool = False,
            pace=None) -> FileProgress:
        """Sends `data` (a memoryview, or a body yielding its own pieces: uploader.StreamedChunk)
        as bytes start..start+len-1 of a file of `total` bytes; with a `pace`, in pieces that wait
        their turn and tell when sent (transport.PacedBody)."""
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(len(data))}
        if pace is not None and len(data):  # (an empty body as it is: nothing to pace)
            data = PacedBody(data, pace)
        if not whole:
            headers["Content-Range"] = f"bytes {start}-{start + len(data) - 1}/{total}"
        body = self._request("put_file", "PUT", _file_path(upload_id, name), data=data, headers=headers)
        return _file_progress(body)

    def file_status(self, upload_id: str, name: str) -> FileProgress:
        return _file_progress(self._request("get_file", "GET", _file_path(upload_id, name)))

    def session_status(self, upload_id: str, wait: bool = True) -> list[RemoteFile]:
        body = self._request("get_session", "GET", f"/uploads/{quote(upload_id, safe='')}", wait=wait)
        files = _require(body, "files", list)
        out = []
        for entry in files:
            name = _require(entry, "name", str)
            progress = _file_progress(entry)
            out.append(RemoteFile(name, progress.received, progress.total, progress.complete))
        return out

    def delete_session(self, upload_id: str) -> None:
        self._request("delete_session", "DELETE", f"/uploads/{quote(upload_id, safe='')}")

    def create_project(self, fields: dict, wait: bool = True) -> Project:
        body = self._request("create_project", "POST", "/projects", json=fields, wait=wait)
        return Project(_require(body, "name", str), int(_require(body, "status", int)), body)

    def project_status(self, name: str) -> Project:
        body = self._request("get_project", "GET", f"/projects/{quote(name, safe='')}")
        status = _require(body, "status", int)
        if not 0 <= status <= 100:
            raise MalformedResponse(f"get_project: status {status} outside 0..100")
        return Project(_require(body, "name", str), status, body)

    def list_projects(self, deadline: float | None = None, check: str = "") -> list:
        """`GET /projects` (not in the guide, the vendor's "test connection"): the key's projects."""
        body = self._request("list_projects", "GET", "/projects", expect=(list, dict), deadline=deadline,
                             check=check)
        if isinstance(body, list):
            return body
        for key in _PROJECT_LIST_KEYS:
            if isinstance(body.get(key), list):
                return body[key]
        raise MalformedResponse("list_projects: the answer holds no list of projects")

    # --- the key check at mount ----------------------------------------------------

    def check_credentials(self) -> None:
        """Raises at once if the URL is not the API or the key is refused; retries a server that hiccups.

        Account errors (401, 402, 403), redirects, TLS failures and answers that are
        not the API's are final at once. A 5xx, a 429 or no answer is tried up to
        `CREDENTIAL_CHECK_ATTEMPTS` times, all within `credential_check_deadline`, then
        reported with its cause.
        """
        started = time.monotonic()
        until = started + self._credential_check_deadline
        backoff = Backoff(base=1.0, cap=CREDENTIAL_CHECK_MAX_WAIT)
        for attempt in range(1, CREDENTIAL_CHECK_ATTEMPTS + 1):
            try:
                self._check_credentials_once(until)
                return
            except _FINAL_AT_MOUNT:
                raise
            except (TransportError, RateLimited, ServerError) as exc:
                wait = min(backoff.delay(attempt, exc), CREDENTIAL_CHECK_MAX_WAIT)
                if attempt == CREDENTIAL_CHECK_ATTEMPTS or \
                        time.monotonic() + wait + CREDENTIAL_CHECK_MIN_ATTEMPT > until:
                    raise TransportError(f"the server at {self._host} did not answer properly ({attempt} "
                                         f"attempt(s) in {time.monotonic() - started:.0f} s): {exc}") from None
                time.sleep(wait)

    def _check_credentials_once(self, until: float) -> None:
        not_the_api = f"{self.base_url} does not answer like the 360-for-you API"

        def deadline() -> float:
            return min(self._deadline_floor, max(until - time.monotonic(), CREDENTIAL_CHECK_MIN_ATTEMPT))

        try:
            try:
                self.list_projects(deadline=deadline(), check="mount")
                return
            except (ApiError, ServerError, RateLimited) as exc:
                if isinstance(exc, _FINAL_AT_MOUNT):
                    raise
                if _server_failing(exc):
                    # GET /projects is not in the API's guide (api.md Part C): its failing, or its
                    # pacing, must not keep the mount down while the documented probe can prove
                    # the key. If that proves nothing, the listing's failure is the one said.
                    if self._made_up_session_refused(deadline()) is None:
                        return
                    raise
            # Any other 4xx: a server without GET /projects. The older probe decides: it asks for a
            # session that does not exist; a working key gets the API's own refusal of that session,
            # a bad one a 401, and a wrong URL something else (a 404 page, the site's own JSON).
            other = self._made_up_session_refused(deadline())
            if _server_failing(other) or isinstance(other, MalformedResponse):
                raise other
            if other is not None:
                raise ApiError(f"{not_the_api} ({other})", status=other.status, code="not_the_api") from None
        except MalformedResponse:
            raise ApiError(not_the_api, code="not_the_api") from None

    def _made_up_session_refused(self, deadline: float) -> Fs360Error | None:
        """The key check's probe: asks for a session that does not exist. None when the key works
        (the API's own refusal of that session); an account error is raised; anything else (a
        failing server, another refusal) is returned for the caller to weigh."""
        try:
            self._request("get_session", "GET", _CREDENTIAL_CHECK_PATH, deadline=deadline, check="mount")
        except _FINAL_AT_MOUNT:
            raise
        except (ApiError, ServerError, RateLimited, MalformedResponse) as exc:
            if isinstance(exc, ApiError) and exc.code in _NO_SUCH_SESSION_CODES:
                return None
            return exc
        return None

    def check_account(self) -> None:
        """The account's probe while it is refused (api/troubles.py): one cheap request, for a
        session that does not exist. The API's refusal of that session says the account works
        again; a 401/402/403 (raised) that it is still refused. Never sleeps on the pacer."""
        try:
            self._request("get_session", "GET", _ACCOUNT_CHECK_PATH, wait=False, check="account")
        except ApiError as exc:
            if isinstance(exc, AccountError):
                raise


def _server_failing(exc: Fs360Error | None) -> bool:
    """A 5xx or a 429: the server (or its pacing) fails now; not a sign of a wrong URL."""
    return isinstance(exc, RateLimited) or isinstance(exc, (ApiError, ServerError)) and exc.status >= 500


def _proxy_in_use(base_url: str, proxies: dict) -> str:
    """The proxy the environment sets for the API, as it was set but without its credentials,
    '' for none. One no request can go through is a SettingError at once, not a transport error
    for every request."""
    proxy = requests.utils.select_proxy(base_url, proxies)
    if not proxy:
        return ""
    shown = without_credentials(proxy)
    try:
        parts = urlsplit(requests.utils.prepend_scheme_if_needed(proxy, "http"))
        usable = bool(parts.hostname) and parts.scheme.lower() in _PROXY_SCHEMES and parts.port != 0
    except ValueError:  # (urllib3's LocationParseError is one: a port that is not a number)
        usable = False
    unset = "fix or unset it (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY), or exempt the server in NO_PROXY"
    if not usable:
        raise SettingError(f"the proxy the environment sets for {base_url} ({shown}) is not a proxy's URL (http://HOST:PORT): {unset}")
    if parts.scheme.lower().startswith("socks") and importlib.util.find_spec("socks") is None:
        raise SettingError(f"the proxy the environment sets for {base_url} is a SOCKS proxy ({shown}), and fs360 "
                           f"needs the PySocks package for one, which is not installed: install it, or {unset}")
    return shown


def _unreadable_ca_bundle(verify: bool | str) -> str:
    """Why a CA bundle file holds no certificate OpenSSL can read, or ''. Left to the first
    connection, that failed as 'TLS verification failed for <the server>', which sends the user
    after the server's certificate. A missing one is named at each request (it may yet appear),
    and a directory of certificates is read by OpenSSL as it needs them."""
    if not isinstance(verify, str) or not os.path.isfile(verify):
        return ""
    try:
        ssl.create_default_context(cafile=verify)
    except (ssl.SSLError, OSError, ValueError) as exc:
        return (f"the CA bundle {verify} holds no certificate fs360 can read ({getattr(exc, 'reason', None) or exc}): "
                f"point --ca-bundle (or REQUESTS_CA_BUNDLE) at a PEM file of CA certificates")
    return ""


_PROXY_SCHEMES = ("http", "https", "socks4", "socks4a", "socks5", "socks5h")


def _unsendable_key(key: str) -> str:
    """Why `key` cannot be sent as a key (never the key itself, nor a character of it that could
    be one), or '' when it can. A key is printable ASCII without spaces; anything else was copied
    in by accident (a zero-width space from a web page, a line break inside), and HTTP either
    cannot carry it or the server refuses the key for a reason the user cannot see."""
    for position, char in enumerate(key, 1):
        if char.isascii() and char.isprintable() and char != " ":
            continue
        if char == " ":
            kind = "a space"
        elif char.isascii():
            kind = "a control character (a line break, a tab)"
        else:
            kind = f"a character that is not ASCII (U+{ord(char):04X})"
        return (f"the API key has {kind} at position {position} of its {len(key)}: no key has one; copy "
                f"the key again from your profile page")
    if len(key) > MAX_KEY_LENGTH:  # (a wrong file given as the key file: the server answered 431)
        return (f"the API key is {len(key):,} characters long: no key is; is the key file the right file? copy "
                f"the key again from your profile page")
    return ""


# Far longer than any API key; the request head that would carry more is refused by servers.
MAX_KEY_LENGTH = 1024


def _file_path(upload_id: str, name: str) -> str:
    return f"/uploads/{quote(upload_id, safe='')}/{quote(name, safe='')}"


def _json_body(endpoint: str, fields: dict) -> bytes:
    """A request's JSON body. Fields JSON cannot carry (NaN, infinities: .create refuses them)
    are fs360's bug here, never sent."""
    try:
        return json.dumps(fields, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        error = InternalError(f"{endpoint}: a request body JSON cannot carry ({exc})")
        error.endpoint = endpoint
        raise error from None


def _with_fields(exc: Fs360Error, fields: dict) -> Fs360Error:
    """The server's extra fields on the error; set after construction, so no field name can clash."""
    exc.fields.update(fields)
    return exc


def _account_error(cls: type[AccountError], status: int, code: str, said: str, fields: dict) -> AccountError:
    reason = ACCOUNT_REASONS.get(code, cls.reason)
    return _with_fields(cls(f"{reason} (HTTP {status} {code or 'without an error code'}){said}",
                            status=status, code=code, reason=reason), fields)


def _printable_field(value):
    """A field of the server's answer, its text (and a list's texts) made safe for one line."""
    if isinstance(value, str):
        return printable(value, 40)
    if isinstance(value, list):
        return [printable(v, 40) if isinstance(v, str) else v for v in value[:100]]
    return value


def _failure_in_plain_words(status: int, code: str, sent_length: int, cls: type, at_smallest: bool) -> str:
    """What a failure without the API's verdict means to a user: a server or a proxy that failed,
    or a proxy's limit on a request's size."""
    if cls is BodyTooLarge:
        if at_smallest:
            return (f"a proxy in front of the server refuses even requests of {sent_length} bytes: nothing can be "
                    f"uploaded through it; ask whoever runs it to allow requests of a few MiB")
        return f"a proxy in front of the server refused a request of {sent_length} bytes as too large"
    if status >= 500:
        return "the server failed to answer" if code else "the server, or a proxy in front of it, failed to answer"
    return "the server, or a proxy in front of it, refused the request without saying why"


def _server_says(fields: dict) -> str:
    """The server's own words (`message`, `detail`) to end an error message with, if it gave any."""
    words = [printable(fields[k]) for k in ("message", "detail") if isinstance(fields.get(k), str)]
    words = [w for w in words if w]
    return f": the server says {'; '.join(words)!r}" if words else ""


def _retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After in seconds (a number, or an HTTP date), or None when it gives no usable wait."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)  # HTTP dates are GMT
        seconds = max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())
    if not 0 <= seconds < math.inf:
        return None
    return seconds
