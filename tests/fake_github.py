"""A fake GitHub REST API for the tests: a real HTTP server on 127.0.0.1, in a thread of the test.

It answers with the shapes of GitHub's REST documentation (ROUTES; the endpoints, and the state tests set
and read, are in fake_github_reports.py, fake_github_hooks.py, fake_github_apps.py and fake_github_base.py),
checks the credentials of every call (a token given by ``add_token``, an installation token it issued, or
for the App's own endpoints a GitHub App's JWT, verified with the App's public key), records every request
in ``requests``, and fails on demand: ``inject`` queues answers given instead of the real ones
(``server_error``, ``rate_limited``, ``too_many_requests``, ``slow``), and ``outage`` answers every call
with 503, or refuses connections, until ``end_outage``. ``start`` it and always ``stop`` it: the
``fake_github`` fixture does both.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from fake_github_apps import Apps
from fake_github_base import Call, Reply, error
from fake_github_hooks import Hooks
from fake_github_reports import Reports


@dataclass
class Answer:
    """Given instead of the real answer; with ``status`` None, the real answer is given after ``delay``."""

    status: int | None = None
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    # Only for a call whose path starts with this.
    path: str = "/"


def server_error(status: int = 500) -> Answer:
    return Answer(status, error(status, "Server Error"))


def rate_limited(reset: float) -> Answer:
    """The primary rate limit is used up until ``reset`` (epoch seconds)."""
    headers = {
        "X-RateLimit-Limit": "5000",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Used": "5000",
        "X-RateLimit-Reset": str(int(reset)),
        "X-RateLimit-Resource": "core",
    }
    return Answer(403, error(403, "API rate limit exceeded for user ID 1."), headers)


def too_many_requests(retry_after: int) -> Answer:
    """A secondary rate limit, lifted after ``retry_after`` seconds."""
    message = "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."
    return Answer(429, error(429, message), {"Retry-After": str(retry_after)})


def slow(seconds: float) -> Answer:
    """The real answer, ``seconds`` late: later than the client's timeout, a timeout."""
    return Answer(delay=seconds)


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    # As sent; looked up by name in any case.
    headers: Message
    # The decoded JSON body, or None.
    body: Any


class FakeGitHub(Reports, Hooks, Apps):
    """The fake's server and what it does with every call; the endpoints' state is in its bases."""

    def __init__(self, *, now: Callable[[], float] = time.time) -> None:
        super().__init__(now=now)
        self.requests: list[Recorded] = []
        self._answers: list[Answer] = []
        self._outage: int | None = None
        self._port = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        # Cuts the delay of slow answers short when the fake stops.
        self._stopping = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def start(self) -> None:
        """Listen: on a free port the first time, on the same one again after a refusing outage."""
        server = ThreadingHTTPServer(("127.0.0.1", self._port), _Handler)
        server.daemon_threads = True
        server.fake = self  # type: ignore[attr-defined]
        self._port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._close()
        self.settle()

    def _close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def inject(self, *answers: Answer) -> None:
        """Give these answers, in turn, each to the next call its ``path`` matches."""
        with self.lock:
            self._answers.extend(answers)

    def outage(self, *, refuse: bool = False) -> None:
        """Answer every call with 503, or (``refuse``) close the listening socket: connections are refused."""
        if refuse:
            self._close()
        else:
            self._outage = 503

    def end_outage(self) -> None:
        self._outage = None
        if self._server is None:
            self.start()

    def calls(self, method: str, path: str) -> list[Recorded]:
        """The recorded requests with this method and path."""
        with self.lock:
            return [r for r in self.requests if (r.method, r.path) == (method, path)]

    def handle(self, method: str, target: str, headers: Message, raw: bytes) -> Reply:
        parts = urlsplit(target)
        path, query = unquote(parts.path), parse_qs(parts.query)
        try:
            body = json.loads(raw) if raw.strip() else None
        except ValueError:
            return Reply(400, error(400, "Problems parsing JSON"))
        with self.lock:
            self.requests.append(Recorded(method, path, query, headers, body))
            answer = next((a for a in self._answers if path.startswith(a.path)), None)
            if answer is not None:
                self._answers.remove(answer)
        if self._outage is not None:
            return Reply(self._outage, error(self._outage, "Service Unavailable"))
        if answer is not None:
            self._stopping.wait(answer.delay)
            if answer.status is not None:
                return Reply(answer.status, answer.body, answer.headers)
        return self._route(method, path, query, headers.get("Authorization", ""), body)

    def _route(
        self, method: str, path: str, query: dict[str, list[str]], authorization: str, body: Any
    ) -> Reply:
        scheme, _, credential = authorization.partition(" ")
        if scheme.lower() not in ("bearer", "token") or not credential:
            return Reply(401, error(401, "Requires authentication"))
        for route_method, pattern, endpoint, for_app in ROUTES:
            match = pattern.fullmatch(path)
            if match is None or route_method != method:
                continue
            with self.lock:
                if for_app:
                    app = self.check_jwt(credential)
                    return app if isinstance(app, Reply) else endpoint(self, Call(match, query, body, app))
                owner = (match.groupdict().get("repo") or match.groupdict().get("org") or "").split("/")[0]
                return self.check_token(credential, owner) or endpoint(self, Call(match, query, body))
        return Reply(404, error(404, "Not Found"))


