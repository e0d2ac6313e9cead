"""One schema for every setting (issue 20): the command line, every table of the config file,
-o and `fs360 set` are checked alike; a bad value is one line that names where it came from
and what is allowed, the exit status is non-zero, and there is never a traceback."""

from __future__ import annotations

import json
import os

import pytest

from fs360 import control
from fs360.cli import build_parser, mount_values, parse, settings_from_args
from fs360.errors import SettingError
from fs360.options import CREATE_FIELDS, MOUNT_OPTIONS, unknown_create_fields
from tests.harness import write_marker

from .common import harness_runtime, run_fs360


def write_config(tmp_path, text: str):
    path = tmp_path / "config" / "fs360" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# (what is set: a config file and the command line after the mountpoint, what the one line must say)
BAD_SETTINGS = [
    pytest.param('[mount."/elsewhere"]\nprivacy = "secret"\n', [],
                 ['config.toml: [mount."/elsewhere"] privacy = "secret"', "allowed: private, link, public"],
                 id="privacy-in-another-mounts-table"),
    pytest.param('[mount."/elsewhere"]\nbwlimt = "1M"\n', [],
                 ['[mount."/elsewhere"] bwlimt: unknown key (did you mean bwlimit?)'], id="typo-in-another-table"),
    pytest.param('[mount."relative/m"]\nworkers = 2\n', [], ['[mount."relative/m"]: not an absolute path'],
                 id="relative-table-name"),
    pytest.param('workers = "four"\n', [], ['config.toml: workers = "four": not a number',
                                            "allowed: a whole number from 1 to 64"], id="workers-four"),
    pytest.param('workers = 2.5\n', [], ["workers = 2.5: not a whole number"], id="workers-fraction"),
    pytest.param('no_notify = "maybe"\n', [], ['no_notify = "maybe"', "allowed: true or false"], id="bool-word"),
    pytest.param('local_only = [1, 2]\n', [], ["local_only = [1, 2]: not a string"], id="list-of-numbers"),
    pytest.param('bwlimit = "08:00,2M 08:00,off"\n', [], ["08:00 is in the timetable twice"],
                 id="bwlimit-twice-in-file"),
    pytest.param("", ["--chunk-size", "0"], ["--chunk-size 0: too small", "allowed: a size from 64K to 1G"],
                 id="chunk-size-0"),
    pytest.param("", ["--chunk-size", "lots"], ["--chunk-size lots: not a size"], id="chunk-size-word"),
    pytest.param("", ["--max-chunk-size", "2G"], ["--max-chunk-size 2G: too large",
                                                   "allowed: a size from 64K to 1G"], id="max-chunk-size-2G"),
    pytest.param('max_chunk_size = "huge"\n', [], ['config.toml: max_chunk_size = "huge": not a size'],
                 id="max-chunk-size-in-file"),
    pytest.param("", ["--log-level", "verbose"], ["--log-level verbose: unknown value",
                                                  "allowed: debug, info, warning, error"], id="log-level-verbose"),
    pytest.param("", ["--privacy", "secret"], ["--privacy secret: unknown value"], id="privacy-flag"),
    pytest.param("", ["--workers", "0"], ["--workers 0: too small"], id="workers-0"),
    pytest.param("", ["--writeback-delay", "nan"], ["--writeback-delay nan: not a finite number"], id="nan"),
    pytest.param("", ["--poll-interval", "-1"], ["--poll-interval -1: too small"], id="poll-negative"),
    pytest.param("", ["--bwlimit", "08:00,2M 08:00,off"], ["--bwlimit 08:00,2M 08:00,off: 08:00 is in the "
                                                           "timetable twice"], id="bwlimit-twice"),
    pytest.param("", ["--ca-bundle", "no-such-ca.pem"], ["no-such-ca.pem is not a file",
                                                         "allowed: the path of an existing file"], id="ca-missing"),
    pytest.param("", ["--api-url", "http://scans.example.org/api/v1"],
                 ["--api-url http://scans.example.org/api/v1: http:// would send the API key in clear text"],
                 id="http-not-loopback"),
    pytest.param("", ["--api-url", "ftp://x/api"], ["--api-url ftp://x/api: not an http(s) URL"], id="ftp-url"),
    pytest.param("", ["--api-url", "https://x.org:99999/api/v1"],
                 ["--api-url https://x.org:99999/api/v1: its port is not a number from 1 to 65535"], id="url-port"),
    pytest.param("", ["--api-url", "https://x.org/api/v1?lang=de"],
                 ["--api-url https://x.org/api/v1?lang=de: an API URL has no query"], id="url-query"),
    pytest.param("", ["--api-url", "https://me:s3cret@x.org/api/v1"],  # (the password never shown)
                 ["--api-url https://x.org/api/v1: a user name or password has no place"], id="url-user"),
    pytest.param("", ["-o", "workers=0"], ["-o workers=0: too small"], id="o-workers-0"),
    # The dashboard binds only what every resolver maps to loopback; *.localhost passed this
    # check before and then failed in the mount's init, which hung a background `fs360 mount`.
    pytest.param("", ["-o", "web_address=scans.localhost:0"],
                 ["-o web_address=scans.localhost:0: the dashboard listens on loopback only"], id="o-web-localhost-name"),
    pytest.param("", ["-o", "web_address=0.0.0.0:80"], ["the dashboard listens on loopback only"], id="o-web-not-loopback"),
    pytest.param("", ["-o", "no_notify=maybe"], ["-o no_notify=maybe: not true or false"], id="o-bool"),
    pytest.param("", ["-o", "colour=blue"], ["-o colour: unknown option"], id="o-unknown"),
    pytest.param('options = "workers=zero"\n', [], ["config.toml: -o workers=zero: not a number"], id="file-o"),
    pytest.param("", ["--bogus-flag"], ["unrecognized arguments: --bogus-flag"], id="unknown-flag"),
]


