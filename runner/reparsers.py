"""What reads a variable's value again as code: REPARSERS, the one table that validation refuses from.

An entry finds its construct in a script with a regular expression, and in an argument list with a test from
runner/argv_readers.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from runner.argv_readers import after, always, code_options, launcher, wrapped
from runner.code_variables import CODE_VARIABLE
from runner.shell import HOLE

# What re-parses a variable's value: a run string holding an expression may use none of these, anywhere (also
# in comments and strings: a refusal too many is a clear message, one too few is code execution).


def _word(names: str) -> str:
    """``names`` as a whole shell word: ``eval``, ``$(eval`` match; ``evaluate``, ``--source-map`` do not."""
    return rf"(?<![^\s;&|()<>`'\"{{}}])(?:{names})(?![^\s;&|()<>`'\"])"


_SAME_LINE = r"[^\n;|&]*?(?<!\S)"
# A "script file" that is standard input or a descriptor (/dev/stdin, /dev/fd/3, /proc/self/fd/0): what is
# piped or redirected in is the program.
_STDIN_FILE = r"(?:/dev/|/proc/)"
# An interpreter given no script file (only options, then the end of the command, ``-`` or a redirection)
# reads its program from standard input: a here-document or a pipe can hold the value.
_STDIN = rf"(?:[ \t]+-\S*)*[ \t]*(?:$|[|;&<>)]|-(?=\s|$)|{_STDIN_FILE})"


def _interpreter(names: str, options: str) -> str:
    """Where a run string hands an interpreter code: after a code option (``options``), or on standard
    input."""
    return _word(names) + rf"(?:{_SAME_LINE}{options}|{_STDIN})"


_SHELLS = "sh|bash|dash|zsh|ksh|mksh|ash|busybox|fish|csh|tcsh"


def _long(*options: str, exact: tuple[str, ...] = ()) -> str:
    """Long options as GNU getopt, git and Getopt::Long take them: any prefix (``--to-com`` for
    ``--to-command``), alone or with ``=``; ``exact`` are prefixes that are options of their own."""
    alternatives = []
    for option in options:
        name, rest = option[2], ""
        for char in reversed(option[3:]):
            rest = f"(?:{re.escape(char)}{rest})?"
        alternatives.append("--" + re.escape(name) + rest)
    shorter = "".join(rf"(?!{re.escape(option)}(?![^\s=]))" for option in exact)
    return rf"{shorter}(?:{'|'.join(alternatives)})(?![^\s=])"


def _respelled(name: str) -> str:
    """``name`` also with quotes or backslashes in it (``ex''ec``, ``\\env``): the shell removes them."""
    quotes = r"[\\'\"]*"
    return quotes + quotes.join(re.escape(char) for char in name) + quotes


@dataclass(frozen=True)
class Reparser:
    construct: str  # as a message names it
    why: str
    script: str  # where a run string uses it: a regular expression on the script
    programs: tuple[str, ...] = ()  # in an argument list: these programs (basename, no version) ...
    argv: Callable[[Sequence[str], int, int], bool] | None = None  # ... at item k read item j as code
    # Matched on the script's syntax only (not inside quotes, comments or here-documents), as written; every
    # other pattern is matched everywhere, and also on a copy without quotes and backslashes (ev''al).
    commands: bool = False


# git: words (global options and subcommands), long options and, per subcommand, short options that run a
# command or make git run one (hooks from a template, another repository's settings, another exec path).
_GIT_WORDS = ("-c", "config", "foreach", "bisect", "filter-branch", "difftool", "mergetool", "hook")
_GIT_LONG = (
    "--config-env",
    "--upload-pack",
    "--receive-pack",
    "--exec",
    "--exec-path",
    "--extcmd",
    "--sendmail-cmd",
    "--to-cmd",
    "--cc-cmd",
    "--header-cmd",
    "--open-files-in-pager",
    "--template",
    "--git-dir",
)
_GIT_EXACT = ("--cc", "--to")  # options of their own (git log --cc), not short for --cc-cmd or --to-cmd
_GIT_SHORT = {"clone": "u", "ls-remote": "u", "rebase": "x", "difftool": "x", "grep": "O"}
_TAR_LONG = (
    "--to-command",
    "--checkpoint-action",
    "--use-compress-program",
    "--rsh-command",
    "--info-script",
    "--new-volume-script",
)
_VIMS = "vim|vi|ex|nvim|view|rvim|rview|gvim|evim|vimdiff"
_git_after = after(*_GIT_WORDS, *_GIT_LONG, exact=_GIT_EXACT)


def _git(argv: Sequence[str], k: int, j: int) -> bool:
    items = argv[k + 1 : j + 1]
    return _git_after(argv, k, j) or any(
        command in items and any(item[:1] == "-" and item[1:2] != "-" and letter in item for item in items)
        for command, letter in _GIT_SHORT.items()
    )


# A command named by an expansion: at a command's start (a line's, after ; & | ( { ` and reserved words, past
# assignments and the wrappers that run the command they are given), a word holding $, `, an expression or a
# brace expansion. Matched on the script's syntax, where quoted text is one word of _ and comments are gone.
_WRAPPERS = ("env", "nohup", "nice", "setsid", "stdbuf", "timeout", "ionice", "chrt", "taskset", "exec")
_ASSIGNMENT = r"[A-Za-z_]\w*(?:\[[^\]\n]*\])?\+?="
_PLAIN = r"[^\s;&|()<>]"
_STARTS = r"(?:^|[;`|]|(?<![<>])&|(?<!=)\(|(?<!\$)\{(?=\s))"
_RUNNERS = "|".join(_respelled(name) for name in ("command", "builtin", *_WRAPPERS))
_LEADING = (
    r"(?:!|if|then|do|else|elif|while|until|time|coproc)"  # reserved words, only ever unquoted
    # Possessive: an option or an assignment never is the command, and giving one back costs quadratic time.
    + rf"|(?:{_RUNNERS})(?:[ \t]+[-+\d]{_PLAIN}*+)*+"
    + rf"|{_ASSIGNMENT}{_PLAIN}*+"
)
_COMMAND_NAMED = (
    rf"{_STARTS}[ \t]*(?:(?:{_LEADING})[ \t]+)*(?!\{{\s)(?!{_ASSIGNMENT})"
    # An expression that is the whole command word ({{ x }} | tr ...) stays one word, a program's name and
    # never a command line: the form the README lists as plain. A part of a word, or an expansion, is not.
    rf"(?!{HOLE}(?:[\s;&|()<>]|$))"
    rf"[^\s;&|()<>$`{HOLE}{{]*[$`{HOLE}{{]"
)

_ARITHMETIC = "bash evaluates it as arithmetic, where an array subscript such as a[$(cmd)] runs cmd"
_NAMES = "it takes a variable name, and bash evaluates a subscript in it (a[$(cmd)] runs cmd)"

REPARSERS: tuple[Reparser, ...] = (
    Reparser("$(( )) or (( ))", _ARITHMETIC, r"\(\("),
    Reparser("$[ ]", _ARITHMETIC, r"\$\["),
    Reparser("let", _ARITHMETIC, _word("let")),
    Reparser(
        "declare, typeset or local",
        "it evaluates a[$(cmd)]=... in its arguments, and -i makes every assignment arithmetic",
        _word("declare|typeset|local"),
    ),
    Reparser(
        "export or readonly with -a, -A, -i or -n",
        "arrays, integers and name references evaluate subscripts",
        _word("export|readonly") + _SAME_LINE + r"[-+]\w*[aAin]",
    ),
    Reparser(
        "-eq, -ne, -lt, -le, -gt or -ge",
        "[[ ]] and test compare numbers as arithmetic",
        r"(?<!\S)-(?:eq|ne|lt|le|gt|ge)(?!\S)",
    ),
    Reparser(
        "-v or -R in [[ ]] or test",
        _NAMES,
        r"(?:\[\[|" + _word(r"\[|test") + ")" + _SAME_LINE + "-[vR](?!\\S)",
    ),
    Reparser("${!name}", "it reads the variable the value names", r"\$\{!"),
    Reparser("${name[...]}", _ARITHMETIC, r"\$\{#?\w+\[(?![@*]\])"),
    # Also a=([i]=v): a compound assignment's subscripts are arithmetic too.
    Reparser("name[...]= or ([...]=...)", _ARITHMETIC, r"\[[^\]\n]*\]\+?="),
    Reparser("${name:offset:length}", _ARITHMETIC, r"\$\{[#!]?(?:\w+|[@*])(?:\[[^\]\n]*\])?:(?![-=?+])"),
    Reparser(
        "an assignment to RANDOM, SRANDOM, OPTIND, HISTCMD or another number bash keeps",
        _ARITHMETIC,
        r"(?<![\w$])(?:RANDOM|SRANDOM|OPTIND|OPTERR|HISTCMD|SECONDS|LINENO|HISTSIZE|HISTFILESIZE|FUNCNEST"
        r"|COLUMNS|LINES|TMOUT|BASH_ARGV0)\+?=",
    ),
    Reparser(
        "${name@...}", "@P expands the value as a prompt, running $( ) in it", r"\$\{!?\w+(?:\[[^\]\n]*\])?@"
    ),
    Reparser(
        "printf -v or wait -p",
        _NAMES,
        rf"{_word('printf')}{_SAME_LINE}-v|{_word('wait')}{_SAME_LINE}-\w*p",
    ),
    Reparser(
        "read, mapfile, readarray, getopts or unset", _NAMES, _word("read|mapfile|readarray|getopts|unset")
    ),
    Reparser("eval", "it runs its arguments as a command line", _word("eval"), ("eval",), always),
    Reparser(
        "a command named by an expansion ($X, ${X}, $(...), `...`, {{ }} or {a,b} as the command)",
        "the shell runs whatever the value makes of it: eval, a shell, any program",
        _COMMAND_NAMED,
        _WRAPPERS,
        wrapped,
        commands=True,
    ),
    Reparser("source", "it runs a file as shell code", _word("source")),
    Reparser(
        ". (source)",
        "it runs a file as shell code",
        r"(?:^|[;&|({`!]|(?<!\S)(?:then|do|else|elif|if|while|until|command|builtin|exec|time))"
        r"[ \t]*\.(?=[ \t])",
    ),
    Reparser(
        "alias, trap, compgen, complete, bind or enable",
        "they keep a string that bash later runs as code, or load a library",
        _word("alias|trap|compgen|complete|bind|enable"),
    ),
    Reparser(
        "a shell (sh, bash, ...) not given a script file",
        "sh -c, sh -s, a shell reading standard input (also as /dev/stdin, /dev/fd/N) all run text as code",
        _word(_SHELLS) + rf"(?![ \t]+(?!{_STDIN_FILE})[^\s\-<|;&)])",
        tuple(_SHELLS.split("|")),
        code_options("cs", ("--rcfile", "--init-file"), takes="oO", takes_long=("--rcfile", "--init-file")),
    ),
    Reparser(
        "python -c or python reading standard input",
        "it runs that text as Python code",
        _interpreter(r"python[\d.]*", r"-\w*c"),
        ("python",),
        code_options("c", takes="WX"),
    ),
    Reparser(
        "perl -e, ruby -e, or either reading standard input",
        "it runs that text as code (and perl -M, ruby -r load code named by it)",
        _interpreter("perl|ruby", r"-\w*[eEMr]"),
        ("perl", "ruby"),
        code_options("eEMr"),
    ),
    Reparser(
        "node -e, node -p or node reading standard input",
        "it runs that text as JavaScript",
        _interpreter("node|nodejs", r"(?:-\w*[ep]|--eval|--print)(?!\S)"),
        ("node", "nodejs"),
        code_options(
            "ep",
            ("--eval", "--print"),
            takes="rC",
            takes_long=("--require", "--import", "--loader", "--experimental-loader", "--conditions"),
        ),
    ),
    Reparser(
        "php -r or php reading standard input",
        "it runs that text as PHP (-B, -R and -E too)",
        _interpreter("php", r"-\w*[rBRE]"),
        ("php",),
        code_options("rBRE", takes="dcf"),
    ),
    Reparser(
        "awk or sed",
        "their programs run commands (awk's system(), sed's e and w)",
        _word("awk|gawk|mawk|nawk|sed|gsed"),
        ("awk", "gawk", "mawk", "nawk", "sed", "gsed"),
        always,
    ),
    Reparser(
        "ssh, scp, sftp or rsync",
        "the remote side runs its command (and paths) through a shell",
        _word("ssh|scp|sftp|rsync"),
        ("ssh", "scp", "sftp", "rsync"),
        always,
    ),
    Reparser(
        "su, runuser, sudo or doas",
        "su -c, runuser -c and sudo -s run a command line through a shell",
        _word("su|runuser|sudo|doas"),
        ("su", "runuser", "sudo", "doas"),
        always,
    ),
    Reparser(
        "xargs, watch, parallel, flock or script",
        "they split their input into a command, or run a command line through a shell",
        _word("xargs|watch|parallel|flock|script"),
        ("xargs", "watch", "parallel", "flock", "script"),
        always,
    ),
    Reparser(
        "npx, pnpx, bunx, uvx, pnpm dlx, pnpm exec, npm exec or yarn dlx",
        "they fetch or run the program a value names",
        rf"{_word('npx|pnpx|bunx|uvx')}|{_word('pnpm|npm|yarn|bun')}{_SAME_LINE}(?:dlx|exec|x)(?!\S)",
        ("npx", "pnpx", "bunx", "uvx", "pnpm", "npm", "yarn", "bun"),
        launcher,
    ),
    Reparser(
        "env -S",
        "it splits a string into a command",
        _word("env") + _SAME_LINE + r"(?:-\w*S|--split-string)",
        ("env",),
        after("-S", "--split-string"),
    ),
    Reparser(
        "git -c or git config, or an option that runs a command (--upload-pack, --exec, --template, ...)",
        "settings such as core.sshCommand and core.pager, and these options' values, are commands git runs",
        rf"{_word('git')}{_SAME_LINE}(?:(?:{'|'.join(_GIT_WORDS)})(?!\S)"
        rf"|{_long(*_GIT_LONG, exact=_GIT_EXACT)}"
        rf"|(?:{'|'.join(_GIT_SHORT)})(?!\S){_SAME_LINE}-\w*[{''.join(sorted(set(_GIT_SHORT.values())))}])",
        ("git",),
        _git,
    ),
    Reparser(
        "make",
        "make expands $(shell ...) in the values of its variables, from its command line and environment",
        _word("make|gmake|bmake|remake"),
        ("make", "gmake", "bmake", "remake"),
        always,
    ),
    Reparser(
        "tar --to-command, --use-compress-program (-I), --info-script (-F) or another option that runs one",
        "tar runs these options' values as commands",
        rf"{_word('tar|gtar|bsdtar')}(?:{_SAME_LINE}(?:{_long(*_TAR_LONG, exact=('--checkpoint',))}"
        r"|-[A-Za-z]*[IF])|[ \t]+[A-Za-z]*[IF])",
        ("tar", "gtar", "bsdtar"),
        after(*_TAR_LONG, exact=("--checkpoint",), bundled="IF", first="IF"),
    ),
    Reparser(
        "vim, vi, ex or nvim",
        "their commands (-c, +cmd, -S, a script on standard input) run shell commands with :!",
        _word(_VIMS),
        tuple(_VIMS.split("|")),
        always,
    ),
    Reparser(
        "find -exec, -execdir, -ok or -okdir",
        "find runs the command that follows them",
        _word("find") + _SAME_LINE + r"-(?:exec|execdir|ok|okdir)(?!\S)",
        ("find",),
        after("-exec", "-execdir", "-ok", "-okdir"),
    ),
    Reparser(
        "zip -TT or --unzip-command",
        "zip runs its value as a command",
        rf"{_word('zip')}{_SAME_LINE}(?:-\w*TT|{_long('--unzip-command')})",
        ("zip",),
        after("-TT", "--unzip-command"),
    ),
    Reparser(
        "an assignment to a variable read as code (BASH_ENV, PS4, PATH, GIT_SSH_COMMAND, ...)",
        "the shell or a program reads its value as code",
        rf"(?<![\w$])(?:{CODE_VARIABLE.pattern})\+?=",
    ),
)
SCRIPT_PATTERNS = [(reparser, re.compile(reparser.script, re.MULTILINE)) for reparser in REPARSERS]
BY_PROGRAM: dict[str, list[Reparser]] = {}
for _reparser in REPARSERS:
    for _program in _reparser.programs:
        BY_PROGRAM.setdefault(_program, []).append(_reparser)
COMMAND_BY_EXPANSION = next(reparser for reparser in REPARSERS if reparser.commands)
