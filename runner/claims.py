"""Which run carries out a pipeline entry, decided by the database: its lane's claim, or a call-off.

A lane claims a run (queued → running) before it carries out the entry; a run is called off while it waits or
goes on: superseded by a newer entry, or cancelled (by hand, or by a newer entry with cancel-in-progress).
Each change is one conditional UPDATE, so that of a claim and a cancel that race exactly one wins, whichever
process makes it; and the entry of a run called off is never carried out, by this worker or by the next.
Each touches the Store's server's runs only: entry names and pipeline names are a server's own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, insert, or_, select, update

from runner import tables
from runner.database import commit_without_waiting
from runner.store import Store, deployed_commit, next_attempt

runs = tables.runs

# The statuses of a run that has not ended.
OPEN = ("queued", "running")
BY_HAND = "cancelled by hand"
SUPERSEDED_BY = "superseded by "
INTERRUPTED = "the worker stopped during the run; the entry is run again"


def _called_off() -> ColumnElement[bool]:
    """A run called off. Its reason tells a cancel from a worker's stop, whose entry is carried out again."""
    by_request = or_(runs.c.reason.startswith(BY_HAND), runs.c.reason.startswith(SUPERSEDED_BY))
    return or_(runs.c.status == "superseded", and_(runs.c.status == "cancelled", by_request))


def _of(store: Store, pipeline: str) -> tuple[ColumnElement[bool], ColumnElement[bool]]:
    """The runs of the Store's server's ``pipeline`` (another server may have a pipeline of that name)."""
    return runs.c.server == store.server, runs.c.pipeline == pipeline


def claim_run(
    store: Store, pipeline: str, entry: str, run_id: int | None, *, trigger: str, **fields: Any
) -> tuple[int | None, list[int]]:
    """The run that carries out ``entry`` now: the queued run ``run_id``, or a new one; None when a run of
    the entry was called off (it is not carried out).

    Runs of the entry left ``running`` by a worker that died are marked ``interrupted`` and returned as the
    second item: the entry is done again, by a new run.
    """
    with store.engine.begin() as connection:
        return _claim(connection, store, pipeline, entry, run_id, trigger=trigger, **fields)


@dataclass
class Claim:
    """A lane's claim (:func:`start_run`): the run, the runs it interrupted, the commit deployed before."""

    run_id: int | None
    interrupted: list[int]
    previous_commit: str | None = None


def start_run(
    store: Store,
    pipeline: str,
    entry: str,
    run_id: int | None,
    *,
    log_path: Callable[[int], str],
    trigger: str,
    ref: str | None,
    commit: str | None,
    **fields: Any,
) -> Claim:
    """:func:`claim_run`, and in the same transaction what the run needs before its first step: its log's
    path (``log_path(run id)``), ref and commit recorded, and the commit the pipeline last deployed."""
    with store.engine.begin() as connection:
        if run_id is not None:
            # Undone by a power cut, the claim of the entry's queued run leaves it queued and the entry in its
            # queue: the run is carried out again, as a run that a power cut stops is. Its end, which waits
            # for the disk, makes the claim durable before the entry leaves the queue.
            commit_without_waiting(connection)
        claimed, interrupted = _claim(
            connection, store, pipeline, entry, run_id, trigger=trigger, ref=ref, commit=commit, **fields
        )
        if claimed is None:
            return Claim(None, interrupted)
        # Read before this run can succeed: what was deployed before it.
        previous = connection.scalars(deployed_commit(store.server, pipeline)).first()
        connection.execute(
            update(runs)
            .where(runs.c.id == claimed)
            .values(log_path=log_path(claimed), ref=ref, commit=commit)
        )
    if claimed != run_id and run_id is not None:
        # A new run, whose id a power cut could give another run: durable now, by a commit that waits.
        store.set_run(claimed, log_path=log_path(claimed))
    return Claim(claimed, interrupted, previous)