@pytest.mark.parametrize("config, flags, said", BAD_SETTINGS)
def test_every_bad_setting_is_one_line_naming_its_source(tmp_path, config, flags, said):
    if config:
        write_config(tmp_path, config)
    (tmp_path / "mnt").mkdir()
    result = run_fs360(tmp_path, "mount", str(tmp_path / "mnt"), "--cache-dir", str(tmp_path / "cache"), *flags,
                       env={"FS360_API_KEY": "sk_never_used"})
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fs360: "), result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    for words in said:
        assert words in lines[0], lines[0]
    assert not (tmp_path / "cache").exists(), "a refused setting must stop before anything starts"
    assert "s3cret" not in result.stderr


@pytest.mark.parametrize("kind, said", [
    ("not-utf8", "the config file {path} is not text (UTF-8): write it as TOML"),
    ("dev-zero", "the config file {path} is not a regular file: make it a TOML text file"),
    ("dangling", "the config file {path} is a link to {target}, which does not exist"),
    ("key-not-utf8", "the key file {key} is not text (UTF-8): put the API key in it, on one line"),
])
def test_a_config_or_key_file_that_is_no_text_is_one_line(tmp_path, kind, said):
    """Each was a traceback (UnicodeDecodeError, a MemoryError reading /dev/zero whole), or, for a
    dangling link, silently no config at all."""
    path = write_config(tmp_path, "")
    target, key = tmp_path / "gone.toml", tmp_path / "key"
    flags = []
    if kind == "not-utf8":
        path.write_bytes(b"\xff\xfe garbage\n")
    elif kind in ("dev-zero", "dangling"):
        path.unlink()
        path.symlink_to("/dev/zero" if kind == "dev-zero" else target)
    else:
        key.write_bytes(b"\xff\xfe\x00\x01")
        key.chmod(0o600)
        flags = ["--api-key-file", str(key)]
    (tmp_path / "mnt").mkdir()
    result = run_fs360(tmp_path, "mount", str(tmp_path / "mnt"), "--cache-dir", str(tmp_path / "cache"), *flags,
                       env={"FS360_API_KEY": "sk_never_used"})
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr == f"fs360: {said.format(path=path, target=target, key=key)}\n"


