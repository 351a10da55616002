"""The outbox: the calls GitHub must receive about runs, kept in the database until sent or given up.

A lane adds a run's calls (runner/github_reports.py) when the run starts and when it ends: a database
write, never a network call. The reporter (runner/reporter.py) takes them in order: a row is due once its
next attempt's time has come and every earlier row of its run is sent or given up; the rows of different
runs do not wait for each other. A server's reporter takes its own runs' rows only: the database may be
shared with other servers, which report their runs themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, func, insert, select, update
from sqlalchemy.sql import Select

from runner import tables
from runner.github_reports import DEPLOYMENT, DEPLOYMENT_STATUS, Report
from runner.store import Store

# The table is the outbox.
outbox = tables.github_reports

PENDING = "pending"
SENT = "sent"
GIVEN_UP = "given_up"


class Outbox:
    """The rows of ``github_reports``, in the Store's database; those it sends are its server's runs'."""

    def __init__(self, store: Store) -> None:
        self.engine = store.engine
        self.mine = outbox.c.run_id.in_(select(tables.runs.c.id).where(tables.runs.c.server == store.server))

    def add(self, run_id: int, repository: str, commit: str, reports: Sequence[Report]) -> None:
        """Record a run's calls, after those it recorded before; a deployment status follows the run's
        last deployment."""
        now = datetime.now(UTC)
        with self.engine.begin() as connection:
            deployment = connection.scalar(
                select(func.max(outbox.c.id)).where(outbox.c.run_id == run_id, outbox.c.kind == DEPLOYMENT)
            )
            for report in reports:
                row = {
                    "run_id": run_id,
                    "repository": repository,
                    "kind": report.kind,
                    "commit": commit,
                    "body": report.body,
                    "follows": deployment if report.kind == DEPLOYMENT_STATUS else None,
                    "state": PENDING,
                    "attempts": 0,
                    "created_at": now,
                    "next_attempt_at": now,
                }
                # Its id, in order: what a later deployment status follows.
                row_id = connection.execute(insert(outbox).returning(outbox.c.id), row).scalar_one()
                if report.kind == DEPLOYMENT:
                    deployment = row_id

    def of_run(self, run_id: int) -> list[Row[Any]]:
        """A run's rows, in their order."""
        with self.engine.connect() as connection:
            query = select(outbox).where(outbox.c.run_id == run_id).order_by(outbox.c.id)
            return list(connection.execute(query))

    def get(self, report_id: int) -> Row[Any] | None:
        with self.engine.connect() as connection:
            return connection.execute(select(outbox).where(outbox.c.id == report_id)).first()

    def _heads(self) -> Select[Any]:
        """The first pending row of each of this server's runs: the only one of the run that may be sent."""
        earlier = outbox.alias()
        waits = (
            select(earlier.c.id)
            .where(
                earlier.c.run_id == outbox.c.run_id, earlier.c.state == PENDING, earlier.c.id < outbox.c.id
            )
            .exists()
        )
        return select(outbox).where(self.mine, outbox.c.state == PENDING, ~waits)

    def due(self, now: datetime) -> list[Row[Any]]:
        """The rows to send now, oldest first."""
        with self.engine.connect() as connection:
            query = self._heads().where(outbox.c.next_attempt_at <= now).order_by(outbox.c.id)
            return list(connection.execute(query))

    def next_due(self) -> datetime | None:
        """When the next row is due; None when none is pending."""
        heads = self._heads().subquery()
        with self.engine.connect() as connection:
            return connection.scalar(select(func.min(heads.c.next_attempt_at)))

    def sent(self, report_id: int, result: int | None) -> None:
        self._set(report_id, True, state=SENT, result=result, sent_at=datetime.now(UTC), error=None)

    def retry(self, report_id: int, at: datetime, error: str) -> None:
        """Keep the row for another attempt at ``at``, saying why this one failed."""
        self._set(report_id, True, next_attempt_at=at, error=error)

    def give_up(self, report_id: int, error: str, *, attempted: bool = True) -> None:
        """Give the row up: GitHub refused it, or (not ``attempted``) it cannot be made at all."""
        self._set(report_id, attempted, state=GIVEN_UP, error=error)

    def _set(self, report_id: int, attempted: bool, **values: object) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                update(outbox)
                .where(outbox.c.id == report_id)
                .values(attempts=outbox.c.attempts + int(attempted), **values)
            )

    def give_up_older(self, before: datetime, why: str) -> list[Row[Any]]:
        """Give up the pending rows made before ``before``: ``why``, then the last attempt's error."""
        with self.engine.begin() as connection:
            query = select(outbox).where(self.mine, outbox.c.state == PENDING, outbox.c.created_at < before)
            rows = list(connection.execute(query.order_by(outbox.c.id)))
            # Each row as it is now: given up, its error said.
            return [
                connection.execute(
                    update(outbox)
                    .where(outbox.c.id == row.id)
                    .values(state=GIVEN_UP, error=why + (f" (last: {row.error})" if row.error else ""))
                    .returning(*outbox.c)
                ).one()
                for row in rows
            ]
