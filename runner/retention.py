"""What is kept and for how long: the selection of old runs, deliveries and failed entries, and their removal.

A run, its steps and its log go once it ended more than ``RUNNER_RETENTION`` ago, unless it is one of its
pipeline's last ``RUNNER_KEEP_RUNS`` runs or its last successful one (the deployed commit, which ``when:
changed`` compares against); a run still queued or running never goes. A delivery goes at the same age once
no run that is kept names it, and never before it is routed. A ``failed/`` entry goes (with its ``.reason``)
at the same age, counted from when it failed. What runs told GitHub goes with its run, and at the same age
once it was sent or given up; their notifications go with them. A server prunes its own rows only (several
may share the database): its pipelines' runs are counted among themselves, another server's pipeline of the
same name apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Row, delete, func, select

from runner import tables
from runner.config import Config
from runner.failed import FailedEntry, failed_entries, orphan_reasons
from runner.outbox import PENDING
from runner.store import Store
from runner.timefmt import shown

logger = logging.getLogger(__name__)

# How often the worker prunes; the first pass is when it starts.
PRUNE_INTERVAL = 24 * 3600.0

runs, steps, deliveries = tables.runs, tables.steps, tables.deliveries
reports, notifications = tables.github_reports, tables.notifications


@dataclass
class Plan:
    """What a pass removes (or, in a dry run, would remove)."""

    cutoff: datetime
    keep_runs: int
    runs: list[Row[Any]] = field(default_factory=list)
    deliveries: list[Row[Any]] = field(default_factory=list)
    failed: list[FailedEntry] = field(default_factory=list)
    # The outbox's rows of runs that are kept, sent or given up before the cutoff.
    reports: list[int] = field(default_factory=list)
    # Each run's files that were there when it was selected.
    files: dict[int, list[Path]] = field(default_factory=dict)
    # ``.reason`` files whose entry is gone (retried or dropped by hand), as old as the cutoff.
    reasons: list[Path] = field(default_factory=list)
    # Files that could not be removed, with why: the rows are gone, the operator may remove these by hand.
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{len(self.runs)} run(s), {len(self.deliveries)} delivery(ies), "
            f"{len(self.failed)} failed entry(ies), {len(self.reports)} GitHub report(s) "
            f"older than {shown(self.cutoff)}"
        )


def run_files(config: Config, run: Row[Any]) -> list[Path]:
    """A run's files: its log and the process group file of its step, where the worker puts them (the path
    in its record does not decide what is removed)."""
    directory = config.logs_dir / run.pipeline
    return [directory / f"{run.id}.log", directory / f"{run.id}.pgid"]


def _runs_to_prune(store: Store, before: datetime, keep_last: int) -> list[Row[Any]]:
    """Runs that ended before ``before`` (or were queued then, if they have no end), oldest first,
    except each pipeline's last ``keep_last`` runs, its last successful run and its last successful run
    with a commit (what ``Store.last_deployed_commit`` gives). A run queued or running is never one of
    them."""
    mine = runs.c.server == store.server
    by_pipeline = {"partition_by": runs.c.pipeline}
    newest = (
        select(runs.c.id, func.row_number().over(**by_pipeline, order_by=runs.c.id.desc()).label("n"))
        .where(mine)
        .subquery()
    )
    kept = [select(newest.c.id).where(newest.c.n <= keep_last)]
    for succeeded in (
        runs.c.status == "succeeded",
        (runs.c.status == "succeeded") & runs.c.commit.is_not(None),
    ):
        order = (runs.c.finished_at.desc(), runs.c.id.desc())
        last = (
            select(runs.c.id, func.row_number().over(**by_pipeline, order_by=order).label("n"))
            .where(mine, succeeded)
            .subquery()
        )
        kept.append(select(last.c.id).where(last.c.n == 1))
    query = select(runs).where(
        mine,
        runs.c.status.not_in(("queued", "running")),
        func.coalesce(runs.c.finished_at, runs.c.queued_at) < before,
        *(runs.c.id.not_in(ids) for ids in kept),
    )
    with store.engine.connect() as connection:
        return list(connection.execute(query.order_by(runs.c.id)))


def _delete_runs(store: Store, run_ids: Sequence[int]) -> None:
    """Remove ended runs, their steps, what they told GitHub and their notifications."""
    with store.engine.begin() as connection:
        for start in range(0, len(run_ids), 500):
            chunk = run_ids[start : start + 500]
            connection.execute(delete(steps).where(steps.c.run_id.in_(chunk)))
            connection.execute(delete(reports).where(reports.c.run_id.in_(chunk)))
            connection.execute(delete(notifications).where(notifications.c.run_id.in_(chunk)))
            connection.execute(
                delete(runs).where(
                    runs.c.id.in_(chunk),
                    runs.c.server == store.server,
                    runs.c.status.not_in(("queued", "running")),
                )
            )


def _deliveries_to_prune(store: Store, before: datetime, dropped_runs: Collection[int]) -> list[Row[Any]]:
    """Deliveries received before ``before`` and routed (or given up), oldest first, that no run names
    but those in ``dropped_runs``: a run that is kept keeps the record of the delivery it carried out."""
    with store.engine.connect() as connection:
        named = {
            delivery_id
            for run_id, delivery_id in connection.execute(
                select(runs.c.id, runs.c.delivery_id).where(
                    runs.c.server == store.server, runs.c.delivery_id.is_not(None)
                )
            )
            if run_id not in dropped_runs
        }
        query = (
            select(deliveries)
            .where(
                deliveries.c.server == store.server,
                deliveries.c.received_at < before,
                deliveries.c.outcome != "received",
            )
            .order_by(deliveries.c.received_at, deliveries.c.delivery_id)
        )
        return [d for d in connection.execute(query) if d.delivery_id not in named]


def _delete_deliveries(store: Store, delivery_ids: Sequence[str]) -> None:
    """Remove routed deliveries' records; one that a run names (again, by a retry) stays."""
    named = (
        select(runs.c.id)
        .where(runs.c.server == deliveries.c.server, runs.c.delivery_id == deliveries.c.delivery_id)
        .exists()
    )
    with store.engine.begin() as connection:
        for start in range(0, len(delivery_ids), 500):
            chunk = delivery_ids[start : start + 500]
            connection.execute(
                delete(deliveries).where(
                    deliveries.c.server == store.server,
                    deliveries.c.delivery_id.in_(chunk),
                    deliveries.c.outcome != "received",
                    ~named,
                )
            )


