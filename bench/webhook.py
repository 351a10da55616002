"""adnanh/webhook, the yardstick: a Go tool checking the same HMAC rule, running /bin/true, writing nothing.

``bench/ingest.py --webhook`` loads it as it loads ``runner serve``, in the same run, for the ratios. Install
it with ``apt-get install webhook`` (Debian and Ubuntu package it; the binary is ``/usr/bin/webhook``).

Its one hook answers at ``/github-webhook`` (``-urlprefix ""``), as runner's endpoint does. The trigger rule
is ``payload-hmac-sha256`` with the benchmark's secret on ``X-Hub-Signature-256``, GitHub's signature; a
delivery that satisfies it makes webhook fork ``/bin/true`` and answer 200 ``executed`` without waiting for
it, a mismatch is answered 500. It writes nothing: none of its answers says the delivery is safe on disk.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from common import ENDPOINT, SECRET, BenchError, ServerProcess, base_env, free_port, running, temporary_home

EXECUTED = "executed"


def webhook_binary() -> str | None:
    return shutil.which("webhook")


def webhook_version() -> str:
    binary = webhook_binary()
    if binary is None:
        return "webhook not installed"
    done = subprocess.run([binary, "-version"], capture_output=True, text=True)
    return (done.stdout or done.stderr).strip() or "webhook"


def write_hooks(path: Path) -> None:
    """The hook: GitHub's signature checked with the benchmark's secret, then ``/bin/true``."""
    hook = {
        "id": ENDPOINT.lstrip("/"),
        "execute-command": "/bin/true",
        "command-working-directory": str(path.parent),
        "response-message": EXECUTED,
        "trigger-rule": {
            "match": {
                "type": "payload-hmac-sha256",
                "secret": SECRET,
                "parameter": {"source": "header", "name": "X-Hub-Signature-256"},
            }
        },
    }
    path.write_text(json.dumps([hook], indent=2))


@contextlib.contextmanager
def webhook_server(parent: str | None) -> Iterator[ServerProcess]:
    """adnanh/webhook on a free loopback port with :func:`write_hooks`'s hook, stopped afterwards."""
    binary = webhook_binary()
    if binary is None:
        raise BenchError("adnanh/webhook is not installed: apt-get install webhook")
    with temporary_home(parent) as home:
        hooks = home / "hooks.json"
        write_hooks(hooks)
        port = free_port()
        command = [binary, "-hooks", str(hooks), "-ip", "127.0.0.1", "-port", str(port), "-urlprefix", ""]
        # GET / answers 200 "OK" once it listens.
        server = ServerProcess("adnanh/webhook", command, base_env(home), port, home / "webhook.log", "/")
        with running(server):
            yield server
