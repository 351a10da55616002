"""The status page: pipelines, runs, one run with its log, deliveries; behind a login, read-only.

``StatusPage.app`` is an ASGI app whose routes are relative to RUNNER_UI_PATH; runner/web.py mounts it there,
after the webhook endpoint's own paths. Its store is read-only (the database refuses its writes); what a page
reads is runner/history.py's.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy import Row
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from runner.config import Config, Secret
from runner.history import RUN_STATUSES, History
from runner.notifications import attempts
from runner.pipelines import pipeline_files
from runner.queue import Queue
from runner.store import Store
from runner.ui_actions import RunActions
from runner.ui_auth import BasicAuth, UsersFile
from runner.ui_live import LiveStreams
from runner.ui_logs import log_file, read_shown
from runner.ui_render import STATIC_DIR, Renderer

logger = logging.getLogger(__name__)

# A step that ended the run: the run page marks it, and its lines in the log.
FAILING_STEPS = ("failed", "timed_out")
# Pages beyond any history's: a bigger number is a mistake, not a query for the database.
MAX_PAGE = 1_000_000


class StatusPage:
    """The page's routes and what they read; ``app`` serves them, logged in, with the security headers."""

    def __init__(self, config: Config, store: Store, queue: Queue, secret: Secret) -> None:
        self.config = config
        self.store = store
        # The main queue and the webhook secret: what the page's actions (a redeploy, a cancel) need.
        self.queue = queue
        self.secret = secret
        self.renderer = Renderer(config.ui_path, config.server_name)
        self.history = History(store)
        self.users = UsersFile(config.ui_users)
        # The live log and run events, and the actions: runner/ui_live.py's and runner/ui_actions.py's.
        self.live = LiveStreams(config, store)
        self.actions = RunActions(config, store, queue, secret, self.renderer.prefix)
        pages = Starlette(routes=self.routes(), exception_handlers={SQLAlchemyError: self._database_error})
        # The security headers are the server's (runner/web.py), around this page and its door.
        self.app: Any = BasicAuth(pages, self.users)

    def routes(self) -> list[BaseRoute]:
        # Sync endpoints: Starlette runs them in its threads, where the database's calls may block.
        return [
            Route("/", self.pipelines, methods=["GET"]),
            Route("/runs", self.runs, methods=["GET"]),
            Route("/runs/{run_id:int}", self.run, methods=["GET"]),
            Route("/runs/{run_id:int}/log", self.run_log, methods=["GET"]),
            Route("/deliveries", self.deliveries, methods=["GET"]),
            *self.live.routes(),
            *self.actions.routes(),
            # No directory listing (StaticFiles answers 404 for a directory), no path out of it.
            Mount("/static", app=StaticFiles(directory=STATIC_DIR, follow_symlink=False), name="static"),
        ]

    def render(self, request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
        return self.renderer.render(request, template, status_code, **context)

    def _error(self, request: Request, status_code: int, message: str) -> Response:
        return self.render(request, "error.html", status_code, message=message)

    def _database_error(self, request: Request, exc: Exception) -> Response:
        # The page names the error's class only (its text may hold a query's values); the log has it all.
        logger.error("the status page cannot read the database: %s: %s", type(exc).__name__, exc)
        message = f"The database cannot be read just now ({type(exc).__name__}): the server's log says why."
        return self._error(request, 503, message)

    def pipelines(self, request: Request) -> Response:
        names = [path.stem for path in pipeline_files(self.config.pipelines_dir)]
        return self.render(request, "pipelines.html", pipelines=self.history.pipelines(names))

    def runs(self, request: Request) -> Response:
        pipeline = request.query_params.get("pipeline") or None
        status = request.query_params.get("status") or None
        server = request.query_params.get("server") or None
        if status is not None and status not in RUN_STATUSES:
            return self._error(request, 400, f"there is no run status {status!r}: {', '.join(RUN_STATUSES)}")
        number = _page_number(request)
        if number is None:
            return self._error(request, 400, "the page must be a number from 1")
        return self.render(
            request,
            "runs.html",
            runs=self.history.runs(pipeline, status, number, server),
            pipeline=pipeline,
            status=status,
            server=server,
            pipelines=self.history.pipeline_names(),
            statuses=RUN_STATUSES,
            servers=self.history.servers(),
        )

    def run(self, request: Request) -> Response:
        run = self.store.run(request.path_params["run_id"])
        if run is None:
            return self._error(request, 404, f"there is no run {request.path_params['run_id']}")
        steps = self.store.steps(run.id)
        failing = next((step for step in steps if step.status in FAILING_STEPS), None)
        path = self._log_file(run)
        log = read_shown(path, steps) if path is not None else None
        notifications = attempts(self.store, run.id)
        live = self.actions.run_context(request, run)
        return self.render(
            request,
            "run.html",
            run=run,
            steps=steps,
            failing=failing,
            log=log,
            notifications=notifications,
            **live,
        )

    def _log_file(self, run: Row[Any]) -> Path | None:
        """The run's log, if this server has it: another server's run has its log on that server."""
        if run.server != self.store.server:
            return None
        return log_file(self.config.logs_dir, run.log_path)

    def run_log(self, request: Request) -> Response:
        run = self.store.run(request.path_params["run_id"])
        path = self._log_file(run) if run is not None else None
        if path is None:
            return PlainTextResponse("no log for this run\n", status_code=404)
        # Streamed from the file, a chunk at a time; text, never a page the browser would run.
        return FileResponse(path, media_type="text/plain; charset=utf-8")

    def deliveries(self, request: Request) -> Response:
        number = _page_number(request)
        if number is None:
            return self._error(request, 400, "the page must be a number from 1")
        server = request.query_params.get("server") or None
        return self.render(
            request,
            "deliveries.html",
            deliveries=self.history.deliveries(number, server),
            server=server,
            servers=self.history.servers(),
        )


def _page_number(request: Request) -> int | None:
    """The ``page`` query parameter (1 without one), or None if it is not a page number."""
    raw = request.query_params.get("page") or "1"
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
        return None
    return int(raw)
