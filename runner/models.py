"""The tables. Their schema changes only through the Alembic migrations in ``migrations/``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator, TypeEngine

from runner.timefmt import utc

# Named constraints keep migrations identical on SQLite and PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# Fixed width and always with its offset: on SQLite, text order is time order, and the file says it is UTC.
SQLITE_UTC_FORMAT = (
    "%(year)04d-%(month)02d-%(day)02d %(hour)02d:%(minute)02d:%(second)02d.%(microsecond)06d+00:00"
)


class UTCDateTime(TypeDecorator[datetime]):
    """A point in time: stored in UTC, handed back as an aware UTC datetime, on SQLite and PostgreSQL.

    PostgreSQL keeps a ``timestamptz`` (and hands it back in the session's time zone: converted here).
    SQLite keeps text, ``2026-11-25 11:43:23.908134+00:00``; a value without an offset, as written before
    revision 0004, was UTC. A naive value is refused on the way in: it could be any time zone's.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sqlite.DATETIME(timezone=True, storage_format=SQLITE_UTC_FORMAT))
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"a time must be a datetime, not {type(value).__name__}")
        return utc(value)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Delivery(Base):
    """One GitHub delivery, by its delivery id: a redelivery carries the same id and is not a new delivery."""

    __tablename__ = "deliveries"

    # The server that received it (RUNNER_SERVER_NAME): one hook fanned out to several servers is a delivery
    # on each, a redelivery to the same server a duplicate there.
    server: Mapped[str] = mapped_column(String(64), primary_key=True)
    delivery_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    event: Mapped[str] = mapped_column(String(64))
    hook_id: Mapped[str | None] = mapped_column(String(32))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # The main queue entry it arrived as.
    entry: Mapped[str | None] = mapped_column(Text)
    # What became of it: "received" until routed; the router fills in the outcome and why.
    outcome: Mapped[str] = mapped_column(String(32), default="received")
    detail: Mapped[str | None] = mapped_column(Text)
    repository: Mapped[str | None] = mapped_column(Text)
    ref: Mapped[str | None] = mapped_column(Text)
    # How often GitHub delivered this id again (a redelivery); those copies are recorded, not routed.
    duplicates: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Fetched from GitHub's record of the hook's deliveries by the catch-up: runner never received it.
    recovered: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class Run(Base):
    """One run of a pipeline: for a routed delivery, or triggered by hand."""

    __tablename__ = "runs"
    # At most one forwarding of a delivery to a pipeline, across crashes and retries: the router's run is
    # attempt 1; a run that does its entry again (after an interruption) is the next attempt. Per server:
    # each server carries out its own copy of a delivery; its pipelines are looked up by name within it.
    __table_args__ = (
        UniqueConstraint("server", "delivery_id", "pipeline", "attempt"),
        Index(None, "server", "pipeline"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # The server whose worker carries it out (RUNNER_SERVER_NAME).
    server: Mapped[str] = mapped_column(String(64))
    pipeline: Mapped[str] = mapped_column(Text, index=True)
    # The pipeline queue entry it carries out; a run interrupted by a crash is followed by another for it.
    entry: Mapped[str | None] = mapped_column(Text)
    delivery_id: Mapped[str | None] = mapped_column(String(100), index=True)
    attempt: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    trigger: Mapped[str] = mapped_column(String(16))  # "push", "manual" or "rollback"
    ref: Mapped[str | None] = mapped_column(Text)
    commit: Mapped[str | None] = mapped_column(String(64))
    # The commit's subject (its message's first line), when the event or the checkout tells it.
    subject: Mapped[str | None] = mapped_column(Text)
    # queued, running, succeeded, failed, cancelled, superseded, interrupted
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    log_path: Mapped[str | None] = mapped_column(Text)
    queued_at: Mapped[datetime] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class StepResult(Base):
    """What one step of a run did."""

    __tablename__ = "steps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(Text)
    # succeeded, failed, timed_out, cancelled, skipped
    status: Mapped[str] = mapped_column(String(16))
    exit_code: Mapped[int | None] = mapped_column(Integer)
    detail: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime] = mapped_column(UTCDateTime())
    duration: Mapped[float] = mapped_column(Float)


class GitHubReport(Base):
    """A call GitHub must receive about a run: a commit status, a deployment or a deployment's status.

    Recorded by the run's lane, sent by the worker's reporter (runner/reporter.py), in the order of their
    ids within a run; kept until sent, or given up.
    """

    __tablename__ = "github_reports"
    # The reporter's question: which pending rows are due.
    __table_args__ = (Index(None, "state", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    # owner/name
    repository: Mapped[str] = mapped_column(Text)
    # status (a commit status), deployment, deployment_status
    kind: Mapped[str] = mapped_column(String(32))
    commit: Mapped[str] = mapped_column(String(64))
    # The call's JSON body, as GitHub's REST API takes it.
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    # The row whose result this one needs: a deployment status follows its deployment, whose id it names.
    follows: Mapped[int | None] = mapped_column(ForeignKey("github_reports.id", ondelete="CASCADE"))
    # The id GitHub gave what was made (the deployment's, the status's).
    result: Mapped[int | None] = mapped_column(BigInteger)
    # pending, sent, given_up
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Why the last attempt failed, or why the row was given up.
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Notification(Base):
    """A message a run's end sends to one of its pipeline's ``notify:`` targets (runner/notifications.py).

    Recorded by the run's lane, sent by the worker's notifier (runner/notifier.py). Never holds a URL: the
    target is resolved from the pipeline (and its webhook file) when the message is sent.
    """

    __tablename__ = "notifications"
    # The notifier's question: which pending rows are due.
    __table_args__ = (Index(None, "state", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    # Safe to show anywhere: "slack webhook https://hooks.slack.com/…", "webhook from /etc/x", addresses.
    target: Mapped[str] = mapped_column(Text)
    # The target's position in the pipeline's notify list.
    target_index: Mapped[int] = mapped_column(Integer)
    # failure, recovery, success
    event: Mapped[str] = mapped_column(String(16))
    # What is sent (a webhook's JSON body; an e-mail's subject and text), with no credential.
    message: Mapped[dict[str, Any]] = mapped_column(JSON)
    # pending, sent, given_up
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Why the last failed attempt failed (kept once sent), or why the row was given up; never a URL.
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class ActionRecord(Base):
    """An action a user of the status page asked for (redeploy or cancel a run), and what became of it.

    Recorded by the router when it takes the action's main-queue entry, once per entry, whatever happens to
    the router: an action is done at most once.
    """

    __tablename__ = "actions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # When the user asked.
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    by: Mapped[str] = mapped_column(Text)
    # redeploy, cancel
    action: Mapped[str] = mapped_column(String(16))
    run_id: Mapped[int] = mapped_column(Integer, index=True)
    # The run a redeploy queued.
    new_run_id: Mapped[int | None] = mapped_column(Integer, index=True)
    # asked (being done), queued, cancelled, refused, interrupted
    outcome: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str | None] = mapped_column(Text)
    # The main-queue entry it came as: taken again after a crash, it is not done again.
    entry: Mapped[str] = mapped_column(Text, index=True)