@pytest.mark.parametrize("args, said", [
    (["--port", "99999"], "--port 99999: a port is a number from 0 (a free one) to 65535"),
    (["--port", "-1"], "--port -1: a port is a number from 0 (a free one) to 65535"),
    (["--data-dir", "/proc/no-such-dir"], "--data-dir /proc/no-such-dir: cannot make it (No such file or directory)"),
])
def test_the_emulators_bad_arguments_are_one_line(tmp_path, args, said):
    result = run_fs360(tmp_path, "emulator", *args, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.splitlines()[-1].endswith(said), result.stderr


def test_doctor_names_a_bad_setting_as_its_failure(tmp_path):
    write_config(tmp_path, 'log_level = "verbose"\n')
    result = run_fs360(tmp_path, "doctor", env={"FS360_API_KEY": "sk_x"})
    assert result.returncode == 1
    assert 'FAIL settings: ' in result.stdout and 'log_level = "verbose": unknown value; allowed: debug, info, ' \
        'warning, error' in result.stdout, result.stdout
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize("assignment, said", [
    ("bwlimit=08:00,2M 08:00,off", "set bwlimit=08:00,2M 08:00,off: 08:00 is in the timetable twice"),
    ("bwlimit=lots", "set bwlimit=lots: not a rate"),
    ("bwlimit=", "set bwlimit=: empty: give a rate (10M, 500k) or off"),
    ("=5", "'=5' is not KEY=VALUE (e.g. bwlimit=5M)"),
    ("workers=3", "set workers: cannot change while mounted"),
    ("colour=blue", "set colour: unknown option"),
])
def test_fs360_set_checks_before_it_asks_the_daemon(tmp_path, assignment, said):
    """No daemon runs here: a bad value is refused by the schema, not by a missing daemon."""
    result = run_fs360(tmp_path, "set", str(tmp_path), assignment)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"fs360: {said}"), result.stderr


