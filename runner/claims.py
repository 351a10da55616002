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

from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.orm import Session

from runner.database import commit_without_waiting
from runner.models import Run
from runner.store import Store, deployed_commit, next_attempt

# The statuses of a run that has not ended.
OPEN = ("queued", "running")
BY_HAND = "cancelled by hand"
SUPERSEDED_BY = "superseded by "
INTERRUPTED = "the worker stopped during the run; the entry is run again"


def _called_off() -> ColumnElement[bool]:
    """A run called off. Its reason tells a cancel from a worker's stop, whose entry is carried out again."""
    by_request = or_(Run.reason.startswith(BY_HAND), Run.reason.startswith(SUPERSEDED_BY))
    return or_(Run.status == "superseded", and_(Run.status == "cancelled", by_request))


def _of(store: Store, pipeline: str) -> tuple[ColumnElement[bool], ColumnElement[bool]]:
    """The runs of the Store's server's ``pipeline`` (another server may have a pipeline of that name)."""
    return Run.server == store.server, Run.pipeline == pipeline


def claim_run(
    store: Store, pipeline: str, entry: str, run_id: int | None, *, trigger: str, **fields: Any
) -> tuple[int | None, list[int]]:
    """The run that carries out ``entry`` now: the queued run ``run_id``, or a new one; None when a run of
    the entry was called off (it is not carried out).

    Runs of the entry left ``running`` by a worker that died are marked ``interrupted`` and returned as the
    second item: the entry is done again, by a new run.
    """
    with Session(store.engine) as session, session.begin():
        return _claim(session, store, pipeline, entry, run_id, trigger=trigger, **fields)


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
    with Session(store.engine) as session, session.begin():
        if run_id is not None:
            # Undone by a power cut, the claim of the entry's queued run leaves it queued and the entry in its
            # queue: the run is carried out again, as a run that a power cut stops is. Its end, which waits
            # for the disk, makes the claim durable before the entry leaves the queue.
            commit_without_waiting(session.connection())
        claimed, interrupted = _claim(
            session, store, pipeline, entry, run_id, trigger=trigger, ref=ref, commit=commit, **fields
        )
        if claimed is None:
            return Claim(None, interrupted)
        # Read before this run can succeed: what was deployed before it.
        previous = session.scalars(deployed_commit(store.server, pipeline)).first()
        session.execute(
            update(Run)
            .where(Run.id == claimed)
            .values(log_path=log_path(claimed), ref=ref, commit=commit)
            .execution_options(synchronize_session=False)
        )
    if claimed != run_id and run_id is not None:
        # A new run, whose id a power cut could give another run: durable now, by a commit that waits.
        store.set_run(claimed, log_path=log_path(claimed))
    return Claim(claimed, interrupted, previous)


def _claim(
    session: Session,
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
    of_entry = and_(Run.server == store.server, Run.pipeline == pipeline, Run.entry == entry)
    interrupted = list(
        session.scalars(
            update(Run)
            .where(of_entry, Run.status == "running")
            .values(status="interrupted", reason=INTERRUPTED, finished_at=now)
            .returning(Run.id)
            .execution_options(synchronize_session=False)
        )
    )
    if run_id is not None:
        claimed = session.execute(
            update(Run)
            .where(Run.id == run_id, *_of(store, pipeline), Run.status == "queued")
            .values(entry=entry, status="running", started_at=now)
            .execution_options(synchronize_session=False)
        )
        if claimed.rowcount:
            return run_id, interrupted
    mine = or_(of_entry, and_(Run.id == run_id, *_of(store, pipeline))) if run_id is not None else of_entry
    if session.scalar(select(Run.id).where(mine, _called_off()).limit(1)) is not None:
        return None, interrupted
    # The entry's commit is the earlier runs' commit: so is its subject.
    subject = session.scalar(select(Run.subject).where(mine, Run.subject.is_not(None)).limit(1))
    run = Run(
        server=store.server, pipeline=pipeline, trigger=trigger, queued_at=now, subject=subject, **fields
    )
    if run.delivery_id is not None:
        # The entry done again: the next attempt of its (delivery, pipeline).
        run.attempt = next_attempt(session, store.server, pipeline, run.delivery_id)
    run.entry, run.status, run.started_at = entry, "running", now
    session.add(run)
    session.flush()
    return run.id, interrupted


def call_off(
    store: Store, pipeline: str, entry: str, run_id: int | None, status: str, reason: str
) -> dict[int, str]:
    """End the runs of a waiting ``entry`` that have not ended, with ``reason``: its queued run ``run_id`` as
    ``status``, and any that a worker that died left running as cancelled (they had started). Returns each
    run ended, with the status it had."""
    of_entry = and_(*_of(store, pipeline), Run.entry == entry)
    mine = or_(of_entry, and_(Run.id == run_id, *_of(store, pipeline))) if run_id is not None else of_entry
    ended: dict[int, str] = {}
    with Session(store.engine) as session, session.begin():
        for had, becomes in (("queued", status), ("running", "cancelled")):
            for ended_id in session.scalars(
                update(Run)
                .where(mine, Run.status == had)
                .values(status=becomes, reason=reason, finished_at=datetime.now(UTC))
                .returning(Run.id)
                .execution_options(synchronize_session=False)
            ):
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
                update(Run)
                .where(Run.id == run_id, Run.server == store.server, Run.status == had)
                .values(status="cancelled", reason=BY_HAND, finished_at=datetime.now(UTC))
            )
        if done.rowcount:
            return had
    return None


def finish_claimed(store: Store, run_id: int, status: str, reason: str | None) -> bool:
    """Record how a claimed run ended; False if it was cancelled by hand meanwhile, which stays its outcome
    (only when it ended is recorded then, and ``reason`` if it says more of that cancel: it starts with
    ``cancelled by hand``, as a release run's switch back after one does)."""
    with store.engine.begin() as connection:
        now = datetime.now(UTC)
        done = connection.execute(
            update(Run)
            .where(Run.id == run_id, Run.status == "running")
            .values(status=status, reason=reason, finished_at=now)
        )
        if done.rowcount:
            return True
        connection.execute(update(Run).where(Run.id == run_id).values(finished_at=now))
        if reason is not None and reason.startswith(BY_HAND):
            connection.execute(
                update(Run)
                .where(Run.id == run_id, Run.status == "cancelled", Run.reason == BY_HAND)
                .values(reason=reason)
            )
    return False
