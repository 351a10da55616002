"""Watching directories with inotify: what tells the worker to reload its pipeline files, without polling.

Each directory is watched for what is written, made, removed, renamed or chmod-ed in it, and so is the
directory above it for the directory itself being made, removed or replaced (``mv new pipelines``); one that
does not exist is awaited in the nearest directory above it that does. The watches are set again before each
reload: a directory replaced is watched afresh, and what changed while they were being set is seen by the
reload that follows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from inotify_simple import INotify, flags

# The worker's: its lines keep its name.
logger = logging.getLogger("runner.worker")

# In a watched directory: what may change a pipeline (or its template, or the set of queues).
_CONTENT = (
    flags.CLOSE_WRITE
    | flags.CREATE
    | flags.DELETE
    | flags.MOVED_FROM
    | flags.MOVED_TO
    | flags.ATTRIB
    | flags.MOVE_SELF
    | flags.DELETE_SELF
)
# Above it: the watched directory (or one on the way down to it) made, removed, or renamed.
_ABOVE = flags.CREATE | flags.DELETE | flags.MOVED_FROM | flags.MOVED_TO | flags.MOVE_SELF | flags.DELETE_SELF
# Whatever the name: the watched directory itself is gone, or events were lost.
_ALWAYS = flags.MOVE_SELF | flags.DELETE_SELF | flags.IGNORED | flags.Q_OVERFLOW
# An editor's save is several events: they are taken together, once this long has passed after the first.
SETTLE = 0.05
# Only when a directory could not be watched (no inotify instance or watch left): how often to look anyway.
UNWATCHED_CHECK = 60.0


@dataclass
class _Watched:
    """What one watch descriptor reports that matters: everything in it, or only these names."""

    everything: bool = False
    names: set[str] = field(default_factory=set)


class DirectoryWatch:
    """Tells when something changed in, or about, a set of directories; :meth:`watch` sets them."""

    def __init__(self) -> None:
        self._inotify: INotify | None = None
        self._watched: dict[int, _Watched] = {}
        # A directory none of whose ancestors could be watched: looked at every UNWATCHED_CHECK seconds.
        self.unwatched: list[Path] = []

    def watch(self, directories: Iterable[Path]) -> None:
        """Watch ``directories`` from now on, instead of the ones before."""
        self.close()
        try:
            inotify = INotify()
        except OSError as exc:
            logger.warning("cannot watch the pipeline files (%s): they are looked at once a minute", exc)
            return
        watched: dict[int, _Watched] = {}
        unwatched = []
        for directory in dict.fromkeys(Path(d).absolute() for d in directories):
            try:
                wd = inotify.add_watch(directory, _CONTENT | flags.ONLYDIR | flags.MASK_ADD)
            except OSError:
                pass  # not there (yet): awaited above
            else:
                watched.setdefault(wd, _Watched()).everything = True
            if not self._watch_above(inotify, watched, directory):
                unwatched.append(directory)
        for directory in set(unwatched) - set(self.unwatched):
            logger.warning("cannot watch %s (no inotify watch left?): looked at once a minute", directory)
        self._inotify, self._watched, self.unwatched = inotify, watched, unwatched

    @staticmethod
    def _watch_above(inotify: INotify, watched: dict[int, _Watched], directory: Path) -> bool:
        """Watch the nearest existing directory above ``directory`` for the name that leads down to it."""
        child = directory
        for above in directory.parents:
            try:
                wd = inotify.add_watch(above, _ABOVE | flags.ONLYDIR | flags.MASK_ADD)
            except OSError:
                child = above
                continue
            watched.setdefault(wd, _Watched()).names.add(child.name)
            return True
        return False

    def _relevant(self, timeout: float | None = 0) -> bool:
        """Take in the events (waiting up to ``timeout`` seconds for the first); whether one matters."""
        assert self._inotify is not None
        millis = None if timeout is None else int(timeout * 1000)
        relevant = False
        for event in self._inotify.read(timeout=millis):
            watched = self._watched.get(event.wd)
            if event.mask & _ALWAYS or watched is None or watched.everything or event.name in watched.names:
                relevant = True
        return relevant

    async def changed(self, stop: asyncio.Event) -> bool:
        """Wait until something changed (True), or ``stop`` is set (False)."""
        if self._inotify is None:
            # No watch could be made (no inotify instance left): look again later.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=UNWATCHED_CHECK)
            return not stop.is_set()
        loop = asyncio.get_running_loop()
        fd = self._inotify.fileno()
        while not stop.is_set():
            if self._relevant():
                # The rest of an editor's save, or of a `git pull`, comes with it.
                await asyncio.sleep(SETTLE)
                self._relevant()
                return True
            ready: asyncio.Future[None] = loop.create_future()
            loop.add_reader(fd, _resolve, ready)
            stopping = asyncio.ensure_future(stop.wait())
            try:
                done, _ = await asyncio.wait(
                    [ready, stopping],
                    timeout=UNWATCHED_CHECK if self.unwatched else None,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                loop.remove_reader(fd)
                ready.cancel()
                stopping.cancel()
            if not done:
                return True
        return False

    def close(self) -> None:
        if self._inotify is not None:
            with contextlib.suppress(OSError):
                self._inotify.close()
            self._inotify = None


def _resolve(future: asyncio.Future[None]) -> None:
    # The reader callback can fire once more after the waiter has gone.
    if not future.done():
        future.set_result(None)
