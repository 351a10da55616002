"""Each long-running command imports what it needs, not what another command does: what a real process of
it has imported once it is up, read from Python's own account (``-X importtime``), not guessed from files.

A package left out here is memory a process no longer holds (about 5 to 15 MB each for the ORM, Alembic,
Jinja, Starlette and Hypercorn; 2 MB for uvloop). A later import (the status page on its first request
with users, Alembic for a database that needs migrating, PyJWT for a GitHub App) is not startup and not
checked here.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import free_port, register, run_cli, runner_env, stop_process, wait_for

# Neither process needs these once it is up (on a database at the latest revision, without a GitHub App).
# Nor the ORM: every module reads and writes with SQLAlchemy Core (runner/tables.py).
NEITHER = {"alembic", "mako", "pygments", "jwt", "cryptography", "bcrypt", "sqlalchemy.orm"}
# The server only verifies, writes, and pings the database (through its driver, runner/driver.py); the
# status page has no users file here.
NOT_SERVER = NEITHER | {"jinja2", "jsonschema", "yaml", "sqlalchemy", "runner.store", "runner.worker"}
# The worker alone runs on asyncio's own loop: uvloop is for a server's ingest. It checks pipeline files in a
# child (jsonschema, Jinja and the checks), imports asyncio without ssl and hashlib without OpenSSL's hashes
# (_ssl; an import of ssl and of _hashlib is tried, and fails, so that both are in the account: whether
# OpenSSL is mapped is read from the process's maps), and the modules that send (GitHub's client imports
# http.client only as it calls) or print only as they do.
NOT_WORKER = NEITHER | {
    "starlette",
    "hypercorn",
    "h11",
    "h2",
    "runner.web",
    "runner.ui",
    "uvloop",
    "jsonschema",
    "referencing",
    "rpds",
    "jinja2",
    "runner.schema_check",
    "runner.file_checks",
    "runner.checks",
    "runner.templating",
    "runner.pipeline_secrets",
    "_ssl",
    "http.client",
    "urllib.request",
    "smtplib",
    "runner.notify_send",
    "runner.ui_auth",
    "runner.reports",
    "runner.log_follow",
}


class Imports:
    """A ``runner`` command run with ``-X importtime``: the modules it imported are what it printed so."""

    def __init__(self, home: Path, command: str, *args: str, database_url: str | None = None) -> None:
        self.log = home / f"{command}.importtime"
        self._out = self.log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-X", "importtime", "-m", "runner", command, *args],
            env=runner_env(home, database_url),
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )
        register(self)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def modules(self) -> set[str]:
        return {
            line.rsplit("|", 1)[1].strip()
            for line in self.output().splitlines()
            if line.startswith("import time:") and line.count("|") == 2
        }

    def stop(self) -> int:
        code = stop_process(self.process)
        self._out.close()
        return code


def heavy(modules: set[str], names: set[str]) -> set[str]:
    """Which of ``names`` (packages, or modules) were imported: a package counts by any module of it."""
    return {name for name in names if any(m == name or m.startswith(name + ".") for m in modules)}


def new_home(tmp_path: Path, database_url: str | None = None) -> Path:
    home = tmp_path / "home"
    (home / "pipelines").mkdir(parents=True)
    # A pipeline, so that the worker loads (and validates) one as it does in use.
    (home / "pipelines" / "site.yaml").write_text(
        "on: {repository: acme/site, events: [push], branches: [main]}\n"
        f"workdir: {tmp_path / 'work'}\n"
        "steps:\n  - run: echo deployed\n"
    )
    upgraded = run_cli("db", "upgrade", env=runner_env(home, database_url))
    assert upgraded.returncode == 0, upgraded.stderr
    return home


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    yield new_home(tmp_path)


def test_the_worker_imports_no_web_server(home: Path) -> None:
    worker = Imports(home, "work")
    try:
        wait_for(lambda: "worker started" in worker.output(), "the worker to start", 60, worker.output)
        modules = worker.modules()
        mapped = Path(f"/proc/{worker.process.pid}/maps").read_text()
    finally:
        assert worker.stop() == 0, worker.output()
    expected = {"runner.worker", "runner.check_process", "ssl", "hashlib"}
    assert expected <= modules, "the account of imports is not read"
    assert heavy(modules, NOT_WORKER) == set()
    assert "libpython" in mapped or "python" in mapped, "the maps are not read"
    assert "libcrypto" not in mapped and "libssl" not in mapped


def test_the_worker_s_imports_map_no_openssl_and_leave_ssl_and_hashes_working() -> None:
    """What runner work does before its imports: asyncio has no TLS and hashlib its own hashes, so that
    SQLAlchemy's imports map no OpenSSL library; hashes and HMACs still come out right, and a later
    ``import ssl`` (GitHub's HTTPS, SMTP's STARTTLS) works, as does an HTTPS connection's set-up."""
    code = (
        "import sys\n"
        "from runner import start\n"
        "start.import_without_openssl()\n"
        "import asyncio.base_events, asyncio.sslproto, hashlib, hmac, sqlalchemy\n"
        "from runner import store\n"
        "assert asyncio.sslproto.ssl is None and asyncio.base_events.ssl is None\n"
        "assert 'libcrypto' not in open('/proc/self/maps').read()\n"
        "assert hashlib.sha256(b'abc').hexdigest().startswith('ba7816bf8f01cfea')\n"
        "assert hashlib.md5(b'', usedforsecurity=False).hexdigest() == 'd41d8cd98f00b204e9800998ecf8427e'\n"
        "assert hmac.new(b'key', b'msg', 'sha256').hexdigest().startswith('2d93cbc1be167bcb')\n"
        "import http.client, smtplib, ssl, urllib.request\n"
        "http.client.HTTPSConnection('github.com', context=ssl.create_default_context())\n"
        "assert smtplib._have_ssl and urllib.request.HTTPSHandler\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, "ok"), done.stderr


def test_a_python_without_hashes_of_its_own_keeps_openssl_s() -> None:
    """A Python built without its own md5 (hashlib's fallback) keeps OpenSSL's hashes in the worker."""
    code = (
        "import importlib.util\n"
        "find_spec = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda name, *a: None if name == '_md5' else find_spec(name, *a)\n"
        "from runner import start\n"
        "assert not start.has_own_hashes()\n"
        "start.import_without_openssl()\n"
        "import asyncio.sslproto, hashlib\n"
        "assert asyncio.sslproto.ssl is None\n"
        "assert 'libcrypto' in open('/proc/self/maps').read()\n"
        "assert hashlib.md5(b'').hexdigest() == 'd41d8cd98f00b204e9800998ecf8427e'\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, "ok"), done.stderr


def server_modules(home: Path, database_url: str | None = None) -> set[str]:
    """What a real `runner serve` has imported once it listens (and has answered /healthz)."""
    port = free_port()
    server = Imports(home, "serve", "--port", str(port), database_url=database_url)
    try:
        wait_for(lambda: "Running on" in server.output(), "the server to listen", 60, server.output)
        # The ping too: /healthz is answered without SQLAlchemy.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as answer:
            assert answer.status == 200
        return server.modules()
    finally:
        assert server.stop() == 0, server.output()


def test_the_server_imports_no_sqlalchemy_worker_or_templates(home: Path) -> None:
    modules = server_modules(home)
    assert {"runner.web", "hypercorn.asyncio", "runner.driver", "sqlite3"} <= modules, (
        "the account is not read"
    )
    assert heavy(modules, NOT_SERVER) == set()


def test_the_server_on_postgresql_imports_no_sqlalchemy(tmp_path: Path, postgres_url: str) -> None:
    modules = server_modules(new_home(tmp_path, postgres_url), postgres_url)
    assert {"runner.web", "runner.driver", "psycopg2"} <= modules, "the account of imports is not read"
    assert heavy(modules, NOT_SERVER) == set()


def test_up_at_the_latest_revision_imports_no_alembic(home: Path) -> None:
    up = Imports(home, "up", "--port", str(free_port()))
    try:
        wait_for(lambda: "worker started" in up.output(), "runner up to start", 60, up.output)
        modules = up.modules()
    finally:
        assert up.stop() == 0, up.output()
    assert {"runner.web", "runner.worker"} <= modules, "the account of imports is not read"
    assert heavy(modules, NEITHER | {"runner.ui", "jsonschema", "runner.file_checks"}) == set()
    # Only runner work leaves ssl out of asyncio: Hypercorn, in runner up, imports it.
    assert "_ssl" in modules
