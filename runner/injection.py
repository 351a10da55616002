"""Refusing a ``{{ }}`` that a shell or program would read again as code, in a run string or argument list.

What does read a variable's value again as code (arithmetic, ``eval``, ``sh -c``, ...) is refused by
validation wherever a run string holds an expression, from the one table ``REPARSERS``. Argument lists are
rendered element by element and never reach a shell, unless a program in them hands an argument to one.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Sequence
from typing import Any

from jinja2 import TemplateSyntaxError

from runner.reparsers import BY_PROGRAM, COMMAND_BY_EXPANSION, SCRIPT_PATTERNS
from runner.shell import INERT, BlockInShell, contexts_of, read_run_string
from runner.templating import has_expression, sandbox

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


def shell_template_problem_at(source: str) -> tuple[str, int] | None:
    """Why ``source`` cannot be a run string and on which of its lines (from 0), or None."""
    try:
        sandbox.parse(source)
    except TemplateSyntaxError as exc:
        return f"template syntax error: {exc.message}", max(exc.lineno - 1, 0)
    try:
        _, text, contexts, line_of = read_run_string(source)
    except BlockInShell as exc:
        return str(exc), exc.line - 1
    if not contexts:
        return None  # nothing from outside reaches the script
    for hole, context in contexts:
        if context in INERT:
            return f"{{{{ ... }}}} inside {context}: {INERT[context]}", line_of(hole)
    syntax = list(text)
    contexts_of(text, [], syntax)
    views = {False: [_as_written(text), _unquoted(text)], True: [_as_written("".join(syntax))]}
    for reparser, pattern in SCRIPT_PATTERNS:
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
            named = COMMAND_BY_EXPANSION
            problems[j] = (
                f"{{{{ ... }}}} in the program of an argument list ({named.construct}: {named.why}): "
                f"{INSTEAD}"
            )
            continue
        for k in range(j):
            program = re.sub(r"[\d.]+$", "", posixpath.basename(items[k])) or items[k]
            reparser = next(
                (r for r in BY_PROGRAM.get(program, []) if r.argv is not None and r.argv(items, k, j)), None
            )
            if reparser is not None:
                problems[j] = (
                    f"{{{{ ... }}}} in an argument that {items[k]} reads as code ({reparser.construct}: "
                    f"{reparser.why}): {INSTEAD}"
                )
                break
    return problems
