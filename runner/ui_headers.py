"""The headers of every status page response: a content security policy, no sniffing, no caching of pages.

Apart from runner/ui_render.py (and Jinja) so that a server whose status page is not built yet
(runner/ui_door.py) answers with them too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

# No inline script or style, no other origin: a value that escaped its escaping still could not run.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


class SecurityHeaders:
    """Adds the security headers to every response of ``app``, and ``Cache-Control`` where it has none:
    pages and logs are not kept by a browser or a proxy (``no-store``), assets are checked again first."""

    def __init__(self, app: App, static_prefix: str) -> None:
        self.app = app
        self.static_prefix = static_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # The path within the page: a Mount keeps the whole path, and the part before it in root_path.
        root = scope.get("root_path", "")
        path = scope["path"][len(root) :] if scope["path"].startswith(root) else scope["path"]
        static = path.startswith(self.static_prefix)
        cache = b"private, no-cache" if static else b"no-store"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"cache-control"]
                own_cache = [v for k, v in message.get("headers", []) if k.lower() == b"cache-control"]
                headers += [*SECURITY_HEADERS, (b"cache-control", own_cache[0] if own_cache else cache)]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
