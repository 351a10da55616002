"""Serving: the webhook endpoint's server processes (one, or several forked and supervised), the worker.

``runner serve`` and ``runner up`` serve in this process, or fork ``RUNNER_WORKERS`` server processes on one
listening socket and watch them; ``runner up`` and ``runner work`` run the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, NoReturn

from runner.config import Config, Secret
from runner.listen import describe, listen
from runner.lock import NotTheOwner, WorkerLock, WorkerRunning, require_owner

if TYPE_CHECKING:
    from runner.store import Store
    from runner.worker import Worker

logger = logging.getLogger("runner")

# Connections that may wait for an accept(): GitHub's bursts, and a benchmark's connections, all at once.
SERVE_BACKLOG = 128
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class ServeError(Exception):
    """A server process or the worker cannot start, or a server process failed; the message says why."""


def run_async(main: Callable[[asyncio.Event], Coroutine[Any, Any, None]], uvloop: bool = True) -> None:
    """Run ``main`` on uvloop when it is there (and ``uvloop``), else on asyncio's own loop; SIGTERM and
    SIGINT ask it to stop.

    A server takes uvloop for its ingest; ``runner work`` alone does not: it does little I/O (inotify, its
    children's pipes), and uvloop would hold 2 MB of it for the whole of its idle life.
    """

    async def wrapper() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, stop.set)
        await main(stop)

    from runner.accepting import SelectorLoop, uvloop_factory

    factory = (uvloop_factory() if uvloop else None) or SelectorLoop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(wrapper())


def worker_lock(config: Config, command: str) -> WorkerLock:
    """The home's worker lock, taken, or a ServeError naming the worker that holds it."""
    lock = WorkerLock(config.worker_lock)
    try:
        require_owner(config.queues_dir, command)
        lock.acquire()
    except (NotTheOwner, WorkerRunning) as exc:
        raise ServeError(str(exc)) from None
    except OSError as exc:
        raise ServeError(f"cannot take the worker lock {config.worker_lock}: {exc}") from None
    return lock


def new_worker(config: Config, store: Store) -> Worker:
    from runner.pipelines import PipelineSet
    from runner.worker import Worker

    # Steps inherit the worker's environment (less runner's own settings): PATH, HOME, locale.
    return Worker(PipelineSet(config.pipelines_dir, config.home), store, config, dict(os.environ))


def serve(config: Config, secret: Secret, store: Store | None, with_worker: bool) -> None:
    """Serve the webhook endpoint (and work, with ``with_worker``) until SIGTERM or SIGINT: in this process,
    or in ``config.workers`` server processes. ``store``, whose schema is checked, is closed in the end; the
    worker's, None without one (a server process only pings the database)."""
    # Imported before any fork, so that the server processes share these pages with the parent.
    import hypercorn.asyncio
    import hypercorn.config  # noqa: F401

    import runner.web  # noqa: F401

    try:
        listener = listen(config.host, config.port, SERVE_BACKLOG)
    except BaseException:
        if store is not None:
            store.close()
        raise
    logger.info(
        "webhook endpoint: %s/github-webhook, queue: %s, %d server process(es)",
        describe(listener),
        config.main_queue_dir,
        config.workers,
    )
    users = config.ui_users
    logger.info(
        "status page: %s%s, %s",
        describe(listener),
        config.ui_path,
        f"users: {users}"
        if users.exists()
        else f"answers 404 until `runner ui-user add NAME` writes {users}",
    )
    freeze_startup()
    if config.workers == 1:
        _serve_here(config, listener, secret, store, with_worker)
        return
    # The schema is checked; the children connect afresh, so no connection is shared across the fork.
    if store is not None:
        store.close()
    _serve_forked(config, listener, secret, store, with_worker)


def freeze_startup() -> None:
    """Leave the objects alive now (the imported modules, their classes and functions) out of every later
    garbage collection.

    A full collection walks every tracked object: some 74,000 after a server's imports, 55 to 110 ms of CPU
    on a 2-core machine during which the event loop answers nothing. In a forked server process, its first
    one also writes to every page it walks, copying about 24 MB the process shared with its parent. Frozen,
    those objects (which live as long as the process anyway) are never walked again: the same collection
    takes under a millisecond and copies about 175 pages.
    """
    gc.freeze()


def _serve_here(
    config: Config,
    listener: socket.socket,
    secret: Secret,
    store: Store | None,
    with_worker: bool,
    parent_pipe: int | None = None,
) -> None:
    """Serve (and work, with ``with_worker``) in this process until SIGTERM or SIGINT.

    With ``parent_pipe``, the read end of a pipe only the parent writes to, it also stops when the parent
    is gone (even killed with SIGKILL), so that no orphan goes on serving the port.
    """
    from runner.driver import Database
    from runner.queue import Queue
    from runner.web import serve

    # Each process opens its own queue: the flock that orders names across processes is held per open
    # file, so a lock file opened before a fork would not keep the children apart.
    queue = Queue(config.main_queue_dir)
    # The web's own, read-only, through the DB-API driver alone: the endpoint only pings the database (the
    # status page opens its own store when it is first used).
    web_database = Database(config.database_url, read_only=True)
    # Hypercorn owns the socket from here on and closes it when it stops.
    fd = listener.detach()

    async def main(stop: asyncio.Event) -> None:
        if parent_pipe is not None:
            loop = asyncio.get_running_loop()

            def parent_gone() -> None:
                loop.remove_reader(parent_pipe)
                logger.warning("the parent process is gone: stopping")
                stop.set()

            loop.add_reader(parent_pipe, parent_gone)
        web = serve(fd, config, secret, queue, web_database, stop)
        if store is None or not with_worker:
            await web
            return
        worker = new_worker(config, store).run(stop)
        tasks = [asyncio.ensure_future(web), asyncio.ensure_future(worker)]
        # If either ends by itself (a crash), stop the other too rather than run half a runner.
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            task.result()

    try:
        run_async(main)
    finally:
        queue.close()
        web_database.close()
        if store is not None:
            store.close()


class ServerProcesses:
    """The forked server processes: a stop reaches every one, and each one's end is waited for and judged."""

    def __init__(self) -> None:
        self.pids: list[int] = []
        self.stopping = False
        self.failures: list[str] = []

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """Send ``signum`` to every child; from now on a child that ends by it has not failed."""
        self.stopping = True
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def forward(self, signum: int, _frame: object) -> None:
        """The parent's handler of SIGTERM and SIGINT: passes them on to every child."""
        self.stop(signum)

    def reap(self) -> None:
        """Wait for every child. The first that ends while no stop was asked for stops the others."""
        while self.pids:
            pid, status = os.wait()
            code = os.waitstatus_to_exitcode(status)
            self.pids.remove(pid)
            if self.stopping and code in (0, -signal.SIGTERM, -signal.SIGINT):
                continue
            self.failures.append(f"server process {pid} exited with status {code}")
            if not self.stopping:
                logger.error("%s; stopping the others", self.failures[-1])
                self.stop(signal.SIGTERM)


def _serve_forked(
    config: Config, listener: socket.socket, secret: Secret, store: Store | None, with_worker: bool
) -> None:
    """Fork ``config.workers`` server processes on one listening socket and wait for them.

    SIGTERM and SIGINT are passed on to every child. If a child ends while no stop was asked for, the
    others are stopped and the command fails: a runner serving at part strength would hide the fault.
    """
    # fork() copies only the calling thread: a lock held by another thread would stay locked forever.
    if threading.active_count() != 1:
        raise ServeError("internal error: a thread was started before the server processes were forked")
    children = ServerProcesses()
    # Never written to: the children see its end of file when the parent is gone.
    pipe_read, pipe_write = os.pipe()
    # Blocked until the handlers are in place: a stop asked for during the forks reaches every child.
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        for index in range(config.workers):
            pid = os.fork()
            if pid == 0:
                os.close(pipe_write)
                child_worker = with_worker and index == 0
                _run_child(config, listener, secret, store, child_worker, pipe_read, previous_mask)
            children.pids.append(pid)
        for signum in STOP_SIGNALS:
            signal.signal(signum, children.forward)
    except BaseException:
        # A failed fork: the children already started must not outlive the command.
        children.stop(signal.SIGTERM)
        children.reap()
        os.close(pipe_write)
        raise
    finally:
        # Only the children accept connections; they close their copies when they stop.
        listener.close()
        os.close(pipe_read)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
    children.reap()
    os.close(pipe_write)
    if children.failures:
        raise ServeError("; ".join(children.failures))


def _run_child(
    config: Config,
    listener: socket.socket,
    secret: Secret,
    store: Store | None,
    with_worker: bool,
    parent_pipe: int,
    signal_mask: set[signal.Signals],
) -> NoReturn:
    code = 1
    try:
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, signal_mask)
        _serve_here(config, listener, secret, store, with_worker, parent_pipe)
        code = 0
    except BaseException:
        logger.exception("server process %d failed", os.getpid())
    finally:
        # The parent's cleanup (its finally blocks, atexit) is not the child's to run.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