def _claim(
    connection: Connection,
    store: Store,
    pipeline: str,
    entry: str,
    run_id: int | None,
    *,
    trigger: str,
    **fields: Any,
) -> tuple[int | None, list[int]]:
    """:func:`claim_run`'s work, in the caller's transaction."""
    now = datetime.now(UTC)
    of_entry = and_(runs.c.server == store.server, runs.c.pipeline == pipeline, runs.c.entry == entry)
    interrupted = list(
        connection.execute(
            update(runs)
            .where(of_entry, runs.c.status == "running")
            .values(status="interrupted", reason=INTERRUPTED, finished_at=now)
            .returning(runs.c.id)
        ).scalars()
    )
    if run_id is not None:
        claimed = connection.execute(
            update(runs)
            .where(runs.c.id == run_id, *_of(store, pipeline), runs.c.status == "queued")
            .values(entry=entry, status="running", started_at=now)
        )
        if claimed.rowcount:
            return run_id, interrupted
    mine = or_(of_entry, and_(runs.c.id == run_id, *_of(store, pipeline))) if run_id is not None else of_entry
    if connection.scalar(select(runs.c.id).where(mine, _called_off()).limit(1)) is not None:
        return None, interrupted
    # The entry's commit is the earlier runs' commit: so is its subject.
    subject = connection.scalar(select(runs.c.subject).where(mine, runs.c.subject.is_not(None)).limit(1))
    row = {
        "server": store.server,
        "pipeline": pipeline,
        "trigger": trigger,
        "queued_at": now,
        "subject": subject,
    }
    row.update(fields)
    if row.get("delivery_id") is not None:
        # The entry done again: the next attempt of its (delivery, pipeline).
        row["attempt"] = next_attempt(connection, store.server, pipeline, row["delivery_id"])
    row.update(entry=entry, status="running", started_at=now)
    # In values(), a field that is no column is an error, not a key left out.
    new_id: int = connection.execute(insert(runs).values(**row).returning(runs.c.id)).scalar_one()
    return new_id, interrupted


def call_off(
    store: Store, pipeline: str, entry: str, run_id: int | None, status: str, reason: str
) -> dict[int, str]:
    """End the runs of a waiting ``entry`` that have not ended, with ``reason``: its queued run ``run_id`` as
    ``status``, and any that a worker that died left running as cancelled (they had started). Returns each
    run ended, with the status it had."""
    of_entry = and_(*_of(store, pipeline), runs.c.entry == entry)
    mine = or_(of_entry, and_(runs.c.id == run_id, *_of(store, pipeline))) if run_id is not None else of_entry
    ended: dict[int, str] = {}
    with store.engine.begin() as connection:
        for had, becomes in (("queued", status), ("running", "cancelled")):
            for ended_id in connection.execute(
                update(runs)
                .where(mine, runs.c.status == had)
                .values(status=becomes, reason=reason, finished_at=datetime.now(UTC))
                .returning(runs.c.id)
            ).scalars():
                ended[ended_id] = had
    return ended


def cancel_run(store: Store, run_id: int) -> str | None:
    """Cancel run ``run_id`` by hand; returns the status it had (queued or running), None if it had ended (or
    is another server's).

    Queued first, then running: a run that its lane claims in between is cancelled as running.
    """
    for had in OPEN:
        with store.engine.begin() as connection:
            done = connection.execute(
                update(runs)
                .where(runs.c.id == run_id, runs.c.server == store.server, runs.c.status == had)
                .values(status="cancelled", reason=BY_HAND, finished_at=datetime.now(UTC))
            )
        if done.rowcount:
            return had
    return None


def finish_claimed(store: Store, run_id: int, status: str, reason: str | None) -> bool:
    """Record how a claimed run ended; False if it was cancelled by hand meanwhile, which stays its outcome
    (only when it ended is recorded then, and ``reason`` if it says more of that cancel: it starts with
    ``cancelled by hand``, as a release run's switch back after one does)."""
    # No reason of its own (a run that succeeded): the run keeps the one it was queued with, if any (the
    # catch-up's, "the branch head moved ...").
    said = {} if reason is None else {"reason": reason}
    with store.engine.begin() as connection:
        now = datetime.now(UTC)
        done = connection.execute(
            update(runs)
            .where(runs.c.id == run_id, runs.c.status == "running")
            .values(status=status, finished_at=now, **said)
        )
        if done.rowcount:
            return True
        connection.execute(update(runs).where(runs.c.id == run_id).values(finished_at=now))
        if reason is not None and reason.startswith(BY_HAND):
            connection.execute(
                update(runs)
                .where(runs.c.id == run_id, runs.c.status == "cancelled", runs.c.reason == BY_HAND)
                .values(reason=reason)
            )
    return False
