"""What the tests share: real components, real processes, and the rule for when one is missing."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.client
import json
import os
import pwd
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest

from runner.queue import FAILED_DIR, Queue, is_entry_name

ROOT = Path(__file__).resolve().parent.parent
PAYLOADS = ROOT.parent / "shared" / "github-payloads"
CI = os.environ.get("CI", "").lower() in ("true", "1", "yes")
POSTGRES_URL = os.environ.get(
    "RUNNER_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
)
SECRET = "test secret, not GitHub's"
# The statuses a run ends in.
FINISHED = ("succeeded", "failed", "cancelled", "interrupted", "superseded")
# The tests' own git commands do not depend on the machine's or the user's configuration.
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test Author",
    "GIT_AUTHOR_EMAIL": "author@example.com",
    "GIT_COMMITTER_NAME": "Test Committer",
    "GIT_COMMITTER_EMAIL": "committer@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
}


def git(*args: str | Path, cwd: Path | None = None) -> str:
    """``git ARGS`` as the tests' author and committer, with no system or global configuration; its output."""
    done = subprocess.run(
        ["git", *map(str, args)], cwd=cwd, env={**os.environ, **GIT_ENV}, capture_output=True, text=True
    )
    assert done.returncode == 0, f"git {' '.join(map(str, args))}: {done.stderr}"
    return done.stdout.strip()


def require(condition: bool, reason: str) -> None:
    """A test that needs a real component: under CI its absence is a failure, elsewhere a skip."""
    if condition:
        return
    if CI:
        pytest.fail(f"CI=true and a required component is missing: {reason}", pytrace=False)
    pytest.skip(reason)


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def payload_files() -> list[Path]:
    require(PAYLOADS.is_dir(), f"the shared GitHub payloads are not at {PAYLOADS}")
    return sorted(PAYLOADS.glob("*/*.json"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A new, empty PostgreSQL database for one test, dropped afterwards."""
    import sqlalchemy as sa

    base = sa.engine.make_url(POSTGRES_URL)
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
    try:
        with admin.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except Exception as exc:
        admin.dispose()
        require(False, f"PostgreSQL is not reachable at {base.render_as_string(hide_password=True)}: {exc}")
    name = f"runner_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def runner_env(home: Path, database_url: str | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNNER_")}
    env["RUNNER_HOME"] = str(home)
    env["RUNNER_SECRET"] = SECRET
    if database_url:
        env["RUNNER_DATABASE_URL"] = database_url
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runner", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


class Response:
    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


def stop_process(process: subprocess.Popen[Any], timeout: float = 30) -> int:
    """SIGTERM, then SIGKILL after ``timeout`` seconds; the process's exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


class Started(Protocol):
    """A process a test started, with the way to stop it (Server, test_worker's WorkerProcess, ...)."""

    process: subprocess.Popen[bytes]

    def stop(self) -> int: ...


# Every process started through Server (or register), so that a fixture's finalizer can stop those a
# failing test left running.
_started: list[Started] = []


def register(started: Started) -> None:
    _started.append(started)


def stop_started() -> list[str]:
    """Stop every registered process still running that was started since the last call; says which were.

    Called by a fixture's finalizer, it runs also when the test fails half-way, before its own stop().
    """
    left = []
    while _started:
        started = _started.pop()
        if started.process.poll() is None:
            left.append(f"pid {started.process.pid} ({type(started).__name__})")
        started.stop()
    return left


class Server:
    """A real ``runner`` process serving on a free loopback port."""

    def __init__(
        self, home: Path, env: dict[str, str], command: str = "serve", args: Sequence[str] = ()
    ) -> None:
        self.home = home
        self.port = free_port()
        self.log_path = home / f"{command}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "runner", command, "--port", str(self.port), *args],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        register(self)
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"runner {command} exited {self.process.returncode}:\n{self.output()}")
            try:
                if self.get("/healthz").status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"runner {command} did not become healthy:\n{self.output()}")
            time.sleep(0.05)

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def connection(self, timeout: float = 30) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def get(self, path: str) -> Response:
        connection = self.connection(timeout=5)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return Response(response.status, response.read())
        finally:
            connection.close()

    def post(
        self,
        body: bytes,
        headers: dict[str, str],
        connection: http.client.HTTPConnection | None = None,
    ) -> Response:
        own = connection is None
        connection = connection or self.connection()
        try:
            connection.request("POST", "/github-webhook", body=body, headers=headers)
            response = connection.getresponse()
            return Response(response.status, response.read())
        finally:
            if own:
                connection.close()

    def deliver(
        self,
        event: str,
        payload: bytes,
        delivery: str | None = None,
        form: bool = False,
        connection: http.client.HTTPConnection | None = None,
    ) -> Response:
        """Post ``payload`` as GitHub does, signed with the test secret."""
        if form:
            from urllib.parse import urlencode

            body = urlencode({"payload": payload.decode()}).encode()
            content_type = "application/x-www-form-urlencoded"
        else:
            body, content_type = payload, "application/json"
        headers = {
            "Content-Type": content_type,
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
            "X-GitHub-Hook-ID": "292430182",
            "X-Hub-Signature-256": sign(body),
            "User-Agent": "GitHub-Hookshot/044aadd",
        }
        return self.post(body, headers, connection)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


T = TypeVar("T")


def wait_for(
    check: Callable[[], T | None],
    what: str,
    timeout: float = 30,
    details: str | Callable[[], str] = "",
) -> T:
    """Poll ``check`` until it returns something true; fail at the deadline, with ``details``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            told = details() if callable(details) else details
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{told}")
        time.sleep(0.05)


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running process; a zombie (dead, not yet reaped by its parent) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def failed_names(queue: Queue) -> list[str]:
    """The names of the entries moved into the queue's ``failed/``, in order."""
    failed = queue.directory / FAILED_DIR
    if not failed.is_dir():
        return []
    return sorted(p.name for p in failed.iterdir() if is_entry_name(p.name))


@dataclass
class Account:
    """A user to run commands as."""

    name: str
    home: Path

    @property
    def uid(self) -> int:
        return pwd.getpwnam(self.name).pw_uid

    @property
    def gid(self) -> int:
        return pwd.getpwnam(self.name).pw_gid

    def argv(self, *argv: str | Path) -> list[str]:
        """``argv`` as this user: setpriv execs it directly, with the user's groups and nothing of root's."""
        ids = [f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups"]
        return ["setpriv", *ids, "--", *map(str, argv)]

    def env(self, **extra: str) -> dict[str, str]:
        env = runner_env(self.home, HOME=str(self.home), USER=self.name, LOGNAME=self.name, **extra)
        env["PYTHONDONTWRITEBYTECODE"] = "1"  # the checkout is not the user's to write in
        return env

    def run(
        self, *argv: str | Path, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*argv),
            env=env if env is not None else self.env(),
            cwd=self.home if self.home.is_dir() else "/",
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


class WorkerProcess:
    """A real ``runner work`` process; its output goes to a file shown in assertion messages."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "runner", "work"], env=env, stdout=self._log, stderr=subprocess.STDOUT
        )
        self.pid = self.process.pid
        register(self)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_line(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        def check() -> re.Match[str] | None:
            if self.process.poll() is not None:
                pytest.fail(f"runner work exited {self.process.returncode}:\n{self.output()}")
            return re.search(pattern, self.output(), re.MULTILINE)

        return wait_for(check, f"{pattern!r} in the worker's log", timeout, self.output)

    def wait_started(self) -> None:
        self.wait_for_line("worker started")

    def stop(self, timeout: float = 30) -> int:
        code = stop_process(self.process, timeout)
        self._log.close()
        return code
