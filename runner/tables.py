"""The tables, as SQLAlchemy Core ``Table`` objects. Their schema changes only through the Alembic migrations
in ``migrations/``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.dialects import sqlite
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


metadata = MetaData(naming_convention=NAMING_CONVENTION)

# One GitHub delivery, by its delivery id: a redelivery carries the same id and is not a new delivery.
deliveries = Table(
    "deliveries",
    metadata,
    # The server that received it (RUNNER_SERVER_NAME): one hook fanned out to several servers is a delivery
    # on each, a redelivery to the same server a duplicate there.
    Column("server", String(64), primary_key=True),
    Column("delivery_id", String(100), primary_key=True),
    Column("event", String(64), nullable=False),
    Column("hook_id", String(32)),
    Column("received_at", UTCDateTime(), nullable=False, index=True),
    Column("recorded_at", UTCDateTime(), nullable=False),
    # The main queue entry it arrived as.
    Column("entry", Text),
    # What became of it: "received" until routed; the router fills in the outcome and why.
    Column("outcome", String(32), nullable=False, default="received"),
    Column("detail", Text),
    Column("repository", Text),
    Column("ref", Text),
    # How often GitHub delivered this id again (a redelivery); those copies are recorded, not routed.
    Column("duplicates", Integer, nullable=False, default=0, server_default="0"),
    # Fetched from GitHub's record of the hook's deliveries by the catch-up: runner never received it.
    Column("recovered", Boolean, nullable=False, default=False, server_default=false()),
)

# One run of a pipeline: for a routed delivery, or triggered by hand.
runs = Table(
    "runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    # The server whose worker carries it out (RUNNER_SERVER_NAME).
    Column("server", String(64), nullable=False),
    Column("pipeline", Text, nullable=False, index=True),
    # The pipeline queue entry it carries out; a run interrupted by a crash is followed by another for it.
    Column("entry", Text),
    Column("delivery_id", String(100), index=True),
    Column("attempt", Integer, nullable=False, default=1, server_default="1"),
    Column("trigger", String(16), nullable=False),  # "push", "manual" or "rollback"
    Column("ref", Text),
    Column("commit", String(64)),
    # The commit's subject (its message's first line), when the event or the checkout tells it.
    Column("subject", Text),
    # queued, running, succeeded, failed, cancelled, superseded, interrupted
    Column("status", String(16), nullable=False),
    Column("reason", Text),
    Column("log_path", Text),
    Column("queued_at", UTCDateTime(), nullable=False),
    Column("started_at", UTCDateTime()),
    Column("finished_at", UTCDateTime()),
    # At most one forwarding of a delivery to a pipeline, across crashes and retries: the router's run is
    # attempt 1; a run that does its entry again (after an interruption) is the next attempt. Per server:
    # each server carries out its own copy of a delivery; its pipelines are looked up by name within it.
    UniqueConstraint("server", "delivery_id", "pipeline", "attempt"),
    Index(None, "server", "pipeline"),
)

# What one step of a run did.
steps = Table(
    "steps",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", Integer, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("position", Integer, nullable=False),
    Column("name", Text, nullable=False),
    # succeeded, failed, timed_out, cancelled, skipped
    Column("status", String(16), nullable=False),
    Column("exit_code", Integer),
    Column("detail", Text),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("finished_at", UTCDateTime(), nullable=False),
    Column("duration", Float, nullable=False),
)


def _sent_with_retries() -> tuple[Column[Any] | Index, ...]:
    """The columns of a row the worker sends with retries (a GitHub report, a notification): its state
    (pending, sent, given_up), its attempts, why the last failed (never a URL), and when it is due; and the
    sender's question, which pending rows are due."""
    return (
        Column("state", String(16), nullable=False),
        Column("attempts", Integer, nullable=False, default=0, server_default="0"),
        Column("error", Text),
        Column("created_at", UTCDateTime(), nullable=False),
        Column("next_attempt_at", UTCDateTime(), nullable=False),
        Column("sent_at", UTCDateTime()),
        Index(None, "state", "next_attempt_at"),
    )


# A call GitHub must receive about a run: a commit status, a deployment or a deployment's status. Recorded by
# the run's lane, sent by the worker's reporter (runner/reporter.py), in the order of their ids within a run;
# kept until sent, or given up.
github_reports = Table(
    "github_reports",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", Integer, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False, index=True),
    # owner/name
    Column("repository", Text, nullable=False),
    # status (a commit status), deployment, deployment_status
    Column("kind", String(32), nullable=False),
    Column("commit", String(64), nullable=False),
    # The call's JSON body, as GitHub's REST API takes it.
    Column("body", JSON, nullable=False),
    # The row whose result this one needs: a deployment status follows its deployment, whose id it names.
    Column("follows", Integer, ForeignKey("github_reports.id", ondelete="CASCADE")),
    # The id GitHub gave what was made (the deployment's, the status's).
    Column("result", BigInteger),
    *_sent_with_retries(),
)

# A message a run's end sends to one of its pipeline's ``notify:`` targets (runner/notifications.py). Recorded
# by the run's lane, sent by the worker's notifier (runner/notifier.py). Never holds a URL: the target is
# resolved from the pipeline (and its webhook file) when the message is sent.
notifications = Table(
    "notifications",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", Integer, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False, index=True),
    # Safe to show anywhere: "slack webhook https://hooks.slack.com/…", "webhook from /etc/x", addresses.
    Column("target", Text, nullable=False),
    # The target's position in the pipeline's notify list.
    Column("target_index", Integer, nullable=False),
    # failure, recovery, success
    Column("event", String(16), nullable=False),
    # What is sent (a webhook's JSON body; an e-mail's subject and text), with no credential.
    Column("message", JSON, nullable=False),
    *_sent_with_retries(),
)

# An action a user of the status page asked for (redeploy or cancel a run), and what became of it. Recorded
# by the router when it takes the action's main-queue entry, once per entry, whatever happens to the router:
# an action is done at most once.
actions = Table(
    "actions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    # When the user asked.
    Column("at", UTCDateTime(), nullable=False),
    Column("by", Text, nullable=False),
    # redeploy, cancel
    Column("action", String(16), nullable=False),
    Column("run_id", Integer, nullable=False, index=True),
    # The run a redeploy queued.
    Column("new_run_id", Integer, index=True),
    # asked (being done), queued, cancelled, refused, interrupted
    Column("outcome", String(16), nullable=False),
    Column("detail", Text),
    # The main-queue entry it came as: taken again after a crash, it is not done again.
    Column("entry", Text, nullable=False, index=True),
)
