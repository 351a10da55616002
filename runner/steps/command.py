"""The run step: a command, as a shell line or an argument list."""

from __future__ import annotations

import shlex
import shutil

from runner.pipeline import StepSpec
from runner.steps.base import Outcome, RunContext, execute, step_cwd, step_timeout

# How much of an expression's value the log shows.
SHOWN_VALUE = 200


def _shown(value: str) -> str:
    return shlex.quote(value if len(value) <= SHOWN_VALUE else value[:SHOWN_VALUE] + "...")


async def run_step(spec: StepSpec, ctx: RunContext) -> Outcome:
    # Here, not at the top: a worker that waits holds no Jinja (runner/templating.py imports it).
    from runner.shell import render_shell
    from runner.templating import render

    context = ctx.template_context()
    env = ctx.env_for(spec)
    if isinstance(spec.args, str):
        script = render_shell(spec.args, context)
        shell = shutil.which("bash", path=ctx.base_env.get("PATH"))
        # As GitHub Actions runs `run:`: a failing command or pipeline fails the step.
        argv = (
            [shell, "--noprofile", "--norc", "-e", "-o", "pipefail", "-c", script.text]
            if shell
            else ["/bin/sh", "-ec", script.text]
        )
        # The values stay out of the script: the shell reads them from these variables, as data.
        env.update(script.env)
        ctx.log.note(f"$ {script.text}")
        for name, value in script.env.items():
            ctx.log.note(f"  {name}={_shown(value)}")
    else:
        argv = [render(str(arg), context) for arg in spec.args]
        ctx.log.note("$ " + " ".join(shlex.quote(arg) for arg in argv))
    return await execute(
        argv,
        cwd=step_cwd(spec, ctx),
        env=env,
        timeout=step_timeout(spec, ctx),
        log=ctx.log,
        group_file=ctx.group_file,
    )
