"""Who may reach `fs360 serve webdav`: loopback only by default; any other address needs Basic
auth (a password file, mode 0600) and TLS; its settings come from the command line or the
config file's [webdav] table; one cache dir serves one mount or one WebDAV server at a time."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from tests.harness import PYTHON, FakeManager, Mount, fake_notify_send, notices, self_signed_certificate, wait_until
from tests.webdav.conftest import DavServer


def serve(tmp_path, emulator, *args, cache="cache") -> subprocess.CompletedProcess:
    """`fs360 serve webdav ARGS` that is expected to refuse to start."""
    env = dict(os.environ, FS360_API_KEY=emulator.api_key, XDG_CONFIG_HOME=str(tmp_path / "config"))
    return subprocess.run([PYTHON, "-m", "fs360.cli", "serve", "webdav", "--api-url", emulator.base_url,
                           "--cache-dir", str(tmp_path / cache), "--no-notify", *args],
                          env=env, capture_output=True, text=True, timeout=60)


def password_file(tmp_path, mode=0o600):
    path = tmp_path / "webdav-users"
    path.write_text("# user:password\nsurveyor:s3cret pass\n")
    path.chmod(mode)
    return path


def test_another_address_needs_a_password_file_and_tls(tmp_path, emulator):
    refused = serve(tmp_path, emulator, "--addr", "0.0.0.0:0")
    assert refused.returncode == 2 and refused.stdout == ""
    assert "0.0.0.0 is not a loopback address: serving it needs --password-file" in refused.stderr
    assert "Traceback" not in refused.stderr
    users = password_file(tmp_path)
    refused = serve(tmp_path, emulator, "--addr", "0.0.0.0:0", "--password-file", str(users))
    assert refused.returncode == 2 and "--tls-cert/--tls-key (TLS)" in refused.stderr


def test_a_password_file_others_can_read_is_refused(tmp_path, emulator):
    users = password_file(tmp_path, mode=0o644)
    refused = serve(tmp_path, emulator, "--addr", "127.0.0.1:0", "--password-file", str(users))
    assert refused.returncode == 2
    assert f"the password file {users} is readable by others (mode 644); fix it with: chmod 600" in refused.stderr


@pytest.mark.parametrize("broken", ["not-pem", "key-of-another"])
def test_a_certificate_that_cannot_be_loaded_is_one_clear_line(tmp_path, emulator, broken):
    cert, key = self_signed_certificate(tmp_path)
    if broken == "not-pem":
        cert.write_text("this is no certificate\n")
    else:
        other = tmp_path / "other"
        other.mkdir()
        key = self_signed_certificate(other)[1]
    refused = serve(tmp_path, emulator, "--addr", "127.0.0.1:0", "--tls-cert", str(cert), "--tls-key", str(key))
    assert refused.returncode == 2 and refused.stdout == ""
    assert "Traceback" not in refused.stderr, refused.stderr
    assert f"cannot load the TLS certificate {cert} with its key {key}" in refused.stderr
    assert "give a PEM certificate and the PEM key that belongs to it" in refused.stderr


def test_a_taken_port_is_said_in_words(tmp_path, emulator):
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        refused = serve(tmp_path, emulator, "--addr", f"127.0.0.1:{port}")
    assert refused.returncode == 2
    assert refused.stderr.strip() == (f"fs360: cannot listen on 127.0.0.1:{port}: another program uses that port; "
                                      f"give another --addr port (0: a free one)")


def test_a_bad_address_is_one_clear_line(tmp_path, emulator):
    refused = serve(tmp_path, emulator, "--addr", "localhost")
    assert refused.returncode == 2
    assert refused.stderr.strip() == ("fs360: --addr localhost: not HOST:PORT; allowed: HOST:PORT, e.g. "
                                      "127.0.0.1:8360 or [::1]:0 (port 0: a free one)")
    refused = serve(tmp_path, emulator, "--addr", "http://127.0.0.1:8360")  # a URL: it read as the host "http://..."
    assert refused.returncode == 2
    assert refused.stderr.startswith("fs360: --addr http://127.0.0.1:8360: HOST:PORT, not a URL; allowed: HOST:PORT")


def test_basic_auth_over_tls_from_the_config_files_webdav_table(tmp_path, emulator):
    """The [webdav] table holds the server's own keys; the global keys apply to it too."""
    cert, key = self_signed_certificate(tmp_path)
    users = password_file(tmp_path)
    config = tmp_path / "config" / "fs360" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f'no_rate_limits = true\n[webdav]\npassword_file = "{users}"\ntls_cert = "{cert}"\n'
                      f'tls_key = "{key}"\n')
    dav = DavServer(tmp_path, emulator)
    result = subprocess.run(dav.command(), env=dav.env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    url = result.stdout.splitlines()[0]
    dav.pid = int((dav.cache_dir / "lock").read_text())
    try:
        assert url.startswith("https://127.0.0.1:")
        def status(*args):
            done = subprocess.run(["curl", "-sS", "--cacert", str(cert), "-o", "/dev/null", "-w", "%{http_code}",
                                   *args, "-X", "PROPFIND", url], capture_output=True, text=True, timeout=60)
            return int(done.stdout)
        assert status() == 401
        assert status("-u", "surveyor:wrong") == 401
        assert status("-u", "surveyor:s3cret pass") == 207
        plain = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", url.replace("https", "http")],
                               capture_output=True, text=True, timeout=60)
        assert plain.stdout != "207"  # no answer in clear text
    finally:
        dav.stop()
    assert dav.logged_errors() == []


