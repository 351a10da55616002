"""GitHub Actions filter globs: a trigger's branches, tags and paths, and a step's ``when: changed:``."""

from __future__ import annotations

import re
from collections.abc import Sequence


def _same_kind(first: str, last: str) -> bool:
    return any(
        first.isascii() and last.isascii() and test(first) and test(last)
        for test in (str.isdigit, str.islower, str.isupper)
    )


def _char_class(pattern: str, content: str) -> str:
    # As GitHub documents classes: letters, digits and ranges within a-z, A-Z or 0-9, nothing else.
    if not content:
        raise ValueError(f"bad glob {pattern!r}: '[]' holds no character")
    out = []
    i = 0
    while i < len(content):
        first = content[i]
        if i + 2 < len(content) and content[i + 1] == "-":
            last = content[i + 2]
            if not _same_kind(first, last) or first > last:
                raise ValueError(
                    f"bad glob {pattern!r}: '{first}-{last}' is not a range within a-z, A-Z or 0-9"
                )
            out.append(f"{first}-{last}")
            i += 3
            continue
        if not (first.isascii() and first.isalnum()):
            raise ValueError(
                f"bad glob {pattern!r}: '{first}' in [...]: a class holds letters, digits and ranges like a-z"
            )
        out.append(first)
        i += 1
    return "[" + "".join(out) + "]"


def _stars(body: str, i: int) -> tuple[str, int]:
    """The ``*``, ``**`` or ``**/`` at ``i``: its regular expression, and where the rest of ``body`` is."""
    end = i
    while end < len(body) and body[end] == "*":
        end += 1
    if end - i == 1:
        return "[^/]*", end
    if end < len(body) and body[end] == "/":
        # `**/` may also stand for no directory at all: `**/README.md` matches README.md.
        return "(?:.*/)?", end + 1
    return ".*", end


def _single(pattern: str, body: str, i: int) -> tuple[str, int]:
    """The class, escaped character or character at ``i``, which ? and + may follow: its regular expression,
    and where the rest of ``body`` starts."""
    char = body[i]
    if char == "[":
        end = body.find("]", i + 1)
        if end < 0:
            raise ValueError(f"bad glob {pattern!r}: unclosed '['")
        return _char_class(pattern, body[i + 1 : end]), end + 1
    if char == "\\":
        if i + 1 == len(body):
            raise ValueError(f"bad glob {pattern!r}: it ends in a '\\' that escapes nothing")
        return re.escape(body[i + 1]), i + 2
    return re.escape(char), i + 1


def compile_glob(pattern: str) -> tuple[bool, re.Pattern[str]]:
    """One GitHub Actions filter pattern: whether it excludes, and a regular expression of what it matches."""
    if not isinstance(pattern, str):
        raise ValueError(f"bad glob {pattern!r}: a pattern is a string")
    negative = pattern.startswith("!")
    body = pattern[1:] if negative else pattern
    if not body:
        raise ValueError(
            f"bad glob {pattern!r}: " + ("'!' must be followed by a pattern" if negative else "empty pattern")
        )
    parts: list[str] = []
    # Whether the last part is one character or class, which ? and + may follow.
    quantifiable = False
    i = 0
    while i < len(body):
        char = body[i]
        if char == "*":
            part, i = _stars(body, i)
            parts.append(part)
            quantifiable = False
        elif char in "?+":
            if not quantifiable:
                raise ValueError(
                    f"bad glob {pattern!r}: '{char}' must follow a character or a [...] class "
                    f"(it means {'zero or one' if char == '?' else 'one or more'} of that; "
                    f"\\{char} is a literal {char})"
                )
            parts[-1] = f"(?:{parts[-1]}){char}"
            quantifiable = False
            i += 1
        else:
            part, i = _single(pattern, body, i)
            parts.append(part)
            quantifiable = True
    return negative, re.compile("".join(parts))


class Filter:
    """A list of GitHub Actions filter patterns: the last one that matches decides; ``!pattern`` excludes."""

    def __init__(self, patterns: Sequence[str]) -> None:
        if isinstance(patterns, str):
            raise TypeError("Filter takes a list of patterns, not one string")
        self.patterns = tuple(patterns)
        self._rules = [compile_glob(pattern) for pattern in self.patterns]
        # Only exclusions: everything else is included, as the patterns' author surely meant.
        self._default = all(negative for negative, _ in self._rules)

    def matches(self, value: str) -> bool:
        matched = self._default
        for negative, regex in self._rules:
            if regex.fullmatch(value):
                matched = not negative
        return matched

    def __str__(self) -> str:
        return "[" + ", ".join(self.patterns) + "]"

    def __repr__(self) -> str:
        return f"Filter({list(self.patterns)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Filter) and other.patterns == self.patterns

    def __hash__(self) -> int:
        return hash(self.patterns)
