"""The main queue's worker: record each delivery, match it against the pipelines, forward it, or void it.

It also takes the recovered queue's entries, the deliveries the catch-up fetched from GitHub's record
(runner/catchup.py), alike; a delivery id recorded before, received or recovered, is a duplicate. And the
status page's actions (redeploy, cancel), which its ``actions`` does (runner/actions.py), in the main queue.
An entry leaves its queue only after its delivery's outcome is recorded. A crash in between is
resumed from the delivery's record: an entry recorded but not routed is routed again, and finds the runs it
made before (at most one per pipeline); an entry routed but not yet removed is just removed. An entry that
cannot be routed is tried a few times, then moved to ``failed/`` with the reason, so that the entries
behind it go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

from runner.consumer import Consumer, Opened, take_first
from runner.entry import Action, BadEntry, Delivery, find_run_entry
from runner.errors import describe, lasting
from runner.events import pushed_commit, pushed_subject, repository_name
from runner.events import ref as event_ref
from runner.pipeline import Pipeline
from runner.pipelines import PipelineSet
from runner.queue import ForeignEntry, Queue, is_entry_name
from runner.store import Store

logger = logging.getLogger(__name__)

# How often an entry whose routing fails is tried before it moves to failed/, and the waits in between.
ROUTE_TRIES = 3
RETRY_DELAYS = (1.0, 2.0)
# While the database does not answer, nothing can be routed nor recorded: the entry waits (it is not
# failed), tried again after a wait that grows up to this.
OUTAGE_MAX_DELAY = 30.0

# Does an action of the status page once (the main queue's entry, the action): its outcome, and why.
ActionDoer = Callable[[str, Action], tuple[str, str]]


class Router:
    def __init__(
        self,
        main: Queue,
        queues_dir: Path,
        pipelines: PipelineSet,
        store: Store,
        writer: int | None = None,
        recovered: Queue | None = None,
        actions: ActionDoer | None = None,
    ) -> None:
        self.main = main
        self.actions = actions
        # The user id whose entries are deliveries (the web user); None: the main queue directory's owner.
        self.writer = writer
        # The catch-up's queue; its entries are deliveries when this process's user (the deploy user, who
        # runs the catch-up) wrote them: the web user cannot make one pass as fetched from GitHub.
        self.recovered = recovered
        self.queues_dir = queues_dir
        self.pipelines = pipelines
        self.store = store
        self._queues: dict[str, tuple[Queue, Opened]] = {}
        self._tries: dict[str, int] = {}
        self._outages = 0

    def queue_for(self, pipeline: str) -> Queue:
        """The pipeline's queue; made again if its directory was removed (or replaced) since it was opened."""
        cached = self._queues.get(pipeline)
        if cached is not None and not cached[1].replaced():
            return cached[0]
        if cached is not None:
            for part in cached:
                part.close()
            del self._queues[pipeline]
        queue = Queue(self.queues_dir / pipeline)
        self._queues[pipeline] = (queue, Opened(queue.directory))
        return queue

    def close(self) -> None:
        for queue, opened in self._queues.values():
            queue.close()
            opened.close()
        self._queues.clear()

    def route(self, queue: Queue, name: str) -> tuple[str, str | None]:
        """Route the entry ``name`` of ``queue`` (the main or the recovered queue); returns the outcome
        recorded and why.

        The entry is removed when done; an entry that is not a delivery moves to ``failed/``. Any other
        error is raised, with the entry still in its queue.
        """
        try:
            entry = self._read(queue, name)
        except BadEntry as exc:
            queue.fail(name, str(exc))
            logger.error("%s queue entry %s moved to failed/: %s", queue.name, name, exc)
            return "failed", str(exc)
        if isinstance(entry, Action):
            return self._act(queue, name, entry)
        outcome, detail = self._route(name, entry)
        queue.remove(name)
        logger.info(
            "delivery %s (%s): %s%s",
            entry.delivery,
            entry.event,
            outcome,
            f": {detail}" if detail else "",
        )
        return outcome, detail

    def _act(self, queue: Queue, name: str, action: Action) -> tuple[str, str | None]:
        if self.actions is None:
            outcome, detail = "refused", "this worker does not take the status page's actions"
        else:
            outcome, detail = self.actions(name, action)
        queue.remove(name)
        logger.info(
            "%s of run %d asked by %s: %s: %s", action.action, action.run_id, action.by, outcome, detail
        )
        return outcome, detail

    def _read(self, queue: Queue, name: str) -> Delivery | Action:
        recovered = queue is self.recovered
        own = os.geteuid()
        try:
            # The catch-up runs as the deploy user, as this process does. Only the webhook endpoint's user
            # writes verified deliveries; the deploy user may remove entries there (and so create files),
            # never make one pass as verified. Named by configuration, not by the directory's owner: the
            # deploy user owns RUNNER_HOME and could put a directory of its own there.
            writer = own if recovered else self.writer if self.writer is not None else self.main.owner()
            # An action may come from this process's user too, who may trigger and cancel runs anyway.
            owners = (writer,) if recovered or writer == own else (writer, own)
            uid, data = queue.read_owned(name, owners)
        except ForeignEntry as exc:
            if recovered:
                raise BadEntry(f"not written by runner's catch-up: {exc} (this worker's user)") from None
            whose = self._whose() + (", or this worker's" if writer != own else "")
            raise BadEntry(f"not written by the webhook endpoint: {exc} ({whose})") from None
        except (OSError, ValueError) as exc:
            raise BadEntry(f"unreadable entry: {exc}") from None
        action = Action.read(data)
        if action is not None and not recovered:
            return action
        if uid != writer:
            raise BadEntry(
                f"not written by the webhook endpoint: the entry is owned by user id {uid}, not by {writer} "
                f"({self._whose()})"
            )
        if action is not None:
            raise BadEntry("an action of the status page in the recovered queue")
        return Delivery.read(data)

    def _whose(self) -> str:
        return "the web user's" if self.writer is not None else f"the owner of {self.main.directory}"

    def _route(self, name: str, entry: Delivery) -> tuple[str, str | None]:
        event, delivery, payload = entry.event, entry.delivery, entry.payload
        repository = repository_name(payload)
        ref = event_ref(payload)
        if event == "ping":
            outcome, detail, matched = "ping", f"hook {payload.get('hook_id')} says: {payload.get('zen')}", []
        else:
            outcome, detail, matched = self._match(entry, repository)
        record = self.store.delivery_row(
            delivery,
            event,
            entry.received_at,
            hook_id=entry.hook_id,
            entry=name,
            repository=repository,
            ref=ref,
            recovered=entry.recovered,
            # Forwarded nowhere, the outcome is final at once: nothing lies between to resume after a crash.
            outcome="received" if matched else outcome,
            detail=None if matched else detail,
        )
        # The delivery and its runs in one transaction; each run's entry and the outcome in a second, after
        # the entries are in their queues (a crash in between is resumed: see _forward_to).
        state, runs = self.store.begin_forwarding(
            record,
            [p.name for p in matched],
            trigger=event,
            ref=ref,
            commit=pushed_commit(payload),
            subject=pushed_subject(payload),
        )
        if state == "duplicate":
            return "duplicate", "delivered before: not routed again"
        if state == "routed":
            return "routed", "routed before a restart"
        if runs is None:
            for pipeline in matched:
                self._forward_to(pipeline.name, name, entry, ref)
            self.store.finish_routing(delivery, outcome, detail)
        elif matched:
            entries = {run: self.queue_for(p).put(entry.forwarded(name, run)) for p, run in runs.items()}
            self.store.finish_forwarding(delivery, outcome, detail, entries)
        return outcome, detail

    def _match(self, entry: Delivery, repository: str | None) -> tuple[str, str, list[Pipeline]]:
        """The pipelines the delivery goes to, and the outcome and detail to record."""
        pipelines = self.pipelines.all()
        if repository is None:
            return "unmatched", "the payload names no repository", []
        mine = [p for p in pipelines if p.trigger.repository.lower() == repository.lower()]
        if not mine:
            return "unmatched", f"no pipeline for repository {repository}", []
        matched: list[Pipeline] = []
        reasons: list[str] = []
        for pipeline in mine:
            match = pipeline.match(entry.event, entry.payload)
            if match.matched:
                matched.append(pipeline)
            else:
                reasons.append(match.reason or f"pipeline {pipeline.name} did not match")
        if not matched:
            return "unmatched", "; ".join(reasons), []
        return "routed", "forwarded to " + ", ".join(p.name for p in matched), matched

    def _forward_to(self, pipeline: str, name: str, entry: Delivery, ref: str | None) -> None:
        """Put the entry into the pipeline's queue, with its run: once, however often this is called."""
        run, created = self.store.forward_run(
            pipeline,
            trigger=entry.event,
            delivery_id=entry.delivery,
            ref=ref,
            commit=pushed_commit(entry.payload),
            subject=pushed_subject(entry.payload),
        )
        if run.status != "queued":
            return  # carried out, or settled, already
        queue = self.queue_for(pipeline)
        if not created:
            # Made by an earlier try: its entry may be in the queue already (a crash before it was recorded).
            found = self._entry_of(queue, run.id, run.entry)
            if found is not None:
                if found != run.entry:
                    self.store.set_run(run.id, entry=found)
                return
        self.store.set_run(run.id, entry=queue.put(entry.forwarded(name, run.id)))

    @staticmethod
    def _entry_of(queue: Queue, run_id: int, recorded: str | None) -> str | None:
        if recorded is not None and is_entry_name(recorded) and queue.path(recorded).exists():
            return recorded
        return find_run_entry(queue, run_id)

    def after_failure(self, queue: Queue, name: str, exc: Exception) -> float | None:
        """Deal with a routing that raised: the seconds to wait before the entry is tried again, or None
        when it was moved to ``failed/`` (after ROUTE_TRIES tries, at once if trying again cannot help)."""
        if not lasting(exc) and not self._database_answers():
            self._outages += 1
            delay = min(2.0**self._outages, OUTAGE_MAX_DELAY)
            logger.error(
                "routing %s failed and the database does not answer (%s): it stays in the %s queue, "
                "tried again in %.0f s",
                name,
                describe(exc),
                queue.name,
                delay,
            )
            return delay
        self._outages = 0
        key = queue.path(name)
        tries = self._tries[key] = self._tries.get(key, 0) + 1
        if not lasting(exc) and tries < ROUTE_TRIES:
            delay = RETRY_DELAYS[min(tries, len(RETRY_DELAYS)) - 1]
            logger.error(
                "routing %s failed (try %d of %d), it stays in the %s queue, tried again in %.0f s",
                name,
                tries,
                ROUTE_TRIES,
                queue.name,
                delay,
                exc_info=exc,
            )
            return delay
        del self._tries[key]
        reason = f"routing failed after {tries} tr{'y' if tries == 1 else 'ies'}: {describe(exc)}"
        self.give_up(queue, name, reason)
        return None

    def routed(self, queue: Queue, name: str) -> None:
        self._tries.pop(queue.path(name), None)
        self._outages = 0

    def _database_answers(self) -> bool:
        try:
            self.store.ping()
        except Exception:
            return False
        return True

    def give_up(self, queue: Queue, name: str, reason: str) -> None:
        """Move the entry to ``failed/`` with ``reason``; its delivery and its runs not forwarded say so."""
        try:
            entry = self._read(queue, name)
        except BadEntry:
            entry = None
        if isinstance(entry, Delivery):
            delivery = entry.delivery
            try:
                self.store.fail_routing(
                    delivery, entry.event, entry.received_at, name, reason, recovered=entry.recovered
                )
                for run_id in self.store.fail_unforwarded_runs(delivery, reason):
                    logger.error("run %d of delivery %s failed: %s", run_id, delivery, reason)
            except Exception:
                logger.exception("could not record that delivery %s failed to route", delivery)
        try:
            queue.fail(name, reason)
        except OSError as exc:
            logger.error(
                "%s queue entry %s failed to route (%s) and cannot be moved to failed/: %s; "
                "it is tried again when the worker starts again",
                queue.name,
                name,
                reason,
                exc,
            )
            return
        logger.error("%s queue entry %s moved to failed/: %s", queue.name, name, reason)

    async def run(self, stop: asyncio.Event) -> None:
        """Route entries as they arrive until ``stop`` is set; the entry at hand is finished first.

        One entry at a time, the main queue's first, then the recovered queue's: routing one is this
        router's work, whichever queue it comes from.
        """
        queues = [self.main] if self.recovered is None else [self.main, self.recovered]
        for queue in queues:
            # Left by a writer that crashed before publishing: no consumer will ever read them.
            for temp in queue.remove_stale_temps():
                logger.warning("removed %s/%s, a write that never completed", queue.directory, temp)
        try:
            with contextlib.ExitStack() as consumers:
                taking = [consumers.enter_context(Consumer(queue)) for queue in queues]
                while (taken := await take_first(taking, stop)) is not None:
                    await self._take(*taken, stop)
        finally:
            self.close()

    async def _take(self, consumer: Consumer, name: str, stop: asyncio.Event) -> None:
        queue = consumer.reader.queue
        try:
            await asyncio.to_thread(self.route, queue, name)
        except Exception as exc:
            delay = await asyncio.to_thread(self.after_failure, queue, name, exc)
            if delay is None:
                consumer.reader.forget(name)
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
            consumer.reader.release(name)
        else:
            self.routed(queue, name)
            consumer.reader.forget(name)
