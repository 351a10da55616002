"""The deployment worker: the router and one lane per pipeline, in one asyncio process.

A lane carries out its pipeline queue's entries one at a time, in order, so two runs of a pipeline never
overlap, while the lanes of different pipelines run side by side. A run that succeeds removes its entry; one
that fails moves it to ``failed/`` with the reason; one cut short by a stop leaves it for the next start.
Nothing one entry does ends the worker: an unexpected exception in a step fails that run, and a lane or the
router that fails is logged and started again after a pause, while the others go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
from collections.abc import Callable, Coroutine, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runner import retention, steps
from runner.config import Config
from runner.credentials import mask
from runner.events import pushed_commit, repository_name
from runner.events import ref as event_ref
from runner.pipeline import Pipeline
from runner.pipelines import PipelineSet, pipeline_files
from runner.queue import FAILED_DIR, Queue, Reader, is_entry_name
from runner.router import Opened, QueueGone, Router, describe, wait_for_entry
from runner.store import Store

logger = logging.getLogger(__name__)

# How often pipeline files are looked at for changes.
RELOAD_INTERVAL = 1.0
# A lane or the router that fails starts again after a pause that doubles, up to this, with each failure
# in a row; one that ran for longer than that first starts again after the shortest pause.
RESTART_MAX_DELAY = 60.0
# How often an entry may make its lane fail (outside its steps) before it moves to failed/.
ENTRY_CRASHES = 3
# A manual run queued this recently without its entry may still be getting it from `runner trigger`.
TRIGGER_GRACE = 60.0


def pipeline_file_exists(config: Config, name: str) -> bool:
    """Whether a file defines pipeline ``name`` (valid or not); a pipeline's name is its file's stem."""
    return any(path.stem == name for path in pipeline_files(config.pipelines_dir))


def _find_entry(directory: Path, run_id: int) -> str | None:
    """The entry of ``directory`` that names run ``run_id``: the one a crash left unrecorded."""
    if not directory.is_dir():
        return None
    queue = Queue(directory)
    try:
        for name in queue.entries():
            with contextlib.suppress(OSError, ValueError):
                data = queue.read(name)
                if isinstance(data, dict) and data.get("run_id") == run_id:
                    return name
    finally:
        queue.close()
    return None


def settle(store: Store, config: Config) -> None:
    """End the runs that a worker before this one left queued or running and that nothing will carry out.

    A run whose entry is still in its pipeline's queue is left: its lane takes the entry again (a run
    left running is then recorded as interrupted and the entry is done again).
    """
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
            if run.trigger == "manual" and age < TRIGGER_GRACE:
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


class Lane:
    def __init__(
        self,
        name: str,
        pipelines: PipelineSet,
        store: Store,
        config: Config,
        environ: Mapping[str, str],
        crashes: dict[str, int] | None = None,
    ) -> None:
        self.name = name
        self.pipelines = pipelines
        self.store = store
        self.config = config
        self.environ = environ
        self.last_known: Pipeline | None = pipelines.get(name)
        # Entries that made this lane fail, kept by the worker across the lane's restarts.
        self.crashes = crashes if crashes is not None else {}
        self._waiting_said = False

    async def run(self, stop: asyncio.Event) -> None:
        # Opened here, not when the lane is made: a queue that cannot be opened fails this lane alone.
        self.queue = Queue(self.config.queues_dir / self.name)
        try:
            await self._work(stop)
        except QueueGone:
            if not pipeline_file_exists(self.config, self.name):
                logger.info("the queue of %s, which no longer exists, is gone: its lane ends", self.name)
                return
            raise
        finally:
            self.queue.close()

    async def _work(self, stop: asyncio.Event) -> None:
        # Left by a writer that crashed before publishing: no consumer will ever read them.
        for temp in self.queue.remove_stale_temps():
            logger.warning("removed %s/%s, a write that never completed", self.queue.directory, temp)
        with Opened(self.queue.directory) as opened, Reader(self.queue) as reader:
            while not stop.is_set():
                name = reader.take()
                if name is None:
                    await wait_for_entry(reader, stop, opened)
                    continue
                try:
                    result = await self.carry_out(name, stop)
                except Exception as exc:
                    # Outside any step (the database, the log's directory): the entry stays, and the lane
                    # starts again, unless this entry did that too often.
                    crashes = self.crashes[name] = self.crashes.get(name, 0) + 1
                    if crashes < ENTRY_CRASHES:
                        reader.release(name)
                        raise
                    del self.crashes[name]
                    reason = f"the lane failed {crashes} times on this entry: {describe(exc)}"
                    logger.exception("entry %s of %s moved to failed/: %s", name, self.name, reason)
                    await asyncio.to_thread(self._fail_entry, name, reason)
                    reader.forget(name)
                    continue
                self.crashes.pop(name, None)
                if result == "succeeded":
                    reader.done(name)
                elif result == "failed":
                    reader.forget(name)
                else:
                    reader.release(name)

    def _fail_entry(self, name: str, reason: str, run_id: int | None = None) -> None:
        """Move an entry that cannot be carried out to failed/, then fail the runs still queued for it.

        In this order: a run is never recorded as failed while its entry can still be taken.
        """
        self.queue.fail(name, reason)
        try:
            failed = self.store.fail_runs_of_entry(self.name, name, reason)
            if run_id is not None and self.store.end_run(run_id, "failed", reason):
                failed.append(run_id)
        except Exception:
            # The next worker's start settles them (their entry is in failed/ by now).
            logger.exception("could not record that the runs of entry %s of %s failed", name, self.name)
            return
        for failed_id in failed:
            logger.error("run %d of %s failed: %s", failed_id, self.name, reason)

    def _run_file(self, run_id: int, suffix: str) -> Path:
        """A run's log (``.log``), or the process group of its running step (``.pgid``)."""
        return self.config.logs_dir / self.name / f"{run_id}{suffix}"

    async def _pipeline(self, name: str, stop: asyncio.Event) -> Pipeline | None:
        """The pipeline to carry out ``name`` with; None if its file is gone (or a stop came first)."""
        while not stop.is_set():
            pipeline = self.pipelines.get(self.name)
            if pipeline is not None:
                self.last_known, self._waiting_said = pipeline, False
                return pipeline
            if not pipeline_file_exists(self.config, self.name):
                return None
            # Its file is there but invalid: the last valid version this process saw stays in force.
            if self.last_known is not None:
                return self.last_known
            if not self._waiting_said:
                # Said once: the file's problems are in the log already, each time it changes.
                logger.error("pipeline %s has no valid definition: entry %s waits for one", self.name, name)
                self._waiting_said = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=RELOAD_INTERVAL)
        return None

    async def carry_out(self, name: str, stop: asyncio.Event) -> str:
        """Run the pipeline for one entry; returns succeeded, failed or cancelled."""
        try:
            entry = self.queue.read(name)
            if not isinstance(entry, dict):
                raise ValueError("the entry is not a JSON object")
        except (OSError, ValueError) as exc:
            await asyncio.to_thread(self._fail_entry, name, f"unreadable entry: {exc}")
            return "failed"
        pipeline = await self._pipeline(name, stop)
        if pipeline is None:
            if stop.is_set():
                return "cancelled"
            # A rename is a delete and a new pipeline: what waited for the old name is not carried out.
            reason = f"pipeline {self.name} no longer exists (no file in {self.config.pipelines_dir})"
            run_id = entry.get("run_id")
            await asyncio.to_thread(
                self._fail_entry, name, reason, run_id if isinstance(run_id, int) else None
            )
            logger.error("entry %s of %s moved to failed/: %s", name, self.name, reason)
            return "failed"
        kind = entry.get("kind", "delivery")
        payload = entry.get("payload") if isinstance(entry.get("payload"), dict) else {}
        ref = entry.get("ref") if kind == "manual" else event_ref(payload)
        commit = entry.get("commit") if kind == "manual" else pushed_commit(payload)
        trigger = "manual" if kind == "manual" else str(entry.get("event"))
        run_id, interrupted = await asyncio.to_thread(
            self.store.claim_run,
            pipeline.name,
            name,
            entry.get("run_id") if isinstance(entry.get("run_id"), int) else None,
            trigger=trigger,
            delivery_id=entry.get("delivery"),
            ref=ref,
            commit=commit,
        )
        try:
            return await self._carry_out_run(
                name, entry, pipeline, run_id, interrupted, stop, (trigger, ref, commit, payload)
            )
        except Exception as exc:
            # Not a step's doing (those fail their step): the run fails, the lane goes on.
            reason = f"the run could not go on: {describe(exc)}"
            logger.exception("run %d of %s failed: %s", run_id, self.name, reason)
            await asyncio.to_thread(self.store.finish_run, run_id, "failed", reason)
            self.queue.fail(name, f"run {run_id} failed: {reason}")
            return "failed"

    async def _carry_out_run(
        self,
        name: str,
        entry: dict[str, Any],
        pipeline: Pipeline,
        run_id: int,
        interrupted: list[int],
        stop: asyncio.Event,
        what: tuple[str, str | None, str | None, dict[str, Any]],
    ) -> str:
        trigger, ref, commit, payload = what
        for old in interrupted:
            logger.warning("run %d of %s was cut short by the worker's end; running it again", old, self.name)
            # Its step ran in a session of its own and may have outlived the worker: it must not run
            # beside the new run.
            stopped = await asyncio.to_thread(steps.stop_leftovers, self._run_file(old, ".pgid"), old)
            if stopped:
                logger.warning("stopped processes %s left running by run %d", stopped, old)
        log_path = self._run_file(run_id, ".log")
        log = steps.RunLog(log_path)
        try:
            previous = await asyncio.to_thread(self.store.last_deployed_commit, pipeline.name)
            await asyncio.to_thread(
                self.store.set_run, run_id, log_path=str(log_path), ref=ref, commit=commit
            )

            async def on_commit(resolved: str) -> None:
                await asyncio.to_thread(self.store.set_run, run_id, commit=resolved)

            ctx = steps.RunContext(
                run_id=run_id,
                pipeline=pipeline,
                config=self.config,
                log=log,
                trigger=trigger,
                ref=ref,
                commit=commit,
                repository=repository_name(payload) or pipeline.trigger.repository,
                delivery=entry.get("delivery"),
                event_name=entry.get("event"),
                event=payload,
                previous_commit=previous,
                deadline=time.monotonic() + pipeline.timeout,
                base_env=steps.step_environment(self.environ, self.config.tool_path),
                on_commit=on_commit,
                group_file=self._run_file(run_id, ".pgid"),
            )
            log.note(
                f"run {run_id} of pipeline {pipeline.name}: {trigger} {ref or ''} {commit or ''}".rstrip()
            )
            for interrupted_id in interrupted:
                log.note(f"run {interrupted_id} for the same entry was interrupted; this run does it again")
            status, reason = await self._run_steps(pipeline, ctx, stop)
        except Exception as exc:
            log.note(f"the run could not go on: {describe(exc)}")
            raise
        finally:
            log.note("run finished")
            log.close()
        await asyncio.to_thread(self.store.finish_run, run_id, status, reason)
        # A failed step is the pipeline's outcome, not runner's fault: a warning. What runner could not do
        # (a lane's crash, a run that could not go on) is an error.
        logger.log(
            logging.WARNING if status == "failed" else logging.INFO,
            "run %d of %s: %s%s",
            run_id,
            pipeline.name,
            status,
            f" ({reason})" if reason else "",
        )
        if status == "failed":
            self.queue.fail(name, f"run {run_id} failed: {reason}\nlog: {log_path}")
        return status

    async def _run_steps(
        self, pipeline: Pipeline, ctx: steps.RunContext, stop: asyncio.Event
    ) -> tuple[str, str | None]:
        for position, spec in enumerate(pipeline.steps, start=1):
            # What runner records and logs of a step (its name may be its command, its detail the reason
            # it failed) never holds a URL's credentials.
            name = mask(spec.name)
            if stop.is_set():
                return "cancelled", f"the worker stopped before step {position} ({name})"
            if ctx.remaining() <= 0:
                return (
                    "failed",
                    f"the run's time limit ({pipeline.timeout:.0f} s) was reached before step {position}",
                )
            ctx.log.note(f"step {position} ({name}) starts")
            started = steps.now()
            outcome = await self._run_step(spec, ctx, stop)
            finished = steps.now()
            if outcome.detail:
                outcome.detail = mask(outcome.detail)
            ctx.log.note(
                f"step {position} ({name}) {outcome.status}"
                + (f": {outcome.detail}" if outcome.detail else "")
            )
            await asyncio.to_thread(
                self.store.record_step,
                ctx.run_id,
                position,
                name,
                outcome.status,
                exit_code=outcome.exit_code,
                detail=outcome.detail,
                started_at=started,
                finished_at=finished,
            )
            if outcome.status == "cancelled":
                return "cancelled", f"the worker stopped during step {position} ({name})"
            if not outcome.ok:
                what = "timed out" if outcome.status == "timed_out" else "failed"
                return "failed", f"step {position} ({name}) {what}: {outcome.detail}"
        return "succeeded", None

    async def _run_step(self, spec: Any, ctx: steps.RunContext, stop: asyncio.Event) -> steps.Outcome:
        """Run a step; once a stop is asked for, it gets the grace period, then it is cancelled.

        An exception the step did not expect (an OSError from a directory it cannot make, a bug) fails
        the step with its message; the traceback goes to the run's log.
        """
        task = asyncio.ensure_future(steps.run(spec, ctx))
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                ctx.log.note(f"stop asked for: the step has {self.config.stop_grace:.0f} s to finish")
                done, _ = await asyncio.wait({task}, timeout=self.config.stop_grace)
                if not done:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                    return steps.Outcome("cancelled", None, "killed: the worker stopped")
            error = task.exception()
            if error is None:
                return task.result()
            if not isinstance(error, Exception):
                raise error
            ctx.log.note("".join(traceback.format_exception(error)).rstrip())
            return steps.Outcome("failed", None, f"{type(error).__name__}: {error}")
        finally:
            stopping.cancel()


