"""What the commands print: tables and JSON of deliveries, runs and failed entries, a run's log, a prune,
a catch-up.

A time in a table is in UTC, marked Z, whatever the reader's TZ (the run logs' convention); in JSON it is
the full value, with its offset (see runner.timefmt).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner import log_follow
from runner.config import Config
from runner.lock import worker_alive
from runner.timefmt import iso, shown

# How often `runner logs` asks whether the run it follows has ended, while its log does not say so.
FOLLOW_CHECK = 1.0

if TYPE_CHECKING:
    from sqlalchemy import Row

    from runner.catchup import Pass
    from runner.catchup_finding import Finding
    from runner.failed import FailedEntry
    from runner.retention import Plan
    from runner.store import Store


@contextlib.contextmanager
def listing() -> Iterator[None]:
    """Output a reader may stop reading (``runner runs --json | head -1``): a closed pipe ends it quietly."""
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        # Python's recipe: standard output becomes /dev/null, so that the flush at exit does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _table(rows: list[list[str]], headers: list[str]) -> None:
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]
    for row in [headers, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _with_server(rows: list[list[str]], headers: list[str], servers: list[str] | None) -> None:
    """The table, with a SERVER column first when it lists several servers' rows (``servers``)."""
    if servers is None:
        _table(rows, headers)
    else:
        _table([[server, *row] for server, row in zip(servers, rows, strict=True)], ["SERVER", *headers])


def print_deliveries(deliveries: list[Row[Any]], as_json: bool, all_servers: bool = False) -> None:
    if as_json:
        print(
            json.dumps(
                [
                    {
                        "server": d.server,
                        "delivery": d.delivery_id,
                        "event": d.event,
                        "repository": d.repository,
                        "ref": d.ref,
                        "received_at": iso(d.received_at),
                        "outcome": d.outcome,
                        "detail": d.detail,
                        "duplicates": d.duplicates,
                        "recovered": d.recovered,
                    }
                    for d in deliveries
                ],
                indent=2,
            )
        )
        return
    rows = [
        [
            shown(d.received_at),
            d.delivery_id,
            d.event,
            d.repository or "-",
            d.ref or "-",
            d.outcome
            + (" (recovered)" if d.recovered else "")
            + (f" (+{d.duplicates} dup)" if d.duplicates else ""),
            d.detail or "",
        ]
        for d in deliveries
    ]
    headers = ["RECEIVED", "DELIVERY", "EVENT", "REPOSITORY", "REF", "OUTCOME", "DETAIL"]
    _with_server(rows, headers, [d.server for d in deliveries] if all_servers else None)


def _run_json(run: Row[Any], steps: list[Row[Any]] | None = None) -> dict[str, Any]:
    data = {
        "id": run.id,
        "server": run.server,
        "pipeline": run.pipeline,
        "status": run.status,
        "trigger": run.trigger,
        "delivery": run.delivery_id,
        "ref": run.ref,
        "commit": run.commit,
        "subject": run.subject,
        "reason": run.reason,
        "queued_at": iso(run.queued_at),
        "started_at": iso(run.started_at),
        "finished_at": iso(run.finished_at),
        "log": run.log_path,
    }
    if steps is not None:
        data["steps"] = [
            {
                "position": s.position,
                "name": s.name,
                "status": s.status,
                "exit_code": s.exit_code,
                "duration": s.duration,
                "detail": s.detail,
            }
            for s in steps
        ]
    return data


def print_runs(
    runs: list[Row[Any]], steps: dict[int, list[Row[Any]]], as_json: bool, all_servers: bool = False
) -> None:
    if as_json:
        print(json.dumps([_run_json(run, steps[run.id]) for run in runs], indent=2))
        return
    rows = []
    for run in runs:
        took = (
            f"{(run.finished_at - run.started_at).total_seconds():.1f}s"
            if run.finished_at and run.started_at
            else "-"
        )
        ref = (run.ref or "").removeprefix("refs/heads/").removeprefix("refs/tags/")
        rows.append(
            [
                str(run.id),
                run.pipeline,
                run.status,
                run.trigger,
                ref or "-",
                (run.commit or "-")[:12],
                shown(run.started_at or run.queued_at),
                took,
                run.reason or "",
            ]
        )
    headers = ["RUN", "PIPELINE", "STATUS", "TRIGGER", "REF", "COMMIT", "STARTED", "TOOK", "REASON"]
    _with_server(rows, headers, [run.server for run in runs] if all_servers else None)


