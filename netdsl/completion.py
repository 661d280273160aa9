"""`netc completion bash|zsh|fish`: shell completion scripts made from netc's own parser.

Commands complete after `netc`, each command's flags after it (with the choices of a
flag that has them), and file names everywhere else: the scripts are generated from
the argparse parser, so a new flag completes without anyone editing them.
"""
from __future__ import annotations

import argparse

__all__ = ["completion_script", "SHELLS"]

SHELLS = ("bash", "zsh", "fish")


def _commands(parser: argparse.ArgumentParser) -> dict[str, tuple[str, argparse.ArgumentParser]]:
    """Command name -> (its one-line help, its parser)."""
    for action in parser._actions:  # argparse keeps its subcommands only here
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            return {name: (helps.get(name, ""), sub) for name, sub in action.choices.items()}
    return {}


def _flags(parser: argparse.ArgumentParser):
    """(option strings, help, choices or None, takes a value) of each flag."""
    for action in parser._actions:
        if action.option_strings:
            takes = action.nargs != 0
            yield (action.option_strings, action.help or "", action.choices, takes)


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    return {"bash": _bash, "zsh": _zsh, "fish": _fish}[shell](parser)


def _bash(parser) -> str:
    commands = _commands(parser)
    cases = []
    for name, (_, sub) in commands.items():
        flags = " ".join(o for options, _, _, _ in _flags(sub) for o in options)
        choices = "".join(
            f"            {'|'.join(options)}) COMPREPLY=($(compgen -W "
            f"\"{' '.join(map(str, chosen))}\" -- \"$cur\")); return;;\n"
            for options, _, chosen, _ in _flags(sub) if chosen)
        cases.append(f"        {name})\n          case \"$prev\" in\n{choices}"
                     f"          esac\n          words=\"{flags}\";;\n")
    return f"""# netc completion for bash: eval "$(netc completion bash)" in ~/.bashrc
_netc() {{
    local cur prev words command
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    if [ "$COMP_CWORD" -eq 1 ]; then
        COMPREPLY=($(compgen -W "{' '.join(commands)} --help --version" -- "$cur"))
        return
    fi
    command="${{COMP_WORDS[1]}}"
    case "$command" in
{''.join(cases)}        *) words="";;
    esac
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$words" -- "$cur"))
    else
        COMPREPLY=($(compgen -f -- "$cur"))
    fi
}}
complete -o filenames -o bashdefault -F _netc netc
"""


def _quote(text: str) -> str:
    """Help text inside single quotes, for zsh and fish."""
    return text.replace("'", "'\\''").replace("[", "(").replace("]", ")").replace(":", " -")


def _zsh(parser) -> str:
    commands = _commands(parser)
    listed = "\n".join(f"        '{name}:{_quote(help_)}'" for name, (help_, _) in commands.items())
    cases = []
    for name, (_, sub) in commands.items():
        specs = []
        for options, help_, chosen, takes in _flags(sub):
            value = (f":value:({' '.join(map(str, chosen))})" if chosen
                     else ":value:_files" if takes else "")
            for option in options:
                specs.append(f"'{option}[{_quote(help_)}]{value}'")
        specs.append("'*:file:_files'")
        cases.append(f"        {name}) _arguments {' '.join(specs)};;")
    body = "\n".join(cases)
    return f"""#compdef netc
# netc completion for zsh: netc completion zsh > "${{fpath[1]}}/_netc" (or eval it)
_netc() {{
    local -a commands
    commands=(
{listed}
    )
    if (( CURRENT == 2 )); then
        _describe 'command' commands
        return
    fi
    local command=$words[2]
    shift words
    (( CURRENT-- ))
    case $command in
{body}
    esac
}}
compdef _netc netc
"""


def _fish(parser) -> str:
    commands = _commands(parser)
    lines = ["# netc completion for fish: netc completion fish > "
             "~/.config/fish/completions/netc.fish",
             "complete -c netc -f"]
    for name, (help_, _) in commands.items():
        lines.append(f"complete -c netc -n __fish_use_subcommand -a {name} "
                     f"-d '{_quote(help_)}'")
    for name, (_, sub) in commands.items():
        lines.append(f"complete -c netc -n '__fish_seen_subcommand_from {name}' -F")
        for options, help_, chosen, takes in _flags(sub):
            names = " ".join(f"-l {o[2:]}" if o.startswith("--") else f"-s {o[1:]}"
                             for o in options)
            value = (f" -x -a '{' '.join(map(str, chosen))}'" if chosen
                     else " -r" if takes else "")
            lines.append(f"complete -c netc -n '__fish_seen_subcommand_from {name}' {names}"
                         f"{value} -d '{_quote(help_)}'")
    return "\n".join(lines) + "\n"
