"""The pipeline files' checks in a child process: ``python -P -m runner.check_process``, both sides.

The checks (runner/file_checks.py) import jsonschema, which reads every draft's metaschema into its registry,
Jinja, and the YAML they read: 5 to 6 MB that the worker would hold for good to use for a moment at each
reload. The worker hands the files it reads again, all of them at once, to one child: their texts go in on
stdin, as JSON; the problems come back on stdout, as JSON, with each valid file's data and its lists' lines,
which the worker builds the pipeline from. The texts, not the files' names: the child checks exactly what the
worker read. The child answers data and nothing else, read strictly: what it says never becomes code in the
worker.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from runner.validation import LISTS_WITH_LINES, Checked, Problem, lines_of

# Seconds a child may take to check a reload's files: far more than it takes (about 0.3 s, for one or ten).
TIMEOUT = 30.0


class CheckFailed(Exception):
    """The child did not answer: why, in words."""


def _plain(value: Any) -> bool:
    """Whether JSON carries ``value`` unchanged: mappings of strings, lists, strings, numbers, booleans."""
    if isinstance(value, dict):
        return all(isinstance(key, str) and _plain(item) for key, item in value.items())
    if isinstance(value, list):
        return all(_plain(item) for item in value)
    return value is None or isinstance(value, str | int | float)


def _lines(data: dict[str, Any], lines: Any) -> dict[str, list[int]]:
    """A valid file's lines of its lists' items, as the child answered them, read strictly."""
    wanted = {key: len(data[key]) for key in LISTS_WITH_LINES if isinstance(data.get(key), list)}
    if not isinstance(lines, dict) or set(lines) != set(wanted):
        raise CheckFailed("it answered the lines of other lists than the file's")
    for key, count in wanted.items():
        items = lines[key]
        if not isinstance(items, list) or len(items) != count or not all(type(n) is int for n in items):
            raise CheckFailed(f"it answered other lines than the items of {key}")
    return lines


def _read(path: Path, answer: Any) -> tuple[list[Problem], Checked | None]:
    """One file's answer: [problems, data, lines]; data is null when the file has problems, or when JSON
    could not carry it (the worker then reads the file's YAML itself)."""
    if not isinstance(answer, list) or len(answer) != 3:
        raise CheckFailed(f"it answered something other than the problems of {path}")
    problems, data, lines = answer
    if not isinstance(problems, list) or not all(
        isinstance(p, list) and len(p) == 3 and [type(v) for v in p] == [int, int, str] for p in problems
    ):
        raise CheckFailed(f"it answered something other than the problems of {path}")
    if problems or data is None:
        return [Problem(path, line, column, message) for line, column, message in problems], None
    if not isinstance(data, dict):
        raise CheckFailed(f"it answered something other than the data of {path}")
    return [], Checked(path, data, _lines(data, lines))


def _run_child(request: bytes) -> bytes:
    command = [sys.executable, "-P", "-m", "runner.check_process"]
    try:
        # close_fds (the default): the child holds no descriptor of the worker's but its three pipes.
        done = subprocess.run(command, input=request, capture_output=True, timeout=TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise CheckFailed(f"it did not answer within {TIMEOUT:g} s") from None
    except OSError as exc:
        raise CheckFailed(f"it could not start: {exc.strerror or exc}") from None
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        said = f": {lines[-1]}" if lines else ""
        raise CheckFailed(f"it exited with status {done.returncode}{said}")
    return done.stdout


def check_in_child(texts: dict[Path, str], home: Path) -> dict[Path, tuple[list[Problem], Checked | None]]:
    """Every problem in each file's text, found by one child process, and a valid file's data; when the child
    fails, each file has one problem that says why, so that a file is never taken as valid unchecked."""
    if not texts:
        return {}
    paths = list(texts)
    request = {"home": str(home), "files": [[str(path), texts[path]] for path in paths]}
    try:
        answer = json.loads(_run_child(json.dumps(request).encode()))
        if not isinstance(answer, list) or len(answer) != len(paths):
            raise CheckFailed("it answered something other than the problems of each file")
        return {path: _read(path, file_answer) for path, file_answer in zip(paths, answer, strict=True)}
    except (CheckFailed, ValueError) as exc:
        reason = str(exc) if isinstance(exc, CheckFailed) else "its answer is not JSON"
        message = (
            f"cannot check the file: the checking process (python -m runner.check_process) failed: {reason}"
        )
        return {path: ([Problem(path, 1, 1, message)], None) for path in paths}


def main() -> None:
    """The child: checks the files of the request on stdin, answers their problems on stdout."""
    from runner.file_checks import check_file

    request = json.load(sys.stdin)
    home = Path(request["home"])
    answer = []
    for path, text in request["files"]:
        problems, doc = check_file(Path(path), text, home)
        if doc is None or not _plain(doc.data):
            answer.append([[[p.line, p.column, p.message] for p in problems], None, None])
        else:
            answer.append([[], doc.data, lines_of(doc)])
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
