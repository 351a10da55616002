"""The status page's login middleware (runner/ui_auth.py) called as the ASGI app it is, in this process:
who a client is behind the proxy, one check at a time per client, the remembered checks' keys."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest
from ui_site import basic, write_users

from runner.ui_auth import BasicAuth, UsersFile, client_address

PASSWORD = "right password"


def users_file(path: Path, users: dict[str, str]) -> UsersFile:
    write_users(path, users)
    return UsersFile(path)


async def _page(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"the page"})


def scope(
    auth: tuple[str, str] | None, peer: str = "127.0.0.1", forwarded: str | None = None
) -> dict[str, Any]:
    headers: list[tuple[bytes, bytes]] = []
    if auth is not None:
        headers.append((b"authorization", basic(*auth).encode()))
    if forwarded is not None:
        headers.append((b"x-forwarded-for", forwarded.encode()))
    return {"type": "http", "method": "GET", "path": "/", "headers": headers, "client": (peer, 40000)}


async def ask(app: BasicAuth, request: dict[str, Any], answers: list[tuple[str, int]], label: str) -> None:
    """One request through ``app``; its status goes on ``answers`` as it is sent, after the others'."""

    async def receive() -> MutableMapping[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answers.append((label, message["status"]))

    await app(request, receive, send)


def test_behind_a_local_proxy_the_client_is_the_address_it_forwarded_and_only_then() -> None:
    # nginx's $proxy_add_x_forwarded_for appends the address it saw: what comes before it the client said.
    assert client_address(scope(None, forwarded="198.51.100.7")) == "198.51.100.7"
    assert client_address(scope(None, forwarded="10.9.9.9, 198.51.100.7")) == "198.51.100.7"
    assert client_address(scope(None, peer="::1", forwarded="2001:db8::5")) == "2001:db8::5"
    # No proxy between: the peer itself, whatever header it sent.
    assert client_address(scope(None, peer="203.0.113.4", forwarded="198.51.100.7")) == "203.0.113.4"
    # Not an address: the proxy's own, not a made-up name (the log shows it).
    assert client_address(scope(None, forwarded="evil\r\nname")) == "127.0.0.1"
    assert client_address(scope(None)) == "127.0.0.1"


def test_failures_behind_the_proxy_count_per_client_and_a_success_forgets_only_its_own(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = BasicAuth(_page, users_file(tmp_path / "ui-users", {"alice": PASSWORD}))
    answers: list[tuple[str, int]] = []

    async def main() -> None:
        await ask(app, scope(("alice", "guess 1"), forwarded="203.0.113.66"), answers, "attacker")
        await ask(app, scope(("alice", "guess 2"), forwarded="203.0.113.66"), answers, "attacker")
        await ask(app, scope(("alice", PASSWORD), forwarded="198.51.100.7"), answers, "alice")
        await ask(app, scope(("alice", "a typo"), forwarded="198.51.100.8"), answers, "bob")
        await ask(app, scope(("alice", "guess 3"), forwarded="203.0.113.66"), answers, "attacker")

    with caplog.at_level(logging.WARNING, logger="runner.ui_auth"):
        asyncio.run(main())
    assert [status for _, status in answers] == [401, 401, 200, 401, 401]
    failures = [record.getMessage() for record in caplog.records]
    assert [line.split(" as ")[0].rsplit(" ", 1)[-1] for line in failures] == [
        "203.0.113.66",
        "203.0.113.66",
        "198.51.100.8",
        "203.0.113.66",
    ], failures
    # Another client's typo is its first failure; alice's login forgot none of the attacker's.
    assert "failure 1 in a row" in failures[2]
    assert "failure 3 in a row" in failures[3]


def test_a_clients_requests_are_checked_one_at_a_time_the_next_after_the_last_failures_answer(
    tmp_path: Path,
) -> None:
    app = BasicAuth(_page, users_file(tmp_path / "ui-users", {"alice": PASSWORD}))
    answers: list[tuple[str, int]] = []

    async def main() -> None:
        # Sent at once from one client: the guess's answer waits out its delay, and only then is the next
        # request of that client checked (parallel requests guess no faster than one after the other).
        guess = asyncio.ensure_future(ask(app, scope(("alice", "a guess")), answers, "guess"))
        await asyncio.sleep(0)
        right = asyncio.ensure_future(ask(app, scope(("alice", PASSWORD)), answers, "right"))
        await asyncio.gather(guess, right)

    asyncio.run(main())
    assert answers == [("guess", 401), ("right", 200)]
    assert len(app.turns) == 0  # nothing kept of a client with no request waiting


def test_a_remembered_login_is_no_other_name_and_password(tmp_path: Path) -> None:
    # A password holding what separated name and password in the key must not log in another name.
    users = users_file(tmp_path / "ui-users", {"a": "b\0c", "a\0b": "something else"})
    assert users.load()

    async def main() -> tuple[bool, bool]:
        return await users.check("a", "b\0c"), await users.check("a\0b", "c")

    assert asyncio.run(main()) == (True, False)
