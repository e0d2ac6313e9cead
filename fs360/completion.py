"""`fs360 completion bash`: a completion script generated from the argument parser itself,
so it never lags behind the options (and needs no extra dependency at run time)."""

from __future__ import annotations

import argparse


def _commands(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    """Visible subcommand -> its visible option strings."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    visible = {choice.dest for choice in sub._choices_actions}
    out = {}
    for name, subparser in sub.choices.items():
        if name not in visible:
            continue
        out[name] = sorted(o for a in subparser._actions if a.help != argparse.SUPPRESS
                           for o in a.option_strings)
    return out


def bash_script(parser: argparse.ArgumentParser) -> str:
    commands = _commands(parser)
    cases = "\n".join(f'        {name}) opts="{" ".join(options)}" ;;' for name, options in commands.items())
    return f"""# bash completion for fs360: eval "$(fs360 completion bash)" (or save it in
# ~/.local/share/bash-completion/completions/fs360)
_fs360() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} command=${{COMP_WORDS[1]}} opts
    if [ "$COMP_CWORD" -eq 1 ]; then
        COMPREPLY=($(compgen -W "{" ".join(commands)} --version --help" -- "$cur"))
        return
    fi
    case "$command" in
{cases}
        *) opts="" ;;
    esac
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
    else
        COMPREPLY=($(compgen -d -- "$cur"))
    fi
}}
complete -o filenames -F _fs360 fs360
"""
