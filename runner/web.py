"""The webhook endpoint: verify a GitHub delivery, make it a durable main-queue entry, answer.

The request path does no database work: GitHub waits 10 seconds at most, and what it needs to know is only
that the delivery is safe on disk. Routing and de-duplication happen behind the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from runner.committer import GroupCommitter
from runner.config import Secret
from runner.queue import Queue
from runner.store import Store

logger = logging.getLogger(__name__)

# GitHub caps payloads at 25 MB; anything larger is not from GitHub.
MAX_BODY_BYTES = 25 * 1024 * 1024
# A body declared no larger than this is read into memory; a larger one, or one of unknown length (chunked),
# is kept in memory only up to this size and then written to a temporary file of the queue as it arrives.
MEMORY_BODY_BYTES = 256 * 1024
# What one server process receives at once, beyond which a delivery is answered 503 at once. Bodies held in
# memory and bodies written to disk have budgets of their own, so that large bodies (which anyone can send
# without knowing the secret) cannot crowd out GitHub's usual small ones. Memory: at most MEMORY_BYTES of
# small bodies, plus a few hundred KiB per large one (its buffer and Hypercorn's queue); disk: SPOOL_BYTES.
MEMORY_BODIES = 256
MEMORY_BYTES = 32 * 1024 * 1024
SPOOL_BODIES = 4
SPOOL_BYTES = 64 * 1024 * 1024
# A body must have arrived this long after its headers (GitHub gives up after 10 s), so that slow senders
# cannot hold the budgets' places for ever.
BODY_TIMEOUT = 30.0
# A budget logs its refusals at most once per this many seconds, with the count since the last line.
BUSY_LOG_INTERVAL = 1.0
SERVE_BACKLOG = 1024
APP_QUEUE_MESSAGES = 2
WEBHOOK_PATH = "/github-webhook"
SIGNATURE_PREFIX = "sha256="
# What GitHub sends: event names are lower_snake_case, delivery ids GUIDs, hook ids integers.
EVENT_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
DELIVERY_ID = re.compile(r"^[A-Za-z0-9-]{1,100}$")
HOOK_ID = re.compile(r"^[0-9]{1,32}$")
# The bodies GitHub sends: JSON (also without a Content-Type), or a form with the JSON in its payload field.
FORM_TYPE = "application/x-www-form-urlencoded"
ACCEPTED_TYPES = ("application/json", "", FORM_TYPE)


def signature(secret: bytes, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value GitHub sends for ``body``."""
    return SIGNATURE_PREFIX + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify_signature(secret: bytes, body: bytes, header: str) -> bool:
    # compare_digest takes the same time wherever the first difference is, and for any length.
    return hmac.compare_digest(signature(secret, body).encode(), header.encode("utf-8", "replace"))


class Rejected(Exception):
    def __init__(self, status: int, check: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.check = check
        self.message = message


class ClientDisconnect(Exception):
    """The client went away before its whole body was read."""


Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]
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


