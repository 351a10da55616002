"""Jinja in pipeline values, rendered in the sandbox.

Values that come from an event (branch names, commit messages, ...) must never change the shape of a
command. In a ``run`` string every ``{{ expression }}`` is shell-quoted as it is rendered, and an expression
may not stand inside quotes or backticks, where a quoted value would be re-read by the shell. Argument lists
are rendered element by element and never reach a shell.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from jinja2 import FileSystemLoader, StrictUndefined, TemplateError, TemplateNotFound, TemplateSyntaxError
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


_CONTEXT_NAMES = {
    "'": "single quotes",
    '"': "double quotes",
    "`": "backticks",
    "((": "an arithmetic expression",
    "${": "a ${...} expansion",
}
_HEREDOC = re.compile(r"<<-?\s*(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\1")


def _heredoc_bodies(source: str) -> list[tuple[int, int]]:
    """Where the bodies of here-documents are: the shell expands them, and quotes there are plain text."""
    bodies = []
    lines = source.splitlines(keepends=True)
    offset, i = 0, 0
    while i < len(lines):
        line = lines[i]
        delimiters = [m.group(2) for m in _HEREDOC.finditer(line) if not line[m.start() :].startswith("<<<")]
        offset += len(line)
        i += 1
        for delimiter in delimiters:
            start = offset
            while i < len(lines) and lines[i].strip() != delimiter:
                offset += len(lines[i])
                i += 1
            bodies.append((start, offset))
            if i < len(lines):
                offset += len(lines[i])
                i += 1
    return bodies


def shell_template_problem(source: str) -> str | None:
    """Why ``source`` cannot be rendered safely into a shell line, or None.

    A value is shell-quoted, which protects it only where the shell reads quotes as quotes: as (part of)
    a plain word, also inside ``$(...)``. Everywhere else (inside quotes or backticks, after a backslash,
    in arithmetic, in ``${...}``, in a here-document) the shell would read the value again.
    """
    problem = syntax_problem(source)
    if problem:
        return problem
    bodies = _heredoc_bodies(source)
    stack: list[str] = []  # open contexts: quotes, `, ((, ${, and $( or ( which reset quoting
    i = 0
    while i < len(source):
        top = stack[-1] if stack else None
        if source.startswith("{{", i):
            if any(start <= i < end for start, end in bodies):
                return _misplaced("a here-document")
            unsafe = [context for context in stack if context in _CONTEXT_NAMES]
            if unsafe:
                return _misplaced(_CONTEXT_NAMES[unsafe[-1]])
            end = source.find("}}", i + 2)
            i = len(source) if end < 0 else end + 2
            continue
        if source.startswith("{%", i) or source.startswith("{#", i):
            # Control blocks produce no value; skip to their end so quotes inside them do not count.
            end = source.find("%}" if source[i + 1] == "%" else "#}", i + 2)
            i = len(source) if end < 0 else end + 2
            continue
        char = source[i]
        if top == "'":
            if char == "'":
                stack.pop()
            i += 1
            continue
        if char == "\\":
            if source.startswith("{{", i + 1):
                return _misplaced("a backslash's reach")
            i += 2
            continue
        if (top == "`" and char == "`") or (top == '"' and char == '"'):
            stack.pop()
        elif source.startswith("$((", i) or (source.startswith("((", i) and top != '"'):
            stack.append("((")
            i += 3 if char == "$" else 2
            continue
        elif top == "((" and source.startswith("))", i):
            stack.pop()
            i += 2
            continue
        elif source.startswith("${", i):
            stack.append("${")
            i += 2
            continue
        elif top == "${" and char == "}":
            stack.pop()
        elif source.startswith("$(", i):
            stack.append("$(")
            i += 2
            continue
        elif char == "(" and top != '"':
            stack.append("(")
        elif char == ")" and top in ("$(", "("):
            stack.pop()
        elif (char in "'\"`" and top != '"') or char == "`":
            stack.append(char)
        i += 1
    return None


def _misplaced(where: str) -> str:
    return (
        f"{{{{ ... }}}} inside {where}: the shell would read the value again; an expression's value is "
        "shell-quoted already, so write it as a plain word, e.g. echo {{ branch }}"
    )


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


def _template_position(exc: TemplateError, directory: Path) -> str:
    """``file:line`` of the template where rendering failed, as precisely as Jinja tells it."""
    if isinstance(exc, TemplateSyntaxError) and exc.filename:
        return f"{exc.filename}:{exc.lineno}"
    # Jinja rewrites a runtime error's traceback so that template lines show as frames of their own;
    # the innermost one under ``directory`` is where the value was (an include may sit in between).
    where = str(directory)
    tb = exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename.startswith(where + "/"):
            where = f"{filename}:{tb.tb_lineno}"
        tb = tb.tb_next
    return where


def render_file(
    directory: Path,
    name: str,
    context: Mapping[str, Any],
    *,
    finalize: Callable[[Any], Any] = _plain,
    filters: Mapping[str, Callable[..., Any]] | None = None,
) -> str:
    """Render the template file ``name`` of ``directory`` in the sandbox; an undefined variable is an error.

    It may include, import or extend the other templates of ``directory``, never a file outside it.
    ``finalize`` sees every value an expression prints (not the template's own text) and may refuse it by
    raising a TemplateError; the message then says which file and line.
    """
    env = ImmutableSandboxedEnvironment(
        loader=FileSystemLoader(directory),
        undefined=StrictUndefined,
        autoescape=False,
        finalize=finalize,
        keep_trailing_newline=True,
        # A line holding only a {% tag %} leaves nothing behind: configuration files stay as written.
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(filters or {})
    try:
        return env.get_template(name).render(context)
    except TemplateNotFound as exc:
        raise RenderError(f"template {exc.name!r} not found in {directory}") from None
    except TemplateError as exc:
        raise RenderError(f"{_template_position(exc, directory)}: {exc.message or exc}") from None
