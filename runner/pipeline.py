"""Pipeline files: loading and validating them, and matching deliveries against them.

A pipeline is ``pipelines/<name>.yaml``. Every problem found in one is reported with the file, line and column
of the key or value concerned, all at once, so that a pipeline can be fixed in one pass. Loading never renders
a template: it only checks that each would parse, so that a mistake shows when the file is validated rather
than in the middle of a deployment.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import posixpath
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from runner import shipped
from runner.code_variables import code_variable
from runner.config import nginx_templates_dir
from runner.credentials import mask
from runner.injection import argv_template_problems, shell_template_problem_at
from runner.templating import has_expression, name_problems, syntax_problem

logger = logging.getLogger(__name__)

# Step types the worker knows, with what each does. A new type goes here, in the schema's step definition
# (a property, its $defs entry and a oneOf branch) and in runner/steps/.
STEP_TYPES: dict[str, str] = {
    "git": "check out the pushed commit in the workdir, cloning the repository the first time",
    "run": "run a command: a string through a shell, a list of strings without one",
    "pnpm": "pnpm install (frozen lockfile) or pnpm run SCRIPT, with workspace filters",
    "nginx": "render a site from templates/nginx/, check it with nginx -t, reload nginx",
    "certbot": "obtain or renew a certificate through the root-owned runner-certbot wrapper",
    "systemctl": "reload or restart a unit through sudo, exactly as the sudoers file allows",
}
SCHEMA_PATH = shipped.path(shipped.SCHEMA)
# Where the nginx step's templates are on a development machine, under RUNNER_HOME; in production, the
# root-owned copy runner setup installs (RUNNER_NGINX_TEMPLATES, see config.nginx_templates_dir).
NGINX_TEMPLATES = "templates/nginx"
NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")
# queues/main/ is the main queue; a pipeline's queue is queues/<name>/.
RESERVED_NAMES = frozenset({"main"})
SUFFIXES = (".yaml", ".yml")
SUPPORTED_EVENTS = ("push",)
DEFAULT_EVENTS = ("push",)
DEFAULT_TIMEOUT = 3600.0
STEP_KEYS = ("name", "timeout", "env", "cwd", "when")
# GitHub lists at most 20 commits in a push payload; from 20 on, the changed files are not all known.
COMMITS_LISTED = 20
DEFAULT_NAME_LENGTH = 40

_DURATION = re.compile(r"^(?:(?P<h>[0-9]+)h)?(?:(?P<m>[0-9]+)m)?(?:(?P<s>[0-9]+)s)?$")
_SECONDS = re.compile(r"^[0-9]+$")

# Where a value sits in a loaded document: keys and list indexes from the top.
Where = tuple[str | int, ...]


# Problems ----------------------------------------------------------------------------------------------


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


def parse_duration(value: str | int) -> float:
    """Seconds in ``90s``, ``10m``, ``1h30m``, ``2h5m10s`` or a whole number of seconds."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"bad duration {value!r}: write e.g. 90s, 10m, 1h30m, or a whole number of seconds")
    if isinstance(value, int):
        seconds = value
    elif _SECONDS.match(value):
        seconds = int(value)
    else:
        match = _DURATION.match(value)
        if not value or match is None:
            raise ValueError(
                f"bad duration {value!r}: write hours, minutes and seconds in that order, e.g. 90s, 10m, "
                "1h30m, 2h5m10s, or a whole number of seconds"
            )
        seconds = int(match["h"] or 0) * 3600 + int(match["m"] or 0) * 60 + int(match["s"] or 0)
    if seconds <= 0:
        raise ValueError(f"bad duration {value!r}: it must be longer than 0 seconds")
    return float(seconds)


# Filters -----------------------------------------------------------------------------------------------


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


