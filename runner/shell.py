"""How a run string reaches bash: each ``{{ }}`` value as a variable, the script a reference to it, quoted.

A ``run`` string's ``{{ expression }}`` is never spliced into the script: its value goes into an environment
variable of that step (``RUNNER_EXPR_1``, ...) and the script holds a reference to it, so that whatever the
value holds, the shell sees it as data. Safety does not rest on reading the shell's grammar right: the small
lexer here only picks the reference that prints the value as written (quoted where the expression stands
unquoted, closing and reopening single quotes around it), and a gap in it can at worst print the wrong thing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import Template, nodes

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


class _Lexer:
    """One reading of a script, left to right: what is open, the here-documents whose bodies come next, and
    where each hole was found. ``step`` reads one character, or a few that go together."""

    def __init__(self, text: str, wanted: set[int], view: list[str] | None) -> None:
        self.text = text
        self.wanted = wanted
        self.view = view
        self.at: dict[int, str] = {}
        self.stack: list[str] = []  # open: ' " $' ` $( ( (( ${
        self.heredocs: list[
            tuple[str, bool, bool]
        ] = []  # delimiter, <<-, quoted: bodies start after this line

    def step(self, i: int) -> int:
        """Read what starts at ``i``; returns where the rest starts."""
        top = self.stack[-1] if self.stack else None
        char = self.text[i]
        if i in self.wanted:
            self.at[i] = self._where()
            return i + 1
        if top == "'":
            return self._in_single_quotes(i)
        if top == "$'":
            return self._in_ansi_quotes(i)
        if char == "\\":
            return self._backslash(i)
        if char == "\n" and self.heredocs:
            i = self._heredoc_bodies(i + 1)
            self.heredocs = []
            return i
        opened = self._quote_or_expansion(i, top)
        if opened is not None:
            return opened
        if top == '"':
            if char.isspace() or char in ";&|(){}<>":  # inside double quotes only $, ` and \ mean something
                self._literal(i)
            return i + 1
        return self._unquoted(i, top)

    def _literal(self, index: int, filler: str = "_") -> None:
        if self.view is not None and index < len(self.text):
            self.view[index] = filler

    def _where(self) -> str:
        for context in reversed(self.stack):
            if context != "${":
                return {"'": "single quotes", '"': "double quotes", "$'": "$'...'", "((": "arithmetic"}.get(
                    context, "word"
                )
        return "word"

    def _in_single_quotes(self, i: int) -> int:
        if self.text[i] == "'":
            self.stack.pop()
        else:
            self._literal(i)
        return i + 1

    def _in_ansi_quotes(self, i: int) -> int:
        char = self.text[i]
        if char == "\\":
            if i + 1 in self.wanted:
                self.at[i + 1] = "$'...'"
            self._literal(i)
            self._literal(i + 1)
            return i + 2
        if char == "'":
            self.stack.pop()
        else:
            self._literal(i)
        return i + 1

    def _backslash(self, i: int) -> int:
        text, n = self.text, len(self.text)
        if i + 1 in self.wanted:
            self.at[i + 1] = "a backslash's reach"
        elif i + 1 < n and text[i + 1] == "\n":
            self._literal(i, " ")  # a line continued: no new command starts
            self._literal(i + 1, " ")
        elif i + 1 < n and not text[i + 1].isalnum():
            self._literal(i + 1)  # kept as a letter (\eval is eval), an operator or $ as a literal
        return i + 2

    def _quote_or_expansion(self, i: int, top: str | None) -> int | None:
        """A double quote, a backtick or a ``$`` that opens something, inside double quotes too; else None."""
        text, char = self.text, self.text[i]
        if char == '"':
            if top == '"':
                self.stack.pop()
            else:
                self.stack.append('"')
            return i + 1
        if char == "`":
            if top == "`":
                self.stack.pop()
                self._literal(i, " ")  # a closing backtick ends a word and starts no command
            else:
                self.stack.append("`")
            return i + 1
        if char != "$":
            return None
        if text.startswith("$((", i):
            self.stack.append("((")
            return i + 3
        if text.startswith("${", i):
            self.stack.append("${")
            return i + 2
        if text.startswith("$(", i):
            self.stack.append("$(")
            return i + 2
        if text.startswith("$'", i) and top != '"':
            self.stack.append("$'")
            return i + 2
        return None

    def _unquoted(self, i: int, top: str | None) -> int:
        text, char = self.text, self.text[i]
        if char == "'":
            self.stack.append("'")
        elif char == "}" and top == "${":
            self.stack.pop()
        elif text.startswith("((", i):
            self.stack.append("((")
            return i + 2
        elif text.startswith("))", i) and top == "((":
            self.stack.pop()
            return i + 2
        elif char == "(":
            self.stack.append("(")
        elif char == ")" and top in ("$(", "("):
            self.stack.pop()
        elif char == ")":
            self._literal(i, ";")  # no ( to close: a case pattern's end, where a command starts
        elif char == "#" and (i == 0 or text[i - 1] in " \t\n;&|()<>"):
            return self._comment(i)
        elif text.startswith("<<<", i):
            return i + 3
        elif text.startswith("<<", i):
            return self._heredoc(i)
        return i + 1

    def _comment(self, i: int) -> int:
        end = self.text.find("\n", i)
        end = len(self.text) if end < 0 else end
        for hole in range(i, end):
            if hole in self.wanted:
                self.at[hole] = "a comment"
            self._literal(hole, " ")
        return end

    def _heredoc(self, i: int) -> int:
        """A ``<<`` or ``<<-`` and its delimiter: the body starts on the next line."""
        text, n = self.text, len(self.text)
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
        self.heredocs.append((delimiter, strip, delimiter != word))
        return i  # the delimiter's own quotes are read as quotes

    def _heredoc_bodies(self, i: int) -> int:
        """Read the bodies of the here-documents opened on the line before ``i``; returns where the rest
        is."""
        text, n = self.text, len(self.text)
        for delimiter, strip, quoted in self.heredocs:
            while i < n:
                end = text.find("\n", i)
                end = n if end < 0 else end
                line = text[i:end]
                if self.view is not None:
                    self.view[i:end] = " " * (end - i)
                if (line.lstrip("\t") if strip else line) == delimiter:
                    i = end + 1
                    break
                for hole in range(i, end):
                    if hole in self.wanted:
                        escaped = not quoted and hole > 0 and text[hole - 1] == "\\"
                        self.at[hole] = (
                            "a quoted here-document"
                            if quoted
                            else "a backslash's reach"
                            if escaped
                            else "a here-document"
                        )
                i = end + 1
        return i


def contexts_of(text: str, holes: list[int], view: list[str] | None = None) -> list[str]:
    """Where in bash's grammar each hole of ``text`` stands: a best-effort reading, enough to quote well.

    ``view``, the script's characters, becomes its syntax: what is quoted or escaped turns into ``_`` (one
    word still, with no operator or expansion in it), comments and here-document bodies into spaces."""
    lexer = _Lexer(text, set(holes), view)
    i = 0
    while i < len(text):
        i = lexer.step(i)
    return [lexer.at.get(hole, "word") for hole in holes]


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


def _compiled(expression: nodes.Expr) -> Template:
    template = nodes.Template([nodes.Output([expression])])
    template.set_environment(sandbox)
    return sandbox.from_string(template)


@functools.lru_cache(maxsize=256)
def _read_compiled(source: str) -> tuple[tuple[str | Template, ...], tuple[str, ...]]:
    """A run string's parts, each expression compiled in the sandbox, and the reference written for each:
    kept, since a pipeline's run strings are the same for each of its runs (compiling one takes about a
    millisecond)."""
    parts, _, contexts, _ = read_run_string(source)
    compiled = tuple(part if isinstance(part, str) else _compiled(part) for part in parts)
    return compiled, tuple(_REFERENCES[where] for _, where in contexts)


def render_shell(source: str, context: Mapping[str, Any]) -> ShellScript:
    """Render a run string: each expression's value into a variable, the script a reference to it."""
    if "{" not in source:
        return ShellScript(source, {})
    try:
        parts, references = _read_compiled(source)
        text, env = "", {}
        expressions = iter(references)
        for part in parts:
            if isinstance(part, str):
                text += part
                continue
            name = f"{PREFIX}{len(env) + 1}"
            env[name] = part.render(context)
            if "\0" in env[name]:
                raise RenderError(f"the value of {name} holds a NUL character, which no variable can hold")
            text += next(expressions).format(name)
    except RenderError:
        raise
    except Exception as exc:
        raise RenderError(f"cannot render {source!r}: {type(exc).__name__}: {exc}") from None
    return ShellScript(text, env)
