"""The notifications outbox: the messages runs' ends send to their pipelines' ``notify:`` targets, kept in
the database (``notifications``) with each attempt's outcome until sent or given up.

A lane records a run's messages when it ends (``record``): a database write, never a network call. Which
event a run's end is: failure (it failed), recovery (it succeeded, and the pipeline's previous run that
ended for itself, neither called off nor interrupted, had failed), success (it succeeded). A target told of
success or recovery gets one message for a recovery, as a recovery. The notifier (runner/notifier.py)
sends the due rows. ``attempts`` is what the status page shows of a run's messages.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Row, func, insert, select, update

from runner import tables
from runner.credentials import mask
from runner.notify_messages import Facts, email_message, plain, subject_of, webhook_body
from runner.pipeline import NotifyTarget, Pipeline
from runner.store import Store

PENDING = "pending"
SENT = "sent"
GIVEN_UP = "given_up"
# How many of the run's last log lines a message quotes, and how much of the log is read for them.
LOG_LINES = 10
LOG_READ = 64 * 1024
LOG_LINE_LIMIT = 300
# A log line: its time stamp, then the stream and the text (runner/steps/base.py's RunLog).
_STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z ")
# Runs that ended for themselves: what a recovery looks back at.
_ENDED = ("succeeded", "failed")

runs, notifications = tables.runs, tables.notifications


def describe(target: NotifyTarget) -> str:
    """The target, as rows and pages show it: no URL but its scheme and host."""
    if target.kind == "email":
        return "email " + ", ".join(target.addresses)
    if target.kind == "webhook-file":
        return f"{target.format} webhook from {target.file}"
    parts = urlsplit(target.url or "")
    return f"{target.format} webhook {parts.scheme}://{parts.hostname}/…"


def event_of(store: Store, run: Row[Any]) -> str | None:
    """What the run's end is told as: failure, recovery, success; None for a run that was called off."""
    if run.status == "failed":
        return "failure"
    if run.status != "succeeded":
        return None
    with store.engine.connect() as connection:
        previous = connection.scalar(
            select(runs.c.status)
            .where(
                runs.c.server == run.server,
                runs.c.pipeline == run.pipeline,
                runs.c.id < run.id,
                runs.c.status.in_(_ENDED),
            )
            .order_by(runs.c.id.desc())
            .limit(1)
        )
    return "recovery" if previous == "failed" else "success"


def told(target: NotifyTarget, event: str) -> bool:
    """Whether ``target`` is told of ``event``; a recovery is also a success."""
    return event in target.on or (event == "recovery" and "success" in target.on)


def log_tail(path: Path, lines: int = LOG_LINES) -> list[str]:
    """The last lines of a run's log, without their time stamps or control characters, credentials in URLs
    masked; runner's closing note left out."""
    try:
        with path.open("rb") as file:
            size = file.seek(0, 2)
            file.seek(max(0, size - LOG_READ))
            data = file.read()
    except OSError:
        return []
    found = [plain(_STAMP.sub("", line)) for line in data.decode(errors="replace").splitlines()[-lines - 1 :]]
    found = [mask(line)[:LOG_LINE_LIMIT] for line in found if line]
    if found and found[-1].endswith("| run finished"):
        found.pop()
    return found[-lines:]


def facts_of(
    store: Store,
    run: Row[Any],
    event: str,
    payload: Mapping[str, Any] | None,
    server: str,
    public_url: str | None,
) -> Facts:
    failed = [step for step in store.steps(run.id) if step.status in ("failed", "timed_out")]
    return Facts(
        pipeline=run.pipeline,
        server=server,
        run=run.id,
        status=run.status,
        event=event,
        commit=run.commit,
        subject=plain(run.subject) if run.subject else subject_of(payload),
        ref=run.ref,
        step=f"{failed[-1].position} ({failed[-1].name})" if failed else None,
        log_tail=log_tail(Path(run.log_path)) if run.log_path and event == "failure" else [],
        url=f"{public_url.rstrip('/')}/runs/{run.id}" if public_url else None,
    )


class Notifications:
    """The rows of ``notifications``, in the Store's database."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.engine = store.engine

    def record(
        self,
        run_id: int,
        pipeline: Pipeline,
        payload: Mapping[str, Any] | None,
        server: str,
        public_url: str | None,
    ) -> int:
        """Record the messages a run that ended sends; how many."""
        run = self.store.run(run_id)
        event = None if run is None or not pipeline.notify else event_of(self.store, run)
        if run is None or event is None:
            return 0
        targets = [(index, t) for index, t in enumerate(pipeline.notify) if told(t, event)]
        if not targets:
            return 0
        facts = facts_of(self.store, run, event, payload, server, public_url)
        now = datetime.now(UTC)
        rows = [
            {
                "run_id": run_id,
                "target": describe(target),
                "target_index": index,
                "event": event,
                "message": email_message(facts)
                if target.kind == "email"
                else webhook_body(target.format, facts),
                "state": PENDING,
                "attempts": 0,
                "created_at": now,
                "next_attempt_at": now,
            }
            for index, target in targets
        ]
        with self.engine.begin() as connection:
            connection.execute(insert(notifications), rows)
        return len(targets)

    def due(self, now: datetime, busy: Sequence[int] = ()) -> list[tuple[Row[Any], str]]:
        """Pending rows whose time has come, oldest first, but those being sent (``busy``); each with its
        run's pipeline (which the row has too, as ``pipeline``)."""
        query = (
            select(notifications, runs.c.pipeline)
            .join(runs, runs.c.id == notifications.c.run_id)
            .where(
                runs.c.server == self.store.server,
                notifications.c.state == PENDING,
                notifications.c.next_attempt_at <= now,
            )
            .order_by(notifications.c.id)
            .limit(100)
        )
        if busy:
            query = query.where(notifications.c.id.not_in(busy))
        with self.engine.connect() as connection:
            return [(row, row.pipeline) for row in connection.execute(query)]

    def next_due(self, busy: Sequence[int] = ()) -> datetime | None:
        """When the next pending row not being sent is due; None: none is."""
        query = (
            select(func.min(notifications.c.next_attempt_at))
            .join(runs, runs.c.id == notifications.c.run_id)
            .where(runs.c.server == self.store.server, notifications.c.state == PENDING)
        )
        if busy:
            query = query.where(notifications.c.id.not_in(busy))
        with self.engine.connect() as connection:
            return connection.scalar(query)

    def sent(self, row_id: int) -> None:
        # The error stays: how the attempts before this one failed.
        self._set(row_id, state=SENT, sent_at=datetime.now(UTC))

    def retry(self, row_id: int, at: datetime, error: str) -> None:
        self._set(row_id, error=error, next_attempt_at=at)

    def give_up(self, row_id: int, error: str, *, attempted: bool = True) -> None:
        self._set(row_id, state=GIVEN_UP, error=error, attempted=attempted)

    def _set(self, row_id: int, attempted: bool = True, **values: object) -> None:
        if attempted:
            values["attempts"] = notifications.c.attempts + 1
        with self.engine.begin() as connection:
            connection.execute(update(notifications).where(notifications.c.id == row_id).values(**values))


def attempts(store: Store, run_id: int) -> list[Row[Any]]:
    """A run's notifications, oldest first: each one's target, event, state, attempts and last error (what
    the status page shows)."""
    query = select(notifications).where(notifications.c.run_id == run_id).order_by(notifications.c.id)
    with store.engine.connect() as connection:
        return list(connection.execute(query))
