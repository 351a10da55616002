"""Every problem in one pipeline file's text: its YAML, the schema's findings, and what the schema cannot say.

The checks import jsonschema and Jinja: ``runner validate`` and ``runner doctor`` run them in their own
process, the worker in a child process (runner/check_process.py), so that it holds neither while it waits.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from yaml.nodes import MappingNode, ScalarNode

from runner.checks import check_values
from runner.git_checks import check_git_access
from runner.notify_checks import check_notify
from runner.pipeline import name_problem
from runner.pipeline_secrets import check_secrets
from runner.schema_check import check_schema
from runner.validation import Document, Problem
from runner.yaml_source import Converter, Loader, kind, yaml_error


def file_problems(path: Path, text: str, home: Path) -> list[Problem]:
    """Every problem in ``text``, read from ``path``: none when the file describes a pipeline."""
    return check_file(path, text, home)[0]


def check_file(path: Path, text: str, home: Path) -> tuple[list[Problem], Document | None]:
    """Every problem in ``text``, read from ``path``; and, when there is none, the loaded document."""
    problems: list[Problem] = []
    problem = name_problem(path.stem)
    if problem:
        problems.append(Problem(path, 1, 1, problem))
    try:
        root = yaml.compose(text, Loader=Loader)
    except yaml.YAMLError as exc:
        return [*problems, Problem(path, *yaml_error(text, exc))], None
    if root is None or (isinstance(root, ScalarNode) and root.tag == "tag:yaml.org,2002:null"):
        return [
            *problems,
            Problem(path, 1, 1, "the file is empty: a pipeline needs on, workdir and steps"),
        ], None
    if not isinstance(root, MappingNode):
        mark = root.start_mark
        message = f"the top level must be a mapping of on, workdir, steps, ..., not {kind(root)}"
        return [*problems, Problem(path, mark.line + 1, mark.column + 1, message)], None

    converter = Converter()
    doc = Document(path, converter.convert(root), converter.nodes)
    doc.problems.extend(problems)
    for node, message in converter.problems:
        doc.problems.append(Problem(path, node.start_mark.line + 1, node.start_mark.column + 1, message))
    check_schema(doc)
    check_values(doc, home)
    check_notify(doc)
    check_git_access(doc)
    check_secrets(doc)
    if doc.problems:
        unique = dict.fromkeys(doc.problems)
        return sorted(unique, key=lambda p: (p.line, p.column)), None
    return [], doc
