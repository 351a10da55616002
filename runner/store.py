"""What runner keeps in its database: deliveries, runs and their steps; and its schema's upgrades.

The engine comes from runner/database.py, the revisions from runner/schema.py; what retention selects and
removes is runner/retention.py's; which run carries out an entry, or is called off, runner/claims.py's.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, delete, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from runner.database import create_engine_for, safe_url
from runner.models import Delivery, Run, StepResult
from runner.schema import SchemaError, alembic_config, head_revision

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig


class Store:
    """What runner keeps in its database."""

    def __init__(self, url: str, read_only: bool = False) -> None:
        self.url = url
        # The status page's store: its connections refuse to write (see create_engine_for).
        self.read_only = read_only
        self.engine = create_engine_for(url, read_only)

    def __repr__(self) -> str:
        return f"Store({safe_url(self.url)!r})"

    def close(self) -> None:
        self.engine.dispose()

    # Schema --------------------------------------------------------------------------------------------

    def current_revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    def upgrade(self, revision: str = "head") -> None:
        from alembic import command

        self._migrate(command.upgrade, revision)

    def downgrade(self, revision: str) -> None:
        from alembic import command

        self._migrate(command.downgrade, revision)

    def _migrate(self, alembic_command: Callable[[AlembicConfig, str], None], revision: str) -> None:
        cfg = alembic_config(self.url)
        with self.engine.begin() as connection:
            cfg.attributes["connection"] = connection
            alembic_command(cfg, revision)

    def check_schema(self) -> None:
        """Refuse a database whose schema is not at the latest revision."""
        current, head = self.current_revision(), head_revision()
        if current != head:
            where = f"at revision {current}" if current else "not initialised"
            raise SchemaError(
                f"the database {safe_url(self.url)} is {where}, this runner needs revision {head}: "
                "run `runner db upgrade` (with the same RUNNER_DATABASE_URL) first"
            )

    def ping(self) -> None:
        """Raise unless the database answers."""
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    # Deliveries ----------------------------------------------------------------------------------------

    def record_delivery(
        self,
        delivery_id: str,
        event: str,
        received_at: datetime,
        *,
        hook_id: str | None = None,
        entry: str | None = None,
        outcome: str = "received",
        detail: str | None = None,
        repository: str | None = None,
        ref: str | None = None,
        recovered: bool = False,
    ) -> bool:
        """Record a delivery; False if its id was recorded before.

        The primary key decides, not a look-up first: of two processes recording the same id at once,
        exactly one succeeds.
        """
        row = {
            "delivery_id": delivery_id,
            "event": event,
            "hook_id": hook_id,
            "received_at": received_at,
            "recorded_at": datetime.now(UTC),
            "entry": entry,
            "outcome": outcome,
            "detail": detail,
            "repository": repository,
            "ref": ref,
            "recovered": recovered,
        }
        try:
            with self.engine.begin() as connection:
                connection.execute(insert(Delivery), row)
        except IntegrityError:
            return False
        return True

    def begin_routing(
        self,
        delivery_id: str,
        event: str,
        received_at: datetime,
        *,
        hook_id: str | None,
        entry: str,
        repository: str | None,
        ref: str | None,
        recovered: bool = False,
    ) -> str:
        """Record a delivery the router is about to route (``recovered``: the catch-up's). Returns what it is:

        ``new``; ``resume`` (this very entry was recorded before a crash and not yet routed); ``routed``
        (this entry was routed before a crash, only its removal is left); or ``duplicate`` (GitHub delivered
        the id before, as another entry: counted on the first delivery's record, routed nowhere).
        """
        if self.record_delivery(
            delivery_id,
            event,
            received_at,
            hook_id=hook_id,
            entry=entry,
            repository=repository,
            ref=ref,
            recovered=recovered,
        ):
            return "new"
        with self.engine.begin() as connection:
            first = connection.execute(
                select(Delivery.entry, Delivery.outcome).where(Delivery.delivery_id == delivery_id)
            ).one()
            if first.entry == entry:
                return "resume" if first.outcome == "received" else "routed"
            connection.execute(
                update(Delivery)
                .where(Delivery.delivery_id == delivery_id)
                .values(duplicates=Delivery.duplicates + 1)
            )
        return "duplicate"

    def finish_routing(self, delivery_id: str, outcome: str, detail: str | None) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                update(Delivery)
                .where(Delivery.delivery_id == delivery_id)
                .values(outcome=outcome, detail=detail)
            )

    def fail_routing(
        self, delivery_id: str, event: str, received_at: datetime, entry: str, reason: str
    ) -> None:
        """Record that routing the delivery was given up, whether or not it was recorded before."""
        if not self.record_delivery(
            delivery_id, event, received_at, entry=entry, outcome="failed", detail=reason
        ):
            # Only this entry's record: a delivery first recorded through another entry keeps its outcome.
            with self.engine.begin() as connection:
                connection.execute(
                    update(Delivery)
                    .where(Delivery.delivery_id == delivery_id, Delivery.entry == entry)
                    .values(outcome="failed", detail=reason)
                )

    def delivery(self, delivery_id: str) -> Delivery | None:
        with Session(self.engine, expire_on_commit=False) as session:
            return session.get(Delivery, delivery_id)

    def deliveries(self, limit: int = 20) -> list[Delivery]:
        with Session(self.engine, expire_on_commit=False) as session:
            query = select(Delivery).order_by(Delivery.received_at.desc(), Delivery.delivery_id).limit(limit)
            return list(session.scalars(query))

    # Runs ----------------------------------------------------------------------------------------------

    def create_run(
        self,
        pipeline: str,
        *,
        trigger: str,
        delivery_id: str | None = None,
        ref: str | None = None,
        commit: str | None = None,
        reason: str | None = None,
    ) -> int:
        """Record a queued run. Its id goes into the queue entry, so the run exists before its entry does.
        ``reason``: why it was queued, when its maker says (the catch-up does).

        A run of a delivery is the next attempt of its (delivery, pipeline): for a failed entry put back in
        its queue, never taken for the delivery's first forwarding.
        """
        with Session(self.engine) as session, session.begin():
            run = Run(
                pipeline=pipeline,
                trigger=trigger,
                delivery_id=delivery_id,
                ref=ref,
                commit=commit,
                reason=reason,
                status="queued",
                queued_at=datetime.now(UTC),
            )
            if delivery_id is not None:
                run.attempt = next_attempt(session, pipeline, delivery_id)
            session.add(run)
            session.flush()
            return run.id

    def forward_run(
        self, pipeline: str, *, trigger: str, delivery_id: str, ref: str | None, commit: str | None
    ) -> tuple[Run, bool]:
        """The run that a delivery's forwarding to ``pipeline`` carries out, and whether it is new.

        At most one per (delivery, pipeline): the unique attempt 1 decides, not a look-up first, so a
        routing resumed after a crash or retried after an error finds the run it made before.
        """
        row = {
            "pipeline": pipeline,
            "trigger": trigger,
            "delivery_id": delivery_id,
            "attempt": 1,
            "ref": ref,
            "commit": commit,
            "status": "queued",
            "queued_at": datetime.now(UTC),
        }
        created = True
        try:
            with self.engine.begin() as connection:
                connection.execute(insert(Run), row)
        except IntegrityError:
            created = False
        with Session(self.engine, expire_on_commit=False) as session:
            run = session.scalars(
                select(Run).where(Run.delivery_id == delivery_id, Run.pipeline == pipeline, Run.attempt == 1)
            ).one()
        return run, created

    def unfinished_runs(self) -> list[Run]:
        """Runs queued or running, oldest first: what a worker that starts settles."""
        with Session(self.engine, expire_on_commit=False) as session:
            query = select(Run).where(Run.status.in_(("queued", "running"))).order_by(Run.id)
            return list(session.scalars(query))

    def end_run(self, run_id: int, status: str, reason: str) -> bool:
        """End a run that has not ended (queued or running); False if it had."""
        with self.engine.begin() as connection:
            done = connection.execute(
                update(Run)
                .where(Run.id == run_id, Run.status.in_(("queued", "running")))
                .values(status=status, reason=reason, finished_at=datetime.now(UTC))
            )
        return done.rowcount > 0

    def fail_runs_of_entry(self, pipeline: str, entry: str, reason: str) -> list[int]:
        """Fail the queued runs of a pipeline-queue entry (one that cannot be carried out)."""
        return self._fail_queued_runs(reason, Run.pipeline == pipeline, Run.entry == entry)

    def fail_unforwarded_runs(self, delivery_id: str, reason: str) -> list[int]:
        """Fail the delivery's queued runs that never got their entry (its routing was given up)."""
        return self._fail_queued_runs(reason, Run.delivery_id == delivery_id, Run.entry.is_(None))

    def _fail_queued_runs(self, reason: str, *where: ColumnElement[bool]) -> list[int]:
        with Session(self.engine) as session, session.begin():
            runs = list(session.scalars(select(Run).where(*where, Run.status == "queued")))
            for run in runs:
                run.status, run.reason, run.finished_at = "failed", reason, datetime.now(UTC)
            return [run.id for run in runs]

    def set_run(self, run_id: int, **fields: Any) -> None:
        with self.engine.begin() as connection:
            connection.execute(update(Run).where(Run.id == run_id).values(**fields))

    def finish_run(self, run_id: int, status: str, reason: str | None = None) -> None:
        self.set_run(run_id, status=status, reason=reason, finished_at=datetime.now(UTC))

    def record_step(
        self,
        run_id: int,
        position: int,
        name: str,
        status: str,
        *,
        exit_code: int | None,
        detail: str | None,
        started_at: datetime,
        finished_at: datetime,
    ) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                insert(StepResult),
                {
                    "run_id": run_id,
                    "position": position,
                    "name": name[:200],
                    "status": status,
                    "exit_code": exit_code,
                    "detail": detail,
                    "started_at": started_at,
                    "finished_at": finished_at,
                    "duration": (finished_at - started_at).total_seconds(),
                },
            )

    def run(self, run_id: int) -> Run | None:
        with Session(self.engine, expire_on_commit=False) as session:
            return session.get(Run, run_id)

    def runs(self, pipeline: str | None = None, limit: int = 20) -> list[Run]:
        with Session(self.engine, expire_on_commit=False) as session:
            query = select(Run).order_by(Run.id.desc()).limit(limit)
            if pipeline is not None:
                query = query.where(Run.pipeline == pipeline)
            return list(session.scalars(query))

    def steps(self, run_id: int) -> list[StepResult]:
        with Session(self.engine, expire_on_commit=False) as session:
            query = select(StepResult).where(StepResult.run_id == run_id).order_by(StepResult.position)
            return list(session.scalars(query))

    def last_deployed_commit(self, pipeline: str) -> str | None:
        """The commit of the pipeline's last successful run: what is deployed now."""
        with Session(self.engine) as session:
            query = (
                select(Run.commit)
                .where(Run.pipeline == pipeline, Run.status == "succeeded", Run.commit.is_not(None))
                .order_by(Run.finished_at.desc(), Run.id.desc())
                .limit(1)
            )
            return session.scalars(query).first()

    # Retries -------------------------------------------------------------------------------------------

    def forget_delivery(self, delivery_id: str, entry: str) -> bool:
        """Remove the record of a delivery as the main-queue ``entry``, so that the router records it anew
        when that entry comes back (``runner failed retry``); False if there is no such record."""
        with self.engine.begin() as connection:
            done = connection.execute(
                delete(Delivery).where(Delivery.delivery_id == delivery_id, Delivery.entry == entry)
            )
        return done.rowcount > 0


def next_attempt(session: Session, pipeline: str, delivery_id: str) -> int:
    """The attempt number after the last of the (delivery, pipeline)'s runs (runner/claims.py's too)."""
    last = session.scalar(
        select(func.max(Run.attempt)).where(Run.pipeline == pipeline, Run.delivery_id == delivery_id)
    )
    return (last or 0) + 1
