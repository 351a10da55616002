"""Following a growing log file with inotify: its complete lines from a byte offset, as they are written.

A run's log (logs/PIPELINE/RUN.log) is created by its lane when the run starts, written line by line and
closed when it ends. The follower waits for a file that is not there yet (a queued run), keeps a partial last
line until its end arrives, reads what is left of a file that was removed (retention) and stops there, and
stops at a file replaced by another. The writer closing the file (IN_CLOSE_WRITE) is only a hint: whether
the run has ended is the caller's ``ended`` to say (the database), asked then, and now and then while
nothing happens (a run cancelled while it waited never gets a log; a worker that died leaves it running).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from inotify_simple import INotify, flags

# What is passed on as one line at most: a step printing megabytes without a newline is cut into pieces.
MAX_LINE = 64 * 1024
READ_SIZE = 64 * 1024
# After the writer closed the file, how soon, and then how often, the run's end is asked about.
FIRST_CHECK = 0.05
# While nothing happens, how often.
IDLE_CHECK = 15.0

_DIRECTORY = flags.CREATE | flags.MOVED_TO | flags.DELETE | flags.MOVED_FROM | flags.ONLYDIR
_FILE = flags.MODIFY | flags.CLOSE_WRITE | flags.DELETE_SELF | flags.MOVE_SELF | flags.ATTRIB


@dataclass(frozen=True)
class Line:
    """A line of the file, without its newline; ``end`` is the offset just past it (where to go on from)."""

    end: int
    text: bytes


class LogFollower:
    """The new lines of one file; :meth:`wait_hint` and :attr:`fileno` say when to look again."""

    def __init__(self, path: Path, offset: int = 0) -> None:
        self.path = path
        self.offset = offset
        # Whether the writer closed the file since this was last asked.
        self.closed = False
        # Why no more can come: "removed" or "replaced"; None while the file may grow.
        self.gone: str | None = None
        self._partial = b""
        self._fd: int | None = None
        self._inotify = INotify()
        self._dir_watch: int | None = None
        self._watched: Path | None = None
        try:
            self._look()
        except BaseException:
            self.close()
            raise

    def fileno(self) -> int:
        """Readable when the file, or the directory it is awaited in, changed."""
        return self._inotify.fileno()

    @property
    def opened(self) -> bool:
        return self._fd is not None

    def _watch_directory(self) -> None:
        """Watch the file's directory, or the nearest one above that exists until it does: set before the
        file is looked for, so that a file made in between is not missed."""
        directory = self.path.parent
        while not directory.is_dir() and directory != directory.parent:
            directory = directory.parent
        if directory == self._watched:
            return
        if self._dir_watch is not None:
            with contextlib.suppress(OSError):
                self._inotify.rm_watch(self._dir_watch)
        self._dir_watch = self._inotify.add_watch(directory, _DIRECTORY)
        self._watched = directory

    def _look(self) -> None:
        """Open the file if it is there now."""
        if self._fd is not None or self.gone is not None:
            return
        self._watch_directory()
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            return
        self._fd = fd
        self._inotify.add_watch(self.path, _FILE)

    def _replaced(self) -> bool:
        assert self._fd is not None
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(self._fd)
        return (now.st_dev, now.st_ino) != (mine.st_dev, mine.st_ino)

    def take_events(self, timeout: float | None = 0) -> None:
        """Take in what inotify reported, waiting up to ``timeout`` seconds (None: forever) for it."""
        millis = None if timeout is None else int(timeout * 1000)
        changed = False
        for event in self._inotify.read(timeout=millis):
            changed = True
            if event.mask & flags.CLOSE_WRITE:
                self.closed = True
            if event.mask & flags.Q_OVERFLOW:
                self.closed = True  # whatever was lost, look again and ask
        if not changed:
            return
        if self._fd is None:
            self._look()
        elif self.gone is None:
            if not self.path.exists():
                self.gone = "removed"
            elif self._replaced():
                self.gone = "replaced"

    def lines(self) -> list[Line]:
        """The complete lines written since the last call (and, once the file is gone, what is left)."""
        if self._fd is None:
            return []
        found: list[Line] = []
        while chunk := os.pread(self._fd, READ_SIZE, self.offset + len(self._partial)):
            data = self._partial + chunk
            start = 0
            while (newline := data.find(b"\n", start)) >= 0:
                found.append(Line(self.offset + newline + 1, data[start:newline]))
                start = newline + 1
            self.offset += start
            self._partial = data[start:]
            while len(self._partial) >= MAX_LINE:
                self.offset += MAX_LINE
                found.append(Line(self.offset, self._partial[:MAX_LINE]))
                self._partial = self._partial[MAX_LINE:]
        if self.gone is not None:
            found.extend(self.rest())
        return found

    def rest(self) -> list[Line]:
        """A last line without its newline, once no more can come."""
        if not self._partial:
            return []
        self.offset += len(self._partial)
        rest, self._partial = self._partial, b""
        return [Line(self.offset, rest)]

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._inotify.close()

    def __enter__(self) -> LogFollower:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _Follow:
    """A follow under way: the follower's lines, and when to ask whether the run has ended: at once, then
    every ``idle`` seconds; soon after the writer closed the file, then less and less often up to that."""

    def __init__(self, follower: LogFollower, idle: float) -> None:
        self.follower = follower
        self.idle = idle
        # Asked at once: a run that has ended already is read to its end and left.
        self.delay = idle
        self.due = time.monotonic()

    def lines(self) -> list[Line]:
        if self.follower.closed:
            self.follower.closed = False
            self.delay = FIRST_CHECK
            self.due = time.monotonic() + FIRST_CHECK
        return self.follower.lines()

    @property
    def gone(self) -> bool:
        return self.follower.gone is not None

    def ask_now(self) -> bool:
        return self.timeout() == 0

    def not_ended(self) -> None:
        self.delay = min(self.delay * 2, self.idle)
        self.due = time.monotonic() + self.delay

    def last_lines(self) -> list[Line]:
        """What the writer wrote before the run was recorded as ended."""
        self.follower.take_events()
        return self.follower.lines() + self.follower.rest()

    def timeout(self) -> float:
        return max(0.0, self.due - time.monotonic())


def follow(
    path: Path, offset: int, ended: Callable[[], bool], idle_check: float = IDLE_CHECK
) -> Iterator[list[Line]]:
    """The lines of ``path`` from ``offset`` as they are written, a batch at a time, until ``ended()`` says
    the run has ended (or the file is removed or replaced)."""
    with LogFollower(path, offset) as follower:
        state = _Follow(follower, idle_check)
        while True:
            found = state.lines()
            if not state.gone and state.ask_now():
                if ended():
                    if last := found + state.last_lines():
                        yield last
                    return
                state.not_ended()
            if found:
                yield found
            if state.gone:
                return
            follower.take_events(state.timeout())


async def follow_async(
    path: Path,
    offset: int,
    ended: Callable[[], bool],
    idle_check: float = IDLE_CHECK,
    follower: LogFollower | None = None,
) -> AsyncIterator[list[Line]]:
    """The lines of ``path`` as :func:`follow` finds them, a batch at a time, without blocking the event
    loop: ``ended`` runs in a thread (it asks the database). Closing the iterator (the client went) ends
    it. ``follower``: one of ``path`` from ``offset`` the caller opened already (to know it could), closed
    here as one of its own would be."""
    loop = asyncio.get_running_loop()
    with follower or LogFollower(path, offset) as follower:
        state = _Follow(follower, idle_check)
        while True:
            found = state.lines()
            if not state.gone and state.ask_now():
                if await asyncio.to_thread(ended):
                    if last := found + state.last_lines():
                        yield last
                    return
                state.not_ended()
            if found:
                yield found
            if state.gone:
                return
            ready = loop.create_future()
            loop.add_reader(follower.fileno(), _resolve, ready)
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ready, timeout=state.timeout())
            finally:
                loop.remove_reader(follower.fileno())
            follower.take_events()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
