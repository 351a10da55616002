"""What the pipeline schema finds wrong in a loaded file, in words (jsonschema).

Imported only where files are checked: ``runner validate`` and ``runner doctor`` in their own process, the
worker's reloads in a child process (runner/check_process.py), so that the worker holds none of jsonschema.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from runner.pipeline import STEP_KEYS, STEP_TYPES, SUPPORTED_EVENTS
from runner.validation import SCHEMA_PATH, STEP_LISTS, Document, is_step, label_of, say
from runner.yaml_source import Where


@functools.cache
def _validator() -> Draft202012Validator:
    return Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))


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


def _unknown_key(where: Where, key: str, known: Sequence[str]) -> str:
    if not where:
        return f"unknown key '{key}' at the top level (known: {', '.join(known)})"
    if is_step(where):
        step_keys = ", ".join(k for k in known if k not in STEP_TYPES)
        return (
            f"unknown key '{key}' in {label_of(where)} "
            f"(step keys: {step_keys}, and one step type: {', '.join(STEP_TYPES)})"
        )
    return f"unknown key '{key}' in {label_of(where)} (known: {', '.join(known)})"


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
    elif validator == "oneOf" and is_step(where):
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
        label = label_of(where)
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
