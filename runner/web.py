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
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from runner.config import Secret
from runner.queue import GroupCommitter, Queue
from runner.store import Store

logger = logging.getLogger(__name__)

# GitHub caps payloads at 25 MB; anything larger is not from GitHub.
MAX_BODY_BYTES = 25 * 1024 * 1024
WEBHOOK_PATH = "/github-webhook"
SIGNATURE_PREFIX = "sha256="
# What GitHub sends: event names are lower_snake_case, delivery ids GUIDs, hook ids integers.
EVENT_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
DELIVERY_ID = re.compile(r"^[A-Za-z0-9-]{1,100}$")
HOOK_ID = re.compile(r"^[0-9]{1,32}$")


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


def _reject_constant(value: str) -> Any:
    raise ValueError(f"{value} is not JSON")


def _parse_payload(body: bytes, content_type: str) -> bytes:
    """The payload's JSON text, from either of the bodies GitHub sends. Raises Rejected."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "application/x-www-form-urlencoded":
        try:
            fields = parse_qs(body.decode("ascii"), keep_blank_values=True, strict_parsing=True)
        except (UnicodeDecodeError, ValueError):
            raise Rejected(400, "body", "the form body is malformed") from None
        values = fields.get("payload")
        if not values or len(values) != 1:
            raise Rejected(400, "body", "the form body has no single 'payload' field") from None
        raw = values[0].encode()
    elif media_type in ("application/json", ""):
        raw = body
    else:
        raise Rejected(415, "content-type", f"unsupported content type {media_type!r}")
    try:
        payload = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Rejected(400, "body", f"the payload is not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise Rejected(400, "body", "the payload is not a JSON object")
    if raw.lstrip()[:1] != b"{":
        # Valid JSON in another encoding (UTF-16, a BOM): store it re-encoded as UTF-8.
        raw = json.dumps(payload, separators=(",", ":")).encode()
    return raw


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


async def _read_body(headers: Headers, receive: Receive) -> bytes:
    declared = headers.get(b"content-length")
    if declared is not None:
        if not declared.isdigit():
            raise Rejected(400, "content-length", "the Content-Length header is malformed")
        if int(declared) > MAX_BODY_BYTES:
            raise Rejected(413, "size", f"the body is over {MAX_BODY_BYTES} bytes")
    chunks = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        chunks += message.get("body", b"")
        if len(chunks) > MAX_BODY_BYTES:
            raise Rejected(413, "size", f"the body is over {MAX_BODY_BYTES} bytes")
        if not message.get("more_body", False):
            return bytes(chunks)


def _entry(event: str, delivery: str, hook_id: str | None, received_at: datetime, payload: bytes) -> bytes:
    head = json.dumps(
        {
            "event": event,
            "delivery": delivery,
            "hook_id": hook_id,
            "received_at": received_at.isoformat(),
        },
        separators=(",", ":"),
    )
    # The payload is spliced in as the verified JSON text, so it is stored exactly as GitHub sent it.
    return head[:-1].encode() + b',"payload":' + payload + b"}"


class WebhookApp:
    """The ASGI application, with the queue it writes to and the store /healthz checks."""

    def __init__(self, secret: Secret, queue: Queue, store: Store) -> None:
        self.secret = secret
        self.queue = queue
        self.store = store
        self.committer: GroupCommitter | None = None
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
        received_at = datetime.now(UTC)
        headers: Headers = {}
        for name, value in scope["headers"]:
            # The first of repeated headers counts, as with Starlette's Headers.get.
            headers.setdefault(name, value)
        try:
            body = await _read_body(headers, receive)
            header = headers.get(b"x-hub-signature-256")
            if not header:
                raise Rejected(401, "signature", "the X-Hub-Signature-256 header is missing")
            if not verify_signature(self.secret.reveal(), body, header.decode("latin-1")):
                raise Rejected(403, "signature", "the X-Hub-Signature-256 signature does not match")
            event = _header(headers, "X-GitHub-Event", EVENT_NAME)
            delivery = _header(headers, "X-GitHub-Delivery", DELIVERY_ID)
            hook_id = _header(headers, "X-GitHub-Hook-ID", HOOK_ID, required=False)
            content_type = headers.get(b"content-type", b"").decode("latin-1")
            payload = _parse_payload(body, content_type)
        except ClientDisconnect:
            await _send_empty(send, 400)
            return
        except Rejected as rejected:
            client = scope["client"][0] if scope.get("client") else "?"
            logger.warning("rejected a delivery from %s: %s", client, rejected.message)
            await _send_json(send, rejected.status, {"error": rejected.check, "message": rejected.message})
            return
        assert event is not None and delivery is not None and self.committer is not None
        try:
            name = await self.committer.put(_entry(event, delivery, hook_id, received_at, payload))
        except OSError as exc:
            logger.error("could not enqueue delivery %s: %s", delivery, exc)
            await _send_json(
                send, 503, {"error": "queue", "message": "the delivery could not be stored; try again"}
            )
            return
        logger.debug("delivery %s (%s) queued as %s", delivery, event, name)
        await _send_json(send, 202, {"delivery": delivery, "entry": name})

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
    # A Logger, not a target: Hypercorn then adds no handler of its own and lines are not printed twice.
    hc.errorlog = logging.getLogger("hypercorn.error")
    # In-flight deliveries get this long to become durable and be answered after a stop is asked for.
    hc.graceful_timeout = 10.0
    await hypercorn_serve(WebhookApp(secret, queue, store), hc, shutdown_trigger=shutdown.wait)  # type: ignore[arg-type]
