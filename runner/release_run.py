"""A run of a pipeline with ``release:``: build a new release directory, switch ``current`` to it, run the
activate steps and the health check there, and switch back to the previous release when they fail; or, for
a rollback, switch to a kept release and run its activate steps alone. Releases beyond ``keep`` go after.
"""

from __future__ import annotations

import asyncio

from runner import release_health, steps
from runner.cancelling import Cancel
from runner.pipeline import Pipeline, Release
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
    if pipeline.release is None:
        if rollback_to is not None:
            return (
                "failed",
                f"pipeline {pipeline.name} has no `release:` (any more): there is nothing to roll back to",
            )
        return await runner.run(pipeline, ctx, stop, cancel)
    releases = Releases(pipeline.workdir)
    said = await asyncio.to_thread(releases.recover)
    if said:
        ctx.log.note(said)
    doing = _Doing(runner, pipeline, pipeline.release, releases, ctx, stop, cancel)
    try:
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

    async def deploy(self) -> tuple[str, str | None]:
        ctx, pipeline = self.ctx, self.pipeline
        ctx.release = await asyncio.to_thread(
            self.releases.prepare, Releases.name_for(ctx.run_id, ctx.commit)
        )
        if not any(spec.type == "git" for spec in pipeline.steps):
            # Else the git step links them, once the release is checked out.
            self.releases.link_shared(ctx.release, self.release.shared)
        ctx.log.note(f"building a new release in {ctx.release}")
        status, reason = await self.runner.run(pipeline, ctx, self.stop, self.cancel)
        if status != "succeeded":
            current = self.releases.current() or "(none)"
            ctx.log.note(f"current stays {current}: release {ctx.release.name} is not switched to")
            return status, reason
        return await self._activate(len(pipeline.steps) + 1, record=True)

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
        return await self._activate(1, record=False)

    async def _activate(self, first: int, record: bool) -> tuple[str, str | None]:
        """Switch to ``ctx.release``, run the activate steps and the health check; switch back on failure."""
        ctx, pipeline = self.ctx, self.pipeline
        assert ctx.release is not None
        to = ctx.release.name
        previous = await asyncio.to_thread(self.releases.switch, to, ctx.run_id)
        ctx.log.note(f"current: {previous or '(none)'} -> {to}")
        status, reason = await self.runner.run(
            pipeline, ctx, self.stop, self.cancel, pipeline.activate, first
        )
        if status == "succeeded" and self.release.health is not None:
            problem = await release_health.check(self.release.health, ctx)
            if problem is not None:
                status, reason = "failed", f"health check failed: {problem}"
        if self.stop.is_set() and status != "succeeded":
            # The entry is run again: its next run undoes the switch first (the journal stays).
            return status, reason
        if status != "succeeded":
            reason = await self._switch_back(previous, to, reason, first + len(pipeline.activate))
        elif record:
            await asyncio.to_thread(self.releases.succeeded, to, ctx.run_id, ctx.commit, ctx.ref)
        await asyncio.to_thread(self.releases.finish)
        return status, reason

    async def _switch_back(self, previous: str | None, failed: str, reason: str | None, first: int) -> str:
        ctx = self.ctx
        if previous is None or not self.releases.path(previous).is_dir():
            return f"{reason}; there is no previous release to switch back to: current stays {failed}"
        await asyncio.to_thread(self.releases.point, previous)
        ctx.release = self.releases.path(previous)
        ctx.log.note(f"current: {failed} -> {previous} (switched back); its activate steps run again")
        # A fresh Cancel-free pass: a cancel of the run does not leave the previous release half activated.
        status, again = await self.runner.run(
            self.pipeline, ctx, self.stop, Cancel(), self.pipeline.activate, first
        )
        said = f"rolled back to release {previous}: {reason}"
        if status != "succeeded":
            said += f"; its activate steps did not succeed again either: {again}"
        return said