def _compile_glob(pattern: str) -> tuple[bool, re.Pattern[str]]:
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
            end = i
            while end < len(body) and body[end] == "*":
                end += 1
            if end - i == 1:
                parts.append("[^/]*")
            elif end < len(body) and body[end] == "/":
                # `**/` may also stand for no directory at all: `**/README.md` matches README.md.
                parts.append("(?:.*/)?")
                end += 1
            else:
                parts.append(".*")
            quantifiable = False
            i = end
            continue
        if char in "?+":
            if not quantifiable:
                raise ValueError(
                    f"bad glob {pattern!r}: '{char}' must follow a character or a [...] class "
                    f"(it means {'zero or one' if char == '?' else 'one or more'} of that; "
                    f"\\{char} is a literal {char})"
                )
            parts[-1] = f"(?:{parts[-1]}){char}"
            quantifiable = False
        elif char == "[":
            end = body.find("]", i + 1)
            if end < 0:
                raise ValueError(f"bad glob {pattern!r}: unclosed '['")
            parts.append(_char_class(pattern, body[i + 1 : end]))
            quantifiable = True
            i = end + 1
            continue
        elif char == "\\":
            if i + 1 == len(body):
                raise ValueError(f"bad glob {pattern!r}: it ends in a '\\' that escapes nothing")
            parts.append(re.escape(body[i + 1]))
            quantifiable = True
            i += 2
            continue
        else:
            parts.append(re.escape(char))
            quantifiable = True
        i += 1
    return negative, re.compile("".join(parts))


class Filter:
    """A list of GitHub Actions filter patterns: the last one that matches decides; ``!pattern`` excludes."""

    def __init__(self, patterns: Sequence[str]) -> None:
        if isinstance(patterns, str):
            raise TypeError("Filter takes a list of patterns, not one string")
        self.patterns = tuple(patterns)
        self._rules = [_compile_glob(pattern) for pattern in self.patterns]
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


# The pipeline ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trigger:
    repository: str
    events: tuple[str, ...]
    branches: Filter | None
    tags: Filter | None
    paths: Filter | None


@dataclass(frozen=True)
class StepSpec:
    type: str
    args: Any
    name: str
    timeout: float | None
    env: dict[str, str]
    cwd: str | None
    when: dict[str, Any] | None
    line: int


@dataclass(frozen=True)
class Match:
    matched: bool
    reason: str | None


def _changed_files(commits: Sequence[Any]) -> set[str]:
    changed: set[str] = set()
    for commit in commits:
        if isinstance(commit, Mapping):
            for key in ("added", "removed", "modified"):
                changed.update(name for name in commit.get(key) or () if isinstance(name, str))
    return changed


@dataclass(frozen=True)
class Pipeline:
    name: str
    path: Path
    trigger: Trigger
    workdir: Path
    env: dict[str, str]
    timeout: float
    steps: tuple[StepSpec, ...]

    def match(self, event: str, payload: Mapping[str, Any]) -> Match:
        """Whether a delivery runs this pipeline, and if not, why not, in words for an operator."""
        trigger = self.trigger
        if event not in trigger.events:
            events = ", ".join(trigger.events)
            return Match(False, f"event '{event}' is not handled by pipeline {self.name} (events: {events})")
        repository = payload.get("repository")
        full_name = repository.get("full_name") if isinstance(repository, Mapping) else None
        if not isinstance(full_name, str) or full_name.lower() != trigger.repository.lower():
            return Match(
                False,
                f"repository {full_name or '(none)'} is not pipeline {self.name}'s ({trigger.repository})",
            )
        ref = payload.get("ref")
        if not isinstance(ref, str):
            return Match(False, f"the {event} event names no ref")
        if ref.startswith("refs/heads/"):
            kind, name = "branch", ref.removeprefix("refs/heads/")
        elif ref.startswith("refs/tags/"):
            kind, name = "tag", ref.removeprefix("refs/tags/")
        else:
            return Match(False, f"ref '{ref}' is neither a branch nor a tag")
        if payload.get("deleted"):
            return Match(False, f"{kind} '{name}' was deleted")
        # GitHub Actions' rules: with neither filter everything matches; with one, the other kind never does.
        if trigger.branches is not None or trigger.tags is not None:
            own, other = (trigger.branches, "tags") if kind == "branch" else (trigger.tags, "branches")
            if own is None:
                return Match(False, f"pipeline {self.name} runs for {other} only; '{name}' is a {kind}")
            if not own.matches(name):
                what = "branches" if kind == "branch" else "tags"
                return Match(False, f"{kind} '{name}' does not match pipeline {self.name}'s {what} {own}")
        # As in GitHub Actions, paths do not apply to tags.
        if trigger.paths is not None and kind == "branch":
            commits = payload.get("commits")
            # With no commits listed, or a list GitHub may have cut short, the changed files are not known:
            # deploy, since a missed deployment is worse than an extra one.
            if isinstance(commits, list) and 0 < len(commits) < COMMITS_LISTED:
                changed = _changed_files(commits)
                if not any(trigger.paths.matches(path) for path in changed):
                    shown = ", ".join(sorted(changed)[:5]) + (", ..." if len(changed) > 5 else "")
                    return Match(
                        False,
                        f"no file changed on {kind} '{name}' matches pipeline {self.name}'s paths "
                        f"{trigger.paths} (changed: {shown or 'none'})",
                    )
        return Match(True, None)


