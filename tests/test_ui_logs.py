"""What the run page shows of a log (runner/ui_logs.py), on real files: the end of a large one, lines by
step, a line still being written left for later, and no path outside the logs directory."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from runner.ui_logs import MAX_SHOWN_LINES, log_file, read_shown


def line(second: int, stream: str, text: str) -> bytes:
    return f"2026-11-25T11:43:{second:02d}.000000Z {stream:<6}| {text}\n".encode()


def step(position: int, start: int, end: int) -> Any:
    at = datetime(2026, 11, 25, 11, 43, tzinfo=UTC)
    # What the log's sections read of a step's row.
    return SimpleNamespace(
        position=position,
        name=f"s{position}",
        status="failed",
        started_at=at.replace(second=start),
        finished_at=at.replace(second=end),
        duration=float(end - start),
    )


def test_each_line_belongs_to_the_step_that_printed_it(tmp_path: Path) -> None:
    log = tmp_path / "1.log"
    log.write_bytes(
        line(1, "runner", "run 1 of pipeline app: manual refs/heads/main")
        + line(2, "runner", "step 1 (build) starts")
        + line(3, "out", "built <ok>")
        + line(4, "runner", "step 1 (build) succeeded")
        + line(5, "runner", "step 2 (ship (fast)) starts")
        + line(6, "err", "step 9 (fake) starts")  # a step's own output, not runner's line
        + line(7, "runner", "step 2 (ship (fast)) failed: exited with status 3")
        + line(8, "runner", "run finished")
    )
    shown = read_shown(log, [])
    assert [(entry.stream, entry.step) for entry in shown.lines] == [
        ("runner", None),
        ("runner", 1),
        ("out", 1),
        ("runner", 1),
        ("runner", 2),
        ("err", 2),
        ("runner", 2),
        ("runner", None),
    ]
    assert shown.lines[2].text == "built <ok>" and shown.lines[2].time == "2026-11-25T11:43:03.000000Z"
    assert (shown.truncated, shown.end_offset, shown.size) == (False, log.stat().st_size, log.stat().st_size)


def test_a_line_still_being_written_waits_for_its_end(tmp_path: Path) -> None:
    log = tmp_path / "1.log"
    whole = line(1, "out", "one")
    log.write_bytes(whole + b"2026-11-25T11:43:02.000000Z out   | hal")
    shown = read_shown(log, [])
    assert [entry.text for entry in shown.lines] == ["one"]
    assert shown.end_offset == len(whole) and not shown.truncated


def test_a_large_log_shows_only_its_end_from_a_whole_line_with_its_step(tmp_path: Path) -> None:
    log = tmp_path / "1.log"
    with log.open("wb") as out:
        out.write(line(1, "runner", "step 1 (build) starts"))
        for number in range(60_000):
            out.write(line(2, "out", f"line {number} " + "x" * 40))
        out.write(line(9, "runner", "step 1 (build) failed: exited with status 1"))
    size = log.stat().st_size
    assert size > 3 * 1024 * 1024
    shown = read_shown(log, [step(1, 1, 9)])
    assert shown.truncated and shown.size == size and shown.end_offset == size
    assert len(shown.lines) == MAX_SHOWN_LINES
    assert shown.lines[-1].text == "step 1 (build) failed: exited with status 1"
    assert shown.lines[0].text.startswith(f"line {60_000 - MAX_SHOWN_LINES + 1} ")
    # Shown from its middle, the lines still know their step: the one going on at the first line's time.
    assert {entry.step for entry in shown.lines} == {1}

    # A byte limit below the line limit cuts at a line's start too.
    small = read_shown(log, [step(1, 1, 9)], limit=1000)
    assert small.truncated and 0 < len(small.lines) < 30
    assert all(entry.time for entry in small.lines), small.lines[0]


def test_a_log_path_outside_the_logs_directory_is_not_read(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    (logs / "app").mkdir(parents=True)
    inside = logs / "app" / "1.log"
    inside.write_bytes(line(1, "out", "x"))
    outside = tmp_path / "ui-users"
    outside.write_text("alice:$2b$...\n")
    assert log_file(logs, str(inside)) == inside.resolve()
    assert log_file(logs, str(outside)) is None
    assert log_file(logs, str(logs / "app" / ".." / ".." / "ui-users")) is None
    (logs / "app" / "2.log").symlink_to(outside)
    assert log_file(logs, str(logs / "app" / "2.log")) is None
    assert log_file(logs, str(logs / "app" / "missing.log")) is None
    assert log_file(logs, None) is None
