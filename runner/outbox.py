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

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, aliased
from sqlalchemy.sql import Select

from runner.github_reports import DEPLOYMENT, DEPLOYMENT_STATUS, Report
from runner.models import GitHubReport, Run
from runner.store import Store

PENDING = "pending"
SENT = "sent"
GIVEN_UP = "given_up"


class Outbox:
    """The rows of ``github_reports``, in the Store's database; those it sends are its server's runs'."""

    def __init__(self, store: Store) -> None:
        self.engine = store.engine
        self.mine = GitHubReport.run_id.in_(select(Run.id).where(Run.server == store.server))

    def add(self, run_id: int, repository: str, commit: str, reports: Sequence[Report]) -> None:
        """Record a run's calls, after those it recorded before; a deployment status follows the run's
        last deployment."""
        now = datetime.now(UTC)
        with Session(self.engine) as session, session.begin():
            deployment = session.scalar(
                select(func.max(GitHubReport.id)).where(
                    GitHubReport.run_id == run_id, GitHubReport.kind == DEPLOYMENT
                )
            )
            for report in reports:
                row = GitHubReport(
                    run_id=run_id,
                    repository=repository,
                    kind=report.kind,
                    commit=commit,
                    body=report.body,
                    follows=deployment if report.kind == DEPLOYMENT_STATUS else None,
                    state=PENDING,
                    attempts=0,
                    created_at=now,
                    next_attempt_at=now,
                )
                session.add(row)
                # Its id, in order: what a later deployment status follows.
                session.flush()
                if report.kind == DEPLOYMENT:
                    deployment = row.id

    def of_run(self, run_id: int) -> list[GitHubReport]:
        """A run's rows, in their order."""
        with Session(self.engine, expire_on_commit=False) as session:
            query = select(GitHubReport).where(GitHubReport.run_id == run_id).order_by(GitHubReport.id)
            return list(session.scalars(query))

    def get(self, report_id: int) -> GitHubReport | None:
        with Session(self.engine, expire_on_commit=False) as session:
            return session.get(GitHubReport, report_id)

    def _heads(self) -> Select[tuple[GitHubReport]]:
        """The first pending row of each of this server's runs: the only one of the run that may be sent."""
        earlier = aliased(GitHubReport)
        waits = (
            select(earlier.id)
            .where(
                earlier.run_id == GitHubReport.run_id, earlier.state == PENDING, earlier.id < GitHubReport.id
            )
            .exists()
        )
        return select(GitHubReport).where(self.mine, GitHubReport.state == PENDING, ~waits)

    def due(self, now: datetime) -> list[GitHubReport]:
        """The rows to send now, oldest first."""
        with Session(self.engine, expire_on_commit=False) as session:
            query = self._heads().where(GitHubReport.next_attempt_at <= now).order_by(GitHubReport.id)
            return list(session.scalars(query))

    def next_due(self) -> datetime | None:
        """When the next row is due; None when none is pending."""
        heads = self._heads().subquery()
        with Session(self.engine) as session:
            return session.scalar(select(func.min(heads.c.next_attempt_at)))

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
                update(GitHubReport)
                .where(GitHubReport.id == report_id)
                .values(attempts=GitHubReport.attempts + int(attempted), **values)
            )

    def give_up_older(self, before: datetime, why: str) -> list[GitHubReport]:
        """Give up the pending rows made before ``before``: ``why``, then the last attempt's error."""
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            query = select(GitHubReport).where(
                self.mine, GitHubReport.state == PENDING, GitHubReport.created_at < before
            )
            rows = list(session.scalars(query.order_by(GitHubReport.id)))
            for row in rows:
                row.state = GIVEN_UP
                row.error = why + (f" (last: {row.error})" if row.error else "")
            return rows
