"""Event loops that keep the servers they accept connections with, so that a stop can stop accepting first.

Hypercorn, asked to stop, first marks its connections terminated, which closes every connection without a
request in progress, and only then closes its listening servers. A connection accepted in that moment, or
just before it with its request still unread, is closed with the request in its receive buffer: the client
gets a reset for a delivery it sent. So a server process stops accepting before it lets Hypercorn stop; what
waits in the listening socket's queue stays there for the next process (or a sibling) to accept.
"""

from __future__ import annotations

import asyncio
from typing import Any

# How long a connection accepted just before a stop gets for its request to be read: a client (GitHub,
# nginx) sends the request with the connection, so its bytes are already here.
SETTLE_SECONDS = 0.25


class KeepsServers:
    """Mixed into an event loop class: every server it creates is kept in ``servers``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.servers: list[asyncio.AbstractServer] = []

    async def create_server(self, *args: Any, **kwargs: Any) -> asyncio.AbstractServer:
        server = await super().create_server(*args, **kwargs)  # type: ignore[misc]
        self.servers.append(server)
        return server


class SelectorLoop(KeepsServers, asyncio.SelectorEventLoop):
    """asyncio's own loop, keeping its servers."""


def uvloop_factory() -> type[asyncio.AbstractEventLoop] | None:
    """uvloop's loop class keeping its servers, or None without uvloop."""
    try:
        import uvloop
    except ImportError:
        return None

    class UvLoop(KeepsServers, uvloop.Loop):  # type: ignore[misc]
        """uvloop's loop, keeping its servers."""

    return UvLoop


async def stop_accepting() -> None:
    """Close the running loop's listening servers (connections already accepted stay open), then give what
    was accepted just before this the time to be read."""
    loop = asyncio.get_running_loop()
    if not isinstance(loop, KeepsServers) or not loop.servers:
        return
    for server in loop.servers:
        server.close()
    await asyncio.sleep(SETTLE_SECONDS)
