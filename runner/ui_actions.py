"""The status page's actions: redeploy a run's commit, cancel a run, as POST forms with a CSRF token.

The web process writes an action into the main queue and nothing else: the router does it
(runner/actions.py) and records it. A form carries a token: when it was made, and an HMAC of that time and the
user's name under a key derived from the webhook secret, compared in constant time. A POST whose token is
missing, wrong, another user's or older than TOKEN_LIFETIME, or whose Origin (or Referer) names another
site, is refused (403) and nothing is written. After a POST the browser is sent
back to the run's page (303), which says the action was asked for: the new run's id is the router's to give.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

from sqlalchemy import Row
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from runner.actions import actions_of_run
from runner.config import Config, Secret
from runner.entry import ACTIONS, Action
from runner.queue import Queue
from runner.store import Store

logger = logging.getLogger(__name__)

# A form's body: a token and nothing much else.
MAX_FORM_BYTES = 4096
FORM_FIELD = "csrf"
_KEY_LABEL = b"runner status page: CSRF tokens"
# A token leaked from a page (a proxy's log, a shared screenshot) is of use for this long at most; a page
# left open longer is reloaded before its form is posted.
TOKEN_LIFETIME = 12 * 3600
# A token made by a server whose clock is a little ahead (two servers behind one name) is still taken.
_CLOCK_SKEW = 300
# The token's time: 10 hex digits of Unix seconds, then the HMAC's 64.
_TIME_DIGITS = 10
# What the run page says after a POST, by the action asked (the query string names one of these, no text).
NOTICES = {
    "redeploy": "Redeploy asked for: the worker queues the new run in a moment; it shows under Actions.",
    "cancel": "Cancel asked for: the worker cancels the run in a moment; it shows under Actions.",
}


class CsrfTokens:
    """Each user's tokens: the time made, and an HMAC of it and the name, under a key derived from the
    webhook secret; valid for TOKEN_LIFETIME seconds, for that user only."""

    def __init__(self, secret: Secret) -> None:
        self._key = hmac.new(secret.reveal(), _KEY_LABEL, hashlib.sha256).digest()

    def _mac(self, user: str, made: str) -> str:
        return hmac.new(self._key, f"{made}:{user}".encode(), hashlib.sha256).hexdigest()

    def token(self, user: str, now: float | None = None) -> str:
        made = f"{int(time.time() if now is None else now):0{_TIME_DIGITS}x}"
        return made + self._mac(user, made)

    def valid(self, user: str, token: str, now: float | None = None) -> bool:
        made, mac = token[:_TIME_DIGITS], token[_TIME_DIGITS:]
        if len(made) != _TIME_DIGITS or not all(c in "0123456789abcdef" for c in made):
            return False
        if not hmac.compare_digest(self._mac(user, made).encode(), mac.encode()):
            return False
        age = (time.time() if now is None else now) - int(made, 16)
        return -_CLOCK_SKEW <= age <= TOKEN_LIFETIME


def _same_origin(request: Request, public_url: str | None) -> bool:
    """Whether the Origin (or, without one, the Referer) the browser sent is this page's; True without
    either. The host is compared, not the scheme: behind nginx, TLS ends before runner."""
    sent = request.headers.get("origin") or request.headers.get("referer")
    if not sent:
        return True
    host = urlsplit(sent).netloc.lower()
    if not host:
        return False  # "null", or no URL at all
    # A cross-site form cannot set a header: the Host (or the proxy's X-Forwarded-Host) is the page's own.
    ours = {request.headers.get("host", "").lower(), request.headers.get("x-forwarded-host", "").lower()}
    if public_url:
        ours.add(urlsplit(public_url).netloc.lower())
    return host in ours - {""}


async def _form(request: Request) -> dict[str, str] | None:
    """The urlencoded form posted (each field's first value), or None if it is too big or not a form."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return None
    try:
        fields = parse_qs(body.decode("ascii"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        return None
    return {name: values[0] for name, values in fields.items()}


class RunActions:
    """The action routes, and what the run page shows of them: the forms with their token, the actions
    recorded on the run."""

    def __init__(self, config: Config, store: Store, queue: Queue, secret: Secret, prefix: str) -> None:
        self.config = config
        self.store = store
        self.queue = queue
        self.tokens = CsrfTokens(secret)
        # The page's root as the browser reaches it ("" for /).
        self.prefix = prefix

    def routes(self) -> list[BaseRoute]:
        return [
            Route(f"/runs/{{run_id:int}}/{action}", self._poster(action), methods=["POST"])
            for action in ACTIONS
        ]

    def _poster(self, action: str) -> Callable[[Request], Awaitable[Response]]:
        async def post(request: Request) -> Response:
            return await self.post(request, action)

        return post

    async def post(self, request: Request, action: str) -> Response:
        user = request.scope.get("ui_user")
        run_id = request.path_params["run_id"]
        form = await _form(request)
        token = (form or {}).get(FORM_FIELD, "")
        if not user or not token or not self.tokens.valid(user, token):
            logger.warning("refused a %s of run %d by %s: no valid CSRF token", action, run_id, user)
            return PlainTextResponse(
                "refused: the form's token is missing, wrong or expired; reload the run's page, try again\n",
                status_code=403,
            )
        if not _same_origin(request, self.config.public_url):
            logger.warning("refused a %s of run %d by %s: posted from another site", action, run_id, user)
            return PlainTextResponse("refused: the form was posted from another site\n", status_code=403)
        if await asyncio.to_thread(self.store.run, run_id) is None:
            return PlainTextResponse(f"there is no run {run_id}\n", status_code=404)
        entry = Action(action, run_id, user, datetime.now(UTC))
        try:
            name = await asyncio.to_thread(self.queue.put, entry.written())
        except OSError as exc:
            logger.error("could not queue a %s of run %d by %s: %s", action, run_id, user, exc)
            return PlainTextResponse("the action could not be queued; try again\n", status_code=503)
        logger.info("%s of run %d asked by %s: main queue entry %s", action, run_id, user, name)
        return RedirectResponse(f"{self.prefix}/runs/{run_id}?asked={action}", status_code=303)

    def run_context(self, request: Request, run: Row[Any]) -> dict[str, Any]:
        """What the run page's actions part shows: the token, the actions recorded, a notice after a POST."""
        user = request.scope.get("ui_user")
        recorded: list[Row[Any]] = actions_of_run(self.store, run.id)
        return {
            "csrf_field": FORM_FIELD,
            "csrf_token": self.tokens.token(user) if user else "",
            "actions": [record for record in recorded if record.run_id == run.id],
            "redeployed_by": next((record for record in recorded if record.new_run_id == run.id), None),
            "notice": NOTICES.get(request.query_params.get("asked", "")),
            # Another server's run is acted on, and followed, on its own page: its log and queues are there.
            "local": run.server == self.store.server,
            "cancellable": run.status in ("queued", "running") and run.server == self.store.server,
            "redeployable": run.commit is not None and run.server == self.store.server,
        }