@pytest.mark.fuse
def test_a_mount_and_a_webdav_server_never_share_a_cache_dir(tmp_path, emulator):
    cache = tmp_path / "shared-cache"
    refusal = "another fs360 mount or WebDAV server uses the cache dir"  # logged by the refused one
    mount = Mount(tmp_path, emulator, cache_dir=cache)
    mount.expected_errors.append(refusal)
    with mount:
        refused = serve(tmp_path, emulator, "--addr", "127.0.0.1:0", cache="shared-cache")
        assert refused.returncode == 2
        assert f"{refusal} {cache}" in refused.stderr
    dav = DavServer(tmp_path, emulator, cache_dir=cache).start()
    dav.expected_errors.append(refusal)
    (tmp_path / "mnt2").mkdir()
    try:
        mounted = subprocess.run([PYTHON, "-m", "fs360.cli", "mount", str(tmp_path / "mnt2"), "--api-url",
                                  emulator.base_url, "--cache-dir", str(cache)],
                                 env=dav.env, capture_output=True, text=True, timeout=60)
        assert mounted.returncode == 2
        assert f"{refusal} {cache}" in mounted.stderr
    finally:
        dav.stop()
    assert dav.logged_errors() == []


def test_in_the_foreground_it_prints_its_url_first_and_a_sigterm_stops_it(tmp_path, emulator):
    """As systemd or a terminal runs it: the URL is the first line, and SIGTERM ends it cleanly."""
    dav = DavServer(tmp_path, emulator)
    process = subprocess.Popen([*dav.command(), "-f"], env=dav.env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        done = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "MKCOL", url + "S"],
                              capture_output=True, text=True, timeout=60)
        assert done.stdout == "201"
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    stderr = process.stderr.read()
    assert f"fs360: serving WebDAV at {url}" in stderr and "stopping the WebDAV server" in stderr
    assert "Traceback" not in stderr
    assert dav.logged_errors() == []


def test_under_systemd_it_reports_its_status_and_tells_the_desktop(tmp_path, emulator):
    """`serve webdav -f` as a systemd unit on a desktop: READY=1, a STATUS= line every few seconds,
    and a notice for a file the server refused. (The notices were set up with the engine in place of
    its listeners, and the status lines read the engine in place of the path model: both raised.)"""
    notify_env, notice_log = fake_notify_send(tmp_path)
    manager = FakeManager(str(tmp_path / "notify"), None)
    dav = DavServer(tmp_path, emulator, env={**notify_env, "NOTIFY_SOCKET": str(tmp_path / "notify")})
    process = subprocess.Popen([*(arg for arg in dav.command() if arg != "--no-notify"), "-f"], env=dav.env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        manager.receive_until(lambda m: "READY=1" in m.split("\n"))  # (bounded, where readline is not)
        dav.url = process.stdout.readline().strip()
        dav.curl("-X", "MKCOL", path="Bad/", check_status=201)
        (tmp_path / "bad.bin").write_bytes(b"x" * 1000)
        dav.curl("-T", str(tmp_path / "bad.bin"), path="Bad/bad.bin", check_status=201)  # the server: 415, for good
        wait_until(lambda: any("bad.bin was not uploaded" in n for n in notices(notice_log)), 60,
                   what="the refusal's desktop notice")
        manager.receive_until(lambda m: m.startswith("STATUS=") and "failed" in m)
        process.send_signal(signal.SIGTERM)
        manager.receive_until(lambda m: m == "STOPPING=1")
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        manager.sock.close()
    stderr = process.stderr.read()
    assert "Traceback" not in stderr, stderr
    assert dav.logged_errors() == []
