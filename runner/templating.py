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

import posixpath
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jinja2 import (
    StrictUndefined,
    TemplateError,
    TemplateSyntaxError,
    Undefined,
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

# Variables that a shell or a program it starts reads as code, or as where code comes from.
CODE_VARIABLES: tuple[tuple[str, str], ...] = (
    (r"BASH_ENV|ENV", "bash and sh run the file it names"),
    (r"PS[0-4]|PROMPT_COMMAND", "bash expands it as a prompt, running $( ) in it"),
    (r"SHELLOPTS|BASHOPTS", "it sets options of every bash started"),
    (r"BASH_FUNC_[^\s=]*", "bash reads it as a function definition"),
    (r"IFS", "it changes how bash splits words"),
    (r"PATH|LD_\w*|GCONV_PATH", "it chooses the programs and libraries that run"),
    (
        r"GIT_SSH_COMMAND|GIT_SSH|GIT_CONFIG\w*|GIT_EXEC_PATH|GIT_PAGER|GIT_EDITOR|GIT_ASKPASS|GIT_PROXY_COMMAND"
        r"|GIT_EXTERNAL_DIFF|SSH_ASKPASS|SUDO_ASKPASS|PAGER|EDITOR|VISUAL|LESSOPEN|LESSCLOSE",
        "git, ssh, sudo or less run it as a command",
    ),
    (
        r"NODE_OPTIONS|PYTHON\w*|PERL5OPT|PERL5LIB|PERLLIB|RUBYOPT|RUBYLIB|JAVA_TOOL_OPTIONS|_JAVA_OPTIONS"
        r"|NPM_CONFIG_\w*|npm_config_\w*",
        "an interpreter reads it as options or code to load",
    ),
)
_CODE_VARIABLE = re.compile("|".join(f"(?:{names})" for names, _ in CODE_VARIABLES))


def code_variable(name: str) -> str | None:
    """Why a variable named ``name`` is read as code, so that no event may set it; or None."""
    for names, why in CODE_VARIABLES:
        if re.fullmatch(names, name):
            return why
    return None


# What re-parses a variable's value: a run string holding an expression may use none of these, anywhere (also
# in comments and strings: a refusal too many is a clear message, one too few is code execution).


def _word(names: str) -> str:
    """``names`` as a whole shell word: ``eval``, ``$(eval`` match; ``evaluate``, ``--source-map`` do not."""
    return rf"(?<![^\s;&|()<>`'\"{{}}])(?:{names})(?![^\s;&|()<>`'\"])"


_SAME_LINE = r"[^\n;|&]*?(?<!\S)"
# An interpreter given no script file (only options, then the end of the command, ``-`` or a redirection)
# reads its program from standard input: a here-document or a pipe can hold the value.
_STDIN = r"(?:[ \t]+-\S*)*[ \t]*(?:$|[|;&<>)]|-(?=\s|$))"


def _interpreter(names: str, code_options: str) -> str:
    """Where a run string hands an interpreter code: after a code option, or on standard input."""
    return _word(names) + rf"(?:{_SAME_LINE}{code_options}|{_STDIN})"


_SHELLS = "sh|bash|dash|zsh|ksh|mksh|ash|busybox|fish|csh|tcsh"


@dataclass(frozen=True)
class Reparser:
    construct: str  # as a message names it
    why: str
    script: str  # where a run string uses it: a regular expression on the script
    programs: tuple[str, ...] = ()  # in an argument list: these programs (basename, no version) ...
    argv: Callable[[Sequence[str], int, int], bool] | None = None  # ... at item k read item j as code


def _always(argv: Sequence[str], k: int, j: int) -> bool:
    return True


def _code_options(letters: str, long: tuple[str, ...] = ()) -> Callable[[Sequence[str], int, int], bool]:
    """The program at k reads item j as code: j is the program's script, or follows a code option."""

    def reads(argv: Sequence[str], k: int, j: int) -> bool:
        for item in argv[k + 1 : j]:
            if item.startswith("--"):
                if item.split("=", 1)[0] in long:
                    return True
            elif item.startswith("-"):
                if any(letter in letters for letter in item[1:]):
                    return True
            else:
                return False  # the script, whose arguments are data
        return True  # item j is the script, or an option

    return reads


def _after(*options: str) -> Callable[[Sequence[str], int, int], bool]:
    def reads(argv: Sequence[str], k: int, j: int) -> bool:
        return any(item in options or item.split("=", 1)[0] in options for item in argv[k + 1 : j + 1])

    return reads


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
    Reparser("${name:offset:length}", _ARITHMETIC, r"\$\{[#!]?\w+(?:\[[^\]\n]*\])?:(?![-=?+])"),
    Reparser(
        "an assignment to RANDOM, SRANDOM, OPTIND, HISTCMD or another number bash keeps",
        _ARITHMETIC,
        r"(?<![\w$])(?:RANDOM|SRANDOM|OPTIND|OPTERR|HISTCMD|SECONDS|LINENO|HISTSIZE|HISTFILESIZE|FUNCNEST"
        r"|COLUMNS|LINES|TMOUT|BASH_ARGV0)\+?=",
    ),
    Reparser(
        "${name@...}", "@P expands the value as a prompt, running $( ) in it", r"\$\{!?\w+(?:\[[^\]\n]*\])?@"
    ),
    Reparser("printf -v", _NAMES, _word("printf") + _SAME_LINE + "-v"),
    Reparser(
        "read, mapfile, readarray, getopts or unset", _NAMES, _word("read|mapfile|readarray|getopts|unset")
    ),
    Reparser("eval", "it runs its arguments as a command line", _word("eval"), ("eval",), _always),
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
        "sh -c, sh -s, a shell reading standard input all run text as code",
        _word(_SHELLS) + r"(?![ \t]+[^\s\-<|;&)])",
        tuple(_SHELLS.split("|")),
        _code_options("cs"),
    ),
    Reparser(
        "python -c or python reading standard input",
        "it runs that text as Python code",
        _interpreter(r"python[\d.]*", r"-\w*c"),
        ("python",),
        _code_options("c"),
    ),
    Reparser(
        "perl -e, ruby -e, or either reading standard input",
        "it runs that text as code",
        _interpreter("perl|ruby", r"-\w*[eE]"),
        ("perl", "ruby"),
        _code_options("eE"),
    ),
    Reparser(
        "node -e, node -p or node reading standard input",
        "it runs that text as JavaScript",
        _interpreter("node|nodejs", r"(?:-\w*[ep]|--eval|--print)(?!\S)"),
        ("node", "nodejs"),
        _code_options("ep", ("--eval", "--print")),
    ),
    Reparser(
        "php -r or php reading standard input",
        "it runs that text as PHP",
        _interpreter("php", r"-\w*r"),
        ("php",),
        _code_options("r"),
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
        "env -S",
        "it splits a string into a command",
        _word("env") + _SAME_LINE + r"(?:-\w*S|--split-string)",
        ("env",),
        _after("-S", "--split-string"),
    ),
    Reparser(
        "git -c or git config",
        "settings such as core.sshCommand and core.pager are commands git runs",
        _word("git") + _SAME_LINE + r"(?:-c|--config-env|config)(?!\S)",
        ("git",),
        _after("-c", "--config-env", "config"),
    ),
    Reparser(
        "an assignment to a variable read as code (BASH_ENV, PS4, PATH, GIT_SSH_COMMAND, ...)",
        "the shell or a program reads its value as code",
        rf"(?<![\w$])(?:{_CODE_VARIABLE.pattern})\+?=",
    ),
)
_SCRIPT_PATTERNS = [(reparser, re.compile(reparser.script, re.MULTILINE)) for reparser in REPARSERS]
_BY_PROGRAM = {program: reparser for reparser in REPARSERS for program in reparser.programs}