# YAML --------------------------------------------------------------------------------------------------

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


class _Loader(
    yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser, yaml.composer.Composer, _Resolver
):
    """Composes nodes only; ``_Converter`` turns them into data."""

    def __init__(self, stream: str) -> None:
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        yaml.composer.Composer.__init__(self)
        _Resolver.__init__(self)


def _kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return f"the value {node.value!r}"


class _Converter:
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
                self.problems.append((key_node, f"a key must be a plain name, not {_kind(key_node)}"))
                continue
            key = key_node.value
            if key in first:
                line = first[key].start_mark.line + 1
                self.problems.append((key_node, f"duplicate key '{key}': it is already set on line {line}"))
                continue
            first[key] = key_node
            result[key] = self.convert(value_node, (*where, key), key_node)
        return result


# Validation --------------------------------------------------------------------------------------------


@functools.cache
def _validator() -> Draft202012Validator:
    return Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))


def _name_of(path: Path) -> str:
    return path.stem


def _name_problem(name: str) -> str | None:
    if name in RESERVED_NAMES:
        return f"'{name}' cannot be a pipeline's name: queues/{name}/ is the main queue; rename the file"
    if not NAME.match(name):
        return (
            f"'{name}' is not a valid pipeline name (the file's name without .yaml, which also names its "
            "queue directory): use lowercase letters, digits and '-', starting with a letter or digit"
        )
    return None


def _is_step(where: Where) -> bool:
    return len(where) == 2 and where[0] == "steps" and isinstance(where[1], int)


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
    if len(where) >= 2 and where[0] == "steps" and isinstance(where[1], int):
        rest = _dotted(where[2:])
        return f"step {where[1] + 1}" + (f" {rest}" if rest else "")
    return _dotted(where)


def _say(where: Where, text: str) -> str:
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


class _Document:
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
            self.add(where, _say(where, problem))


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
        yield (*where, instance), True, _say(where, f"'{instance}' is not a valid name: {reason}")
    elif validator == "additionalProperties" and error.validator_value is False:
        known = list(schema.get("properties", {}))
        for key in instance:
            if key not in known and (*where, key) not in skip:
                yield (*where, key), True, _unknown_key(where, key, known)
    elif validator == "required":
        for key in error.validator_value:
            if key not in instance:
                yield where, True, _say(where, f"missing required key '{key}'")
    elif validator == "oneOf" and _is_step(where):
        pass  # the step type check has said what is wrong, more plainly
    elif validator == "type":
        types = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        expected = schema.get("errorMessage") or "must be " + " or ".join(
            _TYPE_NAMES.get(t, t) for t in types
        )
        yield where, False, _say(where, f"{expected} (got {_value(instance)})")
    elif validator == "enum" and where[:2] == ("on", "events"):
        supported = ", ".join(SUPPORTED_EVENTS)
        yield where, False, f"event {_value(instance)} is not supported (supported: {supported})"
    elif validator == "enum":
        allowed = ", ".join(str(value) for value in error.validator_value)
        yield where, False, _say(where, f"{_value(instance)} is not one of {allowed}")
    elif validator == "pattern":
        reason = schema.get("patternErrorMessage") or f"must match {error.validator_value}"
        yield where, False, _say(where, f"{reason} (got {_value(instance)})")
    elif validator in ("minItems", "minLength"):
        yield where, False, _say(where, "must not be empty")
    elif validator == "minimum":
        yield where, False, _say(where, f"must be at least {error.validator_value} (got {_value(instance)})")
    elif validator == "uniqueItems":
        yield where, False, _say(where, "lists the same value more than once")
    else:
        yield where, False, _say(where, error.message)


