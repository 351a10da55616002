"""A run's log as the run page shows it: its last part (a log may be huge), line by line, by step.

A log line is ``TIME STREAM| TEXT`` (runner/steps/base.py's RunLog); runner's own ``step N (NAME) starts``
lines say where each step's output begins. Only the last ``MAX_SHOWN_BYTES`` are read, never the whole file;
the raw log (``{ui}/runs/ID/log``) has it all.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Row

from runner.timefmt import stamp

# What the page shows of a log at most: the end, where a failure is.
MAX_SHOWN_BYTES = 1024 * 1024
MAX_SHOWN_LINES = 5000
_LINE = re.compile(r"(?P<time>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z) (?P<stream>\S+)\s*\| ?(?P<text>.*)", re.S)
_STEP_STARTS = re.compile(r"step (?P<position>\d+) \(.*\) starts$", re.S)
# runner's line after a step: "step N (NAME) STATUS[: DETAIL]"; what follows is the run's again.
_STEP_ENDS = re.compile(
    r"step (?P<position>\d+) \(.*\) (succeeded|failed|timed_out|cancelled|skipped)(: |$)", re.S
)


@dataclass(frozen=True)
class LogLine:
    time: str
    stream: str
    text: str
    # The position of the step whose output it is, None before the first step.
    step: int | None


@dataclass(frozen=True)
class ShownLog:
    """The lines shown; whether the log's beginning is left out; the byte offset after the last line shown
    (where a live follow goes on); the whole log's size."""

    lines: list[LogLine]
    truncated: bool
    end_offset: int
    size: int


def log_file(logs_dir: Path, log_path: str | None) -> Path | None:
    """The run's log file, if it is one inside ``logs_dir``: a path the database holds is not followed
    elsewhere."""
    if not log_path:
        return None
    path = Path(log_path).resolve()
    if not path.is_relative_to(logs_dir.resolve()) or not path.is_file():
        return None
    return path


def read_shown(path: Path, steps: Sequence[Row[Any]], limit: int = MAX_SHOWN_BYTES) -> ShownLog:
    """The complete lines of the last ``limit`` bytes of ``path`` (a line still being written is left for
    the next read), each with its step."""
    with path.open("rb") as log:
        size = log.seek(0, 2)
        start = max(0, size - limit)
        log.seek(start)
        data = log.read(size - start)
    if start > 0:
        # The first line read is most likely a line's end: it starts after the first newline.
        cut = data.find(b"\n") + 1
        data, start = data[cut:], start + cut
    complete = data[: data.rfind(b"\n") + 1]
    cut = _last_lines(complete, MAX_SHOWN_LINES)
    complete, start = complete[cut:], start + cut
    lines = _parse(complete.decode("utf-8", errors="replace").splitlines(), steps)
    return ShownLog(lines, start > 0, start + len(complete), size)


def _last_lines(data: bytes, count: int) -> int:
    """Where the last ``count`` lines of ``data`` (whole lines, ending in a newline) begin."""
    end = len(data) - 1
    for _ in range(count):
        end = data.rfind(b"\n", 0, end)
        if end < 0:
            return 0
    return end + 1


def _parse(raw_lines: list[str], steps: Sequence[Row[Any]]) -> list[LogLine]:
    lines = []
    step = None
    for index, raw in enumerate(raw_lines):
        match = _LINE.fullmatch(raw)
        if match is None:
            lines.append(LogLine("", "", raw, step))
            continue
        if index == 0:
            step = _step_at(match["time"], steps)
        ended = False
        if match["stream"] == "runner":
            if starts := _STEP_STARTS.match(match["text"]):
                step = int(starts["position"])
            elif (ends := _STEP_ENDS.match(match["text"])) and int(ends["position"]) == step:
                ended = True
        lines.append(LogLine(match["time"], match["stream"], match["text"], step))
        if ended:
            step = None
    return lines


def _step_at(time: str, steps: Sequence[Row[Any]]) -> int | None:
    """The step going on at ``time`` (a log line's), for a log shown from its middle."""
    going_on = [step.position for step in steps if stamp(step.started_at) <= time <= stamp(step.finished_at)]
    return going_on[-1] if going_on else None