def settings_for(argv, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("FS360_API_KEY", "sk_test")
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    return settings_from_args(parse(build_parser(), argv))


def test_relative_paths_become_absolute_where_they_were_written(tmp_path, monkeypatch):
    """The daemon runs in /: a relative path must not reach it. The command line's are taken
    from the working directory, the config file's from the file's own folder."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "ca.pem").write_text("certificates")
    monkeypatch.chdir(work)
    settings = settings_for(["mount", "m", "--ca-bundle", "ca.pem", "--cache-dir", "cache"], monkeypatch, tmp_path)
    assert settings.ca_bundle == str(work / "ca.pem")
    assert settings.cache_dir == work / "cache"
    config = write_config(tmp_path, 'ca_bundle = "certs/ca.pem"\ncache_dir = "~/fs360-cache"\n')
    (config.parent / "certs").mkdir()
    (config.parent / "certs" / "ca.pem").write_text("certificates")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    settings = settings_for(["mount", "m"], monkeypatch, tmp_path)
    assert settings.ca_bundle == str(config.parent / "certs" / "ca.pem")
    assert settings.cache_dir == tmp_path / "home" / "fs360-cache"


def test_sources_override_in_order_and_lists_add_up(tmp_path, monkeypatch):
    mountpoint = tmp_path / "m"
    write_config(tmp_path, f'workers = 2\nlocal_only = ["*.bak"]\nlog_level = "debug"\n'
                           f'[mount."{mountpoint}"]\nworkers = 3\noptions = "allow_other,no_notify"\n')
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    values, fuse = mount_values(parse(build_parser(), ["mount", str(mountpoint), "--local-only", "*.old"]))
    assert (values["workers"], values["log_level"], values["no_notify"], fuse) == (3, "debug", True, ["allow_other"])
    assert values["local_only"] == ["*.bak", "*.old"]
    values, _ = mount_values(parse(build_parser(), ["mount", str(mountpoint), "--workers", "5", "-o", "workers=6"]))
    assert values["workers"] == 6  # -o is the command line too, and comes last (fstab's column)


def test_http_is_for_loopback_unless_asked(tmp_path, monkeypatch):
    for url in ("http://127.0.0.1:8/api/v1", "http://localhost:8/api/v1", "http://[::1]:8/api/v1",
                "https://scans.example.org/api/v1"):
        assert settings_for(["mount", "m", "--api-url", url], monkeypatch, tmp_path).api_url == url
    with pytest.raises(SettingError, match="clear text"):
        settings_for(["mount", "m", "--api-url", "http://10.0.0.8/api/v1"], monkeypatch, tmp_path)
    asked = settings_for(["mount", "m", "--api-url", "http://10.0.0.8/api/v1", "--insecure-http"], monkeypatch,
                         tmp_path)
    assert asked.insecure_http and asked.api_url == "http://10.0.0.8/api/v1"


def test_every_option_is_documented_and_has_a_working_default(tmp_path, monkeypatch):
    """The schema is the one list: each option has help (or is hidden) and its default passes its own check."""
    from fs360.options import Origin
    for option in MOUNT_OPTIONS:
        assert option.hidden or option.help, option.name
        if option.default is not None and option.kind != "list":
            assert option.check(option.default, Origin("flag")) == option.default, option.name
    shown = run_fs360(tmp_path, "mount", "--help")
    for option in MOUNT_OPTIONS:
        assert option.hidden or option.flag in shown.stdout, option.name


def test_unknown_create_fields_are_named_with_a_guess():
    assert unknown_create_fields({"titel": "x", "privacy_mode": 1, "colour": 2}) == ["colour", "titel (did you mean title?)"]
    assert unknown_create_fields({name: 1 for name in CREATE_FIELDS}) == []


@pytest.mark.fuse
def test_a_running_mount_refuses_bad_values_from_any_client(tmp_path, emulator, mount_factory):
    """The daemon checks `set` with the same schema, whoever sends it (it answered "internal
    error" to a timetable with one time twice); and `.create`'s unknown fields show in status
    while the known ones are used."""
    mount = mount_factory(emulator)
    answer = control.request(str(mount.mountpoint), {"cmd": "set", "values": {"bwlimit": "08:00,2M 08:00,off"}})
    assert answer == {"ok": False, "error": 'set bwlimit=08:00,2M 08:00,off: 08:00 is in the timetable twice; '
                                            'allowed: a rate (10M, 500k, off) or a timetable "08:00,5M 18:00,off"'}
    answer = control.request(str(mount.mountpoint), {"cmd": "set", "values": {"bwlimit": "3M"}})
    assert answer["ok"] and answer["bwlimit"] == "3M"
    changed = run_fs360(tmp_path, "set", str(mount.mountpoint), "bwlimit=off", env=harness_runtime())
    assert changed.returncode == 0 and "bwlimit off" in changed.stdout, changed.stderr

    session = mount.mountpoint / "typo"
    session.mkdir()
    (session / "a.jpg").write_bytes(b"jpeg" * 100)
    write_marker(session / ".create", json.dumps({"titel": "Office", "privacy_mode": 1}).encode())
    project = mount.wait_project("typo")
    status = (session / "status").read_text()
    assert ".create: unknown field(s) titel (did you mean title?): sent as written" in status, status
    assert project["unknown_fields"] == ["titel (did you mean title?)"]
    assert project["privacy_mode"] == 1
    created = [p for p in emulator.projects() if p["upload_id"] == mount.status_json("typo")["upload_id"]]
    assert len(created) == 1 and created[0]["title"] == "typo"  # the session's name: "titel" is no title
    assert os.path.ismount(mount.mountpoint)