def _step_types(doc: _Document, steps: list[Any]) -> set[Where]:
    """Say what is wrong with each step's type before the schema does; returns the keys said to be wrong."""
    said: set[Where] = set()
    known = ", ".join(STEP_TYPES)
    for index, step in enumerate(steps):
        if not isinstance(step, dict):
            continue
        where: Where = ("steps", index)
        types = [key for key in step if key in STEP_TYPES]
        unknown = [key for key in step if key not in STEP_TYPES and key not in STEP_KEYS]
        if not types and unknown:
            for key in unknown:
                doc.add(
                    (*where, key), f"step {index + 1}: unknown step type '{key}' (known: {known})", key=True
                )
                said.add((*where, key))
        elif not types:
            doc.add(where, f"step {index + 1}: no step type: a step needs one of {known}")
        elif len(types) > 1:
            doc.add(
                (*where, types[1]),
                f"step {index + 1}: more than one step type ({', '.join(types)}): "
                "a step has exactly one; make them separate steps",
                key=True,
            )
    return said


def _expression_problem(source: str) -> str | None:
    if any(mark in source for mark in ("{{", "}}", "{%", "%}", "{#", "#}")):
        return "an expression is written without {{ }}, e.g. branch == 'main'"
    return syntax_problem("{{ " + source + " }}")


def _cwd_problem(cwd: str) -> str | None:
    if posixpath.isabs(cwd):
        return "must be a directory relative to the workdir, not an absolute path"
    normal = posixpath.normpath(cwd)
    if normal == ".." or normal.startswith("../"):
        return "must stay inside the workdir: '..' leads out of it"
    return None


def _strings(value: Any, where: Where) -> Iterator[tuple[Where, str]]:
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, (*where, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, (*where, index))


def _check_globs(doc: _Document, patterns: Any, where: Where) -> None:
    if not isinstance(patterns, list):
        return
    for index, pattern in enumerate(patterns):
        if isinstance(pattern, str):
            try:
                _compile_glob(pattern)
            except ValueError as exc:
                doc.check((*where, index), str(exc))


def _check_duration(doc: _Document, value: Any, where: Where) -> None:
    if isinstance(value, str | int) and not isinstance(value, bool):
        try:
            parse_duration(value)
        except ValueError as exc:
            doc.check(where, str(exc))


def _check_env(doc: _Document, env: Any, where: Where) -> None:
    if isinstance(env, dict):
        for key, value in env.items():
            if isinstance(value, str):
                doc.check((*where, key), syntax_problem(value) or _env_problem(key, value))
                _check_names(doc, (*where, key), value)


def _env_problem(name: str, value: str) -> str | None:
    """Why a variable the shell or a program reads as code may not take its value from a template."""
    why = code_variable(name)
    if why is None or not has_expression(value):
        return None
    return (
        f"{name} may not hold an expression: {why}, so a value from an event would run as code; set it to a "
        "fixed value, and let a step read the event's value from its own variable (e.g. $RUNNER_BRANCH)"
    )


