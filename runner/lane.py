"""A lane: one pipeline's consumer, which carries out its queue's entries one at a time, in order.

So two runs of a pipeline never overlap, while the lanes of different pipelines run side by side. A run that
succeeds removes its entry; one that fails moves it to ``failed/`` with the reason; one cut short by a stop
leaves it for the next start; one called off (superseded, cancelled) removes it. An unexpected exception in a
step fails that run, not the lane. What waits is watched while a run goes on (runner/waiting.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from pathlib import Path

from runner import claims, steps
from runner.config import Config
from runner.consumer import Consumer, QueueGone
from runner.entry import RunEntry
from runner.errors import describe
from runner.events import repository_name
from runner.github_reports import CALLED_OFF
from runner.notifier import Notifier
from runner.pipeline import Concurrency, Pipeline
from runner.pipelines import PipelineSet, pipeline_file_exists
from runner.queue import Queue
from runner.release_run import run_release
from runner.reporter import Reporter
from runner.run_steps import StepRunner
from runner.store import Store
from runner.waiting import Waiting

# The lanes are the worker's: their lines keep its name, which is what the journal is searched by.
logger = logging.getLogger("runner.worker")

# How often an entry may make its lane fail (outside its steps) before it moves to failed/.
ENTRY_CRASHES = 3


class Lane:
    def __init__(
        self,
        name: str,
        pipelines: PipelineSet,
        store: Store,
        config: Config,
        environ: Mapping[str, str],
        crashes: dict[str, int] | None = None,
        reporter: Reporter | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.name = name
        self.pipelines = pipelines
        self.store = store
        self.config = config
        self.environ = environ
        # What records what the runs tell GitHub; None when runner has no GitHub credentials.
        self.reporter = reporter
        self.notifier = notifier
        self.step_runner = StepRunner(store, config.stop_grace)
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
            if not pipeline_file_exists(self.config.pipelines_dir, self.name):
                logger.info("the queue of %s, which no longer exists, is gone: its lane ends", self.name)
                return
            raise
        finally:
            self.queue.close()

    async def _work(self, stop: asyncio.Event) -> None:
        # Left by a writer that crashed before publishing: no consumer will ever read them.
        for temp in self.queue.remove_stale_temps():
            logger.warning("removed %s/%s, a write that never completed", self.queue.directory, temp)
        with Consumer(self.queue) as consumer:
            reader = consumer.reader
            told = (
                None if self.reporter is None else self.reporter.called_off_waiting(lambda: self.last_known)
            )
            self.waiting = Waiting(self.name, consumer, self.store, self._concurrency, self._group_file, told)
            while (name := await self.waiting.next(stop)) is not None:
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
                if result in ("succeeded", "called off"):
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

    def _group_file(self, run_id: int) -> Path:
        return self._run_file(run_id, ".pgid")

    def _concurrency(self) -> Concurrency:
        """Which entries supersede which; with no pipeline file, every entry is carried out (or failed)."""
        pipeline = self.pipelines.get(self.name) or self.last_known
        if pipeline is None or not pipeline_file_exists(self.config.pipelines_dir, self.name):
            return Concurrency(queue="all")
        return pipeline.concurrency

    async def _pipeline(self, name: str, stop: asyncio.Event) -> Pipeline | None:
        """The pipeline to carry out ``name`` with; None if its file is gone (or a stop came first)."""
        while not stop.is_set():
            pipeline = self.pipelines.get(self.name)
            if pipeline is not None:
                self.last_known, self._waiting_said = pipeline, False
                return pipeline
            if not pipeline_file_exists(self.config.pipelines_dir, self.name):
                return None
            # Its file is there but invalid: the last valid version this process saw stays in force.
            if self.last_known is not None:
                return self.last_known
            if not self._waiting_said:
                # Said once: the file's problems are in the log already, each time it changes.
                logger.error("pipeline %s has no valid definition: entry %s waits for one", self.name, name)
                self._waiting_said = True
            await self.pipelines.next_reload(stop)
        return None

    async def carry_out(self, name: str, stop: asyncio.Event) -> str:
        """Run the pipeline for one entry; returns succeeded, failed, cancelled or called off."""
        try:
            entry = RunEntry.read(self.queue.read(name))
        except (OSError, ValueError) as exc:
            await asyncio.to_thread(self._fail_entry, name, f"unreadable entry: {exc}")
            return "failed"
        pipeline = await self._pipeline(name, stop)
        if pipeline is None:
            return await self._without_pipeline(name, entry, stop)
        # The claim, and what the run needs before its first step, in one transaction.
        claim = await asyncio.to_thread(
            claims.start_run,
            self.store,
            pipeline.name,
            name,
            entry.run_id,
            log_path=lambda run_id: str(self._run_file(run_id, ".log")),
            trigger=entry.trigger,
            delivery_id=entry.delivery,
            ref=entry.ref,
            commit=entry.commit,
        )
        run_id, interrupted = claim.run_id, claim.interrupted
        if run_id is None:
            return await self._called_off(name, entry, interrupted)
        try:
            await self._stop_leftovers(interrupted)
            return await self._carry_out_run(name, entry, pipeline, claim, stop)
        except Exception as exc:
            # Not a step's doing (those fail their step): the run fails, the lane goes on.
            reason = f"the run could not go on: {describe(exc)}"
            logger.exception("run %d of %s failed: %s", run_id, self.name, reason)
            await asyncio.to_thread(self.store.finish_run, run_id, "failed", reason)
            if self.reporter is not None:
                await self.reporter.ended(run_id, "error")
            if self.notifier is not None:
                await self.notifier.ended(run_id, pipeline, entry.payload)
            self.queue.fail(name, f"run {run_id} failed: {reason}")
            return "failed"

    async def _without_pipeline(self, name: str, entry: RunEntry, stop: asyncio.Event) -> str:
        """What becomes of an entry whose pipeline is gone: cancelled by a stop, else failed."""
        if stop.is_set():
            return "cancelled"
        # A rename is a delete and a new pipeline: what waited for the old name is not carried out.
        reason = f"pipeline {self.name} no longer exists (no file in {self.config.pipelines_dir})"
        await asyncio.to_thread(self._fail_entry, name, reason, entry.run_id)
        logger.error("entry %s of %s moved to failed/: %s", name, self.name, reason)
        return "failed"

    async def _called_off(self, name: str, entry: RunEntry, interrupted: list[int]) -> str:
        """An entry whose run was called off before a worker that died could remove it: it is not run."""
        logger.info("entry %s of %s is not carried out: its run was called off", name, self.name)
        # Its step may have outlived the worker that died.
        for run_id in sorted({*interrupted, entry.run_id} - {None}):
            await self.waiting.stop_leftovers(run_id)
        return "called off"

    async def _stop_leftovers(self, interrupted: list[int]) -> None:
        for old in interrupted:
            logger.warning("run %d of %s was cut short by the worker's end; running it again", old, self.name)
            # Its step ran in a session of its own and may have outlived the worker: it must not run
            # beside the new run.
            stopped = await asyncio.to_thread(steps.stop_leftovers, self._run_file(old, ".pgid"), old)
            if stopped:
                logger.warning("stopped processes %s left running by run %d", stopped, old)
            if self.reporter is not None:
                await self.reporter.ended(old, "interrupted")

    async def _carry_out_run(
        self,
        name: str,
        entry: RunEntry,
        pipeline: Pipeline,
        claim: claims.Claim,
        stop: asyncio.Event,
    ) -> str:
        assert claim.run_id is not None
        run_id, interrupted = claim.run_id, claim.interrupted
        log_path = self._run_file(run_id, ".log")
        log = steps.RunLog(log_path)
        try:
            ctx = await self._context(entry, pipeline, run_id, log, claim.previous_commit)
            what = f"{entry.trigger} {entry.ref or ''} {entry.commit or ''}"
            log.note(f"run {run_id} of pipeline {pipeline.name}: {what}".rstrip())
            for interrupted_id in interrupted:
                log.note(f"run {interrupted_id} for the same entry was interrupted; this run does it again")
            # What arrives meanwhile is superseded, or cancels the run, at once.
            async with self.waiting.watching(name, entry, run_id) as cancel:
                status, reason = await run_release(
                    self.step_runner, pipeline, ctx, entry.release, stop, cancel
                )
        except Exception as exc:
            log.note(f"the run could not go on: {describe(exc)}")
            raise
        finally:
            log.note("run finished")
            log.close()
        # False: cancelled by hand meanwhile, by a `runner cancel` whose request the lane had not seen yet.
        called_off = not await asyncio.to_thread(claims.finish_claimed, self.store, run_id, status, reason)
        if called_off:
            status = "cancelled"
            reason = reason if reason and reason.startswith(claims.BY_HAND) else claims.BY_HAND
        called_off = called_off or (status == "cancelled" and cancel.is_set())
        if self.reporter is not None:
            await self.reporter.ended(run_id, CALLED_OFF if called_off else status, reason)
        if self.notifier is not None and not called_off:
            await self.notifier.ended(run_id, pipeline, entry.payload)
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
        return "called off" if called_off else status

    async def _context(
        self, entry: RunEntry, pipeline: Pipeline, run_id: int, log: steps.RunLog, previous: str | None
    ) -> steps.RunContext:
        """What the run's steps share (``previous``: the commit deployed before, read with the claim, which
        recorded the run's log, ref and commit); with a commit, what it tells GitHub as it starts."""
        repository = repository_name(entry.payload) or pipeline.trigger.repository
        if self.reporter is not None and entry.commit is not None:
            await self.reporter.started(run_id, pipeline.github, repository, entry.commit)

        async def on_commit(resolved: str) -> None:
            # The commit of a run that named only a ref: what GitHub is told of from now on.
            await asyncio.to_thread(self.store.set_run, run_id, commit=resolved)
            if self.reporter is not None:
                await self.reporter.started(run_id, pipeline.github, repository, resolved)

        return steps.RunContext(
            run_id=run_id,
            pipeline=pipeline,
            config=self.config,
            log=log,
            trigger=entry.trigger,
            ref=entry.ref,
            commit=entry.commit,
            repository=repository,
            delivery=entry.delivery,
            event_name=entry.event,
            event=entry.payload,
            previous_commit=previous,
            deadline=time.monotonic() + pipeline.timeout,
            base_env=steps.step_environment(self.environ, self.config.tool_path),
            on_commit=on_commit,
            group_file=self._run_file(run_id, ".pgid"),
            credentials_directory=self.config.credentials_directory,
        )
