"""The nginx step: have the root-owned runner-nginx wrapper render, test and reload a site.

nginx's master runs as root and opens as root whatever files its configuration names (``access_log``,
``include``, ``ssl_certificate_key``, ...): whoever may write nginx's configuration and reload it can
create or append to any file as root. So the deploy user has no write access to the sites directory, and
this step writes nothing itself. It renders the pipeline's ``vars`` (string values may use the run's
expressions, ``{{ commit }}``, in the sandbox) and runs Config.nginx (RUNNER_NGINX, by default
``sudo -n /usr/local/libexec/runner-nginx``) with ``--site SITE --template NAME [--no-reload] --vars -``,
the vars as JSON on its standard input (a command line is every user's to read, and vars may hold
secrets). The wrapper, from its own root-owned configuration, renders only root-owned templates, prints
only values that are one nginx word, writes the site atomically under a lock, runs ``nginx -t``, reloads,
checks that the reload took and puts the previous file back byte for byte on any failure (see
packaging/libexec/runner-nginx).

The step asks ``sudo -n -l`` first, so that a missing right fails with the sudoers line to add; the
wrapper's diff goes to the run's log as ``diff`` lines, its outcome line becomes the step's detail.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from typing import Any

from runner import sudo
from runner.pipeline import StepSpec
from runner.steps.base import Capture, Outcome, RunContext, StepFailed, execute, step_timeout

PROG = "runner-nginx"
# The wrapper's outcome line on standard output, and what it prefixes its diff with.
OUTCOME = f"{PROG}: "
DIFF = "diff: "


def _outcome_line(lines: list[str]) -> str | None:
    """The wrapper's last outcome line among ``lines``, without its prefix."""
    return next((line.removeprefix(OUTCOME) for line in reversed(lines) if line.startswith(OUTCOME)), None)


def _render_vars(value: Any, context: Mapping[str, Any]) -> Any:
    """The pipeline's vars with every string rendered as a pipeline value; other values as they are."""
    from runner.templating import render  # Jinja: at a run's first template, not in a waiting worker

    if isinstance(value, str):
        return render(value, context)
    if isinstance(value, Mapping):
        return {str(key): _render_vars(item, context) for key, item in value.items()}
    if isinstance(value, list):
        return [_render_vars(item, context) for item in value]
    return value


def quoted(value: str) -> str:
    """``value`` as the wrapper's nginx_quote writes it into a site, without the quotes around it."""
    return value.replace("\\", "\\\\").replace('"', '\\"')


def argv_for(
    config_nginx: tuple[str, ...], site: str, template: str, reload: bool, secret: bool
) -> list[str]:
    """The wrapper's command line for one site: the vars go on its standard input (``--vars -``), never
    on a command line, which every user sees (ps): they may hold secrets. ``secret``: they may, and the
    site is written readable by root and the deploy user's group alone."""
    argv = [*config_nginx, "--site", site, "--template", template]
    if not reload:
        argv.append("--no-reload")
    if secret:
        argv.append("--secret")
    return [*argv, "--vars", "-"]


def vars_input(variables: Any) -> bytes:
    """The vars as the wrapper reads them on its standard input: one JSON object."""
    return json.dumps(variables, ensure_ascii=False, separators=(",", ":")).encode()


async def nginx_step(spec: StepSpec, ctx: RunContext) -> Outcome:
    args = spec.args if isinstance(spec.args, Mapping) else {}
    site, template = args.get("site"), args.get("template")
    if not isinstance(site, str) or not isinstance(template, str):
        raise StepFailed("the nginx step needs site and template")
    # The only template besides env: values that may use secrets: they reach the wrapper on its stdin.
    variables = _render_vars(args.get("vars") or {}, ctx.secret_context(spec))
    if not isinstance(variables, dict):
        raise StepFailed("the nginx step's vars must be a mapping")
    secret = bool(ctx.pipeline.step_secrets(spec))
    # The wrapper's diff shows a value as nginx_quote wrote it: a secret's " and \ escaped, unlike the value.
    ctx.log.masker.add(*(quoted(value) for value in ctx.step_secrets(spec).values()))
    argv = argv_for(ctx.config.nginx, site, template, bool(args.get("reload", True)), secret)
    env = ctx.env_for(spec)
    timeout = step_timeout(spec, ctx)
    try:
        # A missing sudo right fails here with the sudoers line to add, before anything is asked.
        await sudo.check(argv, env=env, timeout=min(timeout, sudo.CHECK_TIMEOUT))
    except sudo.SudoRefused as exc:
        raise StepFailed(str(exc)) from None
    ctx.log.note("$ " + shlex.join(argv))
    capture = Capture(ctx.log, relabel=(DIFF, "diff"))
    outcome = await execute(
        argv,
        cwd=ctx.home,
        env=env,
        timeout=timeout,
        log=capture,
        group_file=ctx.group_file,
        stdin=vars_input(variables),
    )
    said = _outcome_line(capture.out)
    if outcome.status == "succeeded":
        if said is None or not said.startswith(("deployed: ", "unchanged: ")):
            return Outcome("failed", outcome.exit_code, f"{argv[0]} did not say what it did: is it {PROG}?")
        return Outcome("succeeded", outcome.exit_code, said.split(": ", 1)[1])
    if outcome.status == "failed":
        if said is not None and said.startswith("failed: "):
            return Outcome("failed", outcome.exit_code, said.removeprefix("failed: "))
        told = _outcome_line(capture.err)
        if told is not None:
            return Outcome("failed", outcome.exit_code, told)
    return outcome
