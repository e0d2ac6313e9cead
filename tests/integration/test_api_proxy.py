"""Uploads through an HTTP proxy named by the environment (HTTP_PROXY, NO_PROXY), as behind an
office's proxy: the client reads the environment once, sends every request through the proxy
with its credentials, and the server gets each file whole."""

import base64
import hashlib
import http.client
import importlib.util
import select
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

from fs360.api.client import ApiClient
from fs360.errors import SettingError, TlsError, TransportError

from tests.harness import api_client_made_with, tls_emulator

PROXY_USER, PROXY_PASSWORD = "office", "proxy-secret"
CREDENTIALS = "Basic " + base64.b64encode(f"{PROXY_USER}:{PROXY_PASSWORD}".encode()).decode()


class ForwardProxy(ThreadingHTTPServer):
    """A plain HTTP forward proxy on loopback: takes absolute-URI requests, forwards each to its
    host over a fresh connection, and records (method, URL, Proxy-Authorization) of each."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _ForwardHandler)
        self.seen: list[tuple[str, str, str | None]] = []
        self.url = f"http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{self.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.shutdown()
        self.server_close()

    def handle_error(self, request, client_address):
        pass  # fs360 ends each connection with a reset (transport.py): expected, not worth a traceback


class _ForwardHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _forward(self):
        self.server.seen.append((self.command, self.path, self.headers.get("Proxy-Authorization")))
        target = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("proxy-authorization", "connection")}
        upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
        try:
            upstream.request(self.command, target.path + (f"?{target.query}" if target.query else ""), body=body,
                             headers=headers)
            answer = upstream.getresponse()
            content = answer.read()
        finally:
            upstream.close()
        self.send_response(answer.status)
        for key, value in answer.getheaders():
            if key.lower() not in ("connection", "transfer-encoding", "content-length"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    do_GET = do_POST = do_PUT = do_DELETE = _forward

    def do_CONNECT(self):
        """A tunnel (for https): bytes both ways until either end closes."""
        self.server.seen.append(("CONNECT", self.path, self.headers.get("Proxy-Authorization")))
        host, port = self.path.rsplit(":", 1)
        upstream = socket.create_connection((host, int(port)), timeout=30)
        self.send_response(200, "Connection established")
        self.end_headers()
        self.close_connection = True
        ends = [self.connection, upstream]
        try:
            while True:
                readable, _, _ = select.select(ends, [], [], 30)
                if not readable:
                    return
                for end in readable:
                    data = end.recv(1 << 16)
                    if not data:
                        return
                    (upstream if end is self.connection else self.connection).sendall(data)
        except OSError:
            return  # either end reset the tunnel: fs360 ends its connections with a reset
        finally:
            upstream.close()

    def log_message(self, *args):
        pass


WHOLE, HALVES = b"w" * 100_000, bytes(range(256)) * 1024


def upload_two_files(client: ApiClient) -> str:
    upload_id = client.open_session().upload_id
    whole = memoryview(WHOLE)
    client.put(upload_id, "whole.jpg", whole, 0, len(whole), whole=True)
    halves = memoryview(HALVES)
    half = len(halves) // 2
    client.put(upload_id, "halves.jpg", halves[:half], 0, len(halves))
    progress = client.put(upload_id, "halves.jpg", halves[half:], half, len(halves))
    assert progress.complete and progress.received == len(halves)
    return upload_id


def test_every_request_goes_through_the_proxy_with_its_credentials(emulator, monkeypatch):
    with ForwardProxy() as proxy:
        client = api_client_made_with(emulator, monkeypatch, env=dict(HTTP_PROXY=proxy.url))
        try:
            upload_id = upload_two_files(client)
        finally:
            client.close()
        assert emulator.progress(upload_id)["complete"] == 2
        assert {(f["name"], f["sha256"]) for f in emulator.files() if f["upload_id"] == upload_id} == {
            ("whole.jpg", hashlib.sha256(WHOLE).hexdigest()), ("halves.jpg", hashlib.sha256(HALVES).hexdigest())}
        assert [(method, url.split("/uploads")[-1].split("/")[-1]) for method, url, _ in proxy.seen] == [
            ("POST", ""), ("PUT", "whole.jpg"), ("PUT", "halves.jpg"), ("PUT", "halves.jpg")]
        assert all(url.startswith(emulator.base_url) for _, url, _ in proxy.seen)  # the absolute URI
        assert all(auth == CREDENTIALS for _, _, auth in proxy.seen)


@pytest.mark.parametrize("no_proxy", ["127.0.0.1", "localhost,127.0.0.1"])
def test_no_proxy_sends_the_requests_straight_to_the_server(emulator, monkeypatch, no_proxy):
    with ForwardProxy() as proxy:
        client = api_client_made_with(emulator, monkeypatch, env=dict(HTTP_PROXY=proxy.url, NO_PROXY=no_proxy))
        try:
            upload_id = upload_two_files(client)
        finally:
            client.close()
        assert emulator.progress(upload_id)["complete"] == 2
        assert proxy.seen == []


def test_https_goes_through_the_proxys_tunnel_and_is_verified(tmp_path, monkeypatch):
    """HTTPS_PROXY: a CONNECT tunnel with the proxy's credentials, and the server's certificate
    checked against the CA bundle through it."""
    cert, emulator = tls_emulator(tmp_path)
    with emulator, ForwardProxy() as proxy:
        assert emulator.base_url.startswith("https://")
        client = api_client_made_with(emulator, monkeypatch, env=dict(HTTPS_PROXY=proxy.url), ca_bundle=str(cert))
        try:
            upload_id = upload_two_files(client)
            # (the harness's introspection does not speak TLS: the server is asked through the tunnel)
            held = {(f.name, f.total) for f in client.session_status(upload_id) if f.complete}
        finally:
            client.close()
        assert held == {("whole.jpg", len(WHOLE)), ("halves.jpg", len(HALVES))}
        # No CA bundle: the server's certificate is not trusted through the tunnel either.
        untrusting = api_client_made_with(emulator, monkeypatch, env=dict(HTTPS_PROXY=proxy.url))
        try:
            with pytest.raises(TlsError):
                untrusting.open_session()
        finally:
            untrusting.close()
        server = emulator.base_url.split("//")[1].split("/")[0]
        assert proxy.seen and all(seen == ("CONNECT", server, CREDENTIALS) for seen in proxy.seen)


# --- proxies no request can go through --------------------------------------------------------

@pytest.mark.parametrize("proxy", ["http://", "proxy:3128", "ftp://127.0.0.1:3128", "http://127.0.0.1:notaport",
                                   "http://user:s3cret@:3128"])
def test_a_proxy_setting_that_is_not_a_proxy_is_a_setting_error_at_once(emulator, monkeypatch, proxy):
    """Before, each request failed on it (or a bare urllib3 error escaped): the files waited on a
    transport error that said nothing of the proxy. `proxy:3128` is what requests makes
    `proxy:///3128` of."""
    with pytest.raises(SettingError) as refused:
        api_client_made_with(emulator, monkeypatch, env=dict(HTTP_PROXY=proxy))
    said = str(refused.value)
    assert "is not a proxy's URL (http://HOST:PORT)" in said and "NO_PROXY" in said
    assert "s3cret" not in said


def test_a_socks_proxy_without_pysocks_is_a_setting_error_at_once(emulator, monkeypatch):
    if importlib.util.find_spec("socks") is not None:
        pytest.skip("PySocks is installed here: the SOCKS proxy is usable")
    with pytest.raises(SettingError, match=r"SOCKS proxy \(socks5://127\.0\.0\.1:1080\).*PySocks"):
        api_client_made_with(emulator, monkeypatch, env=dict(HTTP_PROXY="socks5://user:s3cret@127.0.0.1:1080"))


def test_a_proxy_that_cannot_be_reached_is_named_as_the_proxy_without_its_credentials(emulator, monkeypatch):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: a closed loopback port while held
        port = closed.getsockname()[1]
        client = api_client_made_with(emulator, monkeypatch,
                                      env=dict(HTTP_PROXY=f"http://user:s3cret@127.0.0.1:{port}"))
        try:
            with pytest.raises(TransportError) as failed:
                client.open_session()
        finally:
            client.close()
    said = str(failed.value)
    assert f"through the proxy http://127.0.0.1:{port}: connection refused" in said, said
    assert "s3cret" not in said
