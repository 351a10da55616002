"""The pipeline files' checks in a child process: ``python -P -m runner.check_process``, both sides.

The checks (runner/file_checks.py) import jsonschema, which reads every draft's metaschema into its registry,
and Jinja: 4 to 5 MB that the worker would hold for good to use them for a moment at each reload. The worker
hands the files it reads again, all of them at once, to one child: their texts go in on stdin, as JSON, and
the problems come back on stdout, as JSON; the files' texts, not their names, so that the child checks
exactly what the worker then builds. The child answers data and nothing else: what it says never becomes code
in the worker, which reads numbers and strings from it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from runner.validation import Problem

# Seconds a child may take to check a reload's files: far more than it takes (a fifth of a second for a few).
TIMEOUT = 30.0


class CheckFailed(Exception):
    """The child did not answer: why, in words."""


def _problems(answer: Any, paths: list[Path]) -> dict[Path, list[Problem]]:
    """The child's answer, read strictly: a list of problems for each file, each [line, column, message]."""
    if not isinstance(answer, list) or len(answer) != len(paths):
        raise CheckFailed("it answered something other than the problems of each file")
    found: dict[Path, list[Problem]] = {}
    for path, problems in zip(paths, answer, strict=True):
        if not isinstance(problems, list) or not all(
            isinstance(p, list) and len(p) == 3 and [type(v) for v in p] == [int, int, str] for p in problems
        ):
            raise CheckFailed(f"it answered something other than the problems of {path}")
        found[path] = [Problem(path, line, column, message) for line, column, message in problems]
    return found


def _run_child(request: bytes) -> bytes:
    command = [sys.executable, "-P", "-m", "runner.check_process"]
    try:
        # close_fds (the default): the child holds no descriptor of the worker's but its three pipes.
        done = subprocess.run(command, input=request, capture_output=True, timeout=TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise CheckFailed(f"it did not answer within {TIMEOUT:.0f} s") from None
    except OSError as exc:
        raise CheckFailed(f"it could not start: {exc.strerror or exc}") from None
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        said = f": {lines[-1]}" if lines else ""
        raise CheckFailed(f"it exited with status {done.returncode}{said}")
    return done.stdout


def check_in_child(texts: dict[Path, str], home: Path) -> dict[Path, list[Problem]]:
    """Every problem in each file's text, found by one child process; when the child fails, each file has
    one problem that says why, so that a file is never taken as valid unchecked."""
    if not texts:
        return {}
    paths = list(texts)
    request = {"home": str(home), "files": [[str(path), texts[path]] for path in paths]}
    try:
        answer = _run_child(json.dumps(request).encode())
        return _problems(json.loads(answer), paths)
    except (CheckFailed, ValueError) as exc:
        reason = str(exc) if isinstance(exc, CheckFailed) else "its answer is not JSON"
        message = (
            f"cannot check the file: the checking process (python -m runner.check_process) failed: {reason}"
        )
        return {path: [Problem(path, 1, 1, message)] for path in paths}


def main() -> None:
    """The child: checks the files of the request on stdin, answers their problems on stdout."""
    from runner.file_checks import file_problems

    request = json.load(sys.stdin)
    home = Path(request["home"])
    answer = [
        [[p.line, p.column, p.message] for p in file_problems(Path(path), text, home)]
        for path, text in request["files"]
    ]
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
