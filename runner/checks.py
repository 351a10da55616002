"""What a pipeline's schema cannot say: names, globs, durations, templates, paths, unique step names."""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from yaml.nodes import ScalarNode

from runner import shipped
from runner.code_variables import code_variable
from runner.config import nginx_templates_dir
from runner.filters import compile_glob
from runner.injection import argv_template_problems, shell_template_problem_at
from runner.pipeline import parse_duration
from runner.templating import SECRETS, has_expression, name_problems, syntax_problem
from runner.validation import Document, Problem, say
from runner.yaml_source import Where

# Where the nginx step's templates are on a development machine, under RUNNER_HOME; in production, the
# root-owned copy runner setup installs (RUNNER_NGINX_TEMPLATES, see config.nginx_templates_dir).
NGINX_TEMPLATES = "templates/nginx"


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


def _check_globs(doc: Document, patterns: Any, where: Where) -> None:
    if not isinstance(patterns, list):
        return
    for index, pattern in enumerate(patterns):
        if isinstance(pattern, str):
            try:
                compile_glob(pattern)
            except ValueError as exc:
                doc.check((*where, index), str(exc))


def _check_duration(doc: Document, value: Any, where: Where) -> None:
    if isinstance(value, str | int) and not isinstance(value, bool):
        try:
            parse_duration(value)
        except ValueError as exc:
            doc.check(where, str(exc))


def _check_env(doc: Document, env: Any, where: Where) -> None:
    if isinstance(env, dict):
        for key, value in env.items():
            if isinstance(value, str):
                doc.check((*where, key), syntax_problem(value) or _env_problem(key, value))
                _check_names(doc, (*where, key), value, secrets=True)


def _env_problem(name: str, value: str) -> str | None:
    """Why a variable the shell or a program reads as code may not take its value from a template."""
    why = code_variable(name)
    if why is None or not has_expression(value):
        return None
    return (
        f"{name} may not hold an expression: {why}, so a value from an event would run as code; set it to a "
        "fixed value, and let a step read the event's value from its own variable (e.g. $RUNNER_BRANCH)"
    )


def _check_step(doc: Document, step: dict[str, Any], where: Where, names: dict[str, int]) -> None:
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
            # A secret in an nginx var reaches the wrapper on its standard input, never a log.
            _check_names(doc, at, text, secrets=at[2:4] == ("nginx", "vars"))
    if isinstance(step.get("run"), list):
        for index, problem in argv_template_problems(step["run"]).items():
            doc.check((*where, "run", index), problem)


def _check_run(doc: Document, where: Where, text: str) -> None:
    """A run string is a shell line, which may not read a value again as code; said on the line concerned."""
    found = shell_template_problem_at(text)
    if found is None or where in doc.flagged:
        return
    message, line = found
    doc.flagged.add(where)
    doc.problems.append(Problem(doc.path, *_line_of_value(doc, where, line), say(where, message)))


def _line_of_value(doc: Document, where: Where, line: int) -> tuple[int, int]:
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


def _place(doc: Document, where: Where, line: int, column: int) -> tuple[int, int]:
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


def _check_names(
    doc: Document, where: Where, text: str, expression: bool = False, secrets: bool = False
) -> None:
    """Every unknown name, filter or test in a template (an expression, with ``expression``), each at its
    tag; said only where nothing else was. ``secrets``: the template may use the pipeline's secrets."""
    if where in doc.flagged:
        return
    found = name_problems("{{ " + text + " }}" if expression else text, (SECRETS,) if secrets else ())
    for problem in found:
        line, column = doc.position(where) if expression else _place(doc, where, problem.line, problem.column)
        doc.problems.append(Problem(doc.path, line, column, say(where, problem.message)))
    if found:
        doc.flagged.add(where)


def nginx_templates(home: Path) -> tuple[Path, str]:
    """The directory the nginx wrapper renders templates from, and how messages name it."""
    directory = nginx_templates_dir(home)
    shown = NGINX_TEMPLATES if directory == home / NGINX_TEMPLATES else str(directory)
    return directory, shown


def _nginx_template_problem(name: str, home: Path) -> str | None:
    """Why an nginx step's template cannot be used, or None; the wrapper checks again when it runs.

    The wrapper's directory comes first, runner's shipped templates after it: runner setup copies those
    into the root-owned directory the wrapper reads.
    """
    own, own_shown = nginx_templates(home)
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


def check_values(doc: Document, home: Path) -> None:
    """What the schema cannot say: globs, durations, templates, paths, unique names."""
    data = doc.data
    on = data.get("on")
    if isinstance(on, dict):
        for key in ("branches", "tags", "paths"):
            _check_globs(doc, on.get(key), ("on", key))
    if "timeout" in data:
        _check_duration(doc, data["timeout"], ("timeout",))
    _check_env(doc, data.get("env"), ("env",))
    # One name space: a run records its build and activate steps side by side.
    names: dict[str, int] = {}
    for listed in ("steps", "activate"):
        steps = data.get(listed)
        if not isinstance(steps, list):
            continue
        for index, step in enumerate(steps):
            if isinstance(step, dict):
                _check_step(doc, step, (listed, index), names)
                nginx = step.get("nginx")
                if isinstance(nginx, dict) and isinstance(nginx.get("template"), str):
                    where: Where = (listed, index, "nginx", "template")
                    doc.check(where, _nginx_template_problem(nginx["template"], home))
                if listed == "activate" and "git" in step:
                    doc.check((listed, index, "git"), "a git step checks a release out: it belongs in steps")
    _check_release(doc, data)


def _check_release(doc: Document, data: dict[str, Any]) -> None:
    """``activate`` needs ``release``; shared paths stay inside the release; the health check's values."""
    release = data.get("release")
    if "activate" in data and not isinstance(release, dict):
        doc.check(("activate",), "activate steps run after a release's switch: add `release: {keep: 5}`")
    if not isinstance(release, dict):
        return
    shared = release.get("shared")
    for index, path in enumerate(shared if isinstance(shared, list) else ()):
        if isinstance(path, str):
            problem = _cwd_problem(path) or (None if posixpath.normpath(path) != "." else "must name a path")
            doc.check(("release", "shared", index), problem and problem.replace("workdir", "release"))
    health = release.get("health")
    if isinstance(health, dict):
        if ("url" in health) == ("run" in health):
            doc.check(("release", "health"), "a health check is either `url: http://...` or `run: COMMAND`")
        for key in ("timeout", "interval"):
            if key in health:
                _check_duration(doc, health[key], ("release", "health", key))
        if isinstance(health.get("run"), str):
            _check_run(doc, ("release", "health", "run"), health["run"])
        url = health.get("url")
        if isinstance(url, str) and "@" in urlsplit(url).netloc:
            # urllib would take user:password@ for part of the host name, and the check would always fail.
            message = "a health URL holds no credentials: check an address that needs no login"
            doc.check(("release", "health", "url"), message)
