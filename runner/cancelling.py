"""Cancelling a run that goes on: the signal its lane sets, and how the step at hand is stopped for it.

The step's process group gets SIGTERM, then the stop grace (``RUNNER_STOP_GRACE``) to end, then SIGKILL, as
a worker's stop ends a step; a step with ``cancel: false`` is not signalled: the run stops after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

from runner import steps


class Cancel:
    """A run's cancel: set once, with the reason the run is recorded with."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.reason = ""

    def set(self, reason: str) -> bool:
        """Ask for the cancel; False if it was asked for already (the first reason stays)."""
        if self._event.is_set():
            return False
        self.reason = reason
        self._event.set()
        return True

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        await self._event.wait()


def _signal_group(group_file: Path | None, signum: int) -> None:
    """Signal the process group of the program the step runs now, if it runs one."""
    try:
        pgid = int(group_file.read_text()) if group_file is not None else 0
    except (OSError, ValueError):
        return
    if pgid > 1:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signum)


async def stop_step(
    task: asyncio.Future[steps.Outcome], ctx: steps.RunContext, grace: float, reason: str
) -> steps.Outcome:
    """Stop a step for a cancel: SIGTERM to its process group, ``grace`` seconds to end, then SIGKILL.

    A step that still succeeds keeps its outcome; otherwise it is recorded as cancelled.
    """
    ctx.log.note(f"cancelled ({reason}): the step gets SIGTERM and {grace:.0f} s to end")
    _signal_group(ctx.group_file, signal.SIGTERM)
    done, _ = await asyncio.wait({task}, timeout=grace)
    if not done:
        _signal_group(ctx.group_file, signal.SIGKILL)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return steps.Outcome("cancelled", None, f"killed after {grace:.0f} s: {reason}")
    if task.exception() is None and task.result().ok:
        return task.result()
    code = task.result().exit_code if task.exception() is None else None
    return steps.Outcome("cancelled", code, f"stopped: {reason}")