def _check_step(doc: _Document, step: dict[str, Any], where: Where, names: dict[str, int]) -> None:
    index = where[1]
    assert isinstance(index, int)
    name = step.get("name")
    if isinstance(name, str):
        if name in names:
            doc.check(
                (*where, "name"),
                f"'{name}' is already the name of step {names[name] + 1}: step names must be unique",
            )
        else:
            names[name] = index
    if "timeout" in step:
        _check_duration(doc, step["timeout"], (*where, "timeout"))
    if isinstance(step.get("cwd"), str):
        doc.check((*where, "cwd"), _cwd_problem(step["cwd"]))
    when = step.get("when")
    if isinstance(when, dict):
        _check_globs(doc, when.get("changed"), (*where, "when", "changed"))
        if isinstance(when.get("if"), str):
            doc.check((*where, "when", "if"), _expression_problem(when["if"]))
            _check_names(doc, (*where, "when", "if"), when["if"], expression=True)
    _check_env(doc, step.get("env"), (*where, "env"))
    for at, text in _strings({k: v for k, v in step.items() if k != "when"}, where):
        if at == (*where, "run"):
            _check_run(doc, at, text)
        else:
            doc.check(at, syntax_problem(text))
        if at[2] != "env":  # said by _check_env
            _check_names(doc, at, text)
    if isinstance(step.get("run"), list):
        for index, problem in argv_template_problems(step["run"]).items():
            doc.check((*where, "run", index), problem)


def _check_run(doc: _Document, where: Where, text: str) -> None:
    """A run string is a shell line, which may not read a value again as code; said on the line concerned."""
    found = shell_template_problem_at(text)
    if found is None or where in doc.flagged:
        return
    message, line = found
    doc.flagged.add(where)
    doc.problems.append(Problem(doc.path, *_line_of_value(doc, where, line), _say(where, message)))


def _line_of_value(doc: _Document, where: Where, line: int) -> tuple[int, int]:
    """Where line ``line`` (from 0) of a string value is in the file: exact in a literal block (``|``), whose
    lines are the file's; elsewhere the value's start."""
    entry = doc.nodes.get(where)
    node = entry[1] if entry else None
    buffer = getattr(node.start_mark, "buffer", None) if node else None
    if not isinstance(node, ScalarNode) or node.style != "|" or not isinstance(buffer, str) or line < 0:
        return doc.position(where)
    lines = buffer.split("\n")
    number = node.start_mark.line + 1 + line  # from 0; the block's text starts below its `|`
    if number >= len(lines):
        return doc.position(where)
    text = lines[number]
    return number + 1, len(text) - len(text.lstrip(" ")) + 1


def _place(doc: _Document, where: Where, line: int, column: int) -> tuple[int, int]:
    """Where line ``line``, column ``column`` (from 0) of a string value is in the file: exact on a value's
    first line when it is plain or quoted, and in a literal block (``|``); elsewhere the line's start."""
    entry = doc.nodes.get(where)
    node = entry[1] if entry else None
    buffer = getattr(node.start_mark, "buffer", None) if node else None
    if not isinstance(node, ScalarNode) or not isinstance(buffer, str):
        return doc.position(where)
    file_lines, lines = buffer.split("\n"), node.value.split("\n")
    found = None
    if node.style == "|" and line < len(lines):
        number, _ = _line_of_value(doc, where, line)
        # The block's indentation is what the file's line has before the value's line.
        found = number, len(file_lines[number - 1]) - len(lines[line]) + column + 1
    elif line == 0 and node.style in (None, "'", '"') and node.start_mark.line == node.end_mark.line:
        found = node.start_mark.line + 1, node.start_mark.column + 1 + (node.style is not None) + column
    # Escapes in a quoted value, or a block's first line, move the text: then the value's start.
    if found and file_lines[found[0] - 1][found[1] - 1 : found[1]] == "{":
        return found
    return doc.position(where)


def _check_names(doc: _Document, where: Where, text: str, expression: bool = False) -> None:
    """Every unknown name, filter or test in a template (an expression, with ``expression``), each at its
    tag; said only where nothing else was."""
    if where in doc.flagged:
        return
    found = name_problems("{{ " + text + " }}" if expression else text)
    for problem in found:
        line, column = doc.position(where) if expression else _place(doc, where, problem.line, problem.column)
        doc.problems.append(Problem(doc.path, line, column, _say(where, problem.message)))
    if found:
        doc.flagged.add(where)


