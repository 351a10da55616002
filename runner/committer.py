"""Group commit: the entries of concurrent asyncio callers made durable together in one queue.

The webhook endpoint's requests are those callers: each is answered once its entry is durable.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from runner.queue import Queue

logger = logging.getLogger(__name__)


class GroupCommitter:
    """Makes the entries of concurrent asyncio callers durable together (group commit).

    Entries that arrive while a batch is being committed wait and form the next batch, which costs about
    two journal commits (its files' fsyncs, run side by side, then one directory fsync) whatever its size.
    A caller is answered only when its entry is durable.
    """

    def __init__(self, queue: Queue, syncers: int = 16) -> None:
        self.queue = queue
        self._committer = ThreadPoolExecutor(1, thread_name_prefix="queue-commit")
        self._syncers = ThreadPoolExecutor(syncers, thread_name_prefix="queue-fsync")
        self._waiting: list[tuple[bytes | Path, asyncio.Future[str]]] = []
        self._committing = False

    async def put(self, data: bytes | Path) -> str:
        """Publish an entry (its bytes, or a closed temporary file of the queue holding them) durably."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str] = loop.create_future()
        self._waiting.append((data, future))
        if not self._committing:
            self._commit_waiting(loop)
        # Shielded: a caller that goes away must not cancel the future its batch will resolve.
        return await asyncio.shield(future)

    def _commit_waiting(self, loop: asyncio.AbstractEventLoop) -> None:
        batch, self._waiting = self._waiting, []
        self._committing = True
        committed = loop.run_in_executor(
            self._committer, self.queue.put_many, [data for data, _ in batch], self._syncers
        )
        committed.add_done_callback(lambda done: self._committed(loop, batch, done))

    def _committed(
        self,
        loop: asyncio.AbstractEventLoop,
        batch: list[tuple[bytes | Path, asyncio.Future[str]]],
        done: asyncio.Future[list[str]],
    ) -> None:
        self._committing = False
        error = done.exception()
        if error is not None:
            logger.error("writing %d entries to %s failed: %s", len(batch), self.queue.directory, error)
            for _, future in batch:
                future.set_exception(error)
        else:
            for (_, future), name in zip(batch, done.result(), strict=True):
                future.set_result(name)
        if self._waiting:
            self._commit_waiting(loop)

    def close(self) -> None:
        self._committer.shutdown(wait=True)
        self._syncers.shutdown(wait=True)
