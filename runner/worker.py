"""The deployment worker: the router and one lane per pipeline, in one asyncio process.

A lane carries out its pipeline queue's entries one at a time, in order, so two runs of a pipeline never
overlap, while the lanes of different pipelines run side by side. A run that succeeds removes its entry; one
that fails moves it to ``failed/`` with the reason; one cut short by a stop leaves it for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runner import retention, steps
from runner.config import Config
from runner.credentials import mask
from runner.events import pushed_commit, repository_name
from runner.events import ref as event_ref
from runner.pipeline import Pipeline, PipelineSet
from runner.queue import Queue, Reader
from runner.router import Router
from runner.store import Store

logger = logging.getLogger(__name__)

# How often pipeline files are looked at for changes.
RELOAD_INTERVAL = 1.0


class Lane:
    def __init__(
        self, name: str, pipelines: PipelineSet, store: Store, config: Config, environ: Mapping[str, str]
    ) -> None:
        self.name = name
        self.pipelines = pipelines
        self.store = store
        self.config = config
        self.environ = environ
        self.queue = Queue(config.queues_dir / name)
        self.last_known: Pipeline | None = pipelines.get(name)

    async def run(self, stop: asyncio.Event) -> None:
        # Left by a writer that crashed before publishing: no consumer will ever read them.
        for temp in self.queue.remove_stale_temps():
            logger.warning("removed %s/%s, a write that never completed", self.queue.directory, temp)
        with Reader(self.queue) as reader:
            while not stop.is_set():
                name = reader.take()
                if name is None:
                    await reader.wait(stop)
                    continue
                result = await self.carry_out(name, stop)
                if result == "succeeded":
                    reader.done(name)
                elif result == "failed":
                    reader.forget(name)
                else:
                    reader.release(name)

    def _run_file(self, run_id: int, suffix: str) -> Path:
        """A run's log (``.log``), or the process group of its running step (``.pgid``)."""
        return self.config.logs_dir / self.name / f"{run_id}{suffix}"

    async def carry_out(self, name: str, stop: asyncio.Event) -> str:
        """Run the pipeline for one entry; returns succeeded, failed or cancelled."""
        pipeline = self.pipelines.get(self.name) or self.last_known
        try:
            entry = self.queue.read(name)
        except (OSError, ValueError) as exc:
            self.queue.fail(name, f"unreadable entry: {exc}")
            return "failed"
        if pipeline is None:
            # Its file is gone and this process never saw a valid version: keep the entry for later.
            logger.error("pipeline %s has no valid definition; entry %s waits for one", self.name, name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=10)
            return "cancelled"
        self.last_known = pipeline
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
        for old in interrupted:
            logger.warning("run %d of %s was cut short by the worker's end; running it again", old, self.name)
            # Its step ran in a session of its own and may have outlived the worker: it must not run
            # beside the new run.
            stopped = await asyncio.to_thread(steps.stop_leftovers, self._run_file(old, ".pgid"), old)
            if stopped:
                logger.warning("stopped processes %s left running by run %d", stopped, old)
        log_path = self._run_file(run_id, ".log")
        log = steps.RunLog(log_path)
        previous = await asyncio.to_thread(self.store.last_deployed_commit, pipeline.name)
        await asyncio.to_thread(self.store.set_run, run_id, log_path=str(log_path), ref=ref, commit=commit)

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
        log.note(f"run {run_id} of pipeline {pipeline.name}: {trigger} {ref or ''} {commit or ''}".rstrip())
        for interrupted_id in interrupted:
            log.note(f"run {interrupted_id} for the same entry was interrupted; this run does it again")
        try:
            status, reason = await self._run_steps(pipeline, ctx, stop)
        finally:
            log.note("run finished")
            log.close()
        await asyncio.to_thread(self.store.finish_run, run_id, status, reason)
        logger.info("run %d of %s: %s%s", run_id, pipeline.name, status, f" ({reason})" if reason else "")
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
        """Run a step; once a stop is asked for, it gets the grace period, then it is cancelled."""
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
            return task.result()
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
        self.router = Router(Queue(config.main_queue_dir), config.queues_dir, pipelines, store)
        self.lanes: dict[str, Lane] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def _start_lanes(self, stop: asyncio.Event) -> None:
        names = {p.name for p in self.pipelines.all()}
        # Queues left by pipelines whose files are gone still get a lane, so their entries are not stranded.
        if self.config.queues_dir.is_dir():
            names |= {
                d.name
                for d in self.config.queues_dir.iterdir()
                if d.is_dir() and d.name != "main" and not d.name.startswith(".")
            }
        for name in sorted(names - set(self.lanes)):
            lane = Lane(name, self.pipelines, self.store, self.config, self.environ)
            self.lanes[name] = lane
            self._tasks[name] = asyncio.create_task(lane.run(stop), name=f"lane-{name}")

    async def run(self, stop: asyncio.Event) -> None:
        # reload() logs each invalid file itself.
        await asyncio.to_thread(self.pipelines.reload)
        self._start_lanes(stop)
        router = asyncio.create_task(self.router.run(stop), name="router")
        # In a thread of its own: a lane never waits for it, and an error in it ends only that day's pass.
        pruning = asyncio.create_task(retention.daily(self.config, self.store, stop), name="retention")
        logger.info("worker started: pipelines %s", ", ".join(sorted(self.lanes)) or "(none)")
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=RELOAD_INTERVAL)
            if stop.is_set():
                break
            await asyncio.to_thread(self.pipelines.reload)
            self._start_lanes(stop)
            for task in [router, *self._tasks.values()]:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        await asyncio.gather(router, pruning, *self._tasks.values(), return_exceptions=True)
        logger.info("worker stopped")