def _reject_constant(value: str) -> Any:
    raise ValueError(f"{value} is not JSON")


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _parse_payload(body: bytes, content_type: str) -> bytes:
    """The payload's JSON text, from either of the bodies GitHub sends. Raises Rejected."""
    media_type = _media_type(content_type)
    if media_type == FORM_TYPE:
        try:
            fields = parse_qs(body.decode("ascii"), keep_blank_values=True, strict_parsing=True)
        except (UnicodeDecodeError, ValueError):
            raise Rejected(400, "body", "the form body is malformed") from None
        values = fields.get("payload")
        if not values or len(values) != 1:
            raise Rejected(400, "body", "the form body has no single 'payload' field") from None
        raw = values[0].encode()
    elif media_type in ACCEPTED_TYPES:
        raw = body
    else:
        raise Rejected(415, "content-type", f"unsupported content type {media_type!r}")
    try:
        payload = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Rejected(400, "body", f"the payload is not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise Rejected(400, "body", "the payload is not a JSON object")
    if not _stored_as_sent(raw):
        # Valid JSON in another encoding (UTF-16, a BOM): store it re-encoded as UTF-8.
        raw = json.dumps(payload, separators=(",", ":")).encode()
    return raw


def _stored_as_sent(raw: bytes) -> bool:
    """Whether a JSON object's text can be spliced into an entry as it is: UTF-8, no BOM, ``{`` first."""
    return json.detect_encoding(raw) == "utf-8" and raw.lstrip(b" \t\r\n")[:1] == b"{"


_OBJECT = object()


def _check_spooled_payload(fd: int, offset: int, length: int) -> bytes | None:
    """Check that the ``length`` bytes at ``offset`` of ``fd`` are a JSON object. Raises Rejected.

    Returns None when the text can stay in the entry as it was written, else the object re-encoded. Run in a
    thread, for a verified body only. Objects are dropped as soon as they are parsed, so that memory holds
    little more than the text: what a JSON object is, is all this needs to know.
    """
    raw = bytearray()
    while len(raw) < length:
        chunk = os.pread(fd, min(length - len(raw), 1 << 20), offset + len(raw))
        if not chunk:
            raise OSError(f"the spooled body is {len(raw)} bytes, not {length}")
        raw += chunk
    as_sent = _stored_as_sent(raw)
    try:
        # What json.loads does with bytes, but the bytes go before the text is parsed.
        text = raw.decode(json.detect_encoding(raw), "surrogatepass")
        del raw
        payload = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=lambda _pairs: _OBJECT)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Rejected(400, "body", f"the payload is not JSON: {exc}") from None
    if payload is not _OBJECT:
        raise Rejected(400, "body", "the payload is not a JSON object")
    if as_sent:
        return None
    return json.dumps(json.loads(text), separators=(",", ":")).encode()


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


def _declared_length(headers: Headers) -> int | None:
    declared = headers.get(b"content-length")
    if declared is None:
        return None
    if not declared.isdigit():
        raise Rejected(400, "content-length", "the Content-Length header is malformed")
    if int(declared) > MAX_BODY_BYTES:
        raise Rejected(413, "size", f"the body is over {MAX_BODY_BYTES} bytes")
    return int(declared)


class Budget:
    """A cap on the bodies one server process receives at once: how many, and how many bytes in all.

    Used from the event loop's thread only. A refusal is logged, at most once a second with the count since.
    """

    def __init__(self, what: str, bodies: int, size: int) -> None:
        self.what = what
        self.max_bodies = bodies
        self.max_size = size
        self.bodies = 0
        self.size = 0
        self._refused = 0
        self._logged_at = -BUSY_LOG_INTERVAL

    def reserve(self, size: int) -> Reservation:
        """A place for a body of ``size`` bytes (0: not declared, see :meth:`Reservation.grow`).

        Raises Rejected (503) when the budget has no room for it.
        """
        if self.bodies >= self.max_bodies or self.size + size > self.max_size:
            raise self._refuse()
        self.bodies += 1
        self.size += size
        return Reservation(self, size)

    def _refuse(self) -> Rejected:
        self._refused += 1
        now = time.monotonic()
        if now - self._logged_at >= BUSY_LOG_INTERVAL:
            logger.warning(
                "refused %d deliveries (503): %d %s (%d bytes) are being received, the most at once is"
                " %d bodies of %d bytes in all",
                self._refused,
                self.bodies,
                self.what,
                self.size,
                self.max_bodies,
                self.max_size,
            )
            self._refused = 0
            self._logged_at = now
        return Rejected(503, "busy", "too many deliveries are being received at once; try again")


class Reservation:
    """One body's place in a :class:`Budget`, given back once (:meth:`release`)."""

    def __init__(self, budget: Budget, size: int) -> None:
        self.budget = budget
        self.size = size
        self._held = True

    def grow(self, size: int) -> None:
        """Reserve ``size`` more bytes, for a body whose length was not declared. Raises Rejected."""
        budget = self.budget
        if budget.size + size > budget.max_size:
            raise budget._refuse()
        budget.size += size
        self.size += size

    def release(self) -> None:
        if self._held:
            self._held = False
            self.budget.bodies -= 1
            self.budget.size -= self.size


