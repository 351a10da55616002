"""The webhook endpoint: verify a GitHub delivery, make it a durable main-queue entry, answer.

The request path does no database work: GitHub waits 10 seconds at most, and what it needs to know is only
that the delivery is safe on disk. Routing and de-duplication happen behind the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from runner.body import (
    ACCEPTED_TYPES,
    BODY_TIMEOUT,
    FORM_TYPE,
    MAX_BODY_BYTES,
    MEMORY_BODIES,
    MEMORY_BODY_BYTES,
    MEMORY_BYTES,
    SPOOL_BODIES,
    SPOOL_BYTES,
    Body,
    Budget,
    ClientDisconnect,
    Receive,
    Rejected,
    media_type,
    parse_payload,
)
from runner.committer import GroupCommitter
from runner.config import Config, Secret
from runner.driver import Database
from runner.entry import delivery_entry, delivery_head
from runner.queue import Queue
from runner.ui_door import PageDoor
from runner.ui_headers import SecurityHeaders

logger = logging.getLogger(__name__)

SERVE_BACKLOG = 1024
APP_QUEUE_MESSAGES = 2
WEBHOOK_PATH = "/github-webhook"
# The endpoint's own paths, which the status page never serves.
ENDPOINT_PATHS = (WEBHOOK_PATH, "/healthz")
# What GitHub sends: event names are lower_snake_case, delivery ids GUIDs, hook ids integers.
EVENT_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
DELIVERY_ID = re.compile(r"^[A-Za-z0-9-]{1,100}$")
HOOK_ID = re.compile(r"^[0-9]{1,32}$")

Send = Callable[[dict[str, Any]], Awaitable[None]]
Headers = dict[bytes, bytes]
T = TypeVar("T")


class _Messages:
    """A request's ``receive`` that remembers whether the last message came (the body's end, a disconnect)."""

    def __init__(self, receive: Receive) -> None:
        self.receive = receive
        self.done = False

    async def __call__(self) -> dict[str, Any]:
        message = await self.receive()
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            self.done = True
        return message


async def _drain(receive: Receive) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(BODY_TIMEOUT):
            while (await receive())["type"] != "http.disconnect":
                pass


async def _send_json(send: Send, status: int, content: dict[str, Any]) -> None:
    # The same bytes and headers as Starlette's JSONResponse, which the other routes still use.
    body = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    headers = [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_empty(send: Send, status: int) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})


class _AsgiEndpoint:
    """Lets a Starlette route call a bound ASGI method as an ASGI app, not as a request handler."""

    def __init__(self, app: Callable[[dict[str, Any], Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


async def _in_thread(function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` in a thread; a cancelled caller waits for it still: it may use its files."""
    work = asyncio.ensure_future(asyncio.to_thread(function, *args))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        await asyncio.wait([work])
        raise


def _header(headers: Headers, name: str, pattern: re.Pattern[str], required: bool = True) -> str | None:
    raw = headers.get(name.lower().encode())
    value = None if raw is None else raw.decode("latin-1")
    if value is None or value == "":
        if required:
            raise Rejected(400, name.lower(), f"the {name} header is missing")
        return None
    if not pattern.match(value):
        raise Rejected(400, name.lower(), f"the {name} header is malformed")
    return value


def _delivery_headers(headers: Headers) -> tuple[str, str, str | None]:
    """The event, delivery id and hook id GitHub's headers give. Raises Rejected."""
    event = _header(headers, "X-GitHub-Event", EVENT_NAME)
    delivery = _header(headers, "X-GitHub-Delivery", DELIVERY_ID)
    hook_id = _header(headers, "X-GitHub-Hook-ID", HOOK_ID, required=False)
    assert event is not None and delivery is not None
    return event, delivery, hook_id


def _declared_length(headers: Headers) -> int | None:
    declared = headers.get(b"content-length")
    if declared is None:
        return None
    if not declared.isdigit():
        raise Rejected(400, "content-length", "the Content-Length header is malformed")
    if int(declared) > MAX_BODY_BYTES:
        raise Rejected(413, "size", f"the body is over {MAX_BODY_BYTES} bytes")
    return int(declared)


