"""Shell completion for ``migrate-node``, generated from its argparse parser.

``migrate-node completion bash`` prints a bash script; ``eval "$(migrate-node
completion bash)"`` in ``~/.bashrc`` (or the file saved under
``/etc/bash_completion.d/``) turns it on.  The script is made from the
parser the command runs, so every command, option and choice it completes
exists: nothing is listed twice to drift apart.

What it completes: commands and nested commands (``cert issue``); a
command's options after ``-``; an option's choices (``--role``); a
directory after options whose value is one (``--data-dir``, ``--tls-dir``);
file names elsewhere (a module path, a certificate).
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Iterator

#: The shells a script can be printed for.
SHELLS = ("bash",)


def _walk(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every (command path, parser) below ``parser``, itself first ("@" is the program: bash keys are never empty)."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _walk(child, f"{path} {name}")


def _entries(parser: argparse.ArgumentParser, path: str) -> dict[str, dict[str, str]]:
    """The bash tables' entries of one parser: children, options, value-taking options, choices, dirs."""
    children: list[str] = []
    options: list[str] = []
    takes: list[str] = []
    tables: dict[str, dict[str, str]] = {"children": {}, "options": {}, "takes": {}, "choices": {}, "dirs": {}}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            children += list(action.choices)
            continue
        if not action.option_strings:
            continue
        options += action.option_strings
        if action.nargs == 0:
            continue
        takes += action.option_strings
        for option in action.option_strings:
            key = f"{path} {option}"
            if action.choices is not None:
                tables["choices"][key] = " ".join(str(c) for c in action.choices)
            elif action.dest == "dir" or action.dest.endswith("_dir"):
                tables["dirs"][key] = "1"
    tables["children"][path] = " ".join(children)
    tables["options"][path] = " ".join(options)
    tables["takes"][path] = " ".join(takes)
    return tables


_FUNCTION = r'''
_{name}_complete() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="" path="@" i w
    (( COMP_CWORD > 1 )) && prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    for ((i = 1; i < COMP_CWORD; i++)); do
        w="${{COMP_WORDS[i]}}"
        if [[ " ${{_{name}_takes[$path]}} " == *" $w "* ]]; then
            ((i++))  # the option's value
        elif [[ " ${{_{name}_children[$path]}} " == *" $w "* ]]; then
            path="$path $w"
        fi
    done
    if [[ -n "$prev" && " ${{_{name}_takes[$path]}} " == *" $prev "* ]]; then
        if [[ -n "${{_{name}_choices[$path $prev]+x}}" ]]; then
            COMPREPLY=($(compgen -W "${{_{name}_choices[$path $prev]}}" -- "$cur"))
        elif [[ -n "${{_{name}_dirs[$path $prev]+x}}" ]]; then
            COMPREPLY=($(compgen -d -- "$cur"))
        else
            COMPREPLY=($(compgen -f -- "$cur"))
        fi
    elif [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "${{_{name}_options[$path]}}" -- "$cur"))
    elif [[ -n "${{_{name}_children[$path]}}" ]]; then
        COMPREPLY=($(compgen -W "${{_{name}_children[$path]}}" -- "$cur"))
    else
        COMPREPLY=($(compgen -f -- "$cur"))
    fi
}}
complete -F _{name}_complete {prog}
'''


def bash_script(parser: argparse.ArgumentParser, prog: str) -> str:
    """A bash script completing ``prog``'s command line as ``parser`` parses it."""
    name = "".join(c if c.isalnum() else "_" for c in prog)
    tables: dict[str, dict[str, str]] = {"children": {}, "options": {}, "takes": {}, "choices": {}, "dirs": {}}
    for path, child in _walk(parser, "@"):
        for table, entries in _entries(child, path).items():
            tables[table].update(entries)
    lines = [f"# bash completion for {prog}, made by '{prog} completion bash'"]
    for table, entries in tables.items():
        body = " ".join(f"[{shlex.quote(key)}]={shlex.quote(value)}" for key, value in sorted(entries.items()))
        lines.append(f"declare -gA _{name}_{table}=({body})")
    return "\n".join(lines) + _FUNCTION.format(name=name, prog=shlex.quote(prog))


def add_command(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                parser: argparse.ArgumentParser, prog: str) -> None:
    """Add ``completion SHELL`` to ``sub``: it prints the script for ``parser`` (which holds ``sub``)."""
    command = sub.add_parser("completion", help="print a shell completion script",
                             description=f'Print a completion script; in ~/.bashrc: eval "$({prog} completion bash)"')
    command.add_argument("shell", choices=SHELLS)

    def run(args: argparse.Namespace) -> int:
        print(bash_script(parser, prog))
        return 0

    command.set_defaults(run=run)
