"""The status page's door: the page is built on its first request once its users file exists.

Until then every path under RUNNER_UI_PATH answers 404, as the page itself does without users, and the
server holds none of it: Jinja, the page's templates and its modules are imported only by a server whose page
is used (about 10 MB less in one that only takes deliveries).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from runner.config import Config, Secret
from runner.queue import Queue
from runner.store import Store
from runner.ui_headers import Receive, Scope, SecurityHeaders, Send

if TYPE_CHECKING:
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

    def __init__(
        self, config: Config, store: Store, queue: Queue, secret: Secret, shutdown: asyncio.Event
    ) -> None:
        self.config = config
        self._store = store
        self._queue = queue
        self._secret = secret
        # The page's live streams end when a stop is asked for: Hypercorn would wait for them otherwise.
        self._shutdown = shutdown
        self.page: StatusPage | None = None
        self._closed = SecurityHeaders(_not_found, static_prefix="/static/")

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.page is None:
            if not self.config.ui_users.exists():
                await self._closed(scope, receive, send)
                return
            from runner.ui import StatusPage

            self.page = StatusPage(self.config, self._store, self._queue, self._secret)
            self.page.live.stop_with(self._shutdown)
        await self.page.app(scope, receive, send)

    def close(self) -> None:
        if self.page is not None:
            self.page.live.close()
