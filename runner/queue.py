"""A durable queue of JSON files in one directory.

An entry is a file named by the nanosecond epoch time of its publication, zero-padded to 20 digits, plus
``.json``: the names sort in the order the entries were published, across threads and processes. An entry is
written under a hidden temporary name, fsynced, renamed into place and made durable by an fsync of the
directory, so a reader never sees half an entry and an entry that was announced survives a crash.

Names are handed out under an exclusive ``flock`` on the queue's ``.lock`` file, which also keeps the last
name given: two publishers in the same nanosecond, or a clock that steps back, still give distinct increasing
names, and since the renames happen under the lock too, no reader can see entry N+1 before entry N.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import heapq
import itertools
import json
import logging
import os
import re
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from inotify_simple import INotify, flags

from runner.files import fsync_directory

logger = logging.getLogger(__name__)

NAME_DIGITS = 20
ENTRY_NAME = re.compile(r"^[0-9]{20}\.json$")
LOCK_FILE = ".lock"
TEMP_SUFFIX = ".tmp"
FAILED_DIR = "failed"

_temp_counter = itertools.count()


class QueueError(Exception):
    pass


class ForeignEntry(QueueError):
    """An entry that the queue's writer did not write: another user owns the file."""


def is_entry_name(name: str) -> bool:
    return ENTRY_NAME.match(name) is not None


