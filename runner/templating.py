"""Jinja in pipeline values, rendered in the sandbox; whether a template parses and knows every name it uses.

A run string is not rendered here: runner/shell.py hands its values to the shell as variables.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jinja2 import StrictUndefined, TemplateError, Undefined, meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment


class RenderError(Exception):
    pass


def _plain(value: Any) -> str:
    return "" if value is None else str(value)


# Immutable: a template may read the event, never change it for the steps that follow.
sandbox = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False, finalize=_plain)


def syntax_problem(source: str) -> str | None:
    """Why ``source`` is not a valid template, or None."""
    try:
        sandbox.parse(source)
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
# The pipeline's secrets' values, as secrets.NAME: a name only where a value cannot reach a log (env: values
# and nginx vars); RunContext.secret_context adds it there.
SECRETS = "secrets"
SECRETS_HINT = (
    "; secrets may be used only in env: values and nginx vars, where a value cannot reach a log: a step "
    "reads its secret from its environment ($NAME)"
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
    for _, type_, value in sandbox.lex(source):
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
        tree = sandbox.parse(source)
    except TemplateError:
        return []
    known = (*CONTEXT_NAMES, *extra, *sandbox.globals)
    try:
        undeclared = meta.find_undeclared_variables(tree)
    except TemplateError:  # an unknown filter or test stops Jinja's analysis: a cruder one, without it
        names = list(tree.find_all(nodes.Name))
        undeclared = {n.name for n in names if n.ctx == "load"} - {n.name for n in names if n.ctx != "load"}
    unknown = {"variable": undeclared - set(known)}
    unknown["filter"] = {node.name for node in tree.find_all(nodes.Filter)} - set(sandbox.filters)
    unknown["test"] = {node.name for node in tree.find_all(nodes.Test)} - set(sandbox.tests)
    choices = {"variable": known, "filter": sorted(sandbox.filters), "test": sorted(sandbox.tests)}
    problems, said = [], set()
    for kind, name, line, column in _used_names(source):
        if name in unknown[kind] and (kind, name) not in said:
            said.add((kind, name))
            what = "name" if kind == "variable" else kind
            hint = SECRETS_HINT if (kind, name) == ("variable", SECRETS) else _suggestion(name, choices[kind])
            if not hint and kind == "variable":
                hint = f"; a template may use {', '.join(CONTEXT_NAMES)}"
            problems.append(NameProblem(f"unknown {what} '{name}'{hint}", line, column))
    return problems


def has_expression(source: str) -> bool:
    """Whether a template prints a value: an expression, not only text or comments."""
    try:
        return any(
            not isinstance(child, nodes.TemplateData)
            for node in sandbox.parse(source).body
            for child in (node.nodes if isinstance(node, nodes.Output) else [node])
        )
    except TemplateError:
        return False  # a syntax error, said on its own


def render(source: str, context: Mapping[str, Any]) -> str:
    """Render a value that is not a shell line: an argument, a path, an environment value."""
    if "{" not in source:
        return source
    try:
        return sandbox.from_string(source).render(context)
    except Exception as exc:  # an expression's own error too (1/0, a bad format string): the step's, not ours
        raise RenderError(f"cannot render {source!r}: {type(exc).__name__}: {exc}") from None


def evaluate(expression: str, context: Mapping[str, Any]) -> Any:
    """Evaluate a sandboxed expression, e.g. a step's ``when:`` condition."""
    try:
        value = sandbox.compile_expression(expression, undefined_to_none=False)(**context)
        if isinstance(value, Undefined):
            str(value)  # what the sandbox refused (``x.__class__``) or what is missing: StrictUndefined says
        return value
    except Exception as exc:
        raise RenderError(f"cannot evaluate {expression!r}: {type(exc).__name__}: {exc}") from None
