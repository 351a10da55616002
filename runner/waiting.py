"""The entries waiting in a lane's queue, watched also while a run goes on: superseded, cancelled, or next.

They are read as they arrive, so that an entry is superseded, or cancelled on request, at once, not when the
lane gets to it; the oldest left is carried out next.

What a newer entry supersedes is runner/concurrency.py's rule, and the database records it
(runner/claims.py) before the entry leaves the queue: a worker killed in between leaves an entry whose run
was called off, which the next worker removes without carrying it out.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from runner import claims, concurrency, steps
from runner.cancelling import Cancel
from runner.consumer import Consumer, QueueGone
from runner.entry import BadEntry, CancelRequest, RunEntry
from runner.pipeline import Concurrency
from runner.store import Store

# The lanes are the worker's: their lines keep its name, which is what the journal is searched by.
logger = logging.getLogger("runner.worker")


@dataclass
class Running:
    """The run its lane carries out now, and the cancel requests answered once it has ended."""

    name: str
    entry: RunEntry
    run_id: int
    cancel: Cancel = field(default_factory=Cancel)
    requests: list[str] = field(default_factory=list)


class Waiting:
    """A lane's waiting entries, taken from its consumer; the lane carries out those :meth:`next` gives."""

    def __init__(
        self,
        pipeline: str,
        consumer: Consumer,
        store: Store,
        policy: Callable[[], Concurrency],
        group_file: Callable[[int], Path],
        on_called_off: Callable[[int, RunEntry | None, str, str], Awaitable[None]] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.consumer = consumer
        self.reader = consumer.reader
        self.store = store
        self.policy = policy
        self.group_file = group_file
        # Told of each run called off here (its id, entry, new status, reason): what GitHub hears of it.
        self.on_called_off = on_called_off
        # Each entry's run, or None if it cannot be read (its lane fails it when it gets to it).
        self.entries: dict[str, RunEntry | None] = {}
        self.requests: dict[str, CancelRequest] = {}
        self.running: Running | None = None
        self._answered: list[str] = []

    def _add(self, name: str) -> None:
        try:
            data = self.reader.queue.read(name)
            request = CancelRequest.read(data)
        except BadEntry as exc:
            logger.warning(
                "removed %s of %s, a cancel request that names no run: %s", name, self.pipeline, exc
            )
            self._answer(name)
            return
        except (OSError, ValueError):
            self.entries[name] = None
            return
        if request is not None:
            self.requests[name] = request
            return
        try:
            # Without its payload: a long queue's payloads are read when each is carried out, not kept.
            self.entries[name] = dataclasses.replace(RunEntry.read(data), payload={})
        except BadEntry:
            self.entries[name] = None

    def _take_arrived(self) -> None:
        self.reader.poll(0)
        while (name := self.reader.take()) is not None:
            self._add(name)

    async def next(self, stop: asyncio.Event) -> str | None:
        """The oldest entry left once what arrived has been superseded or cancelled; None once ``stop`` is
        set. The entry is the caller's from then on: it tells the reader how it went."""
        for name in self._answered:
            self._answer(name)
        self._answered.clear()
        while not stop.is_set():
            self._take_arrived()
            await self._apply()
            if self.entries:
                name = min(self.entries)
                del self.entries[name]
                if self.reader.queue.path(name).exists():
                    return name
                self.reader.forget(name)  # removed by hand since it arrived
                continue
            name = await self.consumer.take(stop)
            if name is not None:
                self._add(name)
        return None

    @contextlib.asynccontextmanager
    async def watching(self, name: str, entry: RunEntry, run_id: int) -> AsyncIterator[Cancel]:
        """While run ``run_id`` carries out entry ``name``: what arrives is superseded, cancelled or cancels
        the run (its cancel, yielded) as it arrives."""
        self.running = running = Running(name, entry, run_id)
        over = asyncio.Event()
        # What arrived before the run was claimed is looked at before its first step.
        self._take_arrived()
        await self._apply_logged()
        watcher = asyncio.create_task(self._watch(over), name=f"watch-{self.pipeline}")
        try:
            yield running.cancel
        finally:
            over.set()
            await watcher
            self.running = None
            # Answered after the run's entry is gone: `runner cancel` then knows the run has ended.
            self._answered.extend(running.requests)

    async def _watch(self, over: asyncio.Event) -> None:
        while not over.is_set():
            try:
                name = await self.consumer.take(over)
            except QueueGone:
                return  # the lane finds out too, when it takes its next entry
            if name is None:
                return
            self._add(name)
            self._take_arrived()
            await self._apply_logged()

    async def _apply_logged(self) -> None:
        try:
            await self._apply()
        except Exception:
            # The entries stay, and are looked at again when the next one arrives or the run ends.
            logger.exception("could not supersede or cancel what waits in the queue of %s", self.pipeline)

    async def _apply(self) -> None:
        """Carry out the cancel requests, then supersede what a newer entry supersedes and stop the run going
        on if a newer entry of its group cancels it."""
        for name, request in sorted(self.requests.items()):
            await self._request(name, request)
        policy = self.policy()
        runs = [(name, entry) for name, entry in sorted(self.entries.items()) if entry is not None]
        for name, newer in concurrency.superseded(policy, runs):
            await self._drop(name, "superseded", concurrency.superseded_reason(newer))
        running = self.running
        if running is not None and not running.cancel.is_set():
            waiting = [(name, entry) for name, entry in runs if name in self.entries]
            newer = concurrency.canceller(policy, running.entry, waiting)
            if newer is not None and running.cancel.set(concurrency.superseded_reason(newer)):
                logger.info(
                    "run %d of %s: cancelled: %s", running.run_id, self.pipeline, running.cancel.reason
                )

    async def _request(self, name: str, request: CancelRequest) -> None:
        del self.requests[name]
        running = self.running
        if running is not None and running.run_id == request.run_id:
            if running.cancel.set(claims.BY_HAND):
                logger.info("run %d of %s: %s", running.run_id, self.pipeline, claims.BY_HAND)
            running.requests.append(name)
            return
        for waiting, entry in sorted(self.entries.items()):
            if entry is not None and entry.run_id == request.run_id:
                logger.info(
                    "run %d of %s: %s, its entry %s removed",
                    entry.run_id,
                    self.pipeline,
                    claims.BY_HAND,
                    waiting,
                )
                await self._drop(waiting, "cancelled", claims.BY_HAND)
        # A run neither waiting nor going on has ended, or its entry is yet to come, and its claim will fail.
        self._answer(name)

    async def _drop(self, name: str, status: str, reason: str) -> None:
        """End the runs of a waiting entry with ``status``, then remove it from the queue."""
        entry = self.entries.pop(name)
        run_id = entry.run_id if entry is not None else None
        ended = await asyncio.to_thread(
            claims.call_off, self.store, self.pipeline, name, run_id, status, reason
        )
        for ended_id, had in sorted(ended.items()):
            became = status if had == "queued" else "cancelled"
            logger.info("run %d of %s: %s (%s)", ended_id, self.pipeline, became, reason)
            if had == "running":
                await self.stop_leftovers(ended_id)
            if self.on_called_off is not None:
                await self.on_called_off(ended_id, entry, became, reason)
        if run_id is not None and run_id not in ended:
            await self.stop_leftovers(run_id)
            # Cancelled by `runner cancel` before its request reached the lane: that command told no one.
            if reason == claims.BY_HAND and self.on_called_off is not None:
                await self.on_called_off(run_id, entry, status, reason)
        self._answer(name)

    async def stop_leftovers(self, run_id: int) -> None:
        """Stop what a step of run ``run_id`` left running when its worker died."""
        stopped = await asyncio.to_thread(steps.stop_leftovers, self.group_file(run_id), run_id)
        if stopped:
            logger.warning("stopped processes %s left running by run %d", stopped, run_id)

    def _answer(self, name: str) -> None:
        """Remove an entry the lane is done with, without carrying it out."""
        try:
            self.reader.done(name)
        except FileNotFoundError:
            self.reader.forget(name)
