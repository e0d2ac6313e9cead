"""`--timing NAME=SECONDS`: the hidden option tests scale retry timings of a mount with."""

from __future__ import annotations

import pytest

from fs360.cli import CliError, build_parser, parse, settings_from_args
from fs360.config import Settings
from fs360.errors import SettingError


def settings_of(argv, monkeypatch, tmp_path) -> Settings:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("FS360_API_KEY", "sk_test")
    return settings_from_args(parse(build_parser(), ["mount", str(tmp_path / "m"), *argv]))


def test_timings_reach_the_settings_and_the_last_one_wins(tmp_path, monkeypatch):
    settings = settings_of(["--timing", "backoff_cap=2", "--timing=abandoned_upload_quiet=0.5",
                            "--timing", "backoff_cap=3.5"], monkeypatch, tmp_path)
    assert settings.backoff_cap == 3.5 and settings.abandoned_upload_quiet == 0.5
    assert settings.request_deadline == Settings().request_deadline  # untouched: the default


def test_without_timings_the_defaults_hold(tmp_path, monkeypatch):
    settings = settings_of([], monkeypatch, tmp_path)
    defaults = Settings()
    assert (settings.backoff_base, settings.backoff_cap, settings.abandoned_upload_quiet) == \
        (defaults.backoff_base, defaults.backoff_cap, defaults.abandoned_upload_quiet)


@pytest.mark.parametrize("bad, message", [("workers=3", "'workers' is not one of"),
                                          ("backoff_cap=soon", "'soon' is not a number of seconds"),
                                          ("backoff_cap=-1", "'-1' is not a number of seconds"),
                                          ("backoff_cap=nan", "'nan' is not a number of seconds")])
def test_a_bad_timing_is_refused_with_a_message(tmp_path, monkeypatch, bad, message):
    with pytest.raises(SettingError, match=message):
        settings_of(["--timing", bad], monkeypatch, tmp_path)


def test_timings_are_no_config_keys(tmp_path, monkeypatch):
    config = tmp_path / "config" / "fs360" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text('timing = ["backoff_cap=1"]\n')
    with pytest.raises((CliError, SettingError), match="timing"):
        settings_of([], monkeypatch, tmp_path)
