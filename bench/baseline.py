"""The no-write baseline: Starlette + Hypercorn checking the HMAC and parsing the JSON, writing nothing.

``bench/ingest.py --baseline`` loads it as it loads ``runner serve``, for the ratio "durable / no write";
it runs as ``python bench/baseline.py PORT``, a process of its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

from common import ENDPOINT, ServerProcess, base_env, free_port, running, temporary_home


@contextlib.contextmanager
def baseline_server(parent: str | None) -> Iterator[ServerProcess]:
    with temporary_home(parent) as home:
        port = free_port()
        command = [sys.executable, str(Path(__file__).resolve()), str(port)]
        server = ServerProcess("the no-write baseline", command, base_env(home), port, home / "baseline.log")
        with running(server):
            yield server


def serve_baseline(port: int) -> None:
    """The no-write baseline: Starlette on Hypercorn, served in-process on uvloop like ``runner serve``."""
    import asyncio
    import json

    import uvloop
    from hypercorn.asyncio import serve
    from hypercorn.config import Config
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    secret = os.environ["RUNNER_SECRET"].encode()

    async def webhook(request: Request) -> Response:
        body = await request.body()
        header = request.headers.get("x-hub-signature-256", "")
        expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected.encode(), header.encode("utf-8", "replace")):
            return JSONResponse({"error": "signature"}, status_code=403)
        try:
            payload = json.loads(body)
        except ValueError:
            return JSONResponse({"error": "body"}, status_code=400)
        if not isinstance(payload, dict):
            return JSONResponse({"error": "body"}, status_code=400)
        return JSONResponse({"delivery": request.headers.get("x-github-delivery")}, status_code=202)

    async def healthz(_request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    app = Starlette(
        routes=[Route(ENDPOINT, webhook, methods=["POST"]), Route("/healthz", healthz, methods=["GET"])]
    )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        config = Config()
        config.bind = [f"127.0.0.1:{port}"]
        config.accesslog = None
        await serve(app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]

    uvloop.run(main())


if __name__ == "__main__":
    serve_baseline(int(sys.argv[1]))
