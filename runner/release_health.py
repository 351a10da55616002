"""A release's health check (``release.health``): a URL that must answer a GET with a status, or a command
that must exit with 0, tried again after a failure, each try under its own time limit. A worker's stop or
the run's cancel ends it between tries, and a try in progress: a check never outlasts the stop's grace."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

from runner import steps
from runner.cancelling import Cancel
from runner.credentials import mask
from runner.pipeline import HealthCheck, StepSpec

T = TypeVar("T")
# Runs the command try as the run's steps run: the stop's grace, the cancel's SIGTERM (runner/run_steps.py).
RunStep = Callable[[StepSpec], Awaitable[steps.Outcome]]


def _status(url: str, timeout: float) -> int:
    """The status a GET of ``url`` answers with (an error status too); raises OSError when none comes."""
    import urllib.error
    import urllib.request

    # Not the environment's proxies: a health check asks the service itself, usually on loopback.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        # The schema allows http:// and https:// URLs only.
        with opener.open(urllib.request.Request(url, method="GET"), timeout=timeout) as answer:  # noqa: S310
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


async def _unless_called_off(work: Awaitable[T], stop: asyncio.Event, cancel: Cancel) -> T | None:
    """What ``work`` returns, or None as soon as a stop or a cancel is asked for (``work`` is then
    cancelled: a GET's thread is left to end by its own time limit)."""
    task = asyncio.ensure_future(work)
    waiters = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(cancel.wait())}
    try:
        await asyncio.wait({task, *waiters}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None


async def _try_url(health: HealthCheck, url: str, stop: asyncio.Event, cancel: Cancel) -> str | None:
    # What it says becomes the run's reason (its record, the status page, GitHub, notifications), which
    # the log's masking never sees: a URL's credentials are masked here.
    shown = mask(url)
    try:
        status = await _unless_called_off(asyncio.to_thread(_status, url, health.timeout), stop, cancel)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        return mask(f"GET {shown} failed: {reason}")
    if status is None:
        return f"GET {shown} not answered before the check was called off"
    return None if status == health.expect else f"GET {shown} answered {status}, not {health.expect}"


async def _try_run(health: HealthCheck, run_step: RunStep) -> str | None:
    assert health.run is not None
    spec = StepSpec("run", health.run, "health check", health.timeout, {}, None, None, 0)
    outcome = await run_step(spec)
    if outcome.ok:
        return None
    what = "timed out" if outcome.status == "timed_out" else "failed"
    return f"the command {what}: {outcome.detail}"


async def check(
    health: HealthCheck, ctx: steps.RunContext, run_step: RunStep, stop: asyncio.Event, cancel: Cancel
) -> str | None:
    """None when the release is healthy; otherwise what the last try found, for the run's reason."""
    tries = health.retries + 1
    problem = None
    for attempt in range(1, tries + 1):
        if health.url:
            problem = await _try_url(health, health.url, stop, cancel)
        else:
            problem = await _try_run(health, run_step)
        if problem is None:
            ctx.log.note(f"health check passed (try {attempt} of {tries})")
            return None
        ctx.log.note(f"health check try {attempt} of {tries}: {problem}")
        if attempt < tries:
            await _unless_called_off(asyncio.sleep(health.interval), stop, cancel)
        if stop.is_set() or cancel.is_set():
            what = "the worker stopped" if stop.is_set() else "the run was cancelled"
            ctx.log.note(f"health check called off: {what} (after try {attempt} of {tries})")
            return f"{problem} (called off after try {attempt} of {tries})"
    return f"{problem} ({tries} {'try' if tries == 1 else 'tries'})"