# Reading a run string ------------------------------------------------------------------------------------

PREFIX = "RUNNER_EXPR_"
# What stands in for an expression while the lexer reads the script: a character that is part of a word.
_HOLE = "\x01"
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


def _contexts(text: str, holes: list[int]) -> list[str]:
    """Where in bash's grammar each hole of ``text`` stands: a best-effort reading, enough to quote well."""
    at: dict[int, str] = {}
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
        elif top == "$'":
            if char == "\\":
                if i + 1 in wanted:
                    at[i + 1] = "$'...'"
                i += 1
            elif char == "'":
                stack.pop()
        elif char == "\\":
            if i + 1 in wanted:
                at[i + 1] = "a backslash's reach"
            i += 1
        elif char == "\n" and heredocs:
            i = _heredoc_bodies(text, i + 1, heredocs, wanted, at)
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
            pass  # inside double quotes only $, ` and \ mean something
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
        elif char == "#" and (i == 0 or text[i - 1] in " \t\n;&|()<>"):
            end = text.find("\n", i)
            end = n if end < 0 else end
            for hole in range(i, end):
                if hole in wanted:
                    at[hole] = "a comment"
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
    text: str, i: int, heredocs: list[tuple[str, bool, bool]], wanted: set[int], at: dict[int, str]
) -> int:
    """Read the bodies of the here-documents opened on the line before ``i``; returns where the rest is."""
    n = len(text)
    for delimiter, strip, quoted in heredocs:
        while i < n:
            end = text.find("\n", i)
            end = n if end < 0 else end
            line = text[i:end]
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
    for reparser, pattern in _SCRIPT_PATTERNS:
        match = pattern.search(text)
        if match:
            message = (
                f"{reparser.construct} ({reparser.why}) in a run string with {{{{ ... }}}}: {RULE}; {INSTEAD}"
            )
            return message, line_of(match.start() + len(match.group()) - len(match.group().lstrip()))
    return None


def argv_template_problems(argv: Sequence[Any]) -> dict[int, str]:
    """Items of an argument list whose expression a program earlier in the list would read as code."""
    items = [str(item) for item in argv]
    problems: dict[int, str] = {}
    for j, item in enumerate(items):
        if "{" not in item or not has_expression(item):
            continue
        for k in range(j):
            program = re.sub(r"[\d.]+$", "", posixpath.basename(items[k])) or items[k]
            reparser = _BY_PROGRAM.get(program)
            if reparser is not None and reparser.argv is not None and reparser.argv(items, k, j):
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