def _nginx_templates(home: Path) -> tuple[Path, str]:
    """The directory the nginx wrapper renders templates from, and how messages name it."""
    directory = nginx_templates_dir(home)
    shown = NGINX_TEMPLATES if directory == home / NGINX_TEMPLATES else str(directory)
    return directory, shown


def _nginx_template_problem(name: str, home: Path) -> str | None:
    """Why an nginx step's template cannot be used, or None; the wrapper checks again when it runs.

    The wrapper's directory comes first, runner's shipped templates after it: runner setup copies those
    into the root-owned directory the wrapper reads.
    """
    own, own_shown = _nginx_templates(home)
    builtin = shipped.path(shipped.NGINX_TEMPLATES).resolve()
    found = [
        (path, shown)
        for directory, shown in ((own.resolve(), own_shown), (builtin, str(builtin)))
        if (path := (directory / name).resolve()).is_relative_to(directory) and path.is_file()
    ]
    if not found:
        return f"template '{name}' not found in {own_shown}/"
    path, shown = found[0]
    try:
        problem = syntax_problem(path.read_text())
    except OSError as exc:
        return f"template '{name}' in {shown}/ cannot be read: {exc.strerror}"
    except UnicodeDecodeError:
        return f"template '{name}' in {shown}/ is not UTF-8 text"
    return f"template '{name}' in {shown}/: {problem}" if problem else None


def _check(doc: _Document, home: Path) -> None:
    """What the schema cannot say: globs, durations, templates, paths, unique names."""
    data = doc.data
    on = data.get("on")
    if isinstance(on, dict):
        for key in ("branches", "tags", "paths"):
            _check_globs(doc, on.get(key), ("on", key))
    if "timeout" in data:
        _check_duration(doc, data["timeout"], ("timeout",))
    _check_env(doc, data.get("env"), ("env",))
    steps = data.get("steps")
    if isinstance(steps, list):
        names: dict[str, int] = {}
        for index, step in enumerate(steps):
            if isinstance(step, dict):
                _check_step(doc, step, ("steps", index), names)
                nginx = step.get("nginx")
                if isinstance(nginx, dict) and isinstance(nginx.get("template"), str):
                    where: Where = ("steps", index, "nginx", "template")
                    doc.check(where, _nginx_template_problem(nginx["template"], home))


def _default_step_name(step_type: str, args: Any) -> str:
    if step_type == "run":
        command = args if isinstance(args, str) else " ".join(str(arg) for arg in args)
        # Masked before it is cut: a cut inside a URL's userinfo would leave part of a token unmasked.
        return "run: " + mask(" ".join(command.split()))[:DEFAULT_NAME_LENGTH].rstrip()
    return step_type


def _filter(on: Mapping[str, Any], key: str) -> Filter | None:
    return Filter(on[key]) if key in on else None


def _build(doc: _Document, name: str, home: Path) -> Pipeline:
    data = doc.data
    on = data["on"]
    steps = []
    for index, step in enumerate(data["steps"]):
        (step_type,) = (key for key in step if key in STEP_TYPES)
        args = step[step_type]
        if step_type == "git" and args is None:
            args = {}
        steps.append(
            StepSpec(
                type=step_type,
                args=args,
                name=step.get("name") or _default_step_name(step_type, args),
                timeout=parse_duration(step["timeout"]) if "timeout" in step else None,
                env=dict(step.get("env", {})),
                cwd=step.get("cwd"),
                when=step.get("when"),
                line=doc.position(("steps", index))[0],
            )
        )
    return Pipeline(
        name=name,
        path=doc.path,
        trigger=Trigger(
            repository=on["repository"],
            events=tuple(on.get("events", DEFAULT_EVENTS)),
            branches=_filter(on, "branches"),
            tags=_filter(on, "tags"),
            paths=_filter(on, "paths"),
        ),
        # Normalised, not resolved: a workdir that is a symlink stays the path the operator wrote.
        workdir=Path(os.path.abspath(home / data["workdir"])),
        env=dict(data.get("env", {})),
        timeout=parse_duration(data["timeout"]) if "timeout" in data else DEFAULT_TIMEOUT,
        steps=tuple(steps),
    )


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


