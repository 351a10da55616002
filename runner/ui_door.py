"""The status page's door: the page is built on its first request once its users file exists.

Until then every path under RUNNER_UI_PATH answers 404, as the page itself does without users, and the
server holds none of it: Jinja, SQLAlchemy and the tables (the page's read-only store, on Core), the page's
templates and its modules are imported only by a server whose page is used (about 18 MB less in one that
only takes deliveries).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from runner.config import Config, Secret
from runner.queue import Queue
from runner.ui_headers import Receive, Scope, Send

if TYPE_CHECKING:
    from runner.store import Store
    from runner.ui import StatusPage

NOT_FOUND = b"Not Found"


async def _not_found(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return  # the page has no WebSocket routes: not accepted
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"%d" % len(NOT_FOUND))]
    await send({"type": "http.response.start", "status": 404, "headers": headers})
    await send({"type": "http.response.body", "body": NOT_FOUND})


class PageDoor:
    """Mounted where the status page is (``app``); builds the page when it is first asked for with users."""

    def __init__(self, config: Config, queue: Queue, secret: Secret, shutdown: asyncio.Event) -> None:
        self.config = config
        self._queue = queue
        self._secret = secret
        # The page's live streams end when a stop is asked for: Hypercorn would wait for them otherwise.
        self._shutdown = shutdown
        self.page: StatusPage | None = None
        self._store: Store | None = None

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.page is None:
            if not self.config.ui_users.exists():
                await _not_found(scope, receive, send)
                return
            self.page = self._build()
        await self.page.app(scope, receive, send)

    def _build(self) -> StatusPage:
        from runner.store import Store
        from runner.ui import StatusPage

        # Read-only: the database refuses the page's writes (the page's actions go through the main queue).
        self._store = Store(self.config.database_url, server=self.config.server_name, read_only=True)
        page = StatusPage(self.config, self._store, self._queue, self._secret)
        page.live.stop_with(self._shutdown)
        return page

    def close(self) -> None:
        if self.page is not None:
            self.page.live.close()
        if self._store is not None:
            self._store.close()