class Queue:
    """A queue directory. Safe to share between threads, and between processes through the file system."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._thread_lock = threading.Lock()
        self._lock_fd: int | None = None

    def __repr__(self) -> str:
        return f"Queue({str(self.directory)!r})"

    @property
    def name(self) -> str:
        return self.directory.name

    # Writing -------------------------------------------------------------------------------------------

    def create_temp(self, data: bytes) -> tuple[Path, int]:
        """Write ``data`` to a hidden temporary file; the caller closes the descriptor returned.

        The caller may write more to it first; :meth:`put_many` then fsyncs and publishes it, or the caller
        removes it. No consumer reads a temporary file.
        """
        temp = self.directory / f".{os.getpid()}.{threading.get_ident()}.{next(_temp_counter)}{TEMP_SUFFIX}"
        # Read-write: the webhook endpoint reads a large body back from its file to check it.
        fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                temp.unlink()
            raise
        return temp, fd

    def put_many(self, items: Sequence[bytes | Path], syncers: Executor | None = None) -> list[str]:
        """Write several entries durably, with as few journal commits as the file system allows.

        An item is an entry's bytes, or a hidden temporary file of this queue that already holds them (see
        :meth:`create_temp`; its writer has closed it, and it is removed if the batch fails). Every file is
        written first, then all are fsynced at once (in ``syncers``, when given: concurrent fsyncs share a
        journal commit), then renamed into place in order, then one directory fsync.
        """
        for item in items:
            hidden = isinstance(item, Path) and item.name.startswith(".") and item.name.endswith(TEMP_SUFFIX)
            # Only a hidden temporary file directly in this directory: a rename must not reach anywhere else.
            if isinstance(item, Path) and not (hidden and item.parent == self.directory):
                raise QueueError(f"{str(item)!r} is not a temporary file of {self}")
        written: list[tuple[Path, int]] = []
        try:
            for item in items:
                written.append(self._open_temp(item) if isinstance(item, Path) else self.create_temp(item))
            fds = [fd for _, fd in written]
            if syncers is not None and len(fds) > 1:
                list(syncers.map(os.fsync, fds))
            else:
                for fd in fds:
                    os.fsync(fd)
        except BaseException:
            for item in items:
                if isinstance(item, Path):
                    with contextlib.suppress(OSError):
                        item.unlink()
            for temp, _ in written:
                with contextlib.suppress(OSError):
                    temp.unlink()
            raise
        finally:
            for _, fd in written:
                os.close(fd)
        return self.publish([temp for temp, _ in written])

    def _open_temp(self, temp: Path) -> tuple[Path, int]:
        # Read-only is enough for fsync; O_NOFOLLOW: the name must be the file written, not a link.
        return temp, os.open(temp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)

    def publish(self, temps: list[Path]) -> list[str]:
        """Rename fsynced temporary files into place, in order, and make the renames durable.

        Returns the entry names, which increase in the order of ``temps``.
        """
        names: list[str] = []
        with self._name_lock() as lock_fd:
            last = self._read_last(lock_fd)
            try:
                for temp in temps:
                    name_ns = max(time.time_ns(), last + 1)
                    name = f"{name_ns:0{NAME_DIGITS}d}.json"
                    os.rename(temp, self.directory / name)
                    last = name_ns
                    names.append(name)
            finally:
                # Even after a failed rename, the names already used must never be handed out again.
                os.pwrite(lock_fd, f"{last:0{NAME_DIGITS}d}".encode(), 0)
        # One directory fsync makes the whole batch durable; it needs no lock, the renames are done.
        fsync_directory(self.directory)
        return names

    def put(self, data: bytes | dict[str, Any]) -> str:
        """Write one entry durably and return its name."""
        if isinstance(data, dict):
            data = json.dumps(data, separators=(",", ":")).encode()
        return self.put_many([data])[0]

    @contextlib.contextmanager
    def _name_lock(self) -> Iterator[int]:
        with self._thread_lock:
            if self._lock_fd is None:
                self._lock_fd = os.open(
                    self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640
                )
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                yield self._lock_fd
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _read_last(self, lock_fd: int) -> int:
        raw = os.pread(lock_fd, NAME_DIGITS, 0)
        return int(raw) if raw.isdigit() else 0

    # Reading -------------------------------------------------------------------------------------------

    def entries(self) -> list[str]:
        """Names of the published entries, oldest first."""
        with os.scandir(self.directory) as it:
            return sorted(e.name for e in it if is_entry_name(e.name))

    def path(self, name: str) -> Path:
        if not is_entry_name(name):
            raise QueueError(f"{name!r} is not a queue entry name")
        return self.directory / name

    def read(self, name: str, owner: int | None = None) -> dict[str, Any]:
        """The entry ``name``; with ``owner``, only if that user id owns the file (not a symlink to one)."""
        return self.read_owned(name, None if owner is None else (owner,))[1]

    def read_owned(self, name: str, owners: Collection[int] | None) -> tuple[int, Any]:
        """Who owns the entry ``name``, its JSON; with ``owners``, only if one of them owns it."""
        fd = os.open(self.path(name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as file:
            # Checked on the open file: a rename over the name after the check changes nothing.
            uid = os.fstat(file.fileno()).st_uid
            if owners is not None and uid not in owners:
                allowed = " or ".join(str(owner) for owner in owners)
                raise ForeignEntry(f"the entry is owned by user id {uid}, not by {allowed}")
            return uid, json.loads(file.read())

    def owner(self) -> int:
        """The user id that owns the queue's directory."""
        return os.stat(self.directory).st_uid

    def remove(self, name: str) -> None:
        """Remove an entry once its work is done; the removal is made durable too."""
        self.path(name).unlink()
        fsync_directory(self.directory)

    def fail(self, name: str, reason: str) -> Path:
        """Move an entry whose work failed into ``failed/``, beside a file saying why. Nothing is lost."""
        failed = self.directory / FAILED_DIR
        failed.mkdir(exist_ok=True)
        (failed / f"{name}.reason").write_text(reason.rstrip("\n") + "\n")
        os.rename(self.path(name), failed / name)
        fsync_directory(failed)
        fsync_directory(self.directory)
        return failed / name

    def remove_stale_temps(self, older_than: float = 3600.0) -> list[str]:
        """Remove temporary files left by a writer that crashed before publishing.

        Only files older than ``older_than`` seconds go, so a writer still at work keeps its file.
        """
        removed = []
        cutoff = time.time() - older_than
        with os.scandir(self.directory) as it:
            for e in it:
                if e.name.startswith(".") and e.name.endswith(TEMP_SUFFIX) and e.stat().st_mtime < cutoff:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(e.path)
                        removed.append(e.name)
        return removed

    def close(self) -> None:
        with self._thread_lock:
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None


# The watched directory itself moved away or removed (for good, once nothing holds it open).
_SELF = flags.MOVE_SELF | flags.DELETE_SELF
# In the directory above it: a directory of that name removed, renamed, made or moved in.
_ABOVE = flags.DELETE | flags.MOVED_FROM | flags.CREATE | flags.MOVED_TO | flags.ONLYDIR | _SELF


