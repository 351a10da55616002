"""The main queue's worker: record each delivery, match it against the pipelines, forward it, or void it.

An entry leaves the main queue only after its delivery's outcome is recorded. A crash in between is
resumed from the delivery's record: an entry recorded but not routed is routed again (at least once), an
entry routed but not yet removed is just removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runner.events import pushed_commit, repository_name
from runner.events import ref as event_ref
from runner.pipeline import Pipeline, PipelineSet
from runner.queue import ForeignEntry, Queue, Reader
from runner.store import Store

logger = logging.getLogger(__name__)


class BadEntry(Exception):
    pass


def _received_at(entry: Mapping[str, Any]) -> datetime:
    try:
        received_at = datetime.fromisoformat(entry["received_at"])
    except (KeyError, TypeError, ValueError):
        return datetime.now(UTC)
    # The endpoint writes UTC; a time without an offset is read as that, not refused by the store.
    return received_at.replace(tzinfo=UTC) if received_at.tzinfo is None else received_at.astimezone(UTC)


class Router:
    def __init__(self, main: Queue, queues_dir: Path, pipelines: PipelineSet, store: Store) -> None:
        self.main = main
        self.queues_dir = queues_dir
        self.pipelines = pipelines
        self.store = store
        self._queues: dict[str, Queue] = {}

    def queue_for(self, pipeline: str) -> Queue:
        if pipeline not in self._queues:
            self._queues[pipeline] = Queue(self.queues_dir / pipeline)
        return self._queues[pipeline]

    def route(self, name: str) -> tuple[str, str | None]:
        """Route the main queue's entry ``name``; returns the outcome recorded and why.

        The entry is removed when done; an entry that is not a delivery moves to ``failed/``.
        """
        try:
            entry = self._read(name)
        except BadEntry as exc:
            self.main.fail(name, str(exc))
            logger.error("main queue entry %s moved to failed/: %s", name, exc)
            return "failed", str(exc)
        outcome, detail = self._route(name, entry)
        self.main.remove(name)
        logger.info(
            "delivery %s (%s): %s%s",
            entry["delivery"],
            entry["event"],
            outcome,
            f": {detail}" if detail else "",
        )
        return outcome, detail

    def _read(self, name: str) -> dict[str, Any]:
        try:
            # Only the webhook endpoint's user, which owns the main queue, writes verified deliveries; the
            # deploy user may remove entries there (and so create files), never make one pass as verified.
            entry = self.main.read(name, owner=self.main.owner())
        except ForeignEntry as exc:
            raise BadEntry(
                f"not written by the webhook endpoint: {exc} (the owner of {self.main.directory})"
            ) from None
        except (OSError, ValueError) as exc:
            raise BadEntry(f"unreadable entry: {exc}") from None
        if not isinstance(entry, dict):
            raise BadEntry("the entry is not a JSON object")
        for key in ("event", "delivery"):
            if not isinstance(entry.get(key), str) or not entry[key]:
                raise BadEntry(f"the entry has no {key!r}")
        if not isinstance(entry.get("payload"), dict):
            raise BadEntry("the entry has no payload object")
        return entry

    def _route(self, name: str, entry: dict[str, Any]) -> tuple[str, str | None]:
        event, delivery, payload = entry["event"], entry["delivery"], entry["payload"]
        repository = repository_name(payload)
        ref = event_ref(payload)
        state = self.store.begin_routing(
            delivery,
            event,
            _received_at(entry),
            hook_id=entry.get("hook_id"),
            entry=name,
            repository=repository,
            ref=ref,
        )
        if state == "duplicate":
            return "duplicate", "delivered before: not routed again"
        if state == "routed":
            return "routed", "routed before a restart"
        if event == "ping":
            outcome, detail = "ping", f"hook {payload.get('hook_id')} says: {payload.get('zen')}"
        else:
            outcome, detail = self._forward(name, entry, repository, ref)
        self.store.finish_routing(delivery, outcome, detail)
        return outcome, detail

    def _forward(
        self, name: str, entry: dict[str, Any], repository: str | None, ref: str | None
    ) -> tuple[str, str]:
        pipelines = self.pipelines.all()
        if repository is None:
            return "unmatched", "the payload names no repository"
        mine = [p for p in pipelines if p.trigger.repository.lower() == repository.lower()]
        if not mine:
            return "unmatched", f"no pipeline for repository {repository}"
        matched: list[Pipeline] = []
        reasons: list[str] = []
        for pipeline in mine:
            match = pipeline.match(entry["event"], entry["payload"])
            if match.matched:
                matched.append(pipeline)
            else:
                reasons.append(match.reason or f"pipeline {pipeline.name} did not match")
        if not matched:
            return "unmatched", "; ".join(reasons)
        for pipeline in matched:
            run_id = self.store.create_run(
                pipeline.name,
                trigger=entry["event"],
                delivery_id=entry["delivery"],
                ref=ref,
                commit=pushed_commit(entry["payload"]),
            )
            data = {**entry, "main_entry": name, "run_id": run_id}
            self.store.set_run(run_id, entry=self.queue_for(pipeline.name).put(data))
        return "routed", "forwarded to " + ", ".join(p.name for p in matched)

    async def run(self, stop: asyncio.Event) -> None:
        """Route entries as they arrive until ``stop`` is set; the entry at hand is finished first."""
        # Left by a writer that crashed before publishing: no consumer will ever read them.
        for temp in self.main.remove_stale_temps():
            logger.warning("removed %s/%s, a write that never completed", self.main.directory, temp)
        with Reader(self.main) as reader:
            while not stop.is_set():
                name = reader.take()
                if name is None:
                    await reader.wait(stop)
                    continue
                try:
                    await asyncio.to_thread(self.route, name)
                except Exception:
                    # The entry stays where it is; it is routed again on the next start.
                    logger.exception("routing %s failed; it stays in the main queue", name)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=5)
                    reader.release(name)
                else:
                    reader.forget(name)