class _Handler(BaseHTTPRequestHandler):
    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        reply = self.server.fake.handle(self.command, self.path, self.headers, raw)  # type: ignore[attr-defined]
        body = b"" if reply.body is None else json.dumps(reply.body).encode()
        try:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            if reply.body is not None:
                self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except ConnectionError:
            pass  # the client gave up waiting: what a slow answer is for

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass


_REPO = r"/repos/(?P<repo>[^/]+/[^/]+)"
_OWNER = r"/(?:repos/(?P<repo>[^/]+/[^/]+)|orgs/(?P<org>[^/]+))"
_DELIVERIES = _OWNER + r"/hooks/(?P<hook>[0-9]+)/deliveries"
# (method, path, endpoint, whether it is one of the App's own: called with the App's JWT, not a token)
ROUTES: list[tuple[str, re.Pattern[str], Callable[[FakeGitHub, Call], Reply], bool]] = [
    (method, re.compile(path), endpoint, for_app)
    for method, path, endpoint, for_app in (
        ("POST", _REPO + r"/statuses/(?P<sha>[^/]+)", FakeGitHub.create_status, False),
        ("GET", _REPO + r"/commits/(?P<ref>.+)/statuses", FakeGitHub.list_statuses, False),
        ("POST", _REPO + r"/deployments", FakeGitHub.create_deployment, False),
        ("GET", _REPO + r"/deployments", FakeGitHub.list_deployments, False),
        ("POST", _REPO + r"/deployments/(?P<id>[0-9]+)/statuses", FakeGitHub.create_deployment_status, False),
        ("GET", _REPO + r"/deployments/(?P<id>[0-9]+)/statuses", FakeGitHub.list_deployment_statuses, False),
        ("GET", _DELIVERIES, FakeGitHub.list_deliveries, False),
        ("GET", _DELIVERIES + r"/(?P<delivery>[0-9]+)", FakeGitHub.get_delivery, False),
        ("POST", _DELIVERIES + r"/(?P<delivery>[0-9]+)/attempts", FakeGitHub.redeliver, False),
        ("GET", _REPO + r"/branches", FakeGitHub.list_branches, False),
        ("GET", _REPO + r"/branches/(?P<branch>.+)", FakeGitHub.get_branch, False),
        ("GET", _OWNER + r"/installation", FakeGitHub.get_installation, True),
        ("POST", r"/app/installations/(?P<id>[0-9]+)/access_tokens", FakeGitHub.create_access_token, True),
    )
]
