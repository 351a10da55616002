"""The status page's live parts: a run's log as server-sent events, and runs starting and ending.

``{ui}/runs/ID/log/stream`` sends the run's log from the byte offset ``Last-Event-ID`` names (0 without one),
an event per line whose id is the offset after it, so that a browser that reconnects goes on where it was;
then an ``end`` event with how the run ended. ``{ui}/events`` sends a ``run`` event whenever a run of this
server starts or ends (runner/run_events.py: one watch a process, whatever the number of clients). Both
send a comment now and then so that proxies keep them open, and end when the server stops: Hypercorn's
shutdown then waits for no stream. A process follows MAX_LOG_STREAMS logs at once at most (each holds an
inotify instance, of which a user has few); one more is refused (503) before its stream starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Row
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from runner.config import Config
from runner.log_follow import Line, LogFollower, follow_async
from runner.run_events import RunEvent, RunWatch
from runner.store import Store

logger = logging.getLogger(__name__)

# A comment this often keeps proxies (nginx's proxy_read_timeout is 60 s by default) from closing a stream.
HEARTBEAT = 15.0
OPEN = ("queued", "running")
STREAM_HEADERS = {"X-Accel-Buffering": "no", "Cache-Control": "no-store"}
# An offset beyond any log's: a bigger Last-Event-ID is no offset of ours.
MAX_OFFSET = 2**62
# Logs a process follows at once. Each follow holds an inotify instance, and a user has 128 by default
# (fs.inotify.max_user_instances), which the worker's queues need too where web and worker are one user.
MAX_LOG_STREAMS = 16


def sse(data: str, event: str | None = None, event_id: str | None = None) -> str:
    """One server-sent event: ``data`` on as many ``data:`` lines as it has lines (CR, LF or CRLF), so that
    no line of it can end the event or start a field of its own."""
    head = (f"event: {event}\n" if event else "") + (f"id: {event_id}\n" if event_id is not None else "")
    return (
        head
        + "".join(f"data: {line}\n" for line in data.replace("\r\n", "\n").replace("\r", "\n").split("\n"))
        + "\n"
    )


def _lines(batch: list[Line]) -> str:
    return "".join(sse(line.text.decode(errors="replace"), event_id=str(line.end)) for line in batch)


def _busy(why: str) -> Response:
    # EventSource does not reconnect after an answer that is not 200: the page says the log is not followed.
    return PlainTextResponse(
        f"{why}: close a page that follows one, or reload in a while\n",
        status_code=503,
        headers={"Retry-After": "30"},
    )


def run_log_path(config: Config, store: Store, run: Row[Any]) -> Path | None:
    """Where the run's log is or will be (its lane's path, logs/PIPELINE/RUN.log, until it records its own),
    if that is inside logs/: a path the database holds is not followed elsewhere. None for another server's
    run: its log is on that server."""
    if run.server != store.server:
        return None
    path = Path(run.log_path) if run.log_path else config.logs_dir / run.pipeline / f"{run.id}.log"
    logs = config.logs_dir.resolve()
    resolved = path.resolve()
    return resolved if resolved.is_relative_to(logs) and resolved != logs else None


def _offset(request: Request) -> int | None:
    """Where to start: the ``Last-Event-ID`` a reconnecting browser sends, or ``?from=`` (where the page's
    log ends), or 0; None if it is no offset."""
    raw = request.headers.get("last-event-id", "").strip() or request.query_params.get("from", "") or "0"
    if not raw.isdigit() or int(raw) > MAX_OFFSET:
        return None
    return int(raw)


class _Held(StreamingResponse):
    """A stream that lets go of what it holds (``release``) once it is over, however it ends: also when it
    never started (the client went before)."""

    def __init__(self, content: AsyncIterator[str], release: Callable[[], None], **options: Any) -> None:
        super().__init__(content, **options)
        self.release = release

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.release()


class LiveStreams:
    """The live routes of the status page, with the run watch they share and the event that ends them."""

    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.store = store
        self.watch = RunWatch(config.logs_dir, self._status_of)
        # Set when the server stops: every stream ends then.
        self.stopping = asyncio.Event()
        # The logs followed now, by their streams.
        self.following: set[LogFollower] = set()

    def stop_with(self, event: asyncio.Event) -> None:
        """End the streams when ``event`` (the server's shutdown) is set."""
        self.stopping = event

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/runs/{run_id:int}/log/stream", self.log_stream, methods=["GET"]),
            Route("/events", self.events, methods=["GET"]),
        ]

    def _status_of(self, run_id: int) -> str | None:
        run = self.store.run(run_id)
        return None if run is None else run.status

    def _ended(self, run_id: int) -> bool:
        return self._status_of(run_id) not in OPEN

    async def log_stream(self, request: Request) -> Response:
        run = await asyncio.to_thread(self.store.run, request.path_params["run_id"])
        if run is None:
            return PlainTextResponse(f"there is no run {request.path_params['run_id']}\n", status_code=404)
        offset = _offset(request)
        if offset is None:
            return PlainTextResponse(
                "Last-Event-ID (or from) is not a byte offset of the log\n", status_code=400
            )
        path = run_log_path(self.config, self.store, run)
        follower = None
        if path is not None:
            if len(self.following) >= MAX_LOG_STREAMS:
                return _busy(f"{MAX_LOG_STREAMS} live logs are followed on this server process already")
            try:
                follower = LogFollower(path, offset)
            except OSError as exc:  # out of inotify instances or watches: the user's, shared
                logger.warning("cannot follow the log of run %d: %s", run.id, exc.strerror or exc)
                return _busy(f"the log cannot be followed just now ({exc.strerror or type(exc).__name__})")
            self.following.add(follower)
        return _Held(
            self._beating(self._log_events(run, follower)),
            lambda: self._let_go(follower),
            media_type="text/event-stream; charset=utf-8",
            headers=STREAM_HEADERS,
        )

    def _let_go(self, follower: LogFollower | None) -> None:
        if follower is not None:
            follower.close()
            self.following.discard(follower)

    async def _log_events(self, run: Row[Any], follower: LogFollower | None) -> AsyncGenerator[str, None]:
        if follower is not None:
            lines = follow_async(
                follower.path, follower.offset, lambda: self._ended(run.id), follower=follower
            )
            try:
                async for batch in lines:
                    yield _lines(batch)
            finally:
                await lines.aclose()
        ended = await asyncio.to_thread(self.store.run, run.id)
        status = {"status": ended.status if ended else "gone", "reason": ended.reason if ended else None}
        yield sse(json.dumps(status), event="end")

    async def events(self, request: Request) -> Response:
        return StreamingResponse(
            self._beating(self._run_events()),
            media_type="text/event-stream; charset=utf-8",
            headers=STREAM_HEADERS,
        )

    async def _run_events(self) -> AsyncGenerator[str, None]:
        queue = self.watch.subscribe()
        try:
            # Said at once: the browser knows the stream is open (and EventSource's onopen fires).
            yield ": listening\n\n"
            while True:
                event: RunEvent = await queue.get()
                told = {"run": event.run_id, "pipeline": event.pipeline, "status": event.status}
                yield sse(json.dumps(told), event="run")
        finally:
            self.watch.unsubscribe(queue)

    async def _beating(self, source: AsyncGenerator[str, None]) -> AsyncIterator[str]:
        """``source``'s events, a comment after each HEARTBEAT seconds without one; ends when ``source``
        does or the server stops."""
        stopping = asyncio.ensure_future(self.stopping.wait())
        upcoming: asyncio.Future[str] | None = None
        try:
            while not self.stopping.is_set():
                if upcoming is None:
                    upcoming = asyncio.ensure_future(anext(source))
                done, _ = await asyncio.wait(
                    {upcoming, stopping}, timeout=HEARTBEAT, return_when=asyncio.FIRST_COMPLETED
                )
                if upcoming not in done:
                    if not self.stopping.is_set():
                        yield ": still here\n\n"
                    continue
                try:
                    text = upcoming.result()
                except StopAsyncIteration:
                    return
                upcoming = None
                yield text
        finally:
            stopping.cancel()
            if upcoming is not None:
                upcoming.cancel()
                with contextlib.suppress(BaseException):
                    await upcoming
            with contextlib.suppress(BaseException):
                await source.aclose()

    def close(self) -> None:
        self.watch.close()
