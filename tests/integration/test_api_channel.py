"""What the client's own path to urllib3's pool (api/transport.py, Channel) must keep of what
requests did: the request target of every kind of base URL, TLS checked against certifi's bundle
unless a CA bundle is given, a missing bundle named, a proxy's TLS failure not blamed on the
server, and a JSON body that cannot be sent never sent."""

import math

import pytest
import urllib3

from fs360.api.transport import Channel, is_tls_failure
from fs360.errors import InternalError, SettingError, TlsError, TransportError

from tests.harness import api_client_made_with, tls_emulator

@pytest.mark.parametrize("base_url, proxies, target", [
    ("http://127.0.0.1:9/api/v1", {}, "/api/v1/uploads"),
    ("http://127.0.0.1:9", {}, "/uploads"),
    ("https://bücher.example/api/v1", {}, "/api/v1/uploads"),
    ("http://user:pw@127.0.0.1:8080/api/v1", {}, "/api/v1/uploads"),
    # Through an HTTP proxy an http URL is sent whole, without its credentials; https is tunnelled.
    ("http://user:pw@127.0.0.1:8080/api/v1", {"http": "http://127.0.0.1:3128"},
     "http://127.0.0.1:8080/api/v1/uploads"),
    ("https://127.0.0.1:8443/api/v1", {"https": "http://127.0.0.1:3128"}, "/api/v1/uploads"),
])
def test_the_request_target_of_every_kind_of_base_url(base_url, proxies, target):
    channel = Channel(base_url, {}, proxies, True)
    try:
        assert channel.target("/uploads") == target
    finally:
        channel.close()


def test_tls_is_checked_against_certifis_bundle_unless_a_ca_bundle_is_given(tmp_path, monkeypatch):
    """As requests did: without --ca-bundle, certifi's bundle decides, not OpenSSL's own store
    (here SSL_CERT_FILE, which names the server's certificate and must not make it trusted)."""
    cert, emulator = tls_emulator(tmp_path)
    with emulator:
        default = api_client_made_with(emulator, monkeypatch)
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # read by OpenSSL when the connection is made
        try:
            with pytest.raises(TlsError):
                default.open_session()
        finally:
            default.close()
        given = api_client_made_with(emulator, monkeypatch, ca_bundle=str(cert))
        try:
            assert given.open_session().upload_id
        finally:
            given.close()


def test_a_missing_ca_bundle_is_named_not_taken_for_the_servers_certificate(tmp_path, monkeypatch):
    _, emulator = tls_emulator(tmp_path)
    missing = tmp_path / "no-such-bundle.pem"
    with emulator:
        client = api_client_made_with(emulator, monkeypatch, ca_bundle=str(missing))
        try:
            with pytest.raises(TransportError) as info:
                client.open_session()
        finally:
            client.close()
    assert not isinstance(info.value, TlsError) and str(missing) in str(info.value)


@pytest.mark.parametrize("content", [b"", b"not a certificate\n", b"\x30\x82\x01\x0a" + bytes(266)],
                         ids=["empty", "text", "der-bytes"])
def test_a_ca_bundle_without_a_readable_certificate_is_a_setting_error_not_the_servers_fault(
        tmp_path, monkeypatch, content):
    """Before, it failed at the first connection as 'TLS verification failed for <the server>'."""
    _, emulator = tls_emulator(tmp_path)
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(content)
    with emulator, pytest.raises(SettingError) as refused:
        api_client_made_with(emulator, monkeypatch, ca_bundle=str(bundle))
    assert f"the CA bundle {bundle} holds no certificate" in str(refused.value)
    assert "PEM file of CA certificates" in str(refused.value)


def test_a_proxys_tls_failure_is_the_way_failing_not_the_servers_certificate():
    certificate = urllib3.exceptions.SSLError("certificate verify failed")
    of_server = urllib3.exceptions.MaxRetryError(None, "/uploads", reason=certificate)
    of_proxy = urllib3.exceptions.MaxRetryError(
        None, "/uploads", reason=urllib3.exceptions.ProxyError("Unable to connect to proxy", certificate))
    assert is_tls_failure(of_server) and not is_tls_failure(of_proxy)


def test_a_connection_closed_during_the_tls_handshake_is_a_network_failure_not_a_certificate(tmp_path):
    """It read 'TLS verification failed' (final at mount) where nothing was verified: a loaded
    server or a tunnel that closed during the handshake (seen once in the suite, through a proxy)."""
    import socket
    import threading

    from fs360.api.client import ApiClient
    from fs360.config import Settings
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def close_each_at_once():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.recv(1024)  # its ClientHello, then the connection ends
            conn.close()
    threading.Thread(target=close_each_at_once, daemon=True).start()
    client = ApiClient(Settings(api_url=f"https://127.0.0.1:{listener.getsockname()[1]}/api/v1", api_key="sk_test",
                                rate_limits_enabled=False, cache_dir=tmp_path / "cache"))
    try:
        with pytest.raises(TransportError) as info:
            client.open_session()
    finally:
        client.close()
        stop.set()
        listener.close()
    assert not isinstance(info.value, TlsError) and info.value.retryable, info.value


def test_a_json_body_that_json_cannot_carry_is_never_sent(emulator, monkeypatch):
    client = api_client_made_with(emulator, monkeypatch)
    before = emulator.stats()["requests"]
    try:
        with pytest.raises(InternalError):
            client.create_project({"title": "t", "scale": math.inf})
    finally:
        client.close()
    assert emulator.stats()["requests"] == before


def test_https_to_a_server_without_tls_says_so_not_that_verification_failed(emulator):
    """Nothing was verified: the server answered in plain HTTP. It read 'TLS verification failed
    ... WRONG_VERSION_NUMBER', which sends the user after a certificate."""
    from fs360.api.client import ApiClient
    from fs360.config import Settings
    https = emulator.base_url.replace("http://", "https://")
    client = ApiClient(Settings(api_url=https, api_key=emulator.api_key, rate_limits_enabled=False))
    try:
        with pytest.raises(TlsError) as info:
            client.open_session()
    finally:
        client.close()
    host = https.split("//")[1].split("/")[0]
    assert str(info.value).startswith(f"the server at {host} does not speak TLS (https) on that port"), info.value
    assert str(info.value).endswith("check --api-url")
