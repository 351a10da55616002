"""Loading one pipeline file: the pipeline it describes, or every problem in it.

A pipeline is ``pipelines/<name>.yaml``. Every problem found in one is reported with the file, line and column
of the key or value concerned, all at once, so that a pipeline can be fixed in one pass. Loading never renders
a template: it only checks that each would parse, so that a mistake shows when the file is validated rather
than in the middle of a deployment.

Checking a file (runner/file_checks.py) and building its pipeline are apart: the checks import YAML,
jsonschema and Jinja, which the worker runs in a child process, one for all the files a reload reads, so that
it holds none of them; the child answers a valid file's data, which the worker builds the pipeline from.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runner import check_process
from runner.credentials import mask
from runner.filters import Filter
from runner.notify_checks import notify_targets
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
    name_problem,
    parse_duration,
)
from runner.validation import Checked, Document, PipelineError, Problem

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


def _steps(doc: Document | Checked, listed: str) -> tuple[StepSpec, ...]:
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


def _build(doc: Document | Checked, name: str, home: Path) -> Pipeline:
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


def read(path: Path) -> tuple[list[Problem], str | None]:
    """A file's text; or, when it cannot be read as text, why (and what is wrong with its name)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        problem = Problem(path, 1, 1, f"cannot read the file: {exc.strerror or exc}")
    else:
        try:
            return [], raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = raw.count(b"\n", 0, exc.start) + 1
            column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
            problem = Problem(path, line, column, f"the file is not UTF-8 text: {exc.reason}")
    named = name_problem(path.stem)
    return [*([Problem(path, 1, 1, named)] if named else []), problem], None


def build(path: Path, text: str, home: Path) -> Pipeline:
    """The pipeline of a file whose checks found no problem in ``text``, read again from its YAML: for data
    that JSON cannot carry from the checking child (a date, say, where the schema allows any value)."""
    # Here, not at the top: the worker builds from the child's data and otherwise holds no YAML (0.9 MB).
    import yaml

    from runner.yaml_source import Converter, Loader

    converter = Converter()
    data = converter.convert(yaml.compose(text, Loader=Loader))
    return _build(Document(path, data, converter.nodes), path.stem, home)


def load_files(
    paths: list[Path], home: Path, *, in_child: bool
) -> dict[Path, tuple[list[Problem], Pipeline | None]]:
    """Every problem in each file, and its pipeline when there are none; the files checked in this process,
    or (``in_child``) all in one child process."""
    results: dict[Path, tuple[list[Problem], Pipeline | None]] = {}
    texts: dict[Path, str] = {}
    for path in paths:
        problems, text = read(path)
        if text is None:
            results[path] = (problems, None)
        else:
            texts[path] = text
    found: dict[Path, tuple[list[Problem], Document | Checked | None]]
    if in_child:
        found = dict(check_process.check_in_child(texts, home))
    else:
        # Here, not at the top: the worker, which imports this module, checks in a child.
        from runner.file_checks import check_file

        found = {path: check_file(path, text, home) for path, text in texts.items()}
    for path, text in texts.items():
        problems, checked = found[path]
        if problems:
            results[path] = (problems, None)
        elif checked is None:
            results[path] = ([], build(path, text, home))
        else:
            results[path] = ([], _build(checked, path.stem, home))
    return {path: results[path] for path in paths}


def load(path: Path, home: Path) -> tuple[list[Problem], Pipeline | None]:
    """Every problem in one file, and the pipeline when there are none (checked in this process)."""
    return load_files([path], home, in_child=False)[path]


def load_pipeline(path: Path, home: Path) -> Pipeline:
    """Load one pipeline file; raises PipelineError with every problem in it."""
    problems, pipeline = load(path, home)
    if pipeline is None:
        raise PipelineError(problems)
    return pipeline