def _reports_to_prune(store: Store, before: datetime, dropped_runs: Collection[int]) -> list[int]:
    """The outbox's rows made before ``before`` and sent or given up, of runs with no row still pending
    (which may need them: a deployment's status needs the deployment's id), but for those of
    ``dropped_runs`` (which go with their run)."""
    waiting = select(reports.c.run_id).where(reports.c.state == PENDING)
    query = select(reports.c.id, reports.c.run_id).where(
        reports.c.run_id.in_(select(runs.c.id).where(runs.c.server == store.server)),
        reports.c.state != PENDING,
        reports.c.created_at < before,
        reports.c.run_id.not_in(waiting),
    )
    with store.engine.connect() as connection:
        rows = connection.execute(query.order_by(reports.c.id))
        return [row.id for row in rows if row.run_id not in dropped_runs]


def _delete_reports(store: Store, report_ids: Sequence[int]) -> None:
    """Remove rows of the outbox that were sent or given up."""
    with store.engine.begin() as connection:
        for start in range(0, len(report_ids), 500):
            chunk = report_ids[start : start + 500]
            connection.execute(delete(reports).where(reports.c.id.in_(chunk), reports.c.state != PENDING))


def plan(config: Config, store: Store, now: datetime | None = None) -> Plan:
    """Select what is older than the retention and not kept; nothing is changed."""
    cutoff = (now or datetime.now(UTC)) - timedelta(seconds=config.retention)
    result = Plan(cutoff=cutoff, keep_runs=config.keep_runs)
    result.runs = _runs_to_prune(store, cutoff, config.keep_runs)
    result.files = {run.id: [path for path in run_files(config, run) if path.exists()] for run in result.runs}
    dropped = {run.id for run in result.runs}
    result.deliveries = _deliveries_to_prune(store, cutoff, dropped)
    result.reports = _reports_to_prune(store, cutoff, dropped)
    for entry in failed_entries(config.queues_dir):
        if entry.failed_at < cutoff:
            result.failed.append(entry)
    result.reasons = [path for path, failed_at in orphan_reasons(config.queues_dir) if failed_at < cutoff]
    return result


def _unlink(path: Path, problems: list[str]) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        problems.append(f"cannot remove {path}: {exc.strerror}")


def apply(config: Config, store: Store, selected: Plan) -> Plan:
    """Remove what ``selected`` names: rows first, then their files, so that no kept record points at a file
    that is gone."""
    _delete_runs(store, [run.id for run in selected.runs])
    for run in selected.runs:
        for path in run_files(config, run):
            _unlink(path, selected.problems)
    _delete_deliveries(store, [delivery.delivery_id for delivery in selected.deliveries])
    _delete_reports(store, selected.reports)
    for entry in selected.failed:
        _unlink(entry.path, selected.problems)
        _unlink(entry.reason_path, selected.problems)
    for path in selected.reasons:
        _unlink(path, selected.problems)
    for problem in selected.problems:
        logger.warning("retention: %s", problem)
    return selected


def prune(config: Config, store: Store, *, dry_run: bool = False) -> Plan:
    selected = plan(config, store)
    return selected if dry_run else apply(config, store, selected)


async def daily(config: Config, store: Store, stop: asyncio.Event, interval: float = PRUNE_INTERVAL) -> None:
    """The worker's pass: at start, then every ``interval`` seconds, in a thread (a lane never waits for
    it), until ``stop``.

    A pass that fails is logged and done again at the next one: history kept a day longer harms nobody, a
    worker that stopped for it would.
    """
    while not stop.is_set():
        try:
            done = await asyncio.to_thread(prune, config, store)
        except Exception:
            logger.exception("retention: the pass failed; it is done again in %.0f s", interval)
        else:
            logger.info("retention: removed %s", done.summary())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
