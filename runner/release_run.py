"""A run of a pipeline with ``release:``: build a new release directory, switch ``current`` to it, run the
activate steps and the health check there, and switch back to the previous release when they fail; or, for
a rollback, switch to a kept release and run its activate steps alone. Releases beyond ``keep`` go after.
"""

from __future__ import annotations

import asyncio

from runner import release_health, steps
from runner.cancelling import Cancel
from runner.pipeline import Pipeline, Release, StepSpec
from runner.release_dirs import Releases
from runner.run_steps import StepRunner


async def run_release(
    runner: StepRunner,
    pipeline: Pipeline,
    ctx: steps.RunContext,
    rollback_to: str | None,
    stop: asyncio.Event,
    cancel: Cancel,
) -> tuple[str, str | None]:
    """Carry out the run: a rollback to release ``rollback_to``, or (None) a deploy of a new release."""
    # Every phase's steps (a recovery's, the build's, the activate steps') may need the secrets.
    refused = await runner.load_secrets(pipeline, ctx)
    if refused is not None:
        return refused
    if pipeline.release is None:
        if rollback_to is not None:
            return (
                "failed",
                f"pipeline {pipeline.name} has no `release:` (any more): there is nothing to roll back to",
            )
        return await runner.run(pipeline, ctx, stop, cancel)
    releases = Releases(pipeline.workdir)
    doing = _Doing(runner, pipeline, pipeline.release, releases, ctx, stop, cancel)
    try:
        stopped = await doing.recover()
        if stopped is not None:
            return stopped
        if rollback_to is not None:
            return await doing.rollback(rollback_to)
        return await doing.deploy()
    finally:
        removed = await asyncio.to_thread(releases.prune, pipeline.release.keep)
        if removed:
            ctx.log.note(
                f"removed release(s) {', '.join(removed)}: kept are the last {pipeline.release.keep} "
                f"successful ones and the current one ({releases.current() or 'none'})"
            )


