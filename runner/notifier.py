"""The notifier: records the messages a run's end sends (for the lanes), and sends them, as a task of the
worker.

A lane records a run's messages when it ends (``ended``): a database write in a thread, which wakes the
notifier; no target is reached on a lane's way, so a target that fails, is slow or hangs never fails or
delays a run. The notifier sends each due row in a thread of its pool, so that one target's wait never
delays another's; an attempt has TIMEOUT seconds. A failed attempt is recorded on the row (its error, which
never holds a URL) and made again after RETRIES[n], then the row is given up. With nothing due it sleeps
until the next row is, or until a lane records one.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Row

from runner.config import Config
from runner.notifications import Notifications, describe
from runner.pipeline import NotifyTarget, Pipeline
from runner.pipelines import PipelineSet
from runner.store import Store

logger = logging.getLogger(__name__)

# The pauses after each failed attempt; after the last, the row is given up.
RETRIES = (5.0, 30.0, 120.0)
# Rows sent at once: a hanging target holds one thread for its timeout, the others go on.
THREADS = 4


class GiveUp(Exception):
    """A row that no attempt can send (its target is gone from the pipeline)."""


def _what(row: Row[Any]) -> str:
    return f"notification {row.id} of run {row.run_id} ({row.event}, {row.target})"


class Notifier:
    """Records what runs' ends send, for the lanes, and sends it, as the worker's task."""

    def __init__(self, store: Store, pipelines: PipelineSet, config: Config) -> None:
        self.notifications = Notifications(store)
        self.pipelines = pipelines
        self.config = config
        # Set when a lane records a row, and when an attempt ends.
        self.wake = asyncio.Event()
        self._busy: set[int] = set()

    async def ended(self, run_id: int, pipeline: Pipeline | None, payload: Mapping[str, Any] | None) -> None:
        """Record the messages run ``run_id`` of ``pipeline`` sends, now that it ended (``payload``: its
        event's, for the commit's subject). A failure to record is logged: it never fails the run."""
        if pipeline is None or not pipeline.notify:
            return
        config = self.config
        try:
            recorded = await asyncio.to_thread(
                self.notifications.record, run_id, pipeline, payload, config.server_name, config.public_url
            )
        except Exception:
            logger.exception("could not record the notifications of run %d", run_id)
            return
        if recorded:
            self.wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        pool = ThreadPoolExecutor(THREADS, thread_name_prefix="notify")
        try:
            while not stop.is_set():
                self.wake.clear()
                now = datetime.now(UTC)
                for row, pipeline in await asyncio.to_thread(self.notifications.due, now, list(self._busy)):
                    self._busy.add(row.id)
                    sending = loop.run_in_executor(pool, self._send, row, pipeline)
                    sending.add_done_callback(lambda _, row_id=row.id: self._done(row_id))
                due = await asyncio.to_thread(self.notifications.next_due, list(self._busy))
                timeout = None if due is None else max(0.0, (due - datetime.now(UTC)).total_seconds())
                waits = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self.wake.wait())}
                try:
                    await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for wait in waits:
                        wait.cancel()
        finally:
            # An attempt under way ends within its timeout; its row says how it went.
            pool.shutdown(wait=False, cancel_futures=True)

    def _done(self, row_id: int) -> None:
        self._busy.discard(row_id)
        self.wake.set()

    def _target(self, row: Row[Any], pipeline_name: str) -> NotifyTarget:
        pipeline = self.pipelines.get(pipeline_name)
        if pipeline is None:
            raise GiveUp(f"pipeline {pipeline_name} no longer exists")
        targets = pipeline.notify
        if row.target_index >= len(targets) or describe(targets[row.target_index]) != row.target:
            raise GiveUp(f"the pipeline's notify list changed: item {row.target_index + 1} is no longer it")
        return targets[row.target_index]

    def _attempt(self, target: NotifyTarget, message: Mapping[str, Any]) -> None:
        from runner import notify_send

        config = self.config
        if target.kind != "email":
            notify_send.post_webhook(notify_send.webhook_url(target), message)
        elif config.smtp is None:
            raise notify_send.SendError("no SMTP server: set RUNNER_SMTP_URL")
        else:
            sender = config.smtp_from or f"runner@{socket.gethostname()}"
            notify_send.send_email(config.smtp, config.smtp_password_file, sender, target.addresses, message)

    def _send(self, row: Row[Any], pipeline_name: str) -> None:
        """One attempt at ``row``, in a thread of the pool; its outcome recorded on the row."""
        # Here, at the first message, not at the top: sending imports urllib, http.client, smtplib, email
        # and ssl (OpenSSL's libraries, 4 MB), which a worker that sends nothing would hold for nothing.
        from runner import notify_send

        try:
            try:
                self._attempt(self._target(row, pipeline_name), row.message)
            except GiveUp as exc:
                logger.error("%s given up: %s", _what(row), exc)
                self.notifications.give_up(row.id, str(exc), attempted=False)
            except notify_send.SendError as exc:
                self._failed(row, str(exc))
            except Exception as exc:
                # A bug, not the target's answer: said without its message, which may hold the URL.
                self._failed(row, f"the attempt failed: {type(exc).__name__}")
            else:
                self.notifications.sent(row.id)
                logger.info("%s sent, at attempt %d", _what(row), row.attempts + 1)
        except Exception:
            logger.exception("could not record the attempt at %s", _what(row))

    def _failed(self, row: Row[Any], error: str) -> None:
        if row.attempts >= len(RETRIES):
            logger.error("%s given up after %d attempts: %s", _what(row), row.attempts + 1, error)
            self.notifications.give_up(row.id, error)
            return
        pause = RETRIES[row.attempts]
        logger.warning(
            "%s: attempt %d failed: %s; again in %.0f s", _what(row), row.attempts + 1, error, pause
        )
        self.notifications.retry(row.id, datetime.now(UTC) + timedelta(seconds=pause), error)
