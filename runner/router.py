"""The main queue's worker: record each delivery, match it against the pipelines, forward it, or void it.

An entry leaves the main queue only after its delivery's outcome is recorded. A crash in between is
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
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.exc import DataError

from runner.events import pushed_commit, repository_name
from runner.events import ref as event_ref
from runner.pipeline import Pipeline
from runner.pipelines import PipelineSet
from runner.queue import ForeignEntry, Queue, Reader, is_entry_name
from runner.store import Store

logger = logging.getLogger(__name__)

# How often an entry whose routing fails is tried before it moves to failed/, and the waits in between.
ROUTE_TRIES = 3
RETRY_DELAYS = (1.0, 2.0)
# While the database does not answer, nothing can be routed nor recorded: the entry waits (it is not
# failed), tried again after a wait that grows up to this.
OUTAGE_MAX_DELAY = 30.0
# How often a waiting consumer checks that its queue directory is still the one it watches.
DIRECTORY_CHECK = 2.0


class BadEntry(Exception):
    pass


class QueueGone(Exception):
    """The watched queue directory was removed or replaced: its watch would never report an entry again."""


def _received_at(entry: Mapping[str, Any]) -> datetime:
    try:
        received_at = datetime.fromisoformat(entry["received_at"])
    except (KeyError, TypeError, ValueError):
        return datetime.now(UTC)
    # The endpoint writes UTC; a time without an offset is read as that, not refused by the store.
    return received_at.replace(tzinfo=UTC) if received_at.tzinfo is None else received_at.astimezone(UTC)


def lasting(exc: BaseException) -> bool:
    """Whether trying again cannot mend ``exc``: a value the database refuses, a queue path that is a file."""
    return isinstance(exc, DataError | NotADirectoryError | FileExistsError | IsADirectoryError)


def describe(exc: BaseException) -> str:
    """``exc`` in one line: the database's own message rather than SQLAlchemy's statement and parameters."""
    cause = getattr(exc, "orig", None) or exc
    text = " ".join(str(cause).split()) or repr(cause)
    return f"{type(cause).__name__}: {text[:500]}"


class Opened:
    """Tells whether a directory was removed or replaced since this was made.

    It keeps the directory open: a removed directory's inode then stays allocated, so a new directory made
    at the same path cannot get its number and pass for it.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def replaced(self) -> bool:
        try:
            now = os.stat(self.directory)
        except OSError:
            return True
        mine = os.fstat(self._fd)
        return (now.st_dev, now.st_ino) != (mine.st_dev, mine.st_ino)

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> Opened:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


