"""The pnpm step: ``pnpm install`` against the committed lockfile, or ``pnpm run SCRIPT``, optionally for
the workspace packages that ``--filter`` selects.

pnpm (and the node it starts) are found on the step's PATH, which has RUNNER_TOOL_PATH in front: a deploy
user's pnpm usually lives outside the system's PATH (~/.local/share/pnpm, a version manager's bin).
"""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Mapping
from typing import Any

from runner.pipeline import StepSpec
from runner.steps.base import Outcome, RunContext, StepFailed, execute, step_cwd, step_timeout


def _word(value: Any, what: str, context: Mapping[str, Any]) -> str:
    """A filter selector or script name, rendered; one that could be read as an option is refused."""
    from runner.templating import render  # Jinja: at a run's first template, not in a waiting worker

    text = render(str(value), context)
    if not text or text.startswith("-") or any(c.isspace() for c in text):
        raise StepFailed(f"pnpm: refusing {what} {text!r}: it must be one word, not starting with -")
    return text


def command(pnpm: str, args: Mapping[str, Any], context: Mapping[str, Any]) -> list[str]:
    """The argument list for the step's ``args``, with ``pnpm`` as the program."""
    from runner.templating import render  # Jinja: at a run's first template, not in a waiting worker

    # --filter=X, never --filter X: glued to its option, a selector cannot become an option itself.
    selection = [f"--filter={_word(s, 'filter', context)}" for s in args.get("filter") or ()]
    if selection and args.get("fail-if-no-match", True):
        # Without it a mistyped selector selects nothing, and pnpm does nothing and succeeds.
        selection.append("--fail-if-no-match")
    if args.get("install"):
        # Spelled out both ways: pnpm turns frozen-lockfile on by itself when it sees CI in its
        # environment, so false must be said to hold.
        frozen = "--frozen-lockfile" if args.get("frozen-lockfile", True) else "--no-frozen-lockfile"
        return [pnpm, *selection, "install", frozen]
    if "run" in args:
        script = _word(args["run"], "script name", context)
        # No "--" before the arguments: pnpm (7 and later) hands everything after the script name to the
        # script as it is, and would hand it the "--" too.
        return [pnpm, *selection, "run", script, *(render(str(a), context) for a in args.get("args") or ())]
    raise StepFailed("pnpm: the step needs `install: true` or `run: SCRIPT`")


async def pnpm_step(spec: StepSpec, ctx: RunContext) -> Outcome:
    args = spec.args if isinstance(spec.args, dict) else {}
    env = ctx.env_for(spec)
    path = env.get("PATH", os.defpath)
    pnpm = shutil.which("pnpm", path=path)
    if pnpm is None:
        tool_path = ":".join(ctx.config.tool_path) or "not set"
        raise StepFailed(
            f"pnpm was not found on the step's PATH ({path}; RUNNER_TOOL_PATH: {tool_path}): set "
            "RUNNER_TOOL_PATH to the directories that hold pnpm and node, searched before PATH"
        )
    argv = command(pnpm, args, ctx.template_context())
    ctx.log.note("$ " + shlex.join(argv))
    return await execute(
        argv,
        cwd=step_cwd(spec, ctx),
        env=env,
        timeout=step_timeout(spec, ctx),
        log=ctx.log,
        group_file=ctx.group_file,
    )
