"""The status page's login: HTTP Basic authentication against the users file, as an ASGI middleware.

The users file (RUNNER_UI_USERS_FILE, default ``$RUNNER_HOME/ui-users``) holds ``NAME:BCRYPT_HASH`` lines
(see runner/ui_users.py). It is read at request time, so a file created or changed later counts without a
restart; no file, no page (404). An authenticated request carries ``scope["ui_user"]``.

A client is known by its address: behind nginx on the same host (a loopback peer) that is the address
nginx appended to X-Forwarded-For, as the README's location sets it; otherwise the peer's own. Its failed
logins are slowed down, and its checks made one at a time, so that parallel requests guess no faster and
one client cannot take every bcrypt check of the process from the others.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

CHALLENGE = b'Basic realm="runner", charset="UTF-8"'
# A successful check is remembered this long (seconds), so that assets and live streams cost no bcrypt.
REMEMBER_FOR = 300.0
# The delay before a failed login is answered: FIRST_DELAY, doubling per failure from one address, up to
# MAX_DELAY; an address's failures are forgotten FORGET_AFTER seconds after its last one.
FIRST_DELAY = 0.5
MAX_DELAY = 8.0
FORGET_AFTER = 900.0
# How many addresses' failures (and successful checks) are kept at most: a flood cannot grow memory.
MAX_ENTRIES = 10_000
# bcrypt checks at once: each keeps a core busy for a quarter of a second.
CHECKS_AT_ONCE = 2
# Checked for a name that is not in the file, so that an unknown name takes as long as a wrong password
# (the hash of a random password, thrown away; a match would not count anyway).
_UNKNOWN = b"$2b$12$1wKoL.AvdjxzEBueNJlpse0JwyoqXgGzBjZzQBOwIU4vZEU0K7Co."


@dataclass(frozen=True)
class _FileState:
    """What identifies a version of the users file: a change to any of these reads it again."""

    inode: int
    size: int
    mtime_ns: int


def parse_users(text: str) -> dict[str, bytes]:
    """``NAME:HASH`` lines as a mapping; blank lines and ``#`` comments are skipped, and so are malformed
    lines (their names can never log in)."""
    users: dict[str, bytes] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, hashed = line.partition(":")
        if colon and name and hashed.startswith("$2"):
            users[name] = hashed.encode("ascii", "replace")
    return users


class UsersFile:
    """The users file, read again whenever it changes; remembers successful checks until then."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._state: _FileState | None = None
        self._users: dict[str, bytes] = {}
        self._unreadable: _FileState | None = None
        # HMAC(name, password) under a key of this process's: the passwords themselves are never kept.
        self._key = secrets.token_bytes(32)
        self._remembered: OrderedDict[bytes, float] = OrderedDict()
        self._checking = asyncio.Semaphore(CHECKS_AT_ONCE)

    def load(self) -> bool:
        """Read the file if it changed; False if there is none (or it cannot be read: no page either)."""
        try:
            st = os.stat(self.path)
        except OSError:
            self._state, self._users = None, {}
            self._remembered.clear()
            return False
        state = _FileState(st.st_ino, st.st_size, st.st_mtime_ns)
        if state != self._state:
            try:
                text = self.path.read_text(encoding="utf-8", errors="replace")
            except OSError as exc:
                if state != self._unreadable:  # once per version of the file, not once per request
                    logger.error("cannot read the status page's users file %s: %s", self.path, exc.strerror)
                    self._unreadable = state
                self._state, self._users = None, {}
                self._remembered.clear()
                return False
            self._state, self._users = state, parse_users(text)
            # A removed user or a changed password counts at once.
            self._remembered.clear()
        return True

    def _remember_key(self, name: str, password: str) -> bytes:
        # The name's length first: no other name and password make the same message.
        message = f"{len(name)}:{name}:{password}".encode()
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def remembered(self, name: str, password: str) -> bool:
        """Whether this name and password were checked good lately (and the file has not changed since)."""
        until = self._remembered.get(self._remember_key(name, password))
        return until is not None and until > time.monotonic()

    async def check(self, name: str, password: str) -> bool:
        if self.remembered(name, password):
            return True
        key = self._remember_key(name, password)
        now = time.monotonic()
        hashed = self._users.get(name)
        async with self._checking:
            # In a thread: a bcrypt check would stop every other request of this process meanwhile.
            good = await asyncio.to_thread(_verify, password.encode(), hashed or _UNKNOWN)
        if not good or hashed is None:
            return False
        self._remembered[key] = now + REMEMBER_FOR
        self._remembered.move_to_end(key)
        while len(self._remembered) > MAX_ENTRIES:
            self._remembered.popitem(last=False)
        return True


