"""The built-in steps. Each is a coroutine that carries out one step of a run and says how it went.

A new step type goes into STEPS here, and into runner/pipeline.py's STEP_TYPES and the schema.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from runner.filters import Filter
from runner.pipeline import StepSpec
from runner.steps.base import (
    COMMIT,
    REF,
    Outcome,
    RunContext,
    RunLog,
    StepFailed,
    execute,
    now,
    step_environment,
    stop_leftovers,
)
from runner.steps.certbot import certbot_step
from runner.steps.command import run_step
from runner.steps.git import git_step
from runner.steps.nginx import nginx_step
from runner.steps.pnpm import pnpm_step
from runner.steps.systemctl import systemctl_step
from runner.sudo import SudoRefused

__all__ = [
    "COMMIT",
    "REF",
    "STEPS",
    "Outcome",
    "RunContext",
    "RunLog",
    "StepFailed",
    "execute",
    "now",
    "run",
    "skip_reason",
    "step_environment",
    "stop_leftovers",
]


def skip_reason(spec: StepSpec, ctx: RunContext) -> str | None:
    """Why the step's ``when:`` skips it, or None to run it. Raises RenderError on a broken condition."""
    when = spec.when or {}
    changed = when.get("changed")
    if changed and ctx.changed_files is not None:
        wanted = Filter(changed)
        if not any(wanted.matches(name) for name in ctx.changed_files):
            return f"no file changed since {ctx.previous_commit} matches {wanted}"
    condition = when.get("if")
    if not condition:
        return None
    from runner.templating import evaluate  # Jinja: at a run's first template, not in a waiting worker

    if not evaluate(condition, ctx.template_context()):
        return f"the condition {condition!r} is false"
    return None


StepFunction = Callable[[StepSpec, RunContext], Awaitable[Outcome]]

STEPS: dict[str, StepFunction] = {
    "git": git_step,
    "nginx": nginx_step,
    "run": run_step,
    "certbot": certbot_step,
    "pnpm": pnpm_step,
    "systemctl": systemctl_step,
}


async def run(spec: StepSpec, ctx: RunContext) -> Outcome:
    """Carry out one step; a step that cannot be carried out fails with the reason."""
    # Here, not at the top: a worker that waits holds no Jinja (runner/templating.py imports it).
    from runner.templating import RenderError

    function = STEPS.get(spec.type)
    if function is None:
        return Outcome("failed", None, f"unknown step type {spec.type!r}")
    try:
        skip = skip_reason(spec, ctx)
        if skip is not None:
            return Outcome("skipped", None, skip)
        return await function(spec, ctx)
    except (StepFailed, RenderError, SudoRefused) as exc:
        return Outcome("failed", None, str(exc))