class _Doing:
    """One release run's parts, which share its pipeline, directories and context."""

    def __init__(
        self,
        runner: StepRunner,
        pipeline: Pipeline,
        release: Release,
        releases: Releases,
        ctx: steps.RunContext,
        stop: asyncio.Event,
        cancel: Cancel,
    ) -> None:
        self.runner, self.pipeline, self.release, self.releases = runner, pipeline, release, releases
        self.ctx, self.stop, self.cancel = ctx, stop, cancel
        # The position the next step is recorded at: a run records each of its phases after the last.
        self.position = 1

    async def _steps(self, specs: tuple[StepSpec, ...], cancel: Cancel) -> tuple[str, str | None]:
        first, self.position = self.position, self.position + len(specs)
        return await self.runner.run(self.pipeline, self.ctx, self.stop, cancel, specs, first)

    async def _health_step(self, spec: StepSpec) -> steps.Outcome:
        # Not recorded as a step of the run: its tries are in the log, its verdict in the run's reason.
        return await self.runner.run_step(spec, self.ctx, self.stop, self.cancel)

    async def _activate_again(self, name: str) -> tuple[str, str | None]:
        """Run the activate steps for release ``name``, which ``current`` points at again: they see its
        directory as their workdir and its commit and ref, not this run's. A fresh Cancel: a cancel of the
        run does not leave that release half activated."""
        ctx = self.ctx
        info = await asyncio.to_thread(self.releases.info, name)
        saved = ctx.release, ctx.commit, ctx.ref
        ctx.release = self.releases.path(name)
        if info is not None:
            ctx.commit, ctx.ref = info.commit, info.ref
        try:
            return await self._steps(self.pipeline.activate, Cancel())
        finally:
            ctx.release, ctx.commit, ctx.ref = saved

    async def recover(self) -> tuple[str, str | None] | None:
        """Undo what a dead worker's run of the pipeline left in the middle of a switch; the run's outcome
        when a stop cut that short (the journal stays for the next run), else None: the run goes on."""
        said, again = await asyncio.to_thread(self.releases.recover)
        if said:
            self.ctx.log.note(said)
        if again is None:
            return None
        status, reason = await self._activate_again(again)
        if self.stop.is_set() and status != "succeeded":
            return status, reason
        if status != "succeeded":
            self.ctx.log.note(f"release {again}'s activate steps did not succeed again: {reason}")
        await asyncio.to_thread(self.releases.finish)
        return None

    async def deploy(self) -> tuple[str, str | None]:
        ctx, pipeline = self.ctx, self.pipeline
        ctx.release = await asyncio.to_thread(
            self.releases.prepare, Releases.name_for(ctx.run_id, ctx.commit)
        )
        if not any(spec.type == "git" for spec in pipeline.steps):
            # Else the git step links them, once the release is checked out.
            self.releases.link_shared(ctx.release, self.release.shared)
        ctx.log.note(f"building a new release in {ctx.release}")
        status, reason = await self._steps(pipeline.steps, self.cancel)
        if status != "succeeded":
            current = self.releases.current() or "(none)"
            ctx.log.note(f"current stays {current}: release {ctx.release.name} is not switched to")
            return status, reason
        return await self._activate(record=True)

    async def rollback(self, name: str) -> tuple[str, str | None]:
        ctx = self.ctx
        kept = {info.name: info for info in await asyncio.to_thread(self.releases.all)}
        info = kept.get(name)
        if info is None or not info.succeeded:
            names = ", ".join(n for n, i in kept.items() if i.succeeded) or "none"
            return "failed", f"release {name} is no longer kept (kept: {names})"
        ctx.release = self.releases.path(name)
        ctx.log.note(
            f"rollback to release {name} (run {info.run_id}, commit {info.commit}): no build step runs"
        )
        return await self._activate(record=False)

    async def _activate(self, record: bool) -> tuple[str, str | None]:
        """Switch to ``ctx.release``, run the activate steps and the health check; switch back on failure."""
        ctx, pipeline = self.ctx, self.pipeline
        assert ctx.release is not None
        to = ctx.release.name
        previous = await asyncio.to_thread(self.releases.switch, to, ctx.run_id)
        ctx.log.note(f"current: {previous or '(none)'} -> {to}")
        await asyncio.to_thread(self.releases.activating)
        status, reason = await self._steps(pipeline.activate, self.cancel)
        if status == "succeeded" and self.release.health is not None:
            problem = await release_health.check(
                self.release.health, ctx, self._health_step, self.stop, self.cancel
            )
            if self.cancel.is_set():
                # A cancel that came during the check (which it ends): the release does not stay.
                status, reason = "cancelled", self.cancel.reason
            elif self.stop.is_set() and problem is not None:
                # Cut short as a step is by a stop: the entry stays for the next start.
                status, reason = "cancelled", f"the worker stopped during the health check: {problem}"
            elif problem is not None:
                status, reason = "failed", f"health check failed: {problem}"
        if self.stop.is_set() and status != "succeeded":
            # The entry is run again: its next run undoes the switch first (the journal stays).
            return status, reason
        if status != "succeeded":
            reason = await self._switch_back(previous, to, status, reason)
        elif record:
            await asyncio.to_thread(self.releases.succeeded, to, ctx.run_id, ctx.commit, ctx.ref)
        await asyncio.to_thread(self.releases.finish)
        return status, reason

    async def _switch_back(self, previous: str | None, failed: str, status: str, reason: str | None) -> str:
        ctx = self.ctx
        if previous is None or not self.releases.path(previous).is_dir():
            return f"{reason}; there is no previous release to switch back to: current stays {failed}"
        await asyncio.to_thread(self.releases.point, previous)
        ctx.log.note(f"current: {failed} -> {previous} (switched back); its activate steps run again")
        _, again = await self._activate_again(previous)
        # A cancel's reason comes first: it says who called the run off (runner/claims.py reads it so).
        said = (
            f"{reason}; rolled back to release {previous}"
            if status == "cancelled"
            else f"rolled back to release {previous}: {reason}"
        )
        if again is not None:
            said += f"; its activate steps did not succeed again either: {again}"
        return said