def _yaml_problem(path: Path, text: str, exc: yaml.YAMLError) -> Problem:
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
        return Problem(path, mark.line + 1, mark.column + 1, f"YAML syntax error: {message}{hint}")
    position = getattr(exc, "position", None)
    if isinstance(position, int):
        line = text.count("\n", 0, position) + 1
        column = position - (text.rfind("\n", 0, position) + 1) + 1
        return Problem(path, line, column, f"cannot read the file as YAML: {exc}")
    return Problem(path, 1, 1, f"cannot read the file as YAML: {exc}")


def _load(path: Path, home: Path) -> tuple[list[Problem], Pipeline | None]:
    """Every problem in one file, and the pipeline when there are none."""
    problems: list[Problem] = []
    name = _name_of(path)
    name_problem = _name_problem(name)
    if name_problem:
        problems.append(Problem(path, 1, 1, name_problem))
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return [*problems, Problem(path, 1, 1, f"cannot read the file: {exc.strerror or exc}")], None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        return [*problems, Problem(path, line, column, f"the file is not UTF-8 text: {exc.reason}")], None
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        return [*problems, _yaml_problem(path, text, exc)], None
    if root is None or (isinstance(root, ScalarNode) and root.tag == "tag:yaml.org,2002:null"):
        return [
            *problems,
            Problem(path, 1, 1, "the file is empty: a pipeline needs on, workdir and steps"),
        ], None
    if not isinstance(root, MappingNode):
        mark = root.start_mark
        message = f"the top level must be a mapping of on, workdir, steps, ..., not {_kind(root)}"
        return [*problems, Problem(path, mark.line + 1, mark.column + 1, message)], None

    converter = _Converter()
    doc = _Document(path, converter.convert(root), converter.nodes)
    doc.problems.extend(problems)
    for node, message in converter.problems:
        doc.problems.append(Problem(path, node.start_mark.line + 1, node.start_mark.column + 1, message))
    said = _step_types(doc, doc.data["steps"]) if isinstance(doc.data.get("steps"), list) else set()
    explained = [
        explanation for error in _validator().iter_errors(doc.data) for explanation in _explain(error, said)
    ]
    for where, key, message in explained:
        doc.add(where, message, key=key)
    _check(doc, home)
    if doc.problems:
        unique = dict.fromkeys(doc.problems)
        return sorted(unique, key=lambda p: (p.line, p.column)), None
    return [], _build(doc, name, home)


def load_pipeline(path: Path, home: Path) -> Pipeline:
    """Load one pipeline file; raises PipelineError with every problem in it."""
    problems, pipeline = _load(path, home)
    if pipeline is None:
        raise PipelineError(problems)
    return pipeline


def _duplicate_names(paths: Sequence[Path]) -> list[Problem]:
    by_name: dict[str, list[Path]] = {}
    for path in paths:
        by_name.setdefault(_name_of(path), []).append(path)
    problems = []
    for name, group in by_name.items():
        for path in group if len(group) > 1 else ():
            others = ", ".join(str(other) for other in group if other != path)
            problems.append(
                Problem(
                    path, 1, 1, f"pipeline name '{name}' is also the name of {others}: keep one of the files"
                )
            )
    return problems


def validate(paths: Sequence[Path], home: Path) -> list[Problem]:
    """Every problem in the files, including two files that give the same pipeline name; file by file."""
    paths = list(dict.fromkeys(paths))
    by_file = {path: _load(path, home)[0] for path in paths}
    for problem in _duplicate_names(paths):
        by_file[problem.path].append(problem)
    return [
        problem for found in by_file.values() for problem in sorted(found, key=lambda p: (p.line, p.column))
    ]


