"""A release's health check (``release.health``): a URL that must answer a GET with a status, or a command
that must exit with 0, tried again after a failure, each try under its own time limit."""

from __future__ import annotations

import asyncio
import functools
from typing import TYPE_CHECKING

from runner import steps
from runner.credentials import mask
from runner.pipeline import HealthCheck, StepSpec

if TYPE_CHECKING:
    import urllib.request


@functools.cache
def _opener() -> urllib.request.OpenerDirector:
    # Made at the first check, not at import: urllib imports ssl (4 MB) and the worker imports this module.
    import urllib.request

    # Not the environment's proxies: a health check asks the service itself, usually on loopback.
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _status(url: str, timeout: float) -> int:
    """The status a GET of ``url`` answers with (an error status too); raises OSError when none comes."""
    import urllib.error
    import urllib.request

    try:
        # The schema allows http:// and https:// URLs only.
        with _opener().open(urllib.request.Request(url, method="GET"), timeout=timeout) as answer:  # noqa: S310
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


async def _try_url(health: HealthCheck, url: str) -> str | None:
    # What it says becomes the run's reason (its record, the status page, GitHub, notifications), which
    # the log's masking never sees: a URL's credentials are masked here.
    shown = mask(url)
    try:
        status = await asyncio.to_thread(_status, url, health.timeout)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        return mask(f"GET {shown} failed: {reason}")
    return None if status == health.expect else f"GET {shown} answered {status}, not {health.expect}"


async def _try_run(health: HealthCheck, ctx: steps.RunContext) -> str | None:
    assert health.run is not None
    spec = StepSpec("run", health.run, "health check", health.timeout, {}, None, None, 0)
    outcome = await steps.run(spec, ctx)
    if outcome.ok:
        return None
    what = "timed out" if outcome.status == "timed_out" else "failed"
    return f"the command {what}: {outcome.detail}"


async def check(health: HealthCheck, ctx: steps.RunContext) -> str | None:
    """None when the release is healthy; otherwise what the last try found, for the run's reason."""
    tries = health.retries + 1
    problem = None
    for attempt in range(1, tries + 1):
        problem = await (_try_url(health, health.url) if health.url else _try_run(health, ctx))
        if problem is None:
            ctx.log.note(f"health check passed (try {attempt} of {tries})")
            return None
        ctx.log.note(f"health check try {attempt} of {tries}: {problem}")
        if attempt < tries:
            await asyncio.sleep(health.interval)
    return f"{problem} ({tries} {'try' if tries == 1 else 'tries'})"
