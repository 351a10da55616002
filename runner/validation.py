"""Problems in a pipeline file, each at its line and column, and what the schema finds wrong, in words."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from yaml.nodes import Node

from runner import shipped
from runner.pipeline import STEP_KEYS, STEP_TYPES, SUPPORTED_EVENTS
from runner.yaml_source import Where

SCHEMA_PATH = shipped.path(shipped.SCHEMA)


@dataclass(frozen=True)
class Problem:
    path: Path
    line: int  # 1-based
    column: int  # 1-based
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}: {self.message}"


class PipelineError(Exception):
    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))


@functools.cache
def _validator() -> Draft202012Validator:
    return Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))


# The lists of steps: built before a release's switch, and (with ``release:``) activating after it.
STEP_LISTS = {"steps": "step", "activate": "activate step"}


def _is_step(where: Where) -> bool:
    return len(where) == 2 and where[0] in STEP_LISTS and isinstance(where[1], int)


def _dotted(where: Where) -> str:
    text = ""
    for part in where:
        if isinstance(part, int):
            text += f" item {part + 1}"
        else:
            text += ("." if text and not text[-1].isdigit() else " " if text else "") + part
    return text


def _label(where: Where) -> str:
    """Where a value is, for a message: ``on.branches item 2``, ``step 3 git.clean``, ``env.PORT``."""
    if len(where) >= 2 and where[0] in STEP_LISTS and isinstance(where[1], int):
        rest = _dotted(where[2:])
        return f"{STEP_LISTS[str(where[0])]} {where[1] + 1}" + (f" {rest}" if rest else "")
    return _dotted(where)


def say(where: Where, text: str) -> str:
    label = _label(where)
    return f"{label}: {text}" if label else text


def _value(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return repr(value) if len(value) <= 60 else repr(value[:57] + "...")
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"the {type(value).__name__} {value}"


_TYPE_NAMES = {
    "string": "a string",
    "array": "a list",
    "object": "a mapping",
    "boolean": "true or false",
    "integer": "a whole number",
    "number": "a number",
    "null": "empty",
}


class Document:
    """A loaded file: its data, and where in the file each value and key is."""

    def __init__(self, path: Path, data: Any, nodes: dict[Where, tuple[Node | None, Node]]) -> None:
        self.path = path
        self.data = data
        self.nodes = nodes
        self.problems: list[Problem] = []
        self.flagged: set[Where] = set()

    def position(self, where: Where, key: bool = False) -> tuple[int, int]:
        for length in range(len(where), -1, -1):
            entry = self.nodes.get(where[:length])
            if entry is not None:
                key_node, value_node = entry
                node = key_node if key and key_node is not None else value_node
                return node.start_mark.line + 1, node.start_mark.column + 1
        return 1, 1

    def add(self, where: Where, message: str, key: bool = False) -> None:
        self.flagged.add(where)
        self.problems.append(Problem(self.path, *self.position(where, key), message))

    def check(self, where: Where, problem: str | None) -> None:
        """A problem found after the schema's: said only if the schema had nothing to say there."""
        if problem and where not in self.flagged:
            self.add(where, say(where, problem))


def _unknown_key(where: Where, key: str, known: Sequence[str]) -> str:
    if not where:
        return f"unknown key '{key}' at the top level (known: {', '.join(known)})"
    if _is_step(where):
        step_keys = ", ".join(k for k in known if k not in STEP_TYPES)
        return (
            f"unknown key '{key}' in {_label(where)} "
            f"(step keys: {step_keys}, and one step type: {', '.join(STEP_TYPES)})"
        )
    return f"unknown key '{key}' in {_label(where)} (known: {', '.join(known)})"


def _explain(error: ValidationError, skip: set[Where]) -> Iterator[tuple[Where, bool, str]]:
    """What one schema error means, in words: (where, whether to point at the key, message)."""
    where: Where = tuple(error.absolute_path)
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    validator = error.validator
    instance = error.instance
    if tuple(error.absolute_schema_path)[-2:-1] == ("propertyNames",):
        reason = schema.get("patternErrorMessage") or error.message
        yield (*where, instance), True, say(where, f"'{instance}' is not a valid name: {reason}")
    elif validator == "additionalProperties" and error.validator_value is False:
        known = list(schema.get("properties", {}))
        for key in instance:
            if key not in known and (*where, key) not in skip:
                yield (*where, key), True, _unknown_key(where, key, known)
    elif validator == "required":
        for key in error.validator_value:
            if key not in instance:
                yield where, True, say(where, f"missing required key '{key}'")
    elif validator == "oneOf" and _is_step(where):
        pass  # the step type check has said what is wrong, more plainly
    elif validator == "type":
        types = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        expected = schema.get("errorMessage") or "must be " + " or ".join(
            _TYPE_NAMES.get(t, t) for t in types
        )
        yield where, False, say(where, f"{expected} (got {_value(instance)})")
    elif validator == "enum" and where[:2] == ("on", "events"):
        supported = ", ".join(SUPPORTED_EVENTS)
        yield where, False, f"event {_value(instance)} is not supported (supported: {supported})"
    elif validator == "enum":
        allowed = ", ".join(str(value) for value in error.validator_value)
        yield where, False, say(where, f"{_value(instance)} is not one of {allowed}")
    elif validator == "pattern":
        reason = schema.get("patternErrorMessage") or f"must match {error.validator_value}"
        yield where, False, say(where, f"{reason} (got {_value(instance)})")
    elif validator in ("minItems", "minLength"):
        yield where, False, say(where, "must not be empty")
    elif validator == "maxLength":
        length = f"{error.validator_value} characters (got {len(instance)})"
        yield where, False, say(where, f"must be at most {length}")
    elif validator == "minimum":
        yield where, False, say(where, f"must be at least {error.validator_value} (got {_value(instance)})")
    elif validator == "uniqueItems":
        yield where, False, say(where, "lists the same value more than once")
    else:
        yield where, False, say(where, error.message)


def _step_types(doc: Document, steps: list[Any], listed: str = "steps") -> set[Where]:
    """Say what is wrong with each step's type before the schema does; returns the keys said to be wrong."""
    said: set[Where] = set()
    known = ", ".join(STEP_TYPES)
    for index, step in enumerate(steps):
        if not isinstance(step, dict):
            continue
        where: Where = (listed, index)
        label = _label(where)
        types = [key for key in step if key in STEP_TYPES]
        unknown = [key for key in step if key not in STEP_TYPES and key not in STEP_KEYS]
        if not types and unknown:
            for key in unknown:
                doc.add((*where, key), f"{label}: unknown step type '{key}' (known: {known})", key=True)
                said.add((*where, key))
        elif not types:
            doc.add(where, f"{label}: no step type: a step needs one of {known}")
        elif len(types) > 1:
            doc.add(
                (*where, types[1]),
                f"{label}: more than one step type ({', '.join(types)}): "
                "a step has exactly one; make them separate steps",
                key=True,
            )
    return said


def check_schema(doc: Document) -> None:
    """Say what the schema finds wrong in the document: each step's type first, more plainly than it would."""
    said: set[Where] = set()
    for key in STEP_LISTS:
        if isinstance(doc.data.get(key), list):
            said |= _step_types(doc, doc.data[key], key)
    explained = [
        explanation for error in _validator().iter_errors(doc.data) for explanation in _explain(error, said)
    ]
    for where, key, message in explained:
        doc.add(where, message, key=key)
