"""The WebDAV server: WsgiDAV over the provider, on cheroot, with fs360's access rules.

Loopback only by default. Any other address needs both HTTP Basic auth (a password file
of `user:password` lines, mode 0600 like the key file) and TLS (a certificate and its key):
a password must never travel in clear text, and an open share would let anyone upload to
the account.
"""

from __future__ import annotations

import errno
import logging
import stat
import threading
from pathlib import Path

from cheroot import wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter
from wsgidav.wsgidav_app import WsgiDAVApp

from ..config import Settings
from ..errors import Fs360Error
from ..options import is_loopback_host, parse_address
from . import chunked
from .provider import Fs360Provider

log = logging.getLogger(__name__)

# WsgiDAV reads request bodies and writes GET answers in blocks of this size (its default,
# 8 KiB, means 6,400 model writes for 50 MB).
BLOCK_SIZE = 1024 * 1024
# Requests served at once (cheroot's worker threads): a client's parallel PUTs and PROPFINDs.
THREADS = 16
# A request's head (its line and headers): cheroot's default is no limit, so a client could grow
# the server's memory without end with one endless header. WebDAV clients send a few KiB.
MAX_REQUEST_HEAD = 64 * 1024


class AccessError(Fs360Error):
    """The server's address, password file or TLS files do not allow it to start."""
    code = "webdav_access"
    reason = "the WebDAV server's access settings are incomplete"


def read_password_file(path: str) -> dict[str, str]:
    """`user:password` lines (blank lines and # comments skipped); refused when others may read it."""
    file = Path(path).expanduser()
    try:
        mode = file.stat().st_mode
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AccessError(f"cannot read the password file {file}: {getattr(exc, 'strerror', None) or exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise AccessError(f"the password file {file} is readable by others (mode {stat.S_IMODE(mode):o}); "
                          f"fix it with: chmod 600 {file}")
    users = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user or not password:
            raise AccessError(f"{file} line {number}: not user:password")
        users[user] = password
    if not users:
        raise AccessError(f"the password file {file} names no user")
    return users


def check_access(settings: Settings, host: str) -> dict[str, str] | None:
    """The users allowed in (None: anyone on loopback). Off loopback, auth and TLS are required."""
    tls = [settings.webdav_tls_cert, settings.webdav_tls_key]
    if any(tls) and not all(tls):
        raise AccessError("TLS needs both --tls-cert and --tls-key")
    for path in filter(None, tls):
        if not Path(path).expanduser().is_file():
            raise AccessError(f"cannot read the TLS file {path}")
    users = read_password_file(settings.webdav_password_file) if settings.webdav_password_file else None
    if not is_loopback_host(host) and not (users and all(tls)):
        raise AccessError(f"{host} is not a loopback address: serving it needs --password-file (Basic auth) "
                          f"and --tls-cert/--tls-key (TLS), so no password or file travels in clear text")
    return users


def wsgidav_config(provider: Fs360Provider, users: dict[str, str] | None, log_level: str) -> dict:
    return {
        "provider_mapping": {"/": provider},
        # In-memory locks with timeouts (Windows and Finder lock what they write) and
        # in-memory dead properties (Win32 times, litmus's props): gone at a restart.
        "lock_storage": True,
        "property_manager": True,
        "http_authenticator": {"domain_controller": None, "accept_basic": True, "accept_digest": False,
                               "default_to_digest": False, "trusted_auth_header": None},
        "simple_dc": {"user_mapping": {"*": {user: {"password": password} for user, password in users.items()}
                                       if users else True}},
        # Off: WsgiDAV's emulation would drop Win32CreationTime and the others; the provider keeps
        # every Win32 property as a dead one and sets the mtime from Win32LastModifiedTime itself.
        "hotfixes": {"emulate_win32_lastmod": False},
        "block_size": BLOCK_SIZE,
        "dir_browser": {"enable": True, "response_trailer": "fs360", "show_user": False,
                        "davmount": False, "ms_sharepoint_support": False},
        "logging": {"enable": False},  # fs360's own log handlers take WsgiDAV's records
        "verbose": 4 if log_level.lower() == "debug" else 2,
    }


class WebDavServer:
    """Serves `model` at `address` until stop(); start() returns the URL it answers at."""

    def __init__(self, model, settings: Settings, address: str):
        self.settings = settings
        try:
            self.host, self.port = parse_address(address)
        except ValueError:
            raise AccessError(f"{address!r} is not HOST:PORT (e.g. 127.0.0.1:8360, [::1]:0)") from None
        self.users = check_access(settings, self.host)
        self.provider = Fs360Provider(model, settings.webdav_empty_put_grace)
        logging.getLogger("wsgidav").setLevel(logging.DEBUG if settings.log_level.lower() == "debug"
                                               else logging.WARNING)
        app = WsgiDAVApp(wsgidav_config(self.provider, self.users, settings.log_level))
        chunked.install()  # chunk sizes read as HTTP allows them (a `-5` was an empty body)
        self.server = wsgi.Server((self.host, self.port), app, numthreads=THREADS, server_name="fs360")
        self.server.max_request_header_size = MAX_REQUEST_HEAD
        if settings.webdav_tls_cert:
            cert, key = (str(Path(path).expanduser()) for path in (settings.webdav_tls_cert, settings.webdav_tls_key))
            try:  # (the adapter loads the chain here)
                self.server.ssl_adapter = BuiltinSSLAdapter(cert, key)
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                why = ("the key does not belong to the certificate" if getattr(exc, "reason", "") == "KEY_VALUES_MISMATCH"
                       else getattr(exc, "strerror", None) or str(exc))
                raise AccessError(f"cannot load the TLS certificate {cert} with its key {key} ({why}): give a PEM "
                                  f"certificate and the PEM key that belongs to it") from None
        self._thread: threading.Thread | None = None

    def start(self) -> str:
        """Binds (port 0: a free one) and serves on a thread of its own; returns the URL."""
        try:
            self.server.prepare()
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE or "Address already in use" in str(exc):  # (cheroot's own words)
                raise AccessError(f"cannot listen on {self.host}:{self.port}: another program uses that port; give "
                                  f"another --addr port (0: a free one)") from None
            raise AccessError(f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}") from None
        self.port = self.server.bind_addr[1]
        self._thread = threading.Thread(target=self.server.serve, name="fs360-webdav", daemon=True)
        self._thread.start()
        return self.url

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.settings.webdav_tls_cert else 'http'}://{host}:{self.port}/"

    def stop(self) -> None:
        """No new requests; files whose content never came are left unfinished."""
        self.provider.stopping = True
        self.server.stop()
        if self._thread is not None:
            self._thread.join(30)
        self.provider.close()
