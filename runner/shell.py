"""How a run string reaches bash: each ``{{ }}`` value as a variable, the script a reference to it, quoted.

A ``run`` string's ``{{ expression }}`` is never spliced into the script: its value goes into an environment
variable of that step (``RUNNER_EXPR_1``, ...) and the script holds a reference to it, so that whatever the
value holds, the shell sees it as data. Safety does not rest on reading the shell's grammar right: the small
lexer here only picks the reference that prints the value as written (quoted where the expression stands
unquoted, closing and reopening single quotes around it), and a gap in it can at worst print the wrong thing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import nodes

from runner.templating import RenderError, sandbox

# What stands in for an expression while the lexer reads the script: a character that is part of a word.
HOLE = "\x01"
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
INERT = {
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


class BlockInShell(RenderError):
    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.line = line


def _parts(source: str) -> list[tuple[str | nodes.Expr, int]]:
    """The run string as text and expressions, each with its line (from 1); ``{% %}`` blocks are refused."""
    parts: list[tuple[str | nodes.Expr, int]] = []
    for node in sandbox.parse(source).body:
        if not isinstance(node, nodes.Output):
            # A block could print values, or decide on one: it has no place in a shell line.
            raise BlockInShell(
                "{% ... %} in a run string: only {{ expression }} may stand in one; decide with when: if: "
                "or in the shell, on a variable",
                node.lineno,
            )
        for child in node.nodes:
            parts.append((child.data if isinstance(child, nodes.TemplateData) else child, child.lineno))
    return parts


def contexts_of(text: str, holes: list[int], view: list[str] | None = None) -> list[str]:
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


def read_run_string(
    source: str,
) -> tuple[list[str | nodes.Expr], str, list[tuple[int, str]], Callable[[int], int]]:
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
            text += HOLE

    def line_of(offset: int) -> int:
        start, line = next((start, line) for start, line in reversed(starts) if start <= offset)
        return line - 1 + text.count("\n", start, offset)

    contexts = list(zip(holes, contexts_of(text, holes), strict=True))
    return [part for part, _ in parts], text, contexts, line_of


def _value(expression: nodes.Expr, context: Mapping[str, Any]) -> str:
    template = nodes.Template([nodes.Output([expression])])
    template.set_environment(sandbox)
    return sandbox.from_string(template).render(context)


def render_shell(source: str, context: Mapping[str, Any]) -> ShellScript:
    """Render a run string: each expression's value into a variable, the script a reference to it."""
    if "{" not in source:
        return ShellScript(source, {})
    try:
        parts, _, contexts, _ = read_run_string(source)
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
