"""A pipeline file's YAML, read with every value's position, YAML 1.2's booleans and no duplicate keys."""

from __future__ import annotations

import re
from typing import Any, ClassVar

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

# Where a value sits in a loaded document: keys and list indexes from the top.
Where = tuple[str | int, ...]

_BOOL_TAG = "tag:yaml.org,2002:bool"
_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_VALUE_TAG = "tag:yaml.org,2002:value"


class _Resolver(yaml.resolver.BaseResolver):
    """YAML 1.1's implicit types, less the ones that surprise.

    ``on``, ``off``, ``yes`` and ``no`` stay strings (the top-level key ``on:`` among them); ``0755`` and
    ``1:30`` stay strings rather than becoming octal and base-60 numbers; ``=`` is no special value.
    """

    yaml_implicit_resolvers: ClassVar[dict[str | None, list[tuple[str, re.Pattern[str]]]]] = {
        first: [
            (tag, regex)
            for tag, regex in resolvers
            if tag not in (_BOOL_TAG, _INT_TAG, _FLOAT_TAG, _VALUE_TAG)
        ]
        for first, resolvers in yaml.resolver.Resolver.yaml_implicit_resolvers.items()
    }


_Resolver.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:[Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee])$"), list("tTfF")
)
_Resolver.add_implicit_resolver(_INT_TAG, re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$"), list("-+0123456789"))
_Resolver.add_implicit_resolver(
    _FLOAT_TAG,
    re.compile(
        r"^(?:[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


class Loader(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser, yaml.composer.Composer, _Resolver):
    """Composes nodes only; ``Converter`` turns them into data."""

    def __init__(self, stream: str) -> None:
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        yaml.composer.Composer.__init__(self)
        _Resolver.__init__(self)


def kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return f"the value {node.value!r}"


class Converter:
    """Turns composed nodes into plain data, keeping the node of every key and value for problems to point at.

    Unlike PyYAML's own constructor it refuses duplicate keys (PyYAML keeps the last, silently), and reads
    every key as the text written, so ``on:``, ``1:`` and ``true:`` are all names.
    """

    def __init__(self) -> None:
        self.nodes: dict[Where, tuple[Node | None, Node]] = {}
        self.problems: list[tuple[Node, str]] = []
        self._scalars = SafeConstructor()
        self._open: set[int] = set()

    def convert(self, node: Node, where: Where = (), key: Node | None = None) -> Any:
        self.nodes[where] = (key, node)
        if isinstance(node, ScalarNode):
            return self._scalar(node)
        if id(node) in self._open:
            self.problems.append((node, "an alias refers to the collection that contains it"))
            return None
        self._open.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                return [self.convert(item, (*where, index)) for index, item in enumerate(node.value)]
            return self._mapping(node, where)
        finally:
            self._open.discard(id(node))

    def _scalar(self, node: ScalarNode) -> Any:
        try:
            return self._scalars.construct_object(node, deep=True)
        except ConstructorError as exc:
            self.problems.append((node, f"cannot read this value: {exc.problem}"))
            return None

    def _mapping(self, node: MappingNode, where: Where) -> dict[str, Any]:
        result: dict[str, Any] = {}
        own = self.nodes[where]
        # `<<: *defaults` first, so that the mapping's own keys override what it merges.
        for key_node, value_node in node.value:
            if key_node.tag != _MERGE_TAG:
                continue
            sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
            # In a list of merged mappings, the earlier ones win.
            for source in reversed(sources):
                merged = self.convert(source, where) if isinstance(source, MappingNode) else None
                if isinstance(merged, dict):
                    result.update(merged)
                elif not isinstance(source, MappingNode):
                    self.problems.append((source, "'<<' merges a mapping, or a list of mappings"))
        self.nodes[where] = own
        first: dict[str, Node] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            if not isinstance(key_node, ScalarNode):
                self.problems.append((key_node, f"a key must be a plain name, not {kind(key_node)}"))
                continue
            key = key_node.value
            if key in first:
                line = first[key].start_mark.line + 1
                self.problems.append((key_node, f"duplicate key '{key}': it is already set on line {line}"))
                continue
            first[key] = key_node
            result[key] = self.convert(value_node, (*where, key), key_node)
        return result


# What PyYAML's cryptic messages most often mean in a pipeline file.
_YAML_HINTS = (
    ("'\\t'", "YAML does not allow a tab in indentation: indent with spaces"),
    ("could not find expected ':'", "a key needs ':' and a space before its value (key: value)"),
    (
        "mapping values are not allowed here",
        "a ': ' in a plain value: add the missing ':' after the key on the line above, or quote the value",
    ),
    (
        "expected <block end>",
        "this line is indented differently from the keys or items above it: line up the keys of one "
        "mapping (and the '-' of one list) in one column",
    ),
    ("did not find expected key", "this line's indentation does not match the keys of its mapping"),
    ("did not find expected '-' indicator", "this line's indentation does not match the items of its list"),
)


def _yaml_hint(message: str) -> str:
    return next((f"; hint: {hint}" for problem, hint in _YAML_HINTS if problem in message), "")


def yaml_error(text: str, exc: yaml.YAMLError) -> tuple[int, int, str]:
    """Where in ``text`` PyYAML failed (line and column, from 1), and what that means, in words."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if isinstance(exc, yaml.MarkedYAMLError) and mark is not None:
        message = exc.problem or "invalid YAML"
        if message == "could not find expected ':'" and exc.context_mark is not None:
            mark = exc.context_mark  # the key without its ':', not the line after it
        hint = _yaml_hint(message)
        context, context_mark = exc.context, exc.context_mark
        where = f" on line {context_mark.line + 1}" if context_mark and context_mark.line != mark.line else ""
        if context and message.startswith("but "):
            # PyYAML's "expected a single document in the stream" + "but found another document".
            message = f"{context}{where}, {message}"
        elif context:
            message += f" ({context}{where})"
        return mark.line + 1, mark.column + 1, f"YAML syntax error: {message}{hint}"
    position = getattr(exc, "position", None)
    if isinstance(position, int):
        line = text.count("\n", 0, position) + 1
        column = position - (text.rfind("\n", 0, position) + 1) + 1
        return line, column, f"cannot read the file as YAML: {exc}"
    return 1, 1, f"cannot read the file as YAML: {exc}"