class _Body:
    """A request body as it arrives, its HMAC updated chunk by chunk.

    It is kept in memory up to ``MEMORY_BODY_BYTES``, then in a hidden temporary file of the queue, which
    :meth:`discard` removes unless it was handed on. The file starts with ``head``: for a JSON body, the
    entry's envelope before its payload, so that the body becomes the payload where it was written; None for
    a form, which is decoded once verified. With ``spool`` False nothing is kept past the buffer: the body
    will be refused whatever it holds, and only its signature decides how.
    """

    def __init__(self, queue: Queue, secret: bytes, head: bytes | None, spool: bool) -> None:
        self.queue = queue
        self.mac = hmac.new(secret, digestmod=hashlib.sha256)
        self.head = head
        self.spool = spool
        self.buffer = bytearray()
        self.length = 0
        # Part of the body was let go (``spool`` False): it can only be refused.
        self.dropped = False
        self.temp: Path | None = None
        self.fd: int | None = None

    def add(self, chunk: bytes) -> None:
        self.mac.update(chunk)
        self.length += len(chunk)
        if self.length > MAX_BODY_BYTES:
            raise Rejected(413, "size", f"the body is over {MAX_BODY_BYTES} bytes")
        if self.fd is None and len(self.buffer) + len(chunk) <= MEMORY_BODY_BYTES:
            self.buffer += chunk
            return
        if not self.spool:
            # Refused once it is complete (bad headers, an unsupported type): only its signature counts.
            self.buffer.clear()
            self.dropped = True
            return
        if self.fd is None:
            self.temp, self.fd = self.queue.create_temp(self.head or b"")
            self._write(self.buffer)
            self.buffer = bytearray()
        self._write(chunk)

    def _write(self, data: bytes | bytearray) -> None:
        assert self.fd is not None
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    @property
    def spooled(self) -> bool:
        return self.temp is not None

    def verify(self, header: str) -> bool:
        expected = (SIGNATURE_PREFIX + self.mac.hexdigest()).encode()
        return hmac.compare_digest(expected, header.encode("utf-8", "replace"))

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def discard(self) -> None:
        """Close and remove the temporary file, if any; one handed on (:attr:`temp` None) stays."""
        self.close()
        if self.temp is not None:
            with contextlib.suppress(OSError):
                self.temp.unlink()
            self.temp = None


def _entry_head(event: str, delivery: str, hook_id: str | None, received_at: datetime) -> bytes:
    """An entry's text up to its payload's, which is last so that it can follow as the body arrives."""
    head = json.dumps(
        {
            "event": event,
            "delivery": delivery,
            "hook_id": hook_id,
            "received_at": received_at.isoformat(),
        },
        separators=(",", ":"),
    )
    return head[:-1].encode() + b',"payload":'


def _entry(event: str, delivery: str, hook_id: str | None, received_at: datetime, payload: bytes) -> bytes:
    # The payload is spliced in as the verified JSON text, so it is stored exactly as GitHub sent it.
    return _entry_head(event, delivery, hook_id, received_at) + payload + b"}"


