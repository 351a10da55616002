"""Loading one pipeline file: the pipeline it describes, or every problem in it.

A pipeline is ``pipelines/<name>.yaml``. Every problem found in one is reported with the file, line and column
of the key or value concerned, all at once, so that a pipeline can be fixed in one pass. Loading never renders
a template: it only checks that each would parse, so that a mistake shows when the file is validated rather
than in the middle of a deployment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, ScalarNode

from runner.checks import check_values, name_problem
from runner.credentials import mask
from runner.filters import Filter
from runner.git_checks import check_git_access
from runner.notify_checks import check_notify, notify_targets
from runner.pipeline import (
    DEFAULT_EVENTS,
    DEFAULT_KEEP,
    DEFAULT_TIMEOUT,
    HEALTH_INTERVAL,
    HEALTH_RETRIES,
    HEALTH_TIMEOUT,
    STEP_TYPES,
    Concurrency,
    GitHubDeployment,
    GitHubReporting,
    HealthCheck,
    Pipeline,
    Release,
    StepSpec,
    Trigger,
    parse_duration,
)
from runner.pipeline_secrets import check_secrets
from runner.validation import Document, PipelineError, Problem, check_schema
from runner.yaml_source import Converter, Loader, kind, yaml_error

DEFAULT_NAME_LENGTH = 40


def _default_step_name(step_type: str, args: Any) -> str:
    if step_type == "run":
        command = args if isinstance(args, str) else " ".join(str(arg) for arg in args)
        # Masked before it is cut: a cut inside a URL's userinfo would leave part of a token unmasked.
        return "run: " + mask(" ".join(command.split()))[:DEFAULT_NAME_LENGTH].rstrip()
    return step_type


def _filter(on: Mapping[str, Any], key: str) -> Filter | None:
    return Filter(on[key]) if key in on else None


def _github(name: str, github: Mapping[str, Any]) -> GitHubReporting:
    deployment = github.get("deployment")
    return GitHubReporting(
        context=github.get("context") or f"runner/{name}",
        statuses=github.get("statuses", True),
        deployment=None
        if deployment is None
        else GitHubDeployment(
            environment=deployment["environment"],
            production_environment=deployment.get("production_environment"),
            transient_environment=deployment.get("transient_environment"),
            url=deployment.get("url"),
        ),
    )


def _steps(doc: Document, listed: str) -> tuple[StepSpec, ...]:
    steps = []
    for index, step in enumerate(doc.data.get(listed) or ()):
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
                line=doc.position((listed, index))[0],
                cancel=step.get("cancel", True),
                secrets=dict(step.get("secrets", {})),
            )
        )
    return tuple(steps)


def _release(settings: Mapping[str, Any] | None) -> Release | None:
    if settings is None:
        return None
    health = settings.get("health")
    return Release(
        keep=settings.get("keep", DEFAULT_KEEP),
        shared=tuple(settings.get("shared", ())),
        health=None
        if health is None
        else HealthCheck(
            url=health.get("url"),
            run=health.get("run"),
            expect=health.get("expect", 200),
            timeout=parse_duration(health["timeout"]) if "timeout" in health else HEALTH_TIMEOUT,
            retries=health.get("retries", HEALTH_RETRIES),
            interval=parse_duration(health["interval"]) if "interval" in health else HEALTH_INTERVAL,
        ),
    )


def _build(doc: Document, name: str, home: Path) -> Pipeline:
    data = doc.data
    on = data["on"]
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
        steps=_steps(doc, "steps"),
        github=_github(name, data.get("github") or {}),
        concurrency=_concurrency(data.get("concurrency", {})),
        notify=notify_targets(doc, home),
        secrets=dict(data.get("secrets", {})),
        release=_release(data.get("release")),
        activate=_steps(doc, "activate"),
    )


def _concurrency(settings: Mapping[str, Any]) -> Concurrency:
    default = Concurrency()
    return Concurrency(
        cancel_in_progress=settings.get("cancel-in-progress", default.cancel_in_progress),
        queue=settings.get("queue", default.queue),
        group=settings.get("group", default.group),
    )


def load(path: Path, home: Path) -> tuple[list[Problem], Pipeline | None]:
    """Every problem in one file, and the pipeline when there are none."""
    problems: list[Problem] = []
    name = path.stem
    problem = name_problem(name)
    if problem:
        problems.append(Problem(path, 1, 1, problem))
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
    return [], _build(doc, name, home)


def load_pipeline(path: Path, home: Path) -> Pipeline:
    """Load one pipeline file; raises PipelineError with every problem in it."""
    problems, pipeline = load(path, home)
    if pipeline is None:
        raise PipelineError(problems)
    return pipeline
