"""Problems in a pipeline file, each at its line and column; where a value is, in words; the loaded file."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner import shipped

if TYPE_CHECKING:
    # Types only: the worker builds pipelines from checked data (Checked) and imports no YAML.
    from yaml.nodes import Node

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


# The lists of steps: built before a release's switch, and (with ``release:``) activating after it.
STEP_LISTS = {"steps": "step", "activate": "activate step"}


def is_step(where: Where) -> bool:
    return len(where) == 2 and where[0] in STEP_LISTS and isinstance(where[1], int)


def _dotted(where: Where) -> str:
    text = ""
    for part in where:
        if isinstance(part, int):
            text += f" item {part + 1}"
        else:
            text += ("." if text and not text[-1].isdigit() else " " if text else "") + part
    return text


def label_of(where: Where) -> str:
    """Where a value is, for a message: ``on.branches item 2``, ``step 3 git.clean``, ``env.PORT``."""
    if len(where) >= 2 and where[0] in STEP_LISTS and isinstance(where[1], int):
        rest = _dotted(where[2:])
        return f"{STEP_LISTS[str(where[0])]} {where[1] + 1}" + (f" {rest}" if rest else "")
    return _dotted(where)


def say(where: Where, text: str) -> str:
    label = label_of(where)
    return f"{label}: {text}" if label else text


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


# The lists whose items' lines a pipeline keeps (steps, notify targets), for what the worker logs and says.
LISTS_WITH_LINES = ("steps", "activate", "notify")


class Checked:
    """A file its checks found valid, as the worker builds its pipeline: its data, and the line of each item
    of its lists of steps and notify targets (the worker reads no YAML: the checking child read it)."""

    def __init__(self, path: Path, data: dict[str, Any], lines: Mapping[str, Sequence[int]]) -> None:
        self.path = path
        self.data = data
        self.lines = lines

    def position(self, where: Where, key: bool = False) -> tuple[int, int]:
        """The line of a list's item (``("steps", 2)``), column 1: all that building a pipeline asks."""
        listed, index = where
        return self.lines[str(listed)][int(index)], 1


def lines_of(doc: Document) -> dict[str, list[int]]:
    """The line of each item of the document's lists of steps and notify targets, for a Checked."""
    return {
        key: [doc.position((key, index))[0] for index in range(len(doc.data[key]))]
        for key in LISTS_WITH_LINES
        if isinstance(doc.data.get(key), list)
    }