def _verify(password: bytes, hashed: bytes) -> bool:
    import bcrypt  # here: every `runner` command reads the users file's format through this module

    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:  # a malformed hash in the file
        return False


class Failures:
    """Failed logins per client address, and the delay the next one is answered after."""

    def __init__(self) -> None:
        self._by_address: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def record(self, address: str) -> tuple[int, float]:
        """Count a failure from ``address``: how many in a row, and the delay to answer this one after."""
        now = time.monotonic()
        count, last = self._by_address.pop(address, (0, now))
        if now - last > FORGET_AFTER:
            count = 0
        count += 1
        self._by_address[address] = (count, now)
        while len(self._by_address) > MAX_ENTRIES:
            self._by_address.popitem(last=False)
        return count, min(FIRST_DELAY * 2 ** (count - 1), MAX_DELAY)

    def forget(self, address: str) -> None:
        self._by_address.pop(address, None)


class Turns:
    """One check (and its failure's delay) at a time per client; the others of that client wait their turn.
    Only clients with a request waiting are kept."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def of(self, client: str) -> AsyncIterator[None]:
        lock, waiting = self._locks.get(client, (asyncio.Lock(), 0))
        self._locks[client] = (lock, waiting + 1)
        try:
            async with lock:
                yield
        finally:
            lock, waiting = self._locks[client]
            if waiting == 1:
                del self._locks[client]
            else:
                self._locks[client] = (lock, waiting - 1)

    def __len__(self) -> int:
        return len(self._locks)


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def client_address(scope: Scope) -> str:
    """The client's address: the peer's, or, when the peer is a proxy on this host (loopback), the last
    address of X-Forwarded-For, which that proxy appended (nginx's ``$proxy_add_x_forwarded_for``); the
    ones before it are the client's to say, and not believed."""
    peer = scope["client"][0] if scope.get("client") else "?"
    if not _loopback(peer):
        return peer
    forwarded = [value for name, value in scope.get("headers", []) if name == b"x-forwarded-for"]
    if not forwarded:
        return peer
    last = forwarded[-1].decode("latin-1").rsplit(",", 1)[-1].strip()
    try:
        return str(ipaddress.ip_address(last))
    except ValueError:
        return peer


def credentials(scope: Scope) -> tuple[str, str] | None:
    """The name and password of the request's Basic Authorization header, or None."""
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, encoded = value.partition(b" ")
            if scheme.lower() != b"basic":
                return None
            try:
                decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return None
            user, colon, password = decoded.partition(":")
            return (user, password) if colon else None
    return None


async def _answer(send: Send, status: int, text: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(text)).encode()),
        *headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": text})


class BasicAuth:
    """Lets a request through to ``app`` only with a user's name and password from the users file."""

    def __init__(self, app: App, users: UsersFile) -> None:
        self.app = app
        self.users = users
        self.failures = Failures()
        self.turns = Turns()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not self.users.load():
            await _answer(send, 404, b"Not Found", [])
            return
        given = credentials(scope)
        if given is None:
            await _answer(send, 401, b"Unauthorized: log in", [(b"www-authenticate", CHALLENGE)])
            return
        address = client_address(scope)
        if self.users.remembered(*given):
            await self._let_in(scope, receive, send, given[0], address)
            return
        async with self.turns.of(address):
            good = await self.users.check(*given)
            if not good:
                await self._refuse(send, given[0], address)
        if good:
            await self._let_in(scope, receive, send, given[0], address)

    async def _let_in(self, scope: Scope, receive: Receive, send: Send, name: str, address: str) -> None:
        self.failures.forget(address)
        scope["ui_user"] = name
        await self.app(scope, receive, send)

    async def _refuse(self, send: Send, name: str, address: str) -> None:
        """A failed login's answer, after its delay: within the client's turn, so that its next request
        is checked only after this one is answered."""
        count, delay = self.failures.record(address)
        # The name is shown as repr: it comes from the client and could hold a line break.
        logger.warning(
            "failed login to the status page from %s as %r (failure %d in a row, answered after %.1f s)",
            address,
            name,
            count,
            delay,
        )
        # Only this client waits: the other clients of the process go on meanwhile.
        await asyncio.sleep(delay)
        await _answer(send, 401, b"Unauthorized: log in", [(b"www-authenticate", CHALLENGE)])
