"""A webhook request's body, read within limits: its budgets, its HMAC, its spooling to disk, its payload.

A body is read as it arrives, its HMAC updated chunk by chunk; a large one goes to a temporary file of the
queue rather than to memory. Once it is verified, its payload's JSON is checked, and a spooled JSON body
becomes its queue entry where it was written.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from runner.entry import DELIVERY_END, delivery_entry
from runner.queue import Queue

# The budgets' refusals are the webhook endpoint's: they keep its logger's name.
logger = logging.getLogger("runner.web")

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
SIGNATURE_PREFIX = "sha256="
# The bodies GitHub sends: JSON (also without a Content-Type), or a form with the JSON in its payload field.
FORM_TYPE = "application/x-www-form-urlencoded"
ACCEPTED_TYPES = ("application/json", "", FORM_TYPE)

Receive = Callable[[], Awaitable[dict[str, Any]]]


def signature(secret: bytes, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value GitHub sends for ``body``."""
    return SIGNATURE_PREFIX + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify_signature(secret: bytes, body: bytes, header: str) -> bool:
    return _same(signature(secret, body), header)


def _same(expected: str, header: str) -> bool:
    # compare_digest takes the same time wherever the first difference is, and for any length.
    return hmac.compare_digest(expected.encode(), header.encode("utf-8", "replace"))


class Rejected(Exception):
    """A delivery refused: the status it is answered with, the check it failed, and why."""

    def __init__(self, status: int, check: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.check = check
        self.message = message


class ClientDisconnect(Exception):
    """The client went away before its whole body was read."""


def _reject_constant(value: str) -> Any:
    raise ValueError(f"{value} is not JSON")


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def parse_payload(body: bytes, content_type: str) -> bytes:
    """The payload's JSON text, from either of the bodies GitHub sends. Raises Rejected."""
    media = media_type(content_type)
    if media == FORM_TYPE:
        try:
            fields = parse_qs(body.decode("ascii"), keep_blank_values=True, strict_parsing=True)
        except (UnicodeDecodeError, ValueError):
            raise Rejected(400, "body", "the form body is malformed") from None
        values = fields.get("payload")
        if not values or len(values) != 1:
            raise Rejected(400, "body", "the form body has no single 'payload' field") from None
        raw = values[0].encode()
    elif media in ACCEPTED_TYPES:
        raw = body
    else:
        raise Rejected(415, "content-type", f"unsupported content type {media!r}")
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


class Body:
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

    async def read(self, receive: Receive, growing: Reservation | None) -> None:
        """Read the request's body; ``growing``, when given, grows with it (a length not declared).

        Raises Rejected, or ClientDisconnect.
        """
        try:
            async with asyncio.timeout(BODY_TIMEOUT):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise ClientDisconnect
                    chunk = message.get("body", b"")
                    if growing is not None and chunk:
                        growing.grow(len(chunk))
                    self.add(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            raise Rejected(408, "timeout", f"the body did not arrive within {BODY_TIMEOUT:g} s") from None

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
        return _same(SIGNATURE_PREFIX + self.mac.hexdigest(), header)

    def spooled_entry(self, content_type: str, head: bytes) -> bytes | Path:
        """The verified spooled body as the entry ``head`` starts: its temporary file, completed, or the
        entry's bytes. Raises Rejected. Run in a thread, one body at a time: a verified body's check needs
        memory in proportion to its size, which the budgets do not bound.
        """
        assert self.fd is not None and self.temp is not None
        if self.head is None:
            # A form: its payload field is decoded in memory, as a small one is.
            raw = bytearray()
            while chunk := os.pread(self.fd, 1 << 20, len(raw)):
                raw += chunk
            payload = parse_payload(bytes(raw), content_type)
            del raw
            return delivery_entry(head, payload)
        reencoded = _check_spooled_payload(self.fd, len(self.head), self.length)
        if reencoded is not None:
            return delivery_entry(head, reencoded)
        self._write(DELIVERY_END)
        self.close()
        temp, self.temp = self.temp, None  # handed on: the queue publishes it, or removes it on failure
        return temp

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