class WebhookApp:
    """The ASGI application, with the queue it writes to and the database /healthz checks."""

    def __init__(self, secret: Secret, queue: Queue, store: Database, page: PageDoor | None = None) -> None:
        self.secret = secret
        self.queue = queue
        self.store = store
        self.committer: GroupCommitter | None = None
        self.memory = Budget("bodies in memory", MEMORY_BODIES, MEMORY_BYTES)
        self.spooled = Budget("bodies on disk", SPOOL_BODIES, SPOOL_BYTES)
        self._checking = asyncio.Semaphore(1)
        self._draining: set[asyncio.Future[None]] = set()
        self.app = Starlette(
            routes=[
                # Only reached by other methods, which Starlette answers 405 as it does for any route.
                Route(WEBHOOK_PATH, _AsgiEndpoint(self.github_webhook), methods=["POST"]),
                Route("/healthz", self.healthz, methods=["GET"]),
            ],
            lifespan=self.lifespan,
        )
        # The status page, on every other path under its own: the endpoint's paths keep precedence (a GET
        # of /github-webhook is still a 405), and need no login.
        self.page: Any = None
        if page is not None:
            # One wrapping for all the page's answers: its pages, its door's 404 while it has no users, and
            # the Mount's own (a 404 beside RUNNER_UI_PATH, the redirect to the path with its slash).
            outer = Starlette(routes=[Mount(page.config.ui_path, app=page.app)])
            self.page = SecurityHeaders(outer, static_prefix=page.config.ui_path.rstrip("/") + "/static/")

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        # Deliveries skip Starlette: its routing, Request and JSONResponse objects cost the event loop enough
        # per request to take about a tenth off the deliveries/s of a process.
        if scope["type"] == "http" and scope["path"] == WEBHOOK_PATH and scope["method"] == "POST":
            await self.github_webhook(scope, receive, send)
        elif self.page is not None and scope["type"] == "http" and scope["path"] not in ENDPOINT_PATHS:
            await self.page(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        self.committer = GroupCommitter(self.queue)
        try:
            yield
        finally:
            # Requests still in flight finish before this runs; nothing waiting is dropped.
            self.committer.close()

    async def github_webhook(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        messages = _Messages(receive)
        status, content = await self._answer(scope, messages)
        if not messages.done:
            # Answered before the body's end: Hypercorn still queues the rest for the app, and once the answer
            # is sent, waits for room in that queue to tell the app the client has gone (for ever, if it is
            # full). So the rest is read and dropped until then, and Hypercorn closes the connection.
            task = asyncio.ensure_future(_drain(receive))
            self._draining.add(task)
            task.add_done_callback(self._draining.discard)
        if content is None:
            await _send_empty(send, status)
        else:
            await _send_json(send, status, content)

    async def _answer(self, scope: dict[str, Any], receive: Receive) -> tuple[int, dict[str, Any] | None]:
        try:
            event, delivery, name = await self._receive(scope, receive)
        except ClientDisconnect:
            return 400, None
        except Rejected as rejected:
            if rejected.check != "busy":  # a budget logs its own refusals, a line a second at most
                client = scope["client"][0] if scope.get("client") else "?"
                logger.warning("rejected a delivery from %s: %s", client, rejected.message)
            return rejected.status, {"error": rejected.check, "message": rejected.message}
        except OSError as exc:
            logger.error("could not enqueue a delivery: %s", exc)
            return 503, {"error": "queue", "message": "the delivery could not be stored; try again"}
        logger.debug("delivery %s (%s) queued as %s", delivery, event, name)
        return 202, {"delivery": delivery, "entry": name}

    async def _receive(self, scope: dict[str, Any], receive: Receive) -> tuple[str, str, str]:
        """Read, verify and enqueue a delivery: its event, delivery id and entry name. Raises Rejected.

        Whatever it refuses leaves nothing behind, its temporary file included, before it is answered.
        """
        received_at = datetime.now(UTC)
        headers: Headers = {}
        for name, value in scope["headers"]:
            # The first of repeated headers counts, as with Starlette's Headers.get.
            headers.setdefault(name, value)
        declared = _declared_length(headers)
        header = headers.get(b"x-hub-signature-256")
        if not header:
            # Refused before the body is read: there is nothing to check it against.
            raise Rejected(401, "signature", "the X-Hub-Signature-256 header is missing")
        small = declared is not None and declared <= MEMORY_BODY_BYTES
        reservation = (self.memory if small else self.spooled).reserve(declared or 0)
        body = self._body(headers, received_at)
        try:
            await body.read(receive, reservation if declared is None else None)
            if not body.verify(header.decode("latin-1")):
                raise Rejected(403, "signature", "the X-Hub-Signature-256 signature does not match")
            event, delivery, hook_id = _delivery_headers(headers)
            assert self.committer is not None
            item = await self._entry(headers, body, delivery_head(event, delivery, hook_id, received_at))
            return event, delivery, await self.committer.put(item)
        finally:
            body.discard()
            reservation.release()

    async def _entry(self, headers: Headers, body: Body, head: bytes) -> bytes | Path:
        """A verified body as the entry ``head`` starts: its bytes, or its temporary file. Raises Rejected."""
        content_type = headers.get(b"content-type", b"").decode("latin-1")
        if media_type(content_type) not in ACCEPTED_TYPES:
            raise Rejected(415, "content-type", f"unsupported content type {media_type(content_type)!r}")
        # Only a body that is refused whatever it holds lets go of its bytes.
        assert not body.dropped
        if not body.spooled:
            return delivery_entry(head, parse_payload(bytes(body.buffer), content_type))
        # One at a time: a verified body's check needs memory in proportion to its size.
        async with self._checking:
            return await _in_thread(body.spooled_entry, content_type, head)

    def _body(self, headers: Headers, received_at: datetime) -> Body:
        """Where the body goes as it arrives, from the headers it came with."""
        secret = self.secret.reveal()
        try:
            event, delivery, hook_id = _delivery_headers(headers)
        except Rejected:
            # Said once the signature is checked, as for a small body: the answer must not depend on its size.
            return Body(self.queue, secret, None, spool=False)
        media = media_type(headers.get(b"content-type", b"").decode("latin-1"))
        if media == FORM_TYPE:
            return Body(self.queue, secret, None, spool=True)
        if media in ACCEPTED_TYPES:
            return Body(self.queue, secret, delivery_head(event, delivery, hook_id, received_at), spool=True)
        return Body(self.queue, secret, None, spool=False)

    async def healthz(self, _request: Request) -> Response:
        problems: dict[str, str] = {}
        directory = self.queue.directory
        if not (directory.is_dir() and os.access(directory, os.W_OK | os.X_OK)):
            problems["queue"] = f"{directory} is not a writable directory"
        try:
            await asyncio.wait_for(asyncio.to_thread(self.store.ping), timeout=5)
        except Exception as exc:
            problems["database"] = f"not reachable: {type(exc).__name__}"
        if problems:
            return JSONResponse({"status": "unhealthy", "problems": problems}, status_code=503)
        return JSONResponse({"status": "ok"})


# How Hypercorn ends its "Running on" lines, for a terminal.
CTRL_C = " (CTRL + C to quit)"


def _no_ctrl_c(record: logging.LogRecord) -> bool:
    """Drop Hypercorn's "(CTRL + C to quit)" from its "Running on" line: a service is stopped otherwise."""
    if isinstance(record.msg, str) and record.msg.endswith(CTRL_C):
        record.msg = record.msg.removesuffix(CTRL_C)
    return True


async def serve(
    fd: int, config: Config, secret: Secret, queue: Queue, store: Database, shutdown: asyncio.Event
) -> None:
    """Serve the webhook app and the status page with Hypercorn on the listening socket ``fd`` until
    ``shutdown`` is set. ``store`` is read-only: the web process only reads the database.

    The socket is bound by the caller, so that several server processes can share it; Hypercorn closes it.
    """
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config as HypercornConfig
    from hypercorn.config import Sockets

    from runner.accepting import stop_accepting

    class HypercornConfigOwnSockets(HypercornConfig):
        def create_sockets(self) -> Sockets:
            sockets = super().create_sockets()
            # Hypercorn makes them inheritable for worker processes of its own, which runner does not use:
            # a step's program would hold the endpoint's socket (and could accept GitHub's deliveries).
            # runner's own server processes get it by fork(), which needs no inheritable flag.
            for sock in (*sockets.secure_sockets, *sockets.insecure_sockets, *sockets.quic_sockets):
                sock.set_inheritable(False)
            return sockets

    hc = HypercornConfigOwnSockets()
    hc.bind = [f"fd://{fd}"]
    hc.accesslog = None
    # A Logger, not a target: Hypercorn then adds no handler of its own and lines are not printed twice,
    # and they take runner's format.
    hc.errorlog = logging.getLogger("hypercorn.error")
    hc.errorlog.addFilter(_no_ctrl_c)
    # In-flight deliveries get this long to become durable and be answered after a stop is asked for.
    hc.graceful_timeout = 10.0
    # Hypercorn listens again with its own backlog (100 by default). When the queue of connections not yet
    # accepted is full, the kernel drops new ones, and a client tries again only a second later: under a
    # flood of connections (each refused at once, and opened again) a valid delivery would wait seconds.
    hc.backlog = SERVE_BACKLOG
    # Messages of a body Hypercorn reads ahead of the app, 64 KiB each: its default of 10 would hold 640 KiB
    # of every connection's body in memory before the app has even looked at the headers and refused it.
    # Under a flood of connections, hundreds of them are read ahead at once. (With 1, Hypercorn's shutdown
    # waits out its graceful timeout.)
    hc.max_app_queue_size = APP_QUEUE_MESSAGES

    async def stopped() -> None:
        await shutdown.wait()
        await stop_accepting()

    page = PageDoor(config, queue, secret, shutdown)
    app = WebhookApp(secret, queue, store, page)
    try:
        await hypercorn_serve(app, hc, shutdown_trigger=stopped)  # type: ignore[arg-type]
    finally:
        page.close()