def pipeline_files(directory: Path) -> list[Path]:
    """The pipeline files in a directory, sorted; hidden files and editor backups (``name.yaml~``) are not."""
    try:
        entries = list(directory.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(
        path
        for path in entries
        if path.suffix in SUFFIXES and not path.name.startswith(".") and path.is_file()
    )


# The pipelines of a directory --------------------------------------------------------------------------


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return -1


class PipelineSet:
    """The pipelines of a directory, reloaded when files change; an invalid file keeps its last valid version.

    ``reload`` runs in a worker thread while the event loop reads; it builds new dictionaries and swaps them
    in, so a reader sees either the old set or the new one.
    """

    def __init__(self, directory: Path, home: Path) -> None:
        self.directory = directory
        self.home = home
        self._lock = threading.Lock()
        self._signatures: dict[Path, tuple[int, ...]] = {}
        self._valid: dict[Path, Pipeline] = {}
        self._problems: dict[Path, list[Problem]] = {}
        self._conflicts: set[Path] = set()
        self._by_name: dict[str, Pipeline] = {}

    def reload(self) -> list[Problem]:
        """Re-read new and changed files, forget removed ones; returns the problems of every invalid file."""
        with self._lock:
            signatures: dict[Path, tuple[int, ...]] = {}
            # A pipeline is also checked against the templates it names: one refused because its template
            # was missing is read again when templates are added (or renamed, as editors save them).
            templates = _mtime(_nginx_templates(self.home)[0])
            for path in pipeline_files(self.directory):
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue  # removed since it was listed
                except OSError:
                    # Read once, which reports why it cannot be; again when it can be stat'ed.
                    signatures[path] = (-1, -1, -1, -1)
                    continue
                # ctime too: a chmod that makes an unreadable file readable changes nothing else.
                signatures[path] = (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino, templates)
            valid = dict(self._valid)
            problems = dict(self._problems)
            for path in set(self._signatures) - set(signatures):
                if valid.pop(path, None) is not None:
                    logger.info("%s was removed: its pipeline is no longer loaded", path)
                problems.pop(path, None)
            for path, signature in signatures.items():
                if self._signatures.get(path) == signature:
                    continue
                found, pipeline = _load(path, self.home)
                if pipeline is not None:
                    valid[path] = pipeline
                    problems.pop(path, None)
                    logger.info("loaded pipeline %s from %s", pipeline.name, path)
                    continue
                problems[path] = found
                # One line per problem: each is a record of its own in journald and for grep.
                outcome = (
                    "its last valid version stays in force"
                    if path in valid
                    else "it has no valid version: it is not loaded"
                )
                for problem in found:
                    logger.error("invalid pipeline, %s: %s", outcome, problem)
            self._signatures = signatures
            self._valid = valid
            self._problems = problems
            self._by_name, conflicts = self._names(valid)
            return sorted(
                [problem for found in problems.values() for problem in found] + conflicts,
                key=lambda p: (str(p.path), p.line, p.column),
            )

    def _names(self, valid: dict[Path, Pipeline]) -> tuple[dict[str, Pipeline], list[Problem]]:
        by_name: dict[str, Pipeline] = {}
        conflicts: list[Problem] = []
        for path in sorted(valid):
            pipeline = valid[path]
            if pipeline.name in by_name:
                kept = by_name[pipeline.name].path
                conflicts.append(
                    Problem(
                        path,
                        1,
                        1,
                        f"pipeline name '{pipeline.name}' is also the name of {kept}, which is used",
                    )
                )
            else:
                by_name[pipeline.name] = pipeline
        ignored = {problem.path for problem in conflicts}
        for path in ignored - self._conflicts:
            logger.error("%s is ignored: %s", path, next(p.message for p in conflicts if p.path == path))
        self._conflicts = ignored
        return by_name, conflicts

    def get(self, name: str) -> Pipeline | None:
        return self._by_name.get(name)

    def all(self) -> list[Pipeline]:
        return sorted(self._by_name.values(), key=lambda pipeline: pipeline.name)
