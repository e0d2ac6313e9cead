"""`fs360 completion bash|zsh|fish`: generated from the parser (shtab); run in the shells
themselves: options, choices, files, and the fs360 mounts that are up."""

from __future__ import annotations

import argparse
import shutil
import subprocess

import pytest

from fs360.cli import build_parser
from fs360.emulator import build_parser as emulator_parser
from tests.ops.common import run_fs360


def scripts(tmp_path) -> dict:
    out = {}
    for shell in ("bash", "zsh", "fish"):
        result = run_fs360(tmp_path, "completion", shell)
        assert result.returncode == 0, result.stderr
        out[shell] = tmp_path / f"fs360.{shell}"
        out[shell].write_text(result.stdout)
    return out


def complete_in_bash(script, words: list[str], cwd) -> list[str]:
    line = " ".join(words)
    program = (f'source {script}; COMP_WORDS=({" ".join(repr(w) for w in words)}); '
               f'COMP_CWORD={len(words) - 1}; COMP_LINE={line!r}; COMP_POINT=${{#COMP_LINE}}; '
               '_shtab_fs360; printf "%s\\n" "${COMPREPLY[@]}"')
    result = subprocess.run(["bash", "-c", program], cwd=cwd, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return [w for w in result.stdout.splitlines() if w]


@pytest.mark.fuse
def test_bash_completes_options_choices_files_and_mounts(tmp_path, mount):
    script = scripts(tmp_path)["bash"]
    (tmp_path / "api-key").write_text("x")
    assert complete_in_bash(script, ["fs360", "st"], tmp_path) == ["status"]
    assert "mount-helper" not in complete_in_bash(script, ["fs360", ""], tmp_path)
    assert complete_in_bash(script, ["fs360", "mount", "--api-key-f"], tmp_path) == ["--api-key-file"]
    assert complete_in_bash(script, ["fs360", "mount", "--privacy", ""], tmp_path) == ["link", "private", "public"]
    assert "api-key" in complete_in_bash(script, ["fs360", "mount", "--api-key-file", "api"], tmp_path)
    assert str(mount.mountpoint) in complete_in_bash(script, ["fs360", "unmount", ""], tmp_path)
    assert str(mount.mountpoint) in complete_in_bash(script, ["fs360", "status", ""], tmp_path)
    hidden = complete_in_bash(script, ["fs360", "mount", "--"], tmp_path)
    assert "--web-address" in hidden and "--rate-window-scale" not in hidden


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_zsh_and_fish_scripts_are_valid(tmp_path, shell):
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed (scripts/setup installs it as root)")
    script = scripts(tmp_path)[shell]
    result = subprocess.run([shell, "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "--api-key-file" in script.read_text() and "fuse.fs360" in script.read_text()


def every_option(parser: argparse.ArgumentParser, path: str = "fs360"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            visible = {choice.dest for choice in action._choices_actions}
            for name, sub in action.choices.items():
                if name in visible:
                    yield from every_option(sub, f"{path} {name}")
        elif action.help != argparse.SUPPRESS and not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield path, action


def test_every_option_and_argument_has_a_help_text():
    missing = [f"{path} {action.option_strings or action.dest}"
               for parser in (build_parser(), emulator_parser()) for path, action in every_option(parser)
               if not action.help]
    assert missing == []