def print_log(store: Store, run: Row[Any], config: Config, follow: bool) -> None:
    """Print ``run``'s log; with ``follow``, also what is added to it while the run goes on. Then, on stderr,
    how the run ended, or why it is not followed any further."""
    # Where its lane writes it (the run records it only once it starts).
    path = Path(run.log_path) if run.log_path else config.logs_dir / run.pipeline / f"{run.id}.log"
    orphaned = False
    latest = run

    def ended() -> bool:
        nonlocal orphaned, latest
        # Checked before the run is read again: a worker that ends the run and then stops is not
        # taken for one that died with the run unfinished.
        orphaned = not worker_alive(config.worker_lock)
        found = store.run(run.id)
        assert found is not None
        latest = found
        return orphaned or found.status not in ("queued", "running")

    if follow and run.status in ("queued", "running"):
        for lines in log_follow.follow(path, 0, ended, idle_check=FOLLOW_CHECK):
            sys.stdout.buffer.write(b"".join(line.text + b"\n" for line in lines))
            sys.stdout.flush()
        # Also when the log went (retention) before the run was seen to end.
        latest = store.run(run.id) or latest
    elif path.exists():
        with path.open("rb") as log:
            shutil.copyfileobj(log, sys.stdout.buffer)
        sys.stdout.flush()
    run = latest
    if run.status not in ("queued", "running"):
        print(f"run {run.id}: {run.status}" + (f" ({run.reason})" if run.reason else ""), file=sys.stderr)
    elif follow:
        print(
            f"run {run.id}: {run.status}, and no worker is running on {config.home}: it goes on when "
            "`runner work` (or `runner up`) starts again",
            file=sys.stderr,
        )


def print_pruned(done: Plan, dry_run: bool) -> None:
    """What ``runner prune`` removed (or would remove): a line each; on stderr, what it could not, and the
    counts."""
    for run in done.runs:
        logs = ", ".join(str(path) for path in done.files.get(run.id, []))
        print(
            f"run {run.id} of {run.pipeline}: {run.status}, ended {shown(run.finished_at or run.queued_at)}"
            + (f"; {logs}" if logs else "")
        )
    for delivery in done.deliveries:
        print(
            f"delivery {delivery.delivery_id}: {delivery.event}, {delivery.outcome}, "
            f"received {shown(delivery.received_at)}"
        )
    for entry in done.failed:
        reason = (entry.reason or "no reason given").splitlines()[0]
        print(f"failed entry {entry.key}: failed {shown(entry.failed_at)}: {reason}")
    for path in done.reasons:
        print(f"reason {path}: its entry is gone")
    for problem in done.problems:
        print(f"not removed: {problem}", file=sys.stderr)
    counts = (
        f"{len(done.runs)} run(s) with their steps and logs, {len(done.deliveries)} delivery record(s), "
        f"{len(done.failed)} failed entry(ies)"
    )
    rule = (
        f"older than {shown(done.cutoff)}, keeping each pipeline's last {done.keep_runs} runs "
        "and its last successful one"
    )
    print(f"{'would remove' if dry_run else 'removed'} {counts}: {rule}", file=sys.stderr)


def print_failed(entries: list[FailedEntry], as_json: bool) -> None:
    if as_json:
        listed = [
            {
                "entry": e.key,
                "queue": e.queue,
                "name": e.name,
                "path": str(e.path),
                "failed_at": iso(e.failed_at),
                "reason": e.reason,
            }
            for e in entries
        ]
        print(json.dumps(listed, indent=2))
        return
    if not entries:
        print("no failed entries", file=sys.stderr)
        return
    rows = [
        [e.key, shown(e.failed_at), (e.reason or "").splitlines()[0] if e.reason else "-"] for e in entries
    ]
    _table(rows, ["ENTRY", "FAILED", "REASON"])


def print_finding(finding: Finding) -> None:
    """A line of ``runner catch-up``, as soon as it is found."""
    print(finding.line(), flush=True)


def print_catch_up(done: Pass, as_json: bool) -> None:
    """What ``runner catch-up`` found, in JSON (otherwise its lines were printed as found); on stderr, the
    summary."""
    if as_json:
        print(json.dumps([finding.json() for finding in done.findings], indent=2))
    print(done.summary(), file=sys.stderr)
