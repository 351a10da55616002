"""The run step: a command, as a shell line or an argument list."""

from __future__ import annotations

import shlex
import shutil

from runner.pipeline import StepSpec
from runner.steps.base import Outcome, RunContext, execute, step_cwd, step_timeout
from runner.templating import render, render_shell


async def run_step(spec: StepSpec, ctx: RunContext) -> Outcome:
    context = ctx.template_context()
    if isinstance(spec.args, str):
        line = render_shell(spec.args, context)
        shell = shutil.which("bash", path=ctx.base_env.get("PATH"))
        # As GitHub Actions runs `run:`: a failing command or pipeline fails the step.
        argv = (
            [shell, "--noprofile", "--norc", "-e", "-o", "pipefail", "-c", line]
            if shell
            else ["/bin/sh", "-ec", line]
        )
        ctx.log.note(f"$ {line}")
    else:
        argv = [render(str(arg), context) for arg in spec.args]
        ctx.log.note("$ " + " ".join(shlex.quote(arg) for arg in argv))
    return await execute(
        argv,
        cwd=step_cwd(spec, ctx),
        env=ctx.env_for(spec),
        timeout=step_timeout(spec, ctx),
        log=ctx.log,
        group_file=ctx.group_file,
    )