class Reader:
    """Hands out a queue's entries in name order: those present at start, then each new one.

    The inotify watch is set up before the first scan, so an entry published during the scan is reported
    by the watch even if the scan missed it. If the kernel's event queue overflows, the reader rescans.
    An entry handed out is not handed out again until :meth:`release` (work not done, keep it) or
    :meth:`done` (work done, remove it).
    """

    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self._inotify = INotify()
        # IN_MOVED_TO is a publish; IN_CLOSE_WRITE covers an entry copied in by hand.
        self._watch = self._inotify.add_watch(
            queue.directory, flags.MOVED_TO | flags.CLOSE_WRITE | flags.ONLYDIR | _SELF
        )
        # And the directory above, where the queue's own removal is seen at once (its watch reports that
        # only when the last descriptor open on it is closed) and where a directory moved in replaces it.
        self._above = self._inotify.add_watch(queue.directory.parent, _ABOVE)
        # Whether the directory may have been removed or replaced since this was last cleared.
        self.moved = False
        self._pending: list[str] = []
        self._known: set[str] = set()
        self._taken: set[str] = set()
        self.rescans = 0
        self.scan()

    def fileno(self) -> int:
        return self._inotify.fileno()

    def close(self) -> None:
        self._inotify.close()

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def scan(self) -> None:
        self.rescans += 1
        for name in self.queue.entries():
            self._add(name)

    def _add(self, name: str) -> None:
        if name not in self._known and name not in self._taken and is_entry_name(name):
            self._known.add(name)
            heapq.heappush(self._pending, name)

    def poll(self, timeout: float | None = 0) -> bool:
        """Take in the watch's events, waiting up to ``timeout`` seconds (None: forever) for the first.

        Returns whether an entry is ready to take.
        """
        millis = None if timeout is None else int(timeout * 1000)
        overflow = False
        for event in self._inotify.read(timeout=millis):
            if event.mask & flags.Q_OVERFLOW:
                overflow = True
            elif event.wd == self._above:
                if event.name == self.queue.directory.name or event.mask & _SELF:
                    self.moved = True
            elif event.mask & (_SELF | flags.IGNORED):
                self.moved = True
            elif event.name:
                self._add(event.name)
        if overflow:
            logger.warning("%s: inotify queue overflowed, rescanning", self.queue.directory)
            self.scan()
        return bool(self._pending)

    def take(self) -> str | None:
        """The oldest entry not yet handed out, or None."""
        while self._pending:
            name = heapq.heappop(self._pending)
            self._known.discard(name)
            if self.queue.path(name).exists():
                self._taken.add(name)
                return name
        return None

    def done(self, name: str) -> None:
        self.queue.remove(name)
        self._taken.discard(name)

    def release(self, name: str) -> None:
        """Forget that ``name`` was handed out; it is handed out again (first) if still present."""
        self._taken.discard(name)
        if self.queue.path(name).exists():
            self._add(name)

    def forget(self, name: str) -> None:
        """The entry was moved elsewhere by the consumer: stop tracking it."""
        self._taken.discard(name)

    async def wait(self, stop: asyncio.Event | None = None) -> bool:
        """Wait until an entry is ready to take (True), or until ``stop`` is set (False); also returns
        (True) when the directory may have been removed or replaced (:attr:`moved`)."""
        loop = asyncio.get_running_loop()
        while not self.poll(0) and not self.moved:
            if stop is not None and stop.is_set():
                return False
            ready = loop.create_future()
            loop.add_reader(self.fileno(), _resolve, ready)
            stopping = asyncio.ensure_future(stop.wait()) if stop is not None else None
            try:
                await asyncio.wait(
                    [ready, stopping] if stopping else [ready], return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                loop.remove_reader(self.fileno())
                ready.cancel()
                if stopping is not None:
                    stopping.cancel()
        return True


def _resolve(future: asyncio.Future[None]) -> None:
    # The reader callback can fire once more after the waiter has gone; that is not an error.
    if not future.done():
        future.set_result(None)
