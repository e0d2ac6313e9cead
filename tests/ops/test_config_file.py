"""The config file: every mount option as a key, the command line wins, a per-mountpoint
table, unknown keys and open key files refused."""

from __future__ import annotations

import pytest

from fs360.cli import build_parser, parse, settings_from_args
from fs360.errors import SettingError
from tests.harness import is_mounted

from .common import run_fs360

pytestmark = pytest.mark.fuse


def write_config(tmp_path, text: str):
    path = tmp_path / "config" / "fs360" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def key_file(tmp_path, key: str, mode: int = 0o600):
    path = tmp_path / "api-key"
    path.write_text(key + "\n")
    path.chmod(mode)
    return path


def settings_for(argv, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for name in ("FS360_API_KEY", "API_KEY", "CREDENTIALS_DIRECTORY"):
        monkeypatch.delenv(name, raising=False)
    return settings_from_args(parse(build_parser(), argv))


def test_mount_with_nothing_but_the_mountpoint(tmp_path, emulator):
    key = key_file(tmp_path, emulator.api_key)
    cache = tmp_path / "cache"
    write_config(tmp_path, f'api_url = "{emulator.base_url}"\napi_key_file = "{key}"\ncache_dir = "{cache}"\n'
                           'no_rate_limits = true\nbwlimit = "9M"\n')
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    result = run_fs360(tmp_path, "mount", str(mountpoint))
    assert result.returncode == 0, result.stderr
    try:
        assert (cache / "lock").exists()
        shown = run_fs360(tmp_path, "status", str(mountpoint))
        assert shown.stdout.splitlines()[0] == f"idle · 0/0 files · bwlimit 9M · {mountpoint}", shown.stdout
    finally:
        assert run_fs360(tmp_path, "unmount", str(mountpoint)).returncode == 0
    assert not is_mounted(mountpoint)


def test_the_command_line_overrides_the_file_and_a_mount_table_the_globals(tmp_path, monkeypatch):
    key = key_file(tmp_path, "sk_from_file")
    write_config(tmp_path, f'''
api_url = "https://global.example/api/v1"
api_key_file = "{key}"
workers = 2
chunk_size = "1M"
privacy = "public"
bwlimit = "5M"
local_only = ["*.bak"]
options = "allow_other"

[mount."{tmp_path}/special"]
workers = 9
privacy = "link"
''')
    plain = settings_for(["mount", str(tmp_path / "plain")], monkeypatch, tmp_path)
    assert (plain.api_url, plain.workers, plain.chunk_size, plain.default_privacy, plain.bwlimit) == \
        ("https://global.example/api/v1", 2, 1024 * 1024, 0, "5M")
    assert plain.api_key == "sk_from_file" and plain.allow_other and "*.bak" in plain.local_only_patterns
    special = settings_for(["mount", str(tmp_path / "special")], monkeypatch, tmp_path)
    assert (special.workers, special.default_privacy, special.chunk_size) == (9, 1, 1024 * 1024)
    flags = settings_for(["mount", str(tmp_path / "special"), "--workers", "3", "--privacy", "private",
                          "--bwlimit", "off", "--chunk-size", "2M"], monkeypatch, tmp_path)
    assert (flags.workers, flags.default_privacy, flags.bwlimit, flags.chunk_size) == (3, 2, "off", 2 * 1024 * 1024)
    # fstab's -o key=value is the command line too.
    helper = settings_for(["mount", str(tmp_path / "plain"), "-o", "workers=5,bwlimit=1M,_netdev,nofail"],
                          monkeypatch, tmp_path)
    assert (helper.workers, helper.bwlimit) == (5, "1M")


def test_no_config_file_means_the_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("FS360_API_KEY", "sk_env")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    settings = settings_from_args(parse(build_parser(), ["mount", str(tmp_path / "m")]))
    assert (settings.workers, settings.default_privacy, settings.bwlimit, settings.api_key) == (4, 2, "off", "sk_env")


def test_an_unknown_key_is_named(tmp_path):
    write_config(tmp_path, 'api_url = "https://x/api/v1"\nbandwidth = "5M"\n')
    (tmp_path / "mnt").mkdir()
    result = run_fs360(tmp_path, "mount", str(tmp_path / "mnt"))
    assert result.returncode == 2
    assert "bandwidth: unknown key" in result.stderr and "bwlimit" in result.stderr
    write_config(tmp_path, 'api_url = "https://x/api/v1"\n')
    result = run_fs360(tmp_path, "mount", str(tmp_path / "mnt"), "-o", "colour=blue")
    assert result.returncode == 2 and "-o colour: unknown option" in result.stderr


def test_a_key_file_others_can_read_is_refused_with_the_fix(tmp_path, emulator):
    key = key_file(tmp_path, emulator.api_key, mode=0o644)
    write_config(tmp_path, f'api_url = "{emulator.base_url}"\napi_key_file = "{key}"\n')
    (tmp_path / "mnt").mkdir()
    result = run_fs360(tmp_path, "mount", str(tmp_path / "mnt"), "--cache-dir", str(tmp_path / "cache"))
    assert result.returncode == 2
    assert f"chmod 600 {key}" in result.stderr
    assert emulator.api_key not in result.stderr
    assert not is_mounted(tmp_path / "mnt")


def test_systemd_credential_is_a_key_source(tmp_path, monkeypatch):
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "fs360-api-key").write_text("sk_from_systemd\n")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    monkeypatch.setenv("FS360_API_KEY", "sk_env")
    settings = settings_from_args(parse(build_parser(), ["mount", str(tmp_path / "m")]))
    assert settings.api_key == "sk_from_systemd"
    with pytest.raises(SettingError, match="-o privacy=secret: unknown value; allowed: private, link, public"):
        settings_from_args(parse(build_parser(), ["mount", str(tmp_path / "m"), "-o", "privacy=secret"]))
