"""The reporter: records what runs tell GitHub in the outbox, and sends it, as a task of the worker.

A lane records a run's calls when the run starts and ends (``started``, ``ended``): a database write in a
thread, which wakes the reporter; GitHub is never called on a lane's way, so GitHub being down or slow
never fails or delays a deployment. The reporter sends the due rows (runner/outbox.py) through the client,
in a thread, one attempt each: a call GitHub could not take (GitHubUnavailable) is kept and made again when
GitHub says, or after a pause that doubles up to RETRY_MAX; one it refused (GitHubError) is given up and
logged once; a row not sent within RUNNER_GITHUB_REPORT_FOR is given up. With nothing due it sleeps until
the next row is, or until a lane records one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from runner.entry import RunEntry
from runner.errors import describe
from runner.events import repository_name
from runner.github import GitHub, GitHubError, GitHubUnavailable, Response
from runner.github_auth import CredentialsError
from runner.github_reports import (
    CALLED_OFF,
    DEPLOYMENT,
    STATUS,
    Report,
    description,
    end_reports,
    ending_of,
    start_reports,
    waiting_ended_reports,
)
from runner.outbox import GIVEN_UP, Outbox
from runner.pipeline import GitHubReporting, Pipeline
from runner.store import Store

if TYPE_CHECKING:
    from sqlalchemy import Row

logger = logging.getLogger(__name__)

# The pause before a call GitHub could not take is made again: doubled with each attempt, up to RETRY_MAX.
RETRY_FIRST = 1.0
RETRY_MAX = 300.0


def _what(row: Row[Any]) -> str:
    """A row, as a log line names it."""
    state = row.body.get("state") or row.body.get("environment")
    return f"GitHub report {row.id} of run {row.run_id} ({row.kind} {state} for {row.repository})"


def _made_id(response: Response, what: str) -> int:
    """The id GitHub gave what ``what`` made."""
    data = response.data
    if not isinstance(data, dict) or not isinstance(data.get("id"), int):
        raise GitHubError(f"GitHub: {what}: the answer names no id", status=response.status)
    return data["id"]


class Reporter:
    """Records what runs tell GitHub, for the lanes, and sends it, as the worker's task."""

    def __init__(self, store: Store, github: GitHub, *, report_for: float, public_url: str | None) -> None:
        self.store = store
        self.outbox = Outbox(store)
        # One attempt a call: the outbox makes it again later, so that neither a lane nor the other runs'
        # rows wait for GitHub, and no call that may have been made is made again before looking.
        self.github = GitHub(github.api_url, github.credentials, timeout=github.timeout, attempts=1)
        self.report_for = report_for
        self.public_url = public_url
        # Set when a lane records a row.
        self.wake = asyncio.Event()

    # What the lanes record ---------------------------------------------------------------------------------

    async def started(self, run_id: int, reporting: GitHubReporting, repository: str, commit: str) -> None:
        """Record what a run of ``commit`` tells GitHub when it starts."""
        await self._record(run_id, lambda: self._start(run_id, reporting, repository, commit))

    async def ended(self, run_id: int, status: str, reason: str | None = None) -> None:
        """Record what a run that ended in ``status`` tells GitHub, if its start told it anything."""
        await self._record(run_id, lambda: self._end(run_id, status, reason))

    def called_off_waiting(
        self, pipeline: Callable[[], Pipeline | None]
    ) -> Callable[[int, RunEntry | None, str, str], Awaitable[None]]:
        """What a lane's waiting entries call when one's run is called off (superseded, or cancelled by
        hand) before it started: the run's commit status says so. ``pipeline``: the lane's pipeline now."""

        async def told(run_id: int, entry: RunEntry | None, status: str, reason: str) -> None:
            known = pipeline()
            if known is None or entry is None or entry.commit is None:
                return
            repository = repository_name(entry.payload) or known.trigger.repository
            commit, ending = entry.commit, CALLED_OFF if status == "cancelled" else status
            await self._record(
                run_id, lambda: self._end_waiting(run_id, known.github, repository, commit, ending, reason)
            )

        return told

    def _start(self, run_id: int, reporting: GitHubReporting, repository: str, commit: str) -> bool:
        reports = start_reports(reporting, run_id, commit, self.public_url)
        if reports:
            self.outbox.add(run_id, repository, commit, reports)
        return bool(reports)

    def _end_waiting(
        self, run_id: int, reporting: GitHubReporting, repository: str, commit: str, status: str, reason: str
    ) -> bool:
        if self.outbox.of_run(run_id):
            return self._end(run_id, status, reason)
        ending, _ = ending_of(status, [])
        said = description(ending.description, commit=commit, run_id=run_id, reason=reason)
        reports = waiting_ended_reports(reporting, ending, said, self.public_url, run_id)
        if reports:
            self.outbox.add(run_id, repository, commit, reports)
        return bool(reports)

    def _end(self, run_id: int, status: str, reason: str | None = None) -> bool:
        rows = self.outbox.of_run(run_id)
        if not rows:
            return False
        ending, step = ending_of(status, self.store.steps(run_id))
        said = description(
            ending.description, commit=rows[0].commit, run_id=run_id, step=step, reason=reason or ""
        )
        reports = end_reports([Report(row.kind, row.body) for row in rows], ending, said)
        if reports:
            self.outbox.add(run_id, rows[0].repository, rows[0].commit, reports)
        return bool(reports)

    async def _record(self, run_id: int, write: Callable[[], bool]) -> None:
        """Make ``write`` (in a thread), and wake the reporter if it recorded anything."""
        try:
            recorded = await asyncio.to_thread(write)
        except Exception:
            # What GitHub is told is never worth a deployment.
            logger.exception("could not record what run %d tells GitHub", run_id)
            return
        if recorded:
            self.wake.set()

    # Sending -----------------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        logger.info("reporting runs to GitHub at %s", self.github.api_url)
        while not stop.is_set():
            self.wake.clear()
            due = await asyncio.to_thread(self.send_due, stop.is_set)
            timeout = None if due is None else max(0.0, (due - datetime.now(UTC)).total_seconds())
            waits = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self.wake.wait())}
            try:
                await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()

    def send_due(self, stopping: Callable[[], bool] = lambda: False) -> datetime | None:
        """Send what is due, until nothing is or ``stopping()``; when the next row is due (None: none is
        pending)."""
        now = datetime.now(UTC)
        why = f"not sent within RUNNER_GITHUB_REPORT_FOR ({self.report_for:.0f} s)"
        for row in self.outbox.give_up_older(now - timedelta(seconds=self.report_for), why):
            logger.error("%s given up: %s", _what(row), row.error)
        # Again after each round: a sent row lets its run's next one be due.
        while (rows := self.outbox.due(now)) and not stopping():
            for row in rows:
                if stopping():
                    break
                self._send(row)
        return self.outbox.next_due()

    def _send(self, row: Row[Any]) -> None:
        try:
            result = self._call(row)
        except GitHubUnavailable as exc:
            self._keep(row, exc, exc.retry_at)
        except CredentialsError as exc:
            # A credentials file the operator is putting right is no reason to lose what GitHub is told.
            self._keep(row, exc, None)
        except GitHubError as exc:
            logger.error("%s given up: %s", _what(row), exc)
            self.outbox.give_up(row.id, str(exc), attempted=exc.status is not None)
        except Exception as exc:
            # Not GitHub's answer (a bug, an answer of another shape): made again, it would fail again.
            logger.exception("%s given up: %s", _what(row), describe(exc))
            self.outbox.give_up(row.id, describe(exc))
        else:
            self.outbox.sent(row.id, result)
            if row.attempts:
                logger.info("%s sent, at attempt %d", _what(row), row.attempts + 1)

    def _keep(self, row: Row[Any], error: GitHubError, retry_at: float | None) -> None:
        """Keep a row whose call failed for now: made again when GitHub said, or after the pause."""
        pause = min(RETRY_FIRST * 2**row.attempts, RETRY_MAX)
        at = max(retry_at or 0.0, time.time() + pause)
        if row.attempts == 0:
            logger.warning("%s: %s; kept, and made again until it is sent", _what(row), error)
        self.outbox.retry(row.id, datetime.fromtimestamp(at, UTC), str(error))

    def _call(self, row: Row[Any]) -> int | None:
        """Make the row's call; the id of what GitHub made."""
        repository = row.repository
        path = f"/repos/{quote(repository, safe='/')}"
        if row.kind == STATUS:
            target = f"{path}/statuses/{quote(row.commit)}"
            return _made_id(self.github.request("POST", target, repository=repository, json=row.body), target)
        if row.kind == DEPLOYMENT:
            made = self._made_before(row, f"{path}/deployments")
            if made is not None:
                return made
            response = self.github.request(
                "POST", f"{path}/deployments", repository=repository, json=row.body
            )
            return _made_id(response, f"POST {path}/deployments")
        deployment = self.outbox.get(row.follows) if row.follows is not None else None
        if deployment is None or deployment.result is None:
            state = "given up" if deployment is not None and deployment.state == GIVEN_UP else "not made"
            raise GitHubError(f"the run's deployment was {state}: its status cannot be posted")
        target = f"{path}/deployments/{deployment.result}/statuses"
        return _made_id(self.github.request("POST", target, repository=repository, json=row.body), target)

    def _made_before(self, row: Row[Any], path: str) -> int | None:
        """The deployment an earlier attempt at ``row`` made, whose answer was lost (a timeout after the
        call was sent): found by the run its payload names."""
        params: dict[str, Any] = {"sha": row.commit, "environment": row.body["environment"]}
        for deployment in self.github.paginate(path, repository=row.repository, params=params):
            payload = deployment.get("payload") if isinstance(deployment, dict) else None
            if isinstance(payload, dict) and payload.get("runner_run") == row.run_id:
                logger.info("%s: made by an earlier attempt, as deployment %s", _what(row), deployment["id"])
                return deployment["id"]
        return None
