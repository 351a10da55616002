"""Runs starting and ending on this server, seen in logs/ by one inotify watch a process, told to subscribers.

A run's lane creates its log (logs/PIPELINE/RUN.log) when the run starts and closes it when the run ends:
that is all the watch needs, so the status page's live pipeline list costs no database question per client.
An end is confirmed once, for every subscriber, by asking the database how the run ended (the lane records
that just after it closes the log). A subscriber that does not keep up loses events, never blocks the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from inotify_simple import INotify, flags

logger = logging.getLogger(__name__)

LOG_NAME = re.compile(r"^([0-9]{1,18})\.log$")
# Events a subscriber may have waiting; more are dropped for it (it refetches the list at the next one).
SUBSCRIBER_BACKLOG = 64
# How long, and how often, an end is confirmed by the database before it is told as the status it has then.
CONFIRM_DELAYS = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)

_TOP = flags.CREATE | flags.MOVED_TO | flags.ONLYDIR
_PIPELINE = flags.CREATE | flags.MOVED_TO | flags.CLOSE_WRITE | flags.ONLYDIR


@dataclass(frozen=True)
class RunEvent:
    """A run started (``status`` running) or ended (its status, as recorded)."""

    run_id: int
    pipeline: str
    status: str


class RunWatch:
    """The one watch on ``logs_dir`` of a process, started by the first subscriber, inside the event loop.

    ``status_of(run_id)`` (run in a thread) says a run's status, or None if there is no such run.
    """

    def __init__(self, logs_dir: Path, status_of: Callable[[int], str | None]) -> None:
        self.logs_dir = logs_dir
        self.status_of = status_of
        self._subscribers: set[asyncio.Queue[RunEvent]] = set()
        self._inotify: INotify | None = None
        self._watches: dict[int, str | None] = {}
        self._confirming: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def subscribe(self) -> asyncio.Queue[RunEvent]:
        if self._inotify is None:
            self._start()
        queue: asyncio.Queue[RunEvent] = asyncio.Queue(SUBSCRIBER_BACKLOG)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[RunEvent]) -> None:
        self._subscribers.discard(queue)

    def _start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._inotify = INotify()
        self._watch_top(new=False)
        self._loop.add_reader(self._inotify.fileno(), self._read)

    def _watch_top(self, new: bool = True) -> None:
        """Watch logs/ and each pipeline's directory in it; logs/'s parent until logs/ exists. ``new``: a
        directory found now was made since the watch began."""
        assert self._inotify is not None
        if not self.logs_dir.is_dir():
            parent = self.logs_dir.parent
            if parent.is_dir() and None not in self._watches.values():
                self._watches[self._inotify.add_watch(parent, _TOP)] = None
            if not self.logs_dir.is_dir():
                return
        if "" not in self._watches.values():
            self._watches[self._inotify.add_watch(self.logs_dir, _TOP)] = ""
        with contextlib.suppress(OSError):
            for child in self.logs_dir.iterdir():
                if child.is_dir():
                    self._watch_pipeline(child.name, new)

    def _watch_pipeline(self, name: str, new: bool) -> None:
        """Watch a pipeline's log directory; ``new``: one made since the watch began, whose first run may
        have created its log before the watch was set up: the logs in it are told as started."""
        assert self._inotify is not None
        if name in self._watches.values():
            return
        directory = self.logs_dir / name
        try:
            self._watches[self._inotify.add_watch(directory, _PIPELINE)] = name
            found = [LOG_NAME.match(child.name) for child in directory.iterdir()] if new else []
        except OSError:
            return
        for match in found:
            if match is not None:
                self._tell(RunEvent(int(match.group(1)), name, "running"))

    def _read(self) -> None:
        assert self._inotify is not None
        for event in self._inotify.read(timeout=0):
            if event.mask & flags.Q_OVERFLOW:
                logger.warning(
                    "%s: inotify queue overflowed; some runs' starts and ends are not told", self.logs_dir
                )
                continue
            if event.mask & flags.IGNORED:
                # Its directory went (retention, by hand): one made again at its path is watched anew.
                self._watches.pop(event.wd, None)
                continue
            where = self._watches.get(event.wd)
            if where is None or where == "":
                # logs/ (or its parent, until logs/ exists): a pipeline's directory may be new.
                self._watch_top()
                continue
            found = LOG_NAME.match(event.name)
            if found is None:
                continue
            run_id = int(found.group(1))
            if event.mask & flags.CLOSE_WRITE:
                task = asyncio.ensure_future(self._confirm_end(run_id, where))
                self._confirming.add(task)
                task.add_done_callback(self._confirming.discard)
            else:
                self._tell(RunEvent(run_id, where, "running"))

    async def _confirm_end(self, run_id: int, pipeline: str) -> None:
        status: str | None = "running"
        for delay in CONFIRM_DELAYS:
            await asyncio.sleep(delay)
            try:
                status = await asyncio.to_thread(self.status_of, run_id)
            except Exception as exc:
                logger.warning("cannot ask the database how run %d ended: %s", run_id, exc)
                continue
            if status not in ("queued", "running"):
                break
        if status is not None:
            self._tell(RunEvent(run_id, pipeline, status))

    def _tell(self, event: RunEvent) -> None:
        for queue in self._subscribers:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(event)

    def close(self) -> None:
        for task in self._confirming:
            task.cancel()
        if self._inotify is not None:
            assert self._loop is not None
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._inotify.fileno())
            self._inotify.close()
            self._inotify = None
            self._watches.clear()
