"""The deployment worker: the router, one lane per pipeline, the GitHub reporter and the notifier, in one
asyncio process.

Nothing one entry does ends the worker: an unexpected exception in a step fails that run, and a lane or the
router that fails is logged and started again after a pause, while the others go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runner import catchup, retention
from runner.actions import ActionTaker
from runner.config import Config
from runner.entry import find_run_entry
from runner.github_auth import github_client
from runner.lane import Lane
from runner.notifier import Notifier
from runner.pipeline import RESERVED_NAMES
from runner.pipelines import PipelineSet
from runner.queue import FAILED_DIR, Queue, is_entry_name
from runner.reporter import Reporter
from runner.router import Router
from runner.store import Store
from runner.watch import DirectoryWatch

logger = logging.getLogger(__name__)

# A lane or the router that fails starts again after a pause that doubles, up to this, with each failure
# in a row; one that ran for longer than that first starts again after the shortest pause.
RESTART_MAX_DELAY = 60.0
# A manual run queued this recently without its entry may still be getting it from `runner trigger`.
TRIGGER_GRACE = 60.0


def _find_entry(directory: Path, run_id: int) -> str | None:
    """The entry of ``directory`` that names run ``run_id``: the one a crash left unrecorded."""
    if not directory.is_dir():
        return None
    queue = Queue(directory)
    try:
        return find_run_entry(queue, run_id)
    finally:
        queue.close()


def settle(store: Store, config: Config) -> list[tuple[int, str]]:
    """End the runs that a worker before this one left queued or running and that nothing will carry out;
    returns each one ended, with the status it ended in.

    A run whose entry is still in its pipeline's queue is left: its lane takes the entry again (a run
    left running is then recorded as interrupted and the entry is done again).
    """
    ended = []
    for run in store.unfinished_runs():
        directory = config.queues_dir / run.pipeline
        if run.entry is None:
            if run.delivery_id is not None:
                delivery = store.delivery(run.delivery_id)
                if delivery is not None and delivery.outcome == "received":
                    continue  # its routing is resumed by the router, which forwards it
            found = _find_entry(directory, run.id)
            if found is not None:
                store.set_run(run.id, entry=found)
                continue
            queued = run.queued_at if run.queued_at.tzinfo else run.queued_at.replace(tzinfo=UTC)
            age = (datetime.now(UTC) - queued).total_seconds()
            if run.trigger in ("manual", "rollback") and age < TRIGGER_GRACE:
                continue
            reason = f"its entry never reached {directory}"
        elif is_entry_name(run.entry) and (directory / run.entry).exists():
            continue
        else:
            why = directory / FAILED_DIR / f"{run.entry}.reason"
            try:
                reason = f"its entry was moved to failed/: {why.read_text().strip()}"
            except OSError:
                reason = f"its entry {run.entry} is gone from {directory}"
        status = "interrupted" if run.status == "running" else "failed"
        if run.status == "running":
            reason = f"the worker stopped during the run and {reason}"
        if store.end_run(run.id, status, reason):
            logger.warning(
                "run %d of %s was left %s: %s (%s)", run.id, run.pipeline, run.status, status, reason
            )
            ended.append((run.id, status))
    return ended


class Worker:
    """The router, a lane per pipeline, the reloading of pipeline files, and (with GitHub credentials) the
    reporter that tells GitHub what the runs did."""

    def __init__(
        self, pipelines: PipelineSet, store: Store, config: Config, environ: Mapping[str, str]
    ) -> None:
        self.pipelines = pipelines
        self.store = store
        self.config = config
        self.environ = environ
        # Resolved now: an unknown web user is a configuration error at start, not a router that fails.
        self.writer = config.web_uid()
        self.router: Router | None = None
        # One client for the reporter and the catch-up: a GitHub App's installation tokens are shared.
        self.github = github = github_client(config)
        self.reporter = (
            None
            if github is None
            else Reporter(store, github, report_for=config.github_report_for, public_url=config.public_url)
        )
        # Sends what the runs' ends tell their pipelines' notify: targets.
        self.notifier = Notifier(store, pipelines, config)
        self.lanes: dict[str, Lane] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._crashes: dict[str, dict[str, int]] = {}

    async def _supervise(
        self, what: str, start: Callable[[], Coroutine[Any, Any, None]], stop: asyncio.Event
    ) -> None:
        """Run ``start()`` until a stop; if it fails, log it and start it again after a pause.

        A normal return (a lane whose pipeline and queue are gone) ends it for good.
        """
        delay = 1.0
        while not stop.is_set():
            started = time.monotonic()
            try:
                await start()
            except Exception:
                if time.monotonic() - started > RESTART_MAX_DELAY:
                    delay = 1.0
                logger.exception("%s failed; it starts again in %.0f s", what, delay)
            else:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
            delay = min(delay * 2, RESTART_MAX_DELAY)

    async def _route(self, stop: asyncio.Event) -> None:
        self.router = Router(
            Queue(self.config.main_queue_dir),
            self.config.queues_dir,
            self.pipelines,
            self.store,
            writer=self.writer,
            recovered=Queue(self.config.queues_dir / catchup.RECOVERED_QUEUE),
            actions=ActionTaker(self.config, self.store),
        )
        await self.router.run(stop)

    def _lane(self, name: str, stop: asyncio.Event) -> Callable[[], Coroutine[Any, Any, None]]:
        def start() -> Coroutine[Any, Any, None]:
            lane = Lane(
                name,
                self.pipelines,
                self.store,
                self.config,
                self.environ,
                self._crashes.setdefault(name, {}),
                self.reporter,
                self.notifier,
            )
            self.lanes[name] = lane
            return lane.run(stop)

        return start

    def _start_lanes(self, stop: asyncio.Event) -> None:
        names = {p.name for p in self.pipelines.all()}
        # Queues left by pipelines whose files are gone still get a lane, so their entries are not stranded.
        if self.config.queues_dir.is_dir():
            names |= {
                d.name
                for d in self.config.queues_dir.iterdir()
                if d.is_dir() and d.name not in RESERVED_NAMES and not d.name.startswith(".")
            }
        for name, task in list(self._tasks.items()):
            if task.done():
                del self._tasks[name]
                self.lanes.pop(name, None)
        for name in sorted(names - set(self._tasks)):
            self._tasks[name] = asyncio.create_task(
                self._supervise(f"the lane of {name}", self._lane(name, stop), stop), name=f"lane-{name}"
            )

    async def _start_reporter(
        self, settled: list[tuple[int, str]], stop: asyncio.Event
    ) -> list[asyncio.Task[None]]:
        """The reporter's task (none without GitHub credentials), once what the runs ``settled`` ended
        tell GitHub is recorded."""
        reporter = self.reporter
        if reporter is None:
            return []
        for run_id, status in settled:
            await reporter.ended(run_id, status)
        supervised = self._supervise("the reporter", lambda: reporter.run(stop), stop)
        return [asyncio.create_task(supervised, name="reporter")]

    def _watched(self) -> list[Path]:
        # The queues too: one that appears (a pipeline's, left by its removed file) gets a lane.
        return [*self.pipelines.watched_directories(), self.config.queues_dir]

    async def run(self, stop: asyncio.Event) -> None:
        # Set before the first reload: a file changed during it is reloaded again.
        watch = DirectoryWatch()
        watch.watch(self._watched())
        try:
            await self._run(stop, watch)
        finally:
            watch.close()

    async def _run(self, stop: asyncio.Event, watch: DirectoryWatch) -> None:
        # reload() logs each invalid file itself.
        await asyncio.to_thread(self.pipelines.reload)
        try:
            settled = await asyncio.to_thread(settle, self.store, self.config)
        except Exception:
            logger.exception("could not settle the runs a previous worker left; the next start tries again")
            settled = []
        reporting = await self._start_reporter(settled, stop)
        notifying = asyncio.create_task(
            self._supervise("the notifier", lambda: self.notifier.run(stop), stop), name="notifier"
        )
        self._start_lanes(stop)
        router = asyncio.create_task(
            self._supervise("the router", lambda: self._route(stop), stop), name="router"
        )
        # In a thread of its own: a lane never waits for it, and an error in it ends only that day's pass.
        pruning = asyncio.create_task(retention.daily(self.config, self.store, stop), name="retention")
        # Also in a thread of its own; none without GitHub credentials.
        catching_up = asyncio.create_task(
            catchup.every(self.config, self.store, self.github, self.pipelines, stop), name="catch-up"
        )
        logger.info("worker started: pipelines %s", ", ".join(sorted(self._tasks)) or "(none)")
        # Reloaded when inotify says a file changed, not every second: an idle worker sleeps.
        while await watch.changed(stop):
            try:
                watch.watch(await asyncio.to_thread(self._watched))
                await asyncio.to_thread(self.pipelines.reload)
                self._start_lanes(stop)
            except Exception:
                logger.exception("reloading the pipelines failed; tried again at the next change")
            finally:
                self.pipelines.announce_reload()
        await asyncio.gather(
            router, pruning, catching_up, notifying, *reporting, *self._tasks.values(), return_exceptions=True
        )
        logger.info("worker stopped")