class WebhookApp:
    """The ASGI application, with the queue it writes to and the store /healthz checks."""

    def __init__(self, secret: Secret, queue: Queue, store: Store) -> None:
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

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        # Deliveries skip Starlette: its routing, Request and JSONResponse objects cost the event loop enough
        # per request to take about a tenth off the deliveries/s of a process.
        if scope["type"] == "http" and scope["path"] == WEBHOOK_PATH and scope["method"] == "POST":
            await self.github_webhook(scope, receive, send)
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
            try:
                async with asyncio.timeout(BODY_TIMEOUT):
                    while True:
                        message = await receive()
                        if message["type"] == "http.disconnect":
                            raise ClientDisconnect
                        chunk = message.get("body", b"")
                        if declared is None and chunk:
                            reservation.grow(len(chunk))
                        body.add(chunk)
                        if not message.get("more_body", False):
                            break
            except TimeoutError:
                raise Rejected(408, "timeout", f"the body did not arrive within {BODY_TIMEOUT:g} s") from None
            if not body.verify(header.decode("latin-1")):
                raise Rejected(403, "signature", "the X-Hub-Signature-256 signature does not match")
            event = _header(headers, "X-GitHub-Event", EVENT_NAME)
            delivery = _header(headers, "X-GitHub-Delivery", DELIVERY_ID)
            hook_id = _header(headers, "X-GitHub-Hook-ID", HOOK_ID, required=False)
            assert event is not None and delivery is not None and self.committer is not None
            content_type = headers.get(b"content-type", b"").decode("latin-1")
            if _media_type(content_type) not in ACCEPTED_TYPES:
                raise Rejected(415, "content-type", f"unsupported content type {_media_type(content_type)!r}")
            # Only a body that is refused whatever it holds lets go of its bytes.
            assert not body.dropped
            if not body.spooled:
                payload = _parse_payload(bytes(body.buffer), content_type)
                item: bytes | Path = _entry(event, delivery, hook_id, received_at, payload)
            else:
                async with self._checking:
                    item = await _in_thread(
                        self._finish_spooled, body, content_type, event, delivery, hook_id, received_at
                    )
            return event, delivery, await self.committer.put(item)
        finally:
            body.discard()
            reservation.release()

    def _body(self, headers: Headers, received_at: datetime) -> _Body:
        """Where the body goes as it arrives, from the headers it came with."""
        secret = self.secret.reveal()
        try:
            event = _header(headers, "X-GitHub-Event", EVENT_NAME)
            delivery = _header(headers, "X-GitHub-Delivery", DELIVERY_ID)
            hook_id = _header(headers, "X-GitHub-Hook-ID", HOOK_ID, required=False)
        except Rejected:
            # Said once the signature is checked, as for a small body: the answer must not depend on its size.
            return _Body(self.queue, secret, None, spool=False)
        assert event is not None and delivery is not None
        media_type = _media_type(headers.get(b"content-type", b"").decode("latin-1"))
        if media_type == FORM_TYPE:
            return _Body(self.queue, secret, None, spool=True)
        if media_type in ACCEPTED_TYPES:
            return _Body(self.queue, secret, _entry_head(event, delivery, hook_id, received_at), spool=True)
        return _Body(self.queue, secret, None, spool=False)

    def _finish_spooled(
        self,
        body: _Body,
        content_type: str,
        event: str,
        delivery: str,
        hook_id: str | None,
        received_at: datetime,
    ) -> bytes | Path:
        """A verified spooled body as an entry: its temporary file, completed, or the entry's bytes. Raises
        Rejected. Runs in a thread, one body at a time (``_checking``): a verified body's check needs memory
        in proportion to its size, which the budgets do not bound.
        """
        assert body.fd is not None and body.temp is not None
        if body.head is None:
            # A form: its payload field is decoded in memory, as a small one is.
            raw = bytearray()
            while chunk := os.pread(body.fd, 1 << 20, len(raw)):
                raw += chunk
            payload = _parse_payload(bytes(raw), content_type)
            del raw
            return _entry(event, delivery, hook_id, received_at, payload)
        reencoded = _check_spooled_payload(body.fd, len(body.head), body.length)
        if reencoded is not None:
            return _entry(event, delivery, hook_id, received_at, reencoded)
        body._write(b"}")
        body.close()
        temp, body.temp = body.temp, None  # handed on: the queue publishes it, or removes it on failure
        return temp

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


async def serve(fd: int, secret: Secret, queue: Queue, store: Store, shutdown: asyncio.Event) -> None:
    """Serve the webhook app with Hypercorn on the listening socket ``fd`` until ``shutdown`` is set.

    The socket is bound by the caller, so that several server processes can share it; Hypercorn closes it.
    """
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config as HypercornConfig
    from hypercorn.config import Sockets

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
    await hypercorn_serve(WebhookApp(secret, queue, store), hc, shutdown_trigger=shutdown.wait)  # type: ignore[arg-type]