class Worker:
    """The router, a lane per pipeline, and the reloading of pipeline files."""

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
                if d.is_dir() and d.name != "main" and not d.name.startswith(".")
            }
        for name, task in list(self._tasks.items()):
            if task.done():
                del self._tasks[name]
                self.lanes.pop(name, None)
        for name in sorted(names - set(self._tasks)):
            self._tasks[name] = asyncio.create_task(
                self._supervise(f"the lane of {name}", self._lane(name, stop), stop), name=f"lane-{name}"
            )

    async def run(self, stop: asyncio.Event) -> None:
        # reload() logs each invalid file itself.
        await asyncio.to_thread(self.pipelines.reload)
        try:
            await asyncio.to_thread(settle, self.store, self.config)
        except Exception:
            logger.exception("could not settle the runs a previous worker left; the next start tries again")
        self._start_lanes(stop)
        router = asyncio.create_task(
            self._supervise("the router", lambda: self._route(stop), stop), name="router"
        )
        # In a thread of its own: a lane never waits for it, and an error in it ends only that day's pass.
        pruning = asyncio.create_task(retention.daily(self.config, self.store, stop), name="retention")
        logger.info("worker started: pipelines %s", ", ".join(sorted(self._tasks)) or "(none)")
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=RELOAD_INTERVAL)
            if stop.is_set():
                break
            try:
                await asyncio.to_thread(self.pipelines.reload)
                self._start_lanes(stop)
            except Exception:
                logger.exception("reloading the pipelines failed; tried again in %.0f s", RELOAD_INTERVAL)
        await asyncio.gather(router, pruning, *self._tasks.values(), return_exceptions=True)
        logger.info("worker stopped")
