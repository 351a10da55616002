"""The status page: pipelines, runs, one run with its log, deliveries; behind a login, read-only.

``StatusPage.app`` is an ASGI app whose routes are relative to RUNNER_UI_PATH; runner/web.py mounts it there,
after the webhook endpoint's own paths. Its store is read-only (the database refuses its writes); what a page
reads is runner/history.py's.
"""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from runner.config import Config, Secret
from runner.queue import Queue
from runner.store import Store
from runner.ui_actions import RunActions
from runner.ui_auth import BasicAuth, UsersFile
from runner.ui_live import LiveStreams
from runner.ui_render import STATIC_DIR, Renderer, SecurityHeaders


class StatusPage:
    """The page's routes and what they read; ``app`` serves them, logged in, with the security headers."""

    def __init__(self, config: Config, store: Store, queue: Queue, secret: Secret) -> None:
        self.config = config
        self.store = store
        # The main queue and the webhook secret: what the page's actions (a redeploy, a cancel) need.
        self.queue = queue
        self.secret = secret
        self.renderer = Renderer(config.ui_path, config.server_name)
        self.users = UsersFile(config.ui_users)
        # The live log and run events, and the actions: runner/ui_live.py's and runner/ui_actions.py's.
        self.live = LiveStreams(config, store)
        self.actions = RunActions(config, store, queue, secret, self.renderer.prefix)
        pages = Starlette(routes=self.routes())
        self.app: Any = SecurityHeaders(BasicAuth(pages, self.users), static_prefix="/static/")

    def routes(self) -> list[BaseRoute]:
        # Sync endpoints: Starlette runs them in its threads, where the database's calls may block.
        return [
            Route("/", self.pipelines, methods=["GET"]),
            *self.live.routes(),
            *self.actions.routes(),
            Mount("/static", app=StaticFiles(directory=STATIC_DIR, follow_symlink=False), name="static"),
        ]

    def render(self, request: Request, template: str, **context: Any) -> Response:
        return self.renderer.render(request, template, **context)

    def pipelines(self, request: Request) -> Response:
        return self.render(request, "pipelines.html", pipelines=[])