async def wait_for_entry(reader: Reader, stop: asyncio.Event, opened: Opened) -> None:
    """Wait until an entry is ready or ``stop`` is set; raise QueueGone if the directory is replaced."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reader.wait(stop), timeout=DIRECTORY_CHECK)
            return
        if opened.replaced():
            raise QueueGone(f"{reader.queue.directory} was removed or replaced")


class Router:
    def __init__(
        self,
        main: Queue,
        queues_dir: Path,
        pipelines: PipelineSet,
        store: Store,
        writer: int | None = None,
    ) -> None:
        self.main = main
        # The user id whose entries are deliveries (the web user); None: the main queue directory's owner.
        self.writer = writer
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

    def route(self, name: str) -> tuple[str, str | None]:
        """Route the main queue's entry ``name``; returns the outcome recorded and why.

        The entry is removed when done; an entry that is not a delivery moves to ``failed/``. Any other
        error is raised, with the entry still in the main queue.
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
            # Only the webhook endpoint's user writes verified deliveries; the deploy user may remove entries
            # there (and so create files), never make one pass as verified. Named by configuration, not by the
            # directory's owner: the deploy user owns RUNNER_HOME and could put a directory of its own there.
            writer = self.writer if self.writer is not None else self.main.owner()
            entry = self.main.read(name, owner=writer)
        except ForeignEntry as exc:
            whose = "the web user's" if self.writer is not None else f"the owner of {self.main.directory}"
            raise BadEntry(f"not written by the webhook endpoint: {exc} ({whose})") from None
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
            self._forward_to(pipeline.name, name, entry, ref)
        return "routed", "forwarded to " + ", ".join(p.name for p in matched)

    def _forward_to(self, pipeline: str, name: str, entry: dict[str, Any], ref: str | None) -> None:
        """Put the entry into the pipeline's queue, with its run: once, however often this is called."""
        run, created = self.store.forward_run(
            pipeline,
            trigger=entry["event"],
            delivery_id=entry["delivery"],
            ref=ref,
            commit=pushed_commit(entry["payload"]),
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
        data = {**entry, "main_entry": name, "run_id": run.id}
        self.store.set_run(run.id, entry=queue.put(data))

    @staticmethod
    def _entry_of(queue: Queue, run_id: int, recorded: str | None) -> str | None:
        if recorded is not None and is_entry_name(recorded) and queue.path(recorded).exists():
            return recorded
        for candidate in queue.entries():
            with contextlib.suppress(OSError, ValueError):
                data = queue.read(candidate)
                if isinstance(data, dict) and data.get("run_id") == run_id:
                    return candidate
        return None

    def after_failure(self, name: str, exc: Exception) -> float | None:
        """Deal with a routing that raised: the seconds to wait before the entry is tried again, or None
        when it was moved to ``failed/`` (after ROUTE_TRIES tries, at once if trying again cannot help)."""
        if not lasting(exc) and not self._database_answers():
            self._outages += 1
            delay = min(2.0**self._outages, OUTAGE_MAX_DELAY)
            logger.error(
                "routing %s failed and the database does not answer (%s): it stays in the main queue, "
                "tried again in %.0f s",
                name,
                describe(exc),
                delay,
            )
            return delay
        self._outages = 0
        tries = self._tries[name] = self._tries.get(name, 0) + 1
        if not lasting(exc) and tries < ROUTE_TRIES:
            delay = RETRY_DELAYS[min(tries, len(RETRY_DELAYS)) - 1]
            logger.error(
                "routing %s failed (try %d of %d), it stays in the main queue, tried again in %.0f s",
                name,
                tries,
                ROUTE_TRIES,
                delay,
                exc_info=exc,
            )
            return delay
        del self._tries[name]
        self.give_up(name, f"routing failed after {tries} tr{'y' if tries == 1 else 'ies'}: {describe(exc)}")
        return None

    def routed(self, name: str) -> None:
        self._tries.pop(name, None)
        self._outages = 0

    def _database_answers(self) -> bool:
        try:
            self.store.ping()
        except Exception:
            return False
        return True

    def give_up(self, name: str, reason: str) -> None:
        """Move the entry to ``failed/`` with ``reason``; its delivery and its runs not forwarded say so."""
        try:
            entry = self._read(name)
        except BadEntry:
            entry = None
        if entry is not None:
            delivery = entry["delivery"]
            try:
                self.store.fail_routing(delivery, entry["event"], _received_at(entry), name, reason)
                for run_id in self.store.fail_unforwarded_runs(delivery, reason):
                    logger.error("run %d of delivery %s failed: %s", run_id, delivery, reason)
            except Exception:
                logger.exception("could not record that delivery %s failed to route", delivery)
        try:
            self.main.fail(name, reason)
        except OSError as exc:
            logger.error(
                "main queue entry %s failed to route (%s) and cannot be moved to failed/: %s; "
                "it is tried again when the worker starts again",
                name,
                reason,
                exc,
            )
            return
        logger.error("main queue entry %s moved to failed/: %s", name, reason)

    async def run(self, stop: asyncio.Event) -> None:
        """Route entries as they arrive until ``stop`` is set; the entry at hand is finished first."""
        # Left by a writer that crashed before publishing: no consumer will ever read them.
        for temp in self.main.remove_stale_temps():
            logger.warning("removed %s/%s, a write that never completed", self.main.directory, temp)
        try:
            with Opened(self.main.directory) as opened, Reader(self.main) as reader:
                while not stop.is_set():
                    name = reader.take()
                    if name is None:
                        await wait_for_entry(reader, stop, opened)
                        continue
                    try:
                        await asyncio.to_thread(self.route, name)
                    except Exception as exc:
                        delay = await asyncio.to_thread(self.after_failure, name, exc)
                        if delay is None:
                            reader.forget(name)
                            continue
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), timeout=delay)
                        reader.release(name)
                    else:
                        self.routed(name)
                        reader.forget(name)
        finally:
            self.close()
