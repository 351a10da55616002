"""The systemctl step: reload or restart a unit as root, through sudo, exactly as the sudoers file allows."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from runner import sudo
from runner.pipeline import StepSpec
from runner.steps.base import Outcome, RunContext, StepFailed, execute, step_cwd, step_timeout

# By its full path: a sudoers rule names the program by path, and this is the path the shipped one names.
SYSTEMCTL = "/usr/bin/systemctl"
ACTIONS = ("reload", "restart")
# The schema's pattern, checked again here: a unit name must never be read as an option.
UNIT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9@._-]*$")


def command(action: str, unit: str, no_block: bool = False) -> list[str]:
    """The command run as root, as the sudoers rule must spell it."""
    return [SYSTEMCTL, *(["--no-block"] if no_block else []), action, unit]


async def systemctl_step(spec: StepSpec, ctx: RunContext) -> Outcome:
    args = spec.args if isinstance(spec.args, dict) else {}
    action, unit = args.get("action"), args.get("unit")
    if action not in ACTIONS:
        raise StepFailed(f"systemctl: action {action!r} is not one of {', '.join(ACTIONS)}")
    if not isinstance(unit, str) or not UNIT.match(unit):
        raise StepFailed(f"systemctl: {unit!r} is not a unit name")
    argv = sudo.privileged(command(action, unit, bool(args.get("no-block"))))
    env = ctx.env_for(spec)
    timeout = step_timeout(spec, ctx)
    try:
        await sudo.check(argv, env=env, timeout=min(timeout, sudo.CHECK_TIMEOUT))
    except sudo.SudoRefused as exc:
        raise StepFailed(str(exc)) from None
    ctx.log.note("$ " + shlex.join(argv))
    # systemctl does not care where it runs, and the workdir may not exist in a pipeline without git.
    cwd = step_cwd(spec, ctx) if spec.cwd else Path("/")
    return await execute(argv, cwd=cwd, env=env, timeout=timeout, log=ctx.log, group_file=ctx.group_file)
