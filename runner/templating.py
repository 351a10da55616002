"""Jinja in pipeline values, rendered in the sandbox; in a shell line, values reach the shell as variables.

A ``run`` string's ``{{ expression }}`` is never spliced into the script: its value goes into an environment
variable of that step (``RUNNER_EXPR_1``, ...) and the script holds a reference to it, so that whatever the
value holds, the shell sees it as data. Safety does not rest on reading the shell's grammar right: the small
lexer here only picks the reference that prints the value as written (quoted where the expression stands
unquoted, closing and reopening single quotes around it), and a gap in it can at worst print the wrong thing.
What does read a variable's value again as code (arithmetic, ``eval``, ``sh -c``, ...) is refused by
validation wherever a run string holds an expression, from the one table ``REPARSERS``. Argument lists are
rendered element by element and never reach a shell, unless a program in them hands an argument to one.
"""

from __future__ import annotations

import difflib
import posixpath
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jinja2 import (
    StrictUndefined,
    TemplateError,
    TemplateSyntaxError,
    Undefined,
    meta,
    nodes,
)
from jinja2.sandbox import ImmutableSandboxedEnvironment


class RenderError(Exception):
    pass


def _plain(value: Any) -> str:
    return "" if value is None else str(value)


# Immutable: a template may read the event, never change it for the steps that follow.
_plain_env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False, finalize=_plain)


def syntax_problem(source: str) -> str | None:
    """Why ``source`` is not a valid template, or None."""
    try:
        _plain_env.parse(source)
    except TemplateError as exc:
        return f"template syntax error: {exc.message}"
    return None


# The names a pipeline's templates may use: RunContext.template_context's keys (the pipeline's own values are
# reached through ``env``). A test holds the two together.
CONTEXT_NAMES = (
    "commit",
    "branch",
    "tag",
    "ref",
    "repository",
    "delivery",
    "event",
    "event_name",
    "run_id",
    "pipeline",
    "workdir",
    "previous_commit",
    "changed_files",
    "env",
)


@dataclass(frozen=True)
class NameProblem:
    message: str
    line: int  # of the template, from 0
    column: int  # of the {{ or {% that holds the name, from 0


