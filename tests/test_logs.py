"""Server logs: one line per event; under systemd (``JOURNAL_STREAM``) a syslog priority, no stamp of its own.

A real ``runner up`` on a real bare repository: its start, Hypercorn's "Running on", a routed delivery, a
run that fails, an invalid pipeline with two problems and its stop, with and without ``JOURNAL_STREAM``.
The formatter's one-line tracebacks are checked on a real exception.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import pytest
from support import FINISHED, Server, run_cli, runner_env, wait_for
from test_worker import ZERO_COMMIT, GitRepo, push_payload

from runner.store import Store
from runner.timefmt import LogFormatter

PRIORITY = {"CRITICAL": 2, "ERROR": 3, "WARNING": 4, "INFO": 6, "DEBUG": 7}
LEVEL = "|".join(PRIORITY)
PLAIN_LINE = re.compile(rf"^\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{{6}}Z ({LEVEL}) (\S+): (.*)$")
JOURNAL_LINE = re.compile(rf"^<(\d)>({LEVEL}) (\S+): (.*)$")
# A stamp of a line's own, at its start or after its level: a journald line has none (its message may
# name a time).
STAMPED = re.compile(r"^(<\d>)?(\S+ )?\S*\d\d:\d\d:\d\d")


def run_up(tmp_path: Path, journal: bool) -> tuple[list[tuple[str, str, str]], list[str], Path]:
    """Run ``runner up`` through a failing run and an invalid pipeline; its lines as (level, logger, text).

    Also returns the raw lines, and the invalid pipeline's path.
    """
    home = tmp_path / "home"
    (home / "pipelines").mkdir(parents=True)
    database_url = f"sqlite:///{tmp_path / 'runner.db'}"
    env = runner_env(home, database_url)
    env.pop("JOURNAL_STREAM", None)
    if journal:
        # What systemd sets when stderr is a journald stream (device:inode); runner only needs it set.
        env["JOURNAL_STREAM"] = "8:12345"
    upgraded = run_cli("db", "upgrade", env=env)
    assert upgraded.returncode == 0, upgraded.stderr
    repo = GitRepo(tmp_path / "git")
    head = repo.commit({"version.txt": "one\n"}, "one")
    repo.push()
    (home / "pipelines" / "app.yaml").write_text(
        "on: {repository: acme/app, events: [push], branches: [main]}\n"
        "workdir: checkout\n"
        f"steps:\n  - git: {{remote: {repo.bare}}}\n  - run: exit 3\n"
    )
    bad = home / "pipelines" / "bad.yaml"
    bad.write_text(
        "on: {repository: acme/app, events: [push], branches: [main]}\n"
        "workdir: checkout\n"
        "nosuchkey: 1\n"
        "steps:\n  - run: echo hi\n  - frobnicate: yes\n"
    )
    store = Store(database_url)
    server = Server(home, env, command="up")
    try:
        answer = server.deliver("push", push_payload("refs/heads/main", ZERO_COMMIT, [(head, "one")]))
        assert answer.status == 202, (answer.status, answer.body)
        wait_for(
            lambda: [r for r in store.runs("app", limit=5) if r.status in FINISHED],
            "the run to finish",
            details=server.output,
        )
        # The worker logs the run's end after recording it.
        wait_for(
            lambda: "run 1 of app: " in server.output(), "the run's end in the log", details=server.output
        )
    finally:
        code = server.stop()
        store.close()
    output = server.output()
    assert code == 0, output
    raw = output.split("\n")
    assert raw[-1] == "", f"the output does not end with a line's end: {raw[-1]!r}"
    raw = raw[:-1]
    lines = []
    for line in raw:
        match = (JOURNAL_LINE if journal else PLAIN_LINE).match(line)
        assert match, f"not a log line of the expected form: {line!r}\n{output}"
        if journal:
            prio, level, name, text = match.groups()
            assert int(prio) == PRIORITY[level], line
            assert not STAMPED.match(line), f"a stamp in a journald line: {line!r}"
        else:
            level, name, text = match.groups()
        assert "CTRL + C" not in line, line
        lines.append((level, name, text))
    return lines, raw, bad


def said(lines: list[tuple[str, str, str]], level: str, logger: str, pattern: str) -> list[str]:
    return [text for lv, name, text in lines if (lv, name) == (level, logger) and re.search(pattern, text)]


@pytest.mark.parametrize("journal", [True, False], ids=["journald", "plain"])
def test_runner_up_logs_one_line_per_event_with_its_level(tmp_path: Path, journal: bool) -> None:
    lines, raw, bad = run_up(tmp_path, journal)
    output = "\n".join(raw)
    assert said(lines, "INFO", "runner.worker", r"^worker started"), output
    assert said(lines, "INFO", "hypercorn.error", r"^Running on http://"), output
    assert said(lines, "INFO", "runner.router", r": routed"), output
    # A failed run is the pipeline's outcome: a warning, with its reason.
    assert said(lines, "WARNING", "runner.worker", r"^run 1 of app: failed \(.*3"), output
    assert said(lines, "INFO", "runner.worker", r"^worker stopped$"), output
    # Two problems, two lines, each with its file, line and column.
    problems = said(lines, "ERROR", "runner.pipeline", re.escape(str(bad)))
    assert len(problems) == 2, output
    assert re.search(rf"{re.escape(str(bad))}:3:1: unknown key 'nosuchkey'", problems[0]), problems
    assert re.search(rf"{re.escape(str(bad))}:6:5: step 2: unknown step type 'frobnicate'", problems[1])
    # Nothing went wrong in runner itself.
    assert not [line for line in lines if line[0] in ("ERROR", "CRITICAL") and line[1] != "runner.pipeline"]
    if journal:
        assert all(line.startswith("<") for line in raw)
        assert any(line.startswith("<4>WARNING runner.worker: run 1 of app: failed") for line in raw), output


def exception_record() -> logging.LogRecord:
    try:
        {}["missing"]
    except KeyError:
        return logging.LogRecord(
            "runner.worker", logging.ERROR, __file__, 1, "a\nb %s", ("c\rd",), sys.exc_info()
        )
    raise AssertionError("unreachable")


@pytest.mark.parametrize("journal", [True, False], ids=["journald", "plain"])
def test_a_traceback_and_newlines_stay_in_their_events_line_and_unfold_back(journal: bool) -> None:
    record = exception_record()
    line = LogFormatter(journal=journal).format(record)
    assert "\n" not in line and "\r" not in line, line
    head = "<3>ERROR runner.worker: " if journal else None
    if head is not None:
        assert line.startswith(head), line
    else:
        assert PLAIN_LINE.match(line), line
    text = line.split(" runner.worker: ", 1)[1]
    unfolded = text.replace("\\n", "\n").replace("\\r", "\r")
    lines = unfolded.split("\n")
    assert lines[0:2] == ["a", "b c\rd"], lines
    assert lines[2] == "Traceback (most recent call last):", lines
    assert lines[-1] == "KeyError: 'missing'", lines
    assert '{}["missing"]' in unfolded, unfolded
