"""Jinja in pipeline values, rendered in the sandbox.

Values that come from an event (branch names, commit messages, ...) must never change the shape of a
command. In a ``run`` string every ``{{ expression }}`` is shell-quoted as it is rendered, and an expression
may not stand inside quotes or backticks, where a quoted value would be re-read by the shell. Argument lists
are rendered element by element and never reach a shell.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Any

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment


class RenderError(Exception):
    pass


def _shell_quote(value: Any) -> str:
    return shlex.quote("" if value is None else str(value))


def _plain(value: Any) -> str:
    return "" if value is None else str(value)


# Immutable: a template may read the event, never change it for the steps that follow.
_plain_env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False, finalize=_plain)
_shell_env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False, finalize=_shell_quote)


def syntax_problem(source: str) -> str | None:
    """Why ``source`` is not a valid template, or None."""
    try:
        _plain_env.parse(source)
    except TemplateError as exc:
        return f"template syntax error: {exc.message}"
    return None


def shell_template_problem(source: str) -> str | None:
    """Why ``source`` cannot be rendered safely into a shell line, or None."""
    problem = syntax_problem(source)
    if problem:
        return problem
    quote: str | None = None
    i = 0
    while i < len(source):
        char = source[i]
        if source.startswith("{{", i) and quote is not None:
            what = "backticks" if quote == "`" else f"{quote} quotes"
            return (
                f"{{{{ ... }}}} inside {what}: expressions are shell-quoted already; "
                "write them outside quotes, e.g. echo {{ branch }}"
            )
        if source.startswith("{%", i) or source.startswith("{#", i):
            # Control blocks produce no value; skip to their end so quotes inside them do not count.
            end = source.find("%}" if source[i + 1] == "%" else "#}", i + 2)
            i = len(source) if end < 0 else end + 2
            continue
        if char == "\\" and quote != "'":
            i += 2
            continue
        if quote is None and char in "'\"`":
            quote = char
        elif quote is not None and char == quote:
            quote = None
        i += 1
    return None


def _render(env: ImmutableSandboxedEnvironment, source: str, context: Mapping[str, Any]) -> str:
    if "{" not in source:
        return source
    try:
        return env.from_string(source).render(context)
    except TemplateError as exc:
        raise RenderError(f"cannot render {source!r}: {exc}") from None


def render(source: str, context: Mapping[str, Any]) -> str:
    """Render a value that is not a shell line: an argument, a path, an environment value."""
    return _render(_plain_env, source, context)


def render_shell(source: str, context: Mapping[str, Any]) -> str:
    """Render a shell line: every expression's value is shell-quoted."""
    problem = shell_template_problem(source)
    if problem:
        raise RenderError(problem)
    return _render(_shell_env, source, context)


def evaluate(expression: str, context: Mapping[str, Any]) -> Any:
    """Evaluate a sandboxed expression, e.g. a step's ``when:`` condition."""
    try:
        return _plain_env.compile_expression(expression, undefined_to_none=False)(**context)
    except TemplateError as exc:
        raise RenderError(f"cannot evaluate {expression!r}: {exc}") from None
