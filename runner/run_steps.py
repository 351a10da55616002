"""Carrying out a run's steps in order: each one logged, recorded, stopped by a stop or a cancel, its
unexpected exception turned into its failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import traceback
from typing import Any

from runner import steps
from runner.cancelling import Cancel, stop_step
from runner.credentials import mask
from runner.pipeline import Pipeline, StepSpec
from runner.store import Store


class StepRunner:
    """Runs a pipeline's steps for a lane; ``stop_grace``: how long a step may go on once a stop is asked."""

    def __init__(self, store: Store, stop_grace: float) -> None:
        self.store = store
        self.stop_grace = stop_grace

    async def load_secrets(self, pipeline: Pipeline, ctx: steps.RunContext) -> tuple[str, str] | None:
        """Read the run's secrets when it starts, before its first step, and mask them (and the webhook
        URLs its notifications go to) from the first line on; the run's failure if one cannot be read."""
        # Here, at a run, not at the top: the module is mostly the checks of a file's secrets (runner
        # validate's and the checking child's), which a waiting worker has no use for.
        from runner.pipeline_secrets import SecretError, notify_urls, read_secrets

        try:
            ctx.secrets = await asyncio.to_thread(read_secrets, pipeline, ctx.credentials_directory)
        except SecretError as exc:
            ctx.log.note(f"the run cannot start: {exc}")
            return "failed", str(exc)
        urls = await asyncio.to_thread(notify_urls, pipeline)
        ctx.log.masker.add(*ctx.secrets.values(), *urls)
        return None

    async def run(
        self,
        pipeline: Pipeline,
        ctx: steps.RunContext,
        stop: asyncio.Event,
        cancel: Cancel,
        specs: tuple[StepSpec, ...] | None = None,
        first: int = 1,
    ) -> tuple[str, str | None]:
        """Run ``specs`` (default: the pipeline's steps), numbered from ``first``: a release's activate
        steps are recorded after its build steps. The run's secrets are read before (load_secrets)."""
        for position, spec in enumerate(pipeline.steps if specs is None else specs, start=first):
            # What runner records and logs of a step (its name may be its command, its detail the reason
            # it failed) never holds a URL's credentials.
            name = mask(spec.name)
            if cancel.is_set():
                return "cancelled", cancel.reason
            if stop.is_set():
                return "cancelled", f"the worker stopped before step {position} ({name})"
            if ctx.remaining() <= 0:
                return (
                    "failed",
                    f"the run's time limit ({pipeline.timeout:.0f} s) was reached before step {position}",
                )
            ctx.log.note(f"step {position} ({name}) starts")
            started = steps.now()
            outcome = await self.run_step(spec, ctx, stop, cancel)
            finished = steps.now()
            if outcome.detail:
                outcome.detail = ctx.log.masker.mask(mask(outcome.detail))
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
                return "cancelled", cancel.reason or f"the worker stopped during step {position} ({name})"
            if not outcome.ok:
                what = "timed out" if outcome.status == "timed_out" else "failed"
                return "failed", f"step {position} ({name}) {what}: {outcome.detail}"
        return "succeeded", None

    async def run_step(
        self, spec: Any, ctx: steps.RunContext, stop: asyncio.Event, cancel: Cancel
    ) -> steps.Outcome:
        """Run a step; once a stop is asked for, it gets the grace period, then it is cancelled. A cancel of
        the run stops it at once (runner/cancelling.py), unless the step says ``cancel: false``.

        An exception the step did not expect (an OSError from a directory it cannot make, a bug) fails
        the step with its message; the traceback goes to the run's log.
        """
        task = asyncio.ensure_future(steps.run(spec, ctx))
        stopping = asyncio.ensure_future(stop.wait())
        cancelling = asyncio.ensure_future(cancel.wait() if spec.cancel else asyncio.Event().wait())
        try:
            await asyncio.wait({task, stopping, cancelling}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done() and not stop.is_set():
                return await stop_step(task, ctx, self.stop_grace, cancel.reason)
            if not task.done():
                ctx.log.note(f"stop asked for: the step has {self.stop_grace:.0f} s to finish")
                done, _ = await asyncio.wait({task}, timeout=self.stop_grace)
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
            cancelling.cancel()
