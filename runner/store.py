"""What runner keeps in its database: runs and their steps, deliveries; and its schema's upgrades.

The engine comes from runner/database.py, the revisions from runner/schema.py; what retention selects and
removes is runner/retention.py's; which run carries out an entry, or is called off, runner/claims.py's.

Several servers may share the database: a Store is one server's (``server``, its RUNNER_SERVER_NAME), and
reads and changes that server's deliveries and runs only; the read methods a view of every server uses take
``server=None`` for all of them (their default, THIS_SERVER, is the Store's own).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Connection, Row, Select, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from runner import schema, tables
from runner.database import create_engine_for, foreign_keys_off, safe_url
from runner.delivery_records import DeliveryRecords
from runner.schema import alembic_config
from runner.servers import THIS_SERVER, Servers, where_server

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig


class Store(DeliveryRecords):
    """What one server (``server``: its RUNNER_SERVER_NAME, default the host name) keeps in its database:
    its deliveries (runner/delivery_records.py), its runs and their steps."""

    def __init__(self, url: str, *, server: str | None = None, read_only: bool = False) -> None:
        self.url = url
        # The status page's store is read-only: its connections refuse to write (see create_engine_for).
        self.read_only = read_only
        engine = create_engine_for(url, read_only)
        super().__init__(engine, server if server is not None else socket.gethostname()[:64])

    def __repr__(self) -> str:
        return f"Store({safe_url(self.url)!r}, server={self.server!r})"

    def servers(self) -> list[str]:
        """The servers that recorded runs or deliveries in this database, by name."""
        with self.engine.connect() as connection:
            found = connection.execute(
                select(tables.runs.c.server).union(select(tables.deliveries.c.server))
            ).scalars()
            return sorted(found)

    def close(self) -> None:
        self.engine.dispose()

    # Schema --------------------------------------------------------------------------------------------

    def current_revision(self) -> str | None:
        return schema.current_revision(self.engine)

    def upgrade(self, revision: str = "head") -> None:
        from alembic import command

        self._migrate(command.upgrade, revision)

    def downgrade(self, revision: str) -> None:
        from alembic import command

        self._migrate(command.downgrade, revision)

    def _migrate(self, alembic_command: Callable[[AlembicConfig, str], None], revision: str) -> None:
        cfg = alembic_config(self.url)
        with self.engine.connect() as connection, foreign_keys_off(connection), connection.begin():
            cfg.attributes["connection"] = connection
            # Whose the rows are that a revision gives a server (0007).
            cfg.attributes["server_name"] = self.server
            alembic_command(cfg, revision)

    def check_schema(self) -> None:
        """Refuse a database whose schema is not at the latest revision."""
        schema.check_schema(self.engine, self.url)

    def ping(self) -> None:
        """Raise unless the database answers."""
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    # Runs ----------------------------------------------------------------------------------------------

    def create_run(
        self,
        pipeline: str,
        *,
        trigger: str,
        delivery_id: str | None = None,
        ref: str | None = None,
        commit: str | None = None,
        subject: str | None = None,
        reason: str | None = None,
    ) -> int:
        """Record a queued run. Its id goes into the queue entry, so the run exists before its entry does.
        ``reason``: why it was queued, when its maker says (the catch-up does).

        A run of a delivery is the next attempt of its (delivery, pipeline): for a failed entry put back in
        its queue, never taken for the delivery's first forwarding.
        """
        with self.engine.begin() as connection:
            row = self._run_row(pipeline, trigger, delivery_id, ref, commit, subject, reason)
            if delivery_id is not None:
                row["attempt"] = next_attempt(connection, self.server, pipeline, delivery_id)
            return connection.execute(insert(tables.runs).returning(tables.runs.c.id), row).scalar_one()

    def forward_run(
        self,
        pipeline: str,
        *,
        trigger: str,
        delivery_id: str,
        ref: str | None,
        commit: str | None,
        subject: str | None = None,
    ) -> tuple[Row[Any], bool]:
        """The run that a delivery's forwarding to ``pipeline`` carries out, and whether it is new.

        At most one per (delivery, pipeline): the unique attempt 1 decides, not a look-up first, so a
        routing resumed after a crash or retried after an error finds the run it made before.
        """
        row = self._first_run(pipeline, trigger, delivery_id, ref, commit, subject)
        created = True
        try:
            with self.engine.begin() as connection:
                connection.execute(insert(tables.runs), row)
        except IntegrityError:
            created = False
        runs = tables.runs
        with self.engine.connect() as connection:
            run = connection.execute(
                select(runs).where(
                    runs.c.server == self.server,
                    runs.c.delivery_id == delivery_id,
                    runs.c.pipeline == pipeline,
                    runs.c.attempt == 1,
                )
            ).one()
        return run, created

    def begin_forwarding(
        self,
        delivery: dict[str, Any],
        pipelines: Sequence[str],
        *,
        trigger: str,
        ref: str | None,
        commit: str | None,
        subject: str | None,
    ) -> tuple[str, dict[str, int] | None]:
        """Record a delivery (its :meth:`delivery_row`) and its queued runs, one per pipeline, in one
        transaction; what the delivery is (as ``begin_routing`` says), and each pipeline's run id.

        A delivery with no pipeline is recorded with its outcome, which is then final. When the delivery's id
        or one of the runs was recorded before (a redelivery, a routing resumed after a crash), nothing is,
        and the delivery is recorded as ``begin_routing`` does it: the run ids are then None, and the caller
        forwards it one pipeline at a time with :meth:`forward_run`, which finds the runs made before.
        """
        delivery_id = delivery["delivery_id"]
        try:
            with self.engine.begin() as connection:
                connection.execute(insert(tables.deliveries), delivery)
                runs = {
                    pipeline: connection.execute(
                        insert(tables.runs).returning(tables.runs.c.id),
                        self._first_run(pipeline, trigger, delivery_id, ref, commit, subject),
                    ).scalar_one()
                    for pipeline in pipelines
                }
            return "new", runs
        except IntegrityError:
            pass
        try:
            with self.engine.begin() as connection:
                connection.execute(
                    insert(tables.deliveries), {**delivery, "outcome": "received", "detail": None}
                )
        except IntegrityError:
            return self.seen_before(delivery_id, delivery["entry"]), None
        return "new", None

    def finish_forwarding(
        self, delivery_id: str, outcome: str, detail: str | None, entries: Mapping[int, str]
    ) -> None:
        """Record each run's entry in its pipeline's queue and the delivery's outcome, in one transaction."""
        with self.engine.begin() as connection:
            for run_id, entry in entries.items():
                connection.execute(update(tables.runs).where(tables.runs.c.id == run_id).values(entry=entry))
            connection.execute(
                update(tables.deliveries)
                .where(*self._delivery(delivery_id))
                .values(outcome=outcome, detail=detail)
            )

    def _first_run(
        self,
        pipeline: str,
        trigger: str,
        delivery_id: str,
        ref: str | None,
        commit: str | None,
        subject: str | None,
    ) -> dict[str, Any]:
        """The row of a delivery's first run of ``pipeline``: attempt 1, which is unique per pipeline."""
        return {**self._run_row(pipeline, trigger, delivery_id, ref, commit, subject), "attempt": 1}

    def _run_row(
        self,
        pipeline: str,
        trigger: str,
        delivery_id: str | None,
        ref: str | None,
        commit: str | None,
        subject: str | None,
        reason: str | None = None,
    ) -> dict[str, Any]:
        """The row of a queued run (its attempt the column's default, 1, unless the caller sets it)."""
        return {
            "server": self.server,
            "pipeline": pipeline,
            "trigger": trigger,
            "delivery_id": delivery_id,
            "ref": ref,
            "commit": commit,
            "subject": subject,
            "reason": reason,
            "status": "queued",
            "queued_at": datetime.now(UTC),
        }

    def unfinished_runs(self) -> list[Row[Any]]:
        """Runs queued or running, oldest first: what a worker that starts settles."""
        runs = tables.runs
        query = select(runs).where(runs.c.server == self.server, runs.c.status.in_(("queued", "running")))
        with self.engine.connect() as connection:
            return list(connection.execute(query.order_by(runs.c.id)))

    def end_run(self, run_id: int, status: str, reason: str) -> bool:
        """End a run that has not ended (queued or running); False if it had."""
        with self.engine.begin() as connection:
            done = connection.execute(
                update(tables.runs)
                .where(
                    tables.runs.c.id == run_id,
                    tables.runs.c.server == self.server,
                    tables.runs.c.status.in_(("queued", "running")),
                )
                .values(status=status, reason=reason, finished_at=datetime.now(UTC))
            )
        return done.rowcount > 0

    def fail_runs_of_entry(self, pipeline: str, entry: str, reason: str) -> list[int]:
        """Fail the queued runs of a pipeline-queue entry (one that cannot be carried out)."""
        return self._fail_queued_runs(
            reason, tables.runs.c.pipeline == pipeline, tables.runs.c.entry == entry
        )

    def fail_unforwarded_runs(self, delivery_id: str, reason: str) -> list[int]:
        """Fail the delivery's queued runs that never got their entry (its routing was given up)."""
        return self._fail_queued_runs(
            reason, tables.runs.c.delivery_id == delivery_id, tables.runs.c.entry.is_(None)
        )

    def _fail_queued_runs(self, reason: str, *where: ColumnElement[bool]) -> list[int]:
        runs = tables.runs
        with self.engine.begin() as connection:
            failed = connection.execute(
                update(runs)
                .where(*where, runs.c.server == self.server, runs.c.status == "queued")
                .values(status="failed", reason=reason, finished_at=datetime.now(UTC))
                .returning(runs.c.id)
            )
            return sorted(failed.scalars())

    def set_run(self, run_id: int, **fields: Any) -> None:
        with self.engine.begin() as connection:
            connection.execute(update(tables.runs).where(tables.runs.c.id == run_id).values(**fields))

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
                insert(tables.steps),
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

    def run(self, run_id: int) -> Row[Any] | None:
        """Run ``run_id``, whichever server's (ids are the database's): its ``server`` says whose."""
        with self.engine.connect() as connection:
            return connection.execute(select(tables.runs).where(tables.runs.c.id == run_id)).first()

    def runs(
        self, pipeline: str | None = None, limit: int = 20, *, server: Servers = THIS_SERVER
    ) -> list[Row[Any]]:
        """The last runs, newest first: this server's, another's, or (None) every server's."""
        runs = tables.runs
        query = (
            select(runs)
            .where(*where_server(runs.c.server, self.server, server))
            .order_by(runs.c.id.desc())
            .limit(limit)
        )
        if pipeline is not None:
            query = query.where(runs.c.pipeline == pipeline)
        with self.engine.connect() as connection:
            return list(connection.execute(query))

    def steps(self, run_id: int) -> list[Row[Any]]:
        steps = tables.steps
        query = select(steps).where(steps.c.run_id == run_id).order_by(steps.c.position)
        with self.engine.connect() as connection:
            return list(connection.execute(query))

    def last_deployed_commit(self, pipeline: str, *, server: str | None = None) -> str | None:
        """The commit of the pipeline's last successful run on this server (or ``server``): what is deployed
        there now."""
        with self.engine.connect() as connection:
            return connection.scalars(deployed_commit(server or self.server, pipeline)).first()


def next_attempt(connection: Connection, server: str, pipeline: str, delivery_id: str) -> int:
    """The attempt number after the last of the server's (delivery, pipeline)'s runs (runner/claims.py's
    too)."""
    runs = tables.runs
    last = connection.scalar(
        select(func.max(runs.c.attempt)).where(
            runs.c.server == server, runs.c.pipeline == pipeline, runs.c.delivery_id == delivery_id
        )
    )
    return (last or 0) + 1


def deployed_commit(server: str, pipeline: str) -> Select[tuple[str | None]]:
    """The query of the commit of the pipeline's last successful run on ``server`` (runner/claims.py's
    too)."""
    return (
        select(tables.runs.c.commit)
        .where(
            tables.runs.c.server == server,
            tables.runs.c.pipeline == pipeline,
            tables.runs.c.status == "succeeded",
            tables.runs.c.commit.is_not(None),
        )
        .order_by(tables.runs.c.finished_at.desc(), tables.runs.c.id.desc())
        .limit(1)
    )