def _suggestion(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _used_names(source: str) -> Iterator[tuple[str, str, int, int]]:
    """Each name a template's tags use: (kind, name, line, column of its tag), kind one of variable, filter,
    test; a name after a dot is an attribute, and is not one."""
    line, column = 0, 0
    start = (0, 0)
    previous: list[str] = []  # the last two tokens that are not whitespace
    for _, type_, value in _plain_env.lex(source):
        if type_ in ("variable_begin", "block_begin"):
            start = (line, column)
        elif type_ == "name" and previous[-1:] != ["."]:
            if previous[-1:] == ["|"]:
                yield "filter", value, *start
            elif previous[-1:] == ["is"] or previous[-2:] == ["is", "not"]:
                yield "test", value, *start
            else:
                yield "variable", value, *start
        if type_ not in ("whitespace", "data"):
            previous = [*previous[-1:], value]
        newlines = value.count("\n")
        line += newlines
        column = len(value) - value.rfind("\n") - 1 if newlines else column + len(value)


def name_problems(source: str, extra: Sequence[str] = ()) -> list[NameProblem]:
    """Names, filters and tests a template uses that do not exist when it renders, each where its tag starts;
    ``extra`` are names the template may also use. A template with a syntax error gives none."""
    if "{" not in source:
        return []
    try:
        tree = _plain_env.parse(source)
    except TemplateError:
        return []
    known = (*CONTEXT_NAMES, *extra, *_plain_env.globals)
    try:
        undeclared = meta.find_undeclared_variables(tree)
    except TemplateError:  # an unknown filter or test stops Jinja's analysis: a cruder one, without it
        names = list(tree.find_all(nodes.Name))
        undeclared = {n.name for n in names if n.ctx == "load"} - {n.name for n in names if n.ctx != "load"}
    unknown = {"variable": undeclared - set(known)}
    unknown["filter"] = {node.name for node in tree.find_all(nodes.Filter)} - set(_plain_env.filters)
    unknown["test"] = {node.name for node in tree.find_all(nodes.Test)} - set(_plain_env.tests)
    choices = {"variable": known, "filter": sorted(_plain_env.filters), "test": sorted(_plain_env.tests)}
    problems, said = [], set()
    for kind, name, line, column in _used_names(source):
        if name in unknown[kind] and (kind, name) not in said:
            said.add((kind, name))
            what = "name" if kind == "variable" else kind
            hint = _suggestion(name, choices[kind])
            if not hint and kind == "variable":
                hint = f"; a template may use {', '.join(CONTEXT_NAMES)}"
            problems.append(NameProblem(f"unknown {what} '{name}'{hint}", line, column))
    return problems


# The rule, as the validator's messages and the README say it.
RULE = (
    "in a run string, a {{ }} value reaches the shell only as an environment variable, never as script text; "
    "so a run string with an expression may not use what reads a variable's value again as code"
)
INSTEAD = (
    "instead, check the value in a step of its own first (e.g. [[ $RUNNER_BRANCH =~ ^[a-z0-9-]+$ ]]) and use "
    "the $RUNNER_* variable where you accept the risk, or pass the value as an argument to a script in the "
    "repository"
)

# Variables that a shell or a program it starts reads as code, or as where code, options or settings come
# from.
# Names match exactly, and without regard to case where the program reads them so (npm, yarn, pnpm).
CODE_VARIABLES: tuple[tuple[str, str], ...] = (
    (r"BASH_ENV|ENV", "bash and sh run the file it names"),
    (r"PS[0-4]|PROMPT_COMMAND", "bash expands it as a prompt, running $( ) in it"),
    (r"SHELLOPTS|BASHOPTS", "it sets options of every bash started"),
    (r"BASH_FUNC_[^\s=]*", "bash reads it as a function definition"),
    (r"IFS", "it changes how bash splits words"),
    (r"PATH|LD_\w*|GCONV_PATH", "it chooses the programs and libraries that run"),
    (
        r"HOME|XDG_\w*|SHELL|TERMINFO|OPENSSL_CONF",
        "programs read their configuration (~/.gitconfig, ~/.npmrc, ...) from where it points, or run it",
    ),
    (
        r"GIT_\w*|SSH_ASKPASS|SUDO_ASKPASS|PAGER|EDITOR|VISUAL|LESS\w*|MANPAGER|MANOPT|BROWSER|RSYNC_RSH",
        "git, ssh, sudo, less or man run it as a command, or read settings that are commands",
    ),
    (
        r"TAR_OPTIONS|MAKE\w*|MFLAGS|GNUMAKEFLAGS|ZIPOPT|UNZIP|GZIP|BZIP2|XZ_OPT|ZSTD_\w*",
        "tar, make, zip and the compressors read it as options, some of which run commands",
    ),
    (
        r"CC|CXX|CPP|LD|CFLAGS|CXXFLAGS|CPPFLAGS|LDFLAGS|LDLIBS|RUSTFLAGS|CARGO_\w*|GOFLAGS|JAVA_OPTS",
        "build tools run it as a compiler command, or pass it to one as options",
    ),
    (
        r"NODE_OPTIONS|NODE_PATH|NODE_REPL_EXTERNAL_MODULE|PYTHON\w*|PIP_\w*|PERL\w*|RUBYOPT|RUBYLIB"
        r"|JAVA_TOOL_OPTIONS|_JAVA_OPTIONS|(?i:npm_config_\w*|yarn_\w*|pnpm_\w*)",
        "an interpreter or package manager reads it as options, code to load or settings that run scripts",
    ),
)
_CODE_VARIABLE = re.compile("|".join(f"(?:{names})" for names, _ in CODE_VARIABLES))


def code_variable(name: str) -> str | None:
    """Why a variable named ``name`` is read as code, so that no event may set it; or None."""
    for names, why in CODE_VARIABLES:
        if re.fullmatch(names, name):
            return why
    return None


# What stands in for an expression while the lexer reads the script: a character that is part of a word.
_HOLE = "\x01"

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


def _interpreter(names: str, code_options: str) -> str:
    """Where a run string hands an interpreter code: after a code option, or on standard input."""
    return _word(names) + rf"(?:{_SAME_LINE}{code_options}|{_STDIN})"


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


def _is_long(item: str, options: tuple[str, ...], exact: tuple[str, ...] = ()) -> bool:
    """Whether an argument list's item is one of ``options``, or a prefix of one, with or without ``=``."""
    name = item.split("=", 1)[0]
    return (
        name.startswith("--")
        and len(name) > 2
        and name not in exact
        and any(o.startswith(name) for o in options)
    )


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


def _always(argv: Sequence[str], k: int, j: int) -> bool:
    return True


def _code_options(
    letters: str, long: tuple[str, ...] = (), takes: str = "", takes_long: tuple[str, ...] = ()
) -> Callable[[Sequence[str], int, int], bool]:
    """The program at k reads item j as code: a code option stands anywhere before j, or j is the script (only
    options before it; ``takes`` and ``takes_long`` are the options whose argument is the next item)."""

    def reads(argv: Sequence[str], k: int, j: int) -> bool:
        for item in argv[k + 1 : j]:
            if item.startswith("--"):
                if _is_long(item, long):
                    return True
            elif item[:1] in "-+" and any(letter in letters for letter in item[1:]):
                return True
        skip = False
        for item in argv[k + 1 : j]:
            if skip:
                skip = False
            elif item == "--":
                continue
            elif item.startswith("--"):
                skip = "=" not in item and _is_long(item, takes_long)
            elif item[:1] in "-+" and len(item) > 1:
                skip = item[-1] in takes
            else:
                return False  # the script, whose arguments are data
        return True  # item j is the script, or an option

    return reads


def _after(
    *options: str, exact: tuple[str, ...] = (), bundled: str = "", first: str = ""
) -> Callable[[Sequence[str], int, int], bool]:
    """The program at k reads item j as code when one of ``options`` (long ones also abbreviated), a short
    option bundle holding one of the ``bundled`` letters, or a first item holding one of the ``first`` letters
    (tar's options without a dash) stands after k, up to j."""
    long = tuple(option for option in options if option.startswith("--"))

    def reads(argv: Sequence[str], k: int, j: int) -> bool:
        for at, item in enumerate(argv[k + 1 : j + 1], k + 1):
            name = item.split("=", 1)[0]
            if name in options or _is_long(item, long, exact):
                return True
            if bundled and item[:1] == "-" and item[1:2] != "-" and any(c in bundled for c in item[1:]):
                return True
            if first and at == k + 1 and item[:1] != "-" and any(c in first for c in item):
                return True
        return False

    return reads


def _launcher(argv: Sequence[str], k: int, j: int) -> bool:
    """npx and the like run the package a later item names; pnpm, npm, yarn and bun do with dlx, exec or x."""
    if argv[k].rsplit("/", 1)[-1] in ("npx", "pnpx", "bunx", "uvx"):
        return True
    return any(item in ("dlx", "exec", "x") for item in argv[k + 1 : j])


def _wrapped(argv: Sequence[str], k: int, j: int) -> bool:
    """The wrapper at k runs item j as the program: only options, numbers and assignments before j."""
    return not re.match(r"\w+=", argv[j]) and all(re.match(r"[-+\d]|\w+=", item) for item in argv[k + 1 : j])


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
_git_after = _after(*_GIT_WORDS, *_GIT_LONG, exact=_GIT_EXACT)


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
    rf"(?!{_HOLE}(?:[\s;&|()<>]|$))"
    rf"[^\s;&|()<>$`{_HOLE}{{]*[$`{_HOLE}{{]"
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
    Reparser("eval", "it runs its arguments as a command line", _word("eval"), ("eval",), _always),
    Reparser(
        "a command named by an expansion ($X, ${X}, $(...), `...`, {{ }} or {a,b} as the command)",
        "the shell runs whatever the value makes of it: eval, a shell, any program",
        _COMMAND_NAMED,
        _WRAPPERS,
        _wrapped,
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
        _code_options("cs", ("--rcfile", "--init-file"), takes="oO", takes_long=("--rcfile", "--init-file")),
    ),
    Reparser(
        "python -c or python reading standard input",
        "it runs that text as Python code",
        _interpreter(r"python[\d.]*", r"-\w*c"),
        ("python",),
        _code_options("c", takes="WX"),
    ),
    Reparser(
        "perl -e, ruby -e, or either reading standard input",
        "it runs that text as code (and perl -M, ruby -r load code named by it)",
        _interpreter("perl|ruby", r"-\w*[eEMr]"),
        ("perl", "ruby"),
        _code_options("eEMr"),
    ),
    Reparser(
        "node -e, node -p or node reading standard input",
        "it runs that text as JavaScript",
        _interpreter("node|nodejs", r"(?:-\w*[ep]|--eval|--print)(?!\S)"),
        ("node", "nodejs"),
        _code_options(
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
        _code_options("rBRE", takes="dcf"),
    ),
    Reparser(
        "awk or sed",
        "their programs run commands (awk's system(), sed's e and w)",
        _word("awk|gawk|mawk|nawk|sed|gsed"),
        ("awk", "gawk", "mawk", "nawk", "sed", "gsed"),
        _always,
    ),
    Reparser(
        "ssh, scp, sftp or rsync",
        "the remote side runs its command (and paths) through a shell",
        _word("ssh|scp|sftp|rsync"),
        ("ssh", "scp", "sftp", "rsync"),
        _always,
    ),
    Reparser(
        "su, runuser, sudo or doas",
        "su -c, runuser -c and sudo -s run a command line through a shell",
        _word("su|runuser|sudo|doas"),
        ("su", "runuser", "sudo", "doas"),
        _always,
    ),
    Reparser(
        "xargs, watch, parallel, flock or script",
        "they split their input into a command, or run a command line through a shell",
        _word("xargs|watch|parallel|flock|script"),
        ("xargs", "watch", "parallel", "flock", "script"),
        _always,
    ),
    Reparser(
        "npx, pnpx, bunx, uvx, pnpm dlx, pnpm exec, npm exec or yarn dlx",
        "they fetch or run the program a value names",
        rf"{_word('npx|pnpx|bunx|uvx')}|{_word('pnpm|npm|yarn|bun')}{_SAME_LINE}(?:dlx|exec|x)(?!\S)",
        ("npx", "pnpx", "bunx", "uvx", "pnpm", "npm", "yarn", "bun"),
        _launcher,
    ),
    Reparser(
        "env -S",
        "it splits a string into a command",
        _word("env") + _SAME_LINE + r"(?:-\w*S|--split-string)",
        ("env",),
        _after("-S", "--split-string"),
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
        _always,
    ),
    Reparser(
        "tar --to-command, --use-compress-program (-I), --info-script (-F) or another option that runs one",
        "tar runs these options' values as commands",
        rf"{_word('tar|gtar|bsdtar')}(?:{_SAME_LINE}(?:{_long(*_TAR_LONG, exact=('--checkpoint',))}"
        r"|-[A-Za-z]*[IF])|[ \t]+[A-Za-z]*[IF])",
        ("tar", "gtar", "bsdtar"),
        _after(*_TAR_LONG, exact=("--checkpoint",), bundled="IF", first="IF"),
    ),
    Reparser(
        "vim, vi, ex or nvim",
        "their commands (-c, +cmd, -S, a script on standard input) run shell commands with :!",
        _word(_VIMS),
        tuple(_VIMS.split("|")),
        _always,
    ),
    Reparser(
        "find -exec, -execdir, -ok or -okdir",
        "find runs the command that follows them",
        _word("find") + _SAME_LINE + r"-(?:exec|execdir|ok|okdir)(?!\S)",
        ("find",),
        _after("-exec", "-execdir", "-ok", "-okdir"),
    ),
    Reparser(
        "zip -TT or --unzip-command",
        "zip runs its value as a command",
        rf"{_word('zip')}{_SAME_LINE}(?:-\w*TT|{_long('--unzip-command')})",
        ("zip",),
        _after("-TT", "--unzip-command"),
    ),
    Reparser(
        "an assignment to a variable read as code (BASH_ENV, PS4, PATH, GIT_SSH_COMMAND, ...)",
        "the shell or a program reads its value as code",
        rf"(?<![\w$])(?:{_CODE_VARIABLE.pattern})\+?=",
    ),
)
_SCRIPT_PATTERNS = [(reparser, re.compile(reparser.script, re.MULTILINE)) for reparser in REPARSERS]
_BY_PROGRAM: dict[str, list[Reparser]] = {}
for _reparser in REPARSERS:
    for _program in _reparser.programs:
        _BY_PROGRAM.setdefault(_program, []).append(_reparser)
_NAMED = next(reparser for reparser in REPARSERS if reparser.commands)


# Reading a run string ------------------------------------------------------------------------------------

PREFIX = "RUNNER_EXPR_"
# How a reference to the variable is written where the expression stands. Where the shell would not expand
# it, validation refuses the expression and the reference is left inert.
_REFERENCES = {
    "word": '"${{{}}}"',
    "double quotes": "${{{}}}",
    "single quotes": "'\"${{{}}}\"'",
    "a here-document": "${{{}}}",
    "a comment": "${{{}}}",
    "arithmetic": "${{{}}}",
    "a quoted here-document": "${{{}}}",
    "$'...'": "${{{}}}",
    "a backslash's reach": "${{{}}}",
}
# Where the shell expands nothing: a variable's value would not appear.
_INERT = {
    "a quoted here-document": "the shell expands nothing in a here-document whose delimiter is quoted "
    "(<<'EOF'): write <<EOF",
    "$'...'": "the shell expands nothing inside $'...': close it before the expression",
    "a backslash's reach": "the backslash keeps the shell from expanding it: remove the backslash",
}


@dataclass(frozen=True)
class ShellScript:
    """A run string rendered: the script, and the variables its references need, for that step only."""

    text: str
    env: dict[str, str]


class _BlockInShell(RenderError):
    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.line = line


def _parts(source: str) -> list[tuple[str | nodes.Expr, int]]:
    """The run string as text and expressions, each with its line (from 1); ``{% %}`` blocks are refused."""
    parts: list[tuple[str | nodes.Expr, int]] = []
    for node in _plain_env.parse(source).body:
        if not isinstance(node, nodes.Output):
            # A block could print values, or decide on one: it has no place in a shell line.
            raise _BlockInShell(
                "{% ... %} in a run string: only {{ expression }} may stand in one; decide with when: if: "
                "or in the shell, on a variable",
                node.lineno,
            )
        for child in node.nodes:
            parts.append((child.data if isinstance(child, nodes.TemplateData) else child, child.lineno))
    return parts


def _contexts(text: str, holes: list[int], view: list[str] | None = None) -> list[str]:
    """Where in bash's grammar each hole of ``text`` stands: a best-effort reading, enough to quote well.

    ``view``, the script's characters, becomes its syntax: what is quoted or escaped turns into ``_`` (one
    word still, with no operator or expansion in it), comments and here-document bodies into spaces."""
    at: dict[int, str] = {}

    def literal(index: int, filler: str = "_") -> None:
        if view is not None and index < n:
            view[index] = filler

    wanted = set(holes)
    stack: list[str] = []  # open: ' " $' ` $( ( (( ${
    heredocs: list[tuple[str, bool, bool]] = []  # delimiter, <<-, quoted: bodies start after this line
    i, n = 0, len(text)

    def where() -> str:
        for context in reversed(stack):
            if context != "${":
                return {"'": "single quotes", '"': "double quotes", "$'": "$'...'", "((": "arithmetic"}.get(
                    context, "word"
                )
        return "word"

    while i < n:
        char = text[i]
        top = stack[-1] if stack else None
        if i in wanted:
            at[i] = where()
        elif top == "'":
            if char == "'":
                stack.pop()
            else:
                literal(i)
        elif top == "$'":
            if char == "\\":
                if i + 1 in wanted:
                    at[i + 1] = "$'...'"
                literal(i)
                literal(i + 1)
                i += 1
            elif char == "'":
                stack.pop()
            else:
                literal(i)
        elif char == "\\":
            if i + 1 in wanted:
                at[i + 1] = "a backslash's reach"
            elif i + 1 < n and text[i + 1] == "\n":
                literal(i, " ")  # a line continued: no new command starts
                literal(i + 1, " ")
            elif i + 1 < n and not text[i + 1].isalnum():
                literal(i + 1)  # kept as a letter (\eval is eval), an operator or $ as a literal
            i += 1
        elif char == "\n" and heredocs:
            i = _heredoc_bodies(text, i + 1, heredocs, wanted, at, view)
            heredocs = []
            continue
        elif char == '"':
            if top == '"':
                stack.pop()
            else:
                stack.append('"')
        elif char == "`":
            if top == "`":
                stack.pop()
                literal(i, " ")  # a closing backtick ends a word and starts no command
            else:
                stack.append("`")
        elif char == "$" and text.startswith("$((", i):
            stack.append("((")
            i += 2
        elif char == "$" and text.startswith("${", i):
            stack.append("${")
            i += 1
        elif char == "$" and text.startswith("$(", i):
            stack.append("$(")
            i += 1
        elif char == "$" and text.startswith("$'", i) and top != '"':
            stack.append("$'")
            i += 1
        elif top == '"':
            if char.isspace() or char in ";&|(){}<>":  # inside double quotes only $, ` and \ mean something
                literal(i)
        elif char == "'":
            stack.append("'")
        elif char == "}" and top == "${":
            stack.pop()
        elif text.startswith("((", i):
            stack.append("((")
            i += 1
        elif text.startswith("))", i) and top == "((":
            stack.pop()
            i += 1
        elif char == "(":
            stack.append("(")
        elif char == ")" and top in ("$(", "("):
            stack.pop()
        elif char == ")":
            literal(i, ";")  # no ( to close: a case pattern's end, where a command starts
        elif char == "#" and (i == 0 or text[i - 1] in " \t\n;&|()<>"):
            end = text.find("\n", i)
            end = n if end < 0 else end
            for hole in range(i, end):
                if hole in wanted:
                    at[hole] = "a comment"
                literal(hole, " ")
            i = end
            continue
        elif text.startswith("<<<", i):
            i += 2
        elif text.startswith("<<", i):
            i += 2
            strip = text.startswith("-", i)
            i += strip
            while i < n and text[i] in " \t":
                i += 1
            end = i
            while end < n and text[end] not in " \t\n;&|<>()":
                end += 1
            word = text[i:end]
            delimiter = "".join(c for c in word if c not in "'\"\\")
            heredocs.append((delimiter, strip, delimiter != word))
            continue  # the delimiter's own quotes are read as quotes
        i += 1
    return [at.get(hole, "word") for hole in holes]


def _heredoc_bodies(
    text: str,
    i: int,
    heredocs: list[tuple[str, bool, bool]],
    wanted: set[int],
    at: dict[int, str],
    view: list[str] | None = None,
) -> int:
    """Read the bodies of the here-documents opened on the line before ``i``; returns where the rest is."""
    n = len(text)
    for delimiter, strip, quoted in heredocs:
        while i < n:
            end = text.find("\n", i)
            end = n if end < 0 else end
            line = text[i:end]
            if view is not None:
                view[i:end] = " " * (end - i)
            if (line.lstrip("\t") if strip else line) == delimiter:
                i = end + 1
                break
            for hole in range(i, end):
                if hole in wanted:
                    escaped = not quoted and hole > 0 and text[hole - 1] == "\\"
                    at[hole] = (
                        "a quoted here-document"
                        if quoted
                        else "a backslash's reach"
                        if escaped
                        else "a here-document"
                    )
            i = end + 1
    return i


def _read(source: str) -> tuple[list[str | nodes.Expr], str, list[tuple[int, str]], Callable[[int], int]]:
    """The parts of a run string, the script with a hole per expression, each hole's offset and where it
    stands, and the line of ``source`` (from 0) that an offset in the script is on."""
    parts = _parts(source)
    text, holes, starts = "", [], []
    for part, line in parts:
        starts.append((len(text), line))
        if isinstance(part, str):
            text += part
        else:
            holes.append(len(text))
            text += _HOLE

    def line_of(offset: int) -> int:
        start, line = next((start, line) for start, line in reversed(starts) if start <= offset)
        return line - 1 + text.count("\n", start, offset)

    contexts = list(zip(holes, _contexts(text, holes), strict=True))
    return [part for part, _ in parts], text, contexts, line_of


def shell_template_problem(source: str) -> str | None:
    """Why ``source`` cannot be a run string, or None: its syntax, or what reads a value again as code."""
    found = shell_template_problem_at(source)
    return found[0] if found else None


def shell_template_problem_at(source: str) -> tuple[str, int] | None:
    """Why ``source`` cannot be a run string and on which of its lines (from 0), or None."""
    try:
        _plain_env.parse(source)
    except TemplateSyntaxError as exc:
        return f"template syntax error: {exc.message}", max(exc.lineno - 1, 0)
    try:
        _, text, contexts, line_of = _read(source)
    except _BlockInShell as exc:
        return str(exc), exc.line - 1
    if not contexts:
        return None  # nothing from outside reaches the script
    for hole, context in contexts:
        if context in _INERT:
            return f"{{{{ ... }}}} inside {context}: {_INERT[context]}", line_of(hole)
    syntax = list(text)
    _contexts(text, [], syntax)
    views = {False: [_as_written(text), _unquoted(text)], True: [_as_written("".join(syntax))]}
    for reparser, pattern in _SCRIPT_PATTERNS:
        for view, offsets in views[reparser.commands]:
            match = pattern.search(view)
            if match:
                message = (
                    f"{reparser.construct} ({reparser.why}) in a run string with {{{{ ... }}}}: "
                    f"{RULE}; {INSTEAD}"
                )
                start = match.start() + len(match.group()) - len(match.group().lstrip())
                return message, line_of(offsets[start])
    return None


def _as_written(text: str) -> tuple[str, list[int]]:
    return text, list(range(len(text) + 1))


def _unquoted(text: str) -> tuple[str, list[int]]:
    """``text`` without quotes and backslashes, as the shell reads a word respelled (``ev''al``, ``\\eval``);
    with the offset in ``text`` of each of its characters. Conservative: it can only find more."""
    kept = [i for i, char in enumerate(text) if char not in "\\'\""]
    return "".join(text[i] for i in kept), [*kept, len(text)]


def argv_template_problems(argv: Sequence[Any]) -> dict[int, str]:
    """Items of an argument list whose expression a program earlier in the list would read as code."""
    items = [str(item) for item in argv]
    problems: dict[int, str] = {}
    for j, item in enumerate(items):
        if "{" not in item or not has_expression(item):
            continue
        if j == 0:
            problems[j] = (
                f"{{{{ ... }}}} in the program of an argument list ({_NAMED.construct}: {_NAMED.why}): "
                f"{INSTEAD}"
            )
            continue
        for k in range(j):
            program = re.sub(r"[\d.]+$", "", posixpath.basename(items[k])) or items[k]
            reparser = next(
                (r for r in _BY_PROGRAM.get(program, []) if r.argv is not None and r.argv(items, k, j)), None
            )
            if reparser is not None:
                problems[j] = (
                    f"{{{{ ... }}}} in an argument that {items[k]} reads as code ({reparser.construct}: "
                    f"{reparser.why}): {INSTEAD}"
                )
                break
    return problems


def has_expression(source: str) -> bool:
    """Whether a template prints a value: an expression, not only text or comments."""
    try:
        return any(
            not isinstance(child, nodes.TemplateData)
            for node in _plain_env.parse(source).body
            for child in (node.nodes if isinstance(node, nodes.Output) else [node])
        )
    except TemplateError:
        return False  # a syntax error, said on its own


def _value(expression: nodes.Expr, context: Mapping[str, Any]) -> str:
    template = nodes.Template([nodes.Output([expression])])
    template.set_environment(_plain_env)
    return _plain_env.from_string(template).render(context)


def render_shell(source: str, context: Mapping[str, Any]) -> ShellScript:
    """Render a run string: each expression's value into a variable, the script a reference to it."""
    if "{" not in source:
        return ShellScript(source, {})
    try:
        parts, _, contexts, _ = _read(source)
        text, env = "", {}
        expressions = iter(contexts)
        for part in parts:
            if isinstance(part, str):
                text += part
                continue
            name = f"{PREFIX}{len(env) + 1}"
            env[name] = _value(part, context)
            if "\0" in env[name]:
                raise RenderError(f"the value of {name} holds a NUL character, which no variable can hold")
            text += _REFERENCES[next(expressions)[1]].format(name)
    except RenderError:
        raise
    except Exception as exc:
        raise RenderError(f"cannot render {source!r}: {type(exc).__name__}: {exc}") from None
    return ShellScript(text, env)


def _render(env: ImmutableSandboxedEnvironment, source: str, context: Mapping[str, Any]) -> str:
    if "{" not in source:
        return source
    try:
        return env.from_string(source).render(context)
    except Exception as exc:  # an expression's own error too (1/0, a bad format string): the step's, not ours
        raise RenderError(f"cannot render {source!r}: {type(exc).__name__}: {exc}") from None


def render(source: str, context: Mapping[str, Any]) -> str:
    """Render a value that is not a shell line: an argument, a path, an environment value."""
    return _render(_plain_env, source, context)


def evaluate(expression: str, context: Mapping[str, Any]) -> Any:
    """Evaluate a sandboxed expression, e.g. a step's ``when:`` condition."""
    try:
        value = _plain_env.compile_expression(expression, undefined_to_none=False)(**context)
        if isinstance(value, Undefined):
            str(value)  # what the sandbox refused (``x.__class__``) or what is missing: StrictUndefined says
        return value
    except Exception as exc:
        raise RenderError(f"cannot evaluate {expression!r}: {type(exc).__name__}: {exc}") from None
