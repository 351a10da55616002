"""Taking a queue's entries one at a time as they arrive, for the router (of two queues) and the lanes.

A watch on a directory that was removed or replaced would never report an entry again: a consumer checks
that its directory is still the one it watches, and says so (QueueGone) when it is not.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path

from runner.queue import Queue, Reader


class QueueGone(Exception):
    """The watched queue directory was removed or replaced: its watch would never report an entry again."""


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


class Consumer:
    """A queue's entries, taken as they are published; the caller tells its :attr:`reader` how each went."""

    def __init__(self, queue: Queue) -> None:
        self.opened = Opened(queue.directory)
        try:
            self.reader = Reader(queue)
        except BaseException:
            self.opened.close()
            raise
        # Replaced before the reader's watches were set: no event would tell.
        self.reader.moved = self.opened.replaced()

    async def take(self, stop: asyncio.Event) -> str | None:
        """The next entry, once there is one; None once ``stop`` is set. Raises QueueGone."""
        while not stop.is_set():
            name = self.reader.take()
            if name is not None:
                return name
            await self._wait(stop)
        return None

    async def _wait(self, stop: asyncio.Event) -> None:
        """Wait until an entry is ready or ``stop`` is set; raise QueueGone if the directory is replaced."""
        # Told by inotify (the reader's watches), not looked at every few seconds: an idle lane sleeps.
        while not stop.is_set():
            if not await self.reader.wait(stop) or not self.reader.moved:
                return
            self.reader.moved = False
            if self.opened.replaced():
                raise QueueGone(f"{self.reader.queue.directory} was removed or replaced")
            if self.reader.poll(0):
                return

    def close(self) -> None:
        self.reader.close()
        self.opened.close()

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


async def take_first(consumers: Sequence[Consumer], stop: asyncio.Event) -> tuple[Consumer, str] | None:
    """The next entry of any of ``consumers``, the first one's before the others', once there is one, with
    its consumer; None once ``stop`` is set. Raises QueueGone."""
    while not stop.is_set():
        for consumer in consumers:
            name = consumer.reader.take()
            if name is not None:
                return consumer, name
        waits = [asyncio.ensure_future(consumer._wait(stop)) for consumer in consumers]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
            # Awaited to their end: a wait still unwinding would remove the reader of the next one.
            outcomes = await asyncio.gather(*waits, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, Exception):
                raise outcome
    return None
