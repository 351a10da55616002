"""What a step's program gets from runner, and what it does not: descriptors, settings, credentials.

Everything is real: ``runner up`` (Hypercorn on uvloop, serving and working in one process, or with the
worker in a forked server process) and ``runner work`` carry out pipelines whose steps look at their own
descriptors and environment; a git server over HTTP asks for a token that a pipeline's remote URL holds.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Row
from support import (
    FINISHED,
    PAYLOADS,
    Server,
    alive,
    git,
    postgres_database,
    run_cli,
    runner_env,
    stop_process,
    wait_for,
)

from runner.store import Store

# The time stamp and stream the run log puts before each line: 2026-11-25T11:26:03.123456Z out   | ...
LINE = re.compile(r"^\S+ (\w+) *\| (.*)$", re.MULTILINE)

# Prints the descriptors a process has open, as JSON: its own, or with "parent", its parent's.
LIST_FDS = """
import json, os, sys

def open_fds(pid):
    found = {}
    with os.scandir(f"/proc/{pid}/fd") as entries:
        for entry in entries:
            with __import__("contextlib").suppress(OSError):
                found[int(entry.name)] = os.readlink(entry.path)
    return found

if sys.argv[1:] == ["parent"]:
    print("fds", json.dumps({"who": "parent", "fds": open_fds(os.getppid())}))
else:
    # The one descriptor that is not inherited: the listing's own, of the directory being listed.
    own = {fd: target for fd, target in open_fds(os.getpid()).items() if target != f"/proc/{os.getpid()}/fd"}
    print("fds", json.dumps({"who": "self", "fds": own}))
"""


# A runner home and the processes a test starts ------------------------------------------------------------


class Home:
    """A runner home: pipelines, a database, the ``runner`` processes started on it, and their runs."""

    def __init__(self, root: Path, database_url: str | None = None, **env: str) -> None:
        self.root = root
        self.path = root / "home"
        (self.path / "pipelines").mkdir(parents=True)
        self.database_url = database_url or f"sqlite:///{self.path / 'runner.db'}"
        self.env = runner_env(self.path, database_url, **env)
        self.servers: list[Server] = []
        self.workers: list[subprocess.Popen[bytes]] = []
        self._store: Store | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.database_url)
        return self._store

    def pipeline(self, name: str, text: str, **values: str | Path) -> None:
        """Write ``pipelines/<name>.yaml``; ``<KEY>`` in ``text`` is replaced by ``values[KEY]``."""
        text = textwrap.dedent(text).lstrip("\n")
        for key, value in values.items():
            text = text.replace(f"<{key}>", str(value))
        assert not re.search(r"<[A-Z_]+>", text), text
        (self.path / "pipelines" / f"{name}.yaml").write_text(text)

    def up(self, *args: str, **env: str) -> Server:
        server = Server(self.path, {**self.env, **env}, command="up", args=args)
        self.servers.append(server)
        return server

    def work(self) -> subprocess.Popen[bytes]:
        upgraded = run_cli("db", "upgrade", env=self.env)
        assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
        log = self.path / "work.log"
        with log.open("wb") as output:
            worker = subprocess.Popen(
                [sys.executable, "-m", "runner", "work"],
                env=self.env,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        self.workers.append(worker)
        wait_for(lambda: "worker started" in log.read_text(), "runner work to start", details=self.output)
        return worker

    def output(self) -> str:
        """What the runner processes printed: their own logs."""
        parts = [server.output() for server in self.servers]
        parts += [p.read_text(errors="replace") for p in self.path.glob("work.log")]
        return "\n".join(parts)

    def trigger(self, pipeline: str, ref: str = "main") -> int:
        done = run_cli("trigger", pipeline, "--ref", ref, env=self.env)
        assert done.returncode == 0, done.stdout + done.stderr
        match = re.match(r"run (\d+) queued", done.stdout)
        assert match, done.stdout
        return int(match.group(1))

    def finished(self, run_id: int, timeout: float = 60) -> Row[Any]:
        def check() -> Row[Any] | None:
            run = self.store.run(run_id)
            return run if run is not None and run.status in FINISHED else None

        return wait_for(check, f"run {run_id} to finish", timeout, lambda: self.details(run_id))

    def runs_of(self, delivery: str, timeout: float = 60) -> Row[Any]:
        def check() -> Row[Any] | None:
            runs = [r for r in self.store.runs(limit=100) if r.delivery_id == delivery]
            return runs[0] if runs and runs[0].status in FINISHED else None

        return wait_for(check, f"the run of delivery {delivery} to finish", timeout, self.output)

    def log(self, run_id: int) -> str:
        path = self.path / "logs"
        return "".join(p.read_text(errors="replace") for p in path.glob(f"*/{run_id}.log"))

    def details(self, run_id: int) -> str:
        run = self.store.run(run_id)
        steps = self.store.steps(run_id) if run else []
        told = [f"--- run {run_id}: {run.status if run else '?'} {run.reason if run else ''}"]
        told += [f"    step {s.position} {s.name}: {s.status} {s.exit_code} {s.detail}" for s in steps]
        return "\n".join([*told, "--- log:", self.log(run_id), "--- runner:", self.output()[-4000:]])

    def close(self) -> None:
        for server in self.servers:
            server.stop()
        for worker in self.workers:
            if worker.poll() is None:
                stop_process(worker)
        # A step whose runner was killed may still run: each left its process group's id behind.
        for group_file in self.path.glob("logs/*/*.pgid"):
            with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
                os.killpg(int(group_file.read_text()), signal.SIGKILL)
        if self._store is not None:
            self._store.close()


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Home]:
    home = Home(tmp_path)
    try:
        yield home
    finally:
        home.close()


def step_output(log: str, position: int) -> list[str]:
    """What step ``position`` printed on standard output, in the order it printed it."""
    lines, inside = [], False
    for stream, text in LINE.findall(log):
        if stream == "runner" and re.match(r"step \d+ \(", text):
            inside = text.startswith(f"step {position} (") and text.endswith(" starts")
        elif inside and stream == "out":
            lines.append(text)
    return lines


def listed_fds(log: str, position: int) -> dict[str, dict[str, str]]:
    """The descriptors step ``position`` found open (LIST_FDS), by whose they were: self, parent."""
    found = {}
    for line in step_output(log, position):
        if line.startswith("fds "):
            listing = json.loads(line.removeprefix("fds "))
            found[listing["who"]] = listing["fds"]
    return found


# 4. Descriptors -----------------------------------------------------------------------------------------

FDS_PIPELINE = """
    on:
      repository: acme/app
    workdir: work
    steps:
      - name: program
        run: [<PYTHON>, <SCRIPT>]
      - name: shell
        run: <PYTHON> <SCRIPT> parent; <PYTHON> <SCRIPT>
"""


def _fd_pipeline(home: Home) -> None:
    script = home.root / "list_fds.py"
    script.write_text(LIST_FDS)
    (home.path / "work").mkdir()
    home.pipeline("fds", FDS_PIPELINE, PYTHON=sys.executable, SCRIPT=script)


@pytest.mark.parametrize("how", ["up", "up --workers 2", "work"])
def test_a_step_starts_with_exactly_stdin_stdout_and_stderr_open(tmp_path: Path, how: str) -> None:
    # runner work on PostgreSQL: its connections are sockets of the worker's process too.
    with contextlib.ExitStack() as stack:
        database_url = stack.enter_context(postgres_database()) if how == "work" else None
        home = Home(tmp_path, database_url)
        stack.callback(home.close)
        _fd_pipeline(home)
        if how == "work":
            home.work()
        else:
            server = home.up(**({"RUNNER_WORKERS": "2"} if how.endswith("2") else {}))
            # The endpoint serves while the step runs, and the worker runs in the process that serves.
            assert server.get("/healthz").status == 200
        run_id = home.trigger("fds")
        run = home.finished(run_id)
        assert run.status == "succeeded", home.details(run_id)
        log = home.log(run_id)
        program, shell = listed_fds(log, 1), listed_fds(log, 2)
        assert set(program) == {"self"} and set(shell) == {"self", "parent"}, log
        for where, listing in [("program", program["self"]), *(("shell " + k, v) for k, v in shell.items())]:
            assert sorted(map(int, listing)) == [0, 1, 2], f"{how}: the {where} step has open {listing}"


def test_runner_up_starts_again_on_its_port_while_a_step_of_the_killed_one_runs(home: Home) -> None:
    (home.path / "work").mkdir()
    home.pipeline(
        "sleeper",
        """
        on:
          repository: acme/app
        workdir: work
        steps:
          - run: echo begin; exec sleep 300
        """,
    )
    first = home.up(RUNNER_STOP_GRACE="1")
    run_id = home.trigger("sleeper")
    group_file = home.path / "logs" / "sleeper" / f"{run_id}.pgid"
    wait_for(
        lambda: "begin" in step_output(home.log(run_id), 1) and group_file.exists(),
        "the step to start",
        details=lambda: home.details(run_id),
    )
    sleeper = int(group_file.read_text())
    first.process.kill()
    first.process.wait()
    assert alive(sleeper), "the step ended with the runner that started it: this test proves nothing"

    # The same port, at once: nothing but the dead runner held its socket.
    output = home.path / "second-up.log"
    with output.open("wb") as log:
        second = subprocess.Popen(
            [sys.executable, "-m", "runner", "up", "--port", str(first.port)],
            env={**home.env, "RUNNER_STOP_GRACE": "1"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:

        def healthy() -> bool:
            assert second.poll() is None, f"runner up exited {second.returncode}:\n{output.read_text()}"
            connection = http.client.HTTPConnection("127.0.0.1", first.port, timeout=5)
            try:
                connection.request("GET", "/healthz")
                return connection.getresponse().status == 200
            except OSError:
                return False
            finally:
                connection.close()

        wait_for(healthy, "the second runner up to serve", details=lambda: output.read_text())
        assert "Address already in use" not in output.read_text()
    finally:
        stop_process(second)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(sleeper, signal.SIGKILL)


# Settings and run values in a step's environment --------------------------------------------------------

ENV_PIPELINE = """
    on:
      repository: acme/app
      branches: [main]
      tags: ["v*"]
    workdir: work
    steps:
      - name: program
        run: [env]
      - name: shell
        run: env
"""

# Every RUNNER_* name the README promises a step (RUNNER_TAG and RUNNER_BRANCH: one of them per run).
DOCUMENTED = {
    "RUNNER_COMMIT",
    "RUNNER_BRANCH",
    "RUNNER_TAG",
    "RUNNER_REF",
    "RUNNER_REPOSITORY",
    "RUNNER_DELIVERY",
    "RUNNER_EVENT",
    "RUNNER_RUN_ID",
    "RUNNER_PIPELINE",
    "RUNNER_WORKDIR",
}


def push(ref: str, after: str) -> bytes:
    """GitHub's push payload, for ``ref`` and its new head ``after``."""
    payload = json.loads((PAYLOADS / "push" / "with-new-branch.payload.json").read_bytes())
    commit = copy.deepcopy(payload["commits"][0])
    payload.update(ref=ref, after=after, commits=[{**commit, "id": after}])
    payload["head_commit"]["id"] = after
    payload["repository"]["full_name"] = "acme/app"
    return json.dumps(payload).encode()


def deliver(server: Server, body: bytes) -> str:
    delivery = str(uuid.uuid4())
    answer = server.deliver("push", body, delivery)
    assert answer.status == 202, (answer.status, answer.body)
    return delivery


def test_steps_see_the_runs_values_and_none_of_runners_settings(tmp_path: Path) -> None:
    tools = tmp_path / "tools"
    tools.mkdir()
    with postgres_database() as database_url:
        settings = {"RUNNER_TOOL_PATH": str(tools), "RUNNER_STOP_GRACE": "7"}
        home = Home(tmp_path, database_url, **settings)
        try:
            upgraded = run_cli("db", "upgrade", env=home.env)
            assert upgraded.returncode == 0, upgraded.stderr
            (home.path / "work").mkdir()
            home.pipeline("env", ENV_PIPELINE)
            server = home.up()
            settings = {k: v for k, v in home.env.items() if k.startswith("RUNNER_")}
            assert {"RUNNER_SECRET", "RUNNER_DATABASE_URL", "RUNNER_HOME"} <= set(settings)
            secrets = {k: settings[k] for k in ("RUNNER_SECRET", "RUNNER_DATABASE_URL")}

            for ref, kind in [("refs/heads/main", "branch"), ("refs/tags/v1.2.0", "tag")]:
                after = os.urandom(20).hex()
                delivery = deliver(server, push(ref, after))
                run = home.runs_of(delivery)
                assert run.status == "succeeded", home.details(run.id)
                name = ref.split("/", 2)[2]
                expected = {
                    "RUNNER_COMMIT": after,
                    "RUNNER_BRANCH" if kind == "branch" else "RUNNER_TAG": name,
                    "RUNNER_REF": ref,
                    "RUNNER_REPOSITORY": "acme/app",
                    "RUNNER_DELIVERY": delivery,
                    "RUNNER_EVENT": "push",
                    "RUNNER_RUN_ID": str(run.id),
                    "RUNNER_PIPELINE": "env",
                    "RUNNER_WORKDIR": str(home.path / "work"),
                }
                log = home.log(run.id)
                for position in (1, 2):
                    lines = step_output(log, position)
                    env = dict(line.split("=", 1) for line in lines if "=" in line)
                    runner_names = {k: v for k, v in env.items() if k.startswith("RUNNER_")}
                    assert runner_names == expected, f"{kind} push, step {position}: {runner_names}"
                    assert set(expected) <= DOCUMENTED
                    for key, value in secrets.items():
                        # Not under its own name, nor under any other.
                        assert not any(value in line for line in lines), (
                            f"{key}'s value reached step {position}"
                        )
                    assert env["PATH"].split(":")[0] == str(tools), env["PATH"]
        finally:
            home.close()


# 5. Credentials in a remote's URL ----------------------------------------------------------------------


class GitOverHTTP:
    """A bare repository served by git's dumb HTTP protocol, to clients with the right basic credentials."""

    def __init__(self, root: Path, username: str, password: str) -> None:
        self.bare = root / "app.git"
        self.work = root / "app-work"
        git("init", "-q", "--bare", "--initial-branch=main", self.bare)
        git("init", "-q", "--initial-branch=main", self.work)
        self.expected = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
        self.authorized = 0
        self.refused: list[str | None] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        repo = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.headers.get("Authorization") != repo.expected:
                    repo.refused.append(self.headers.get("Authorization"))
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="git"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                repo.authorized += 1
                path = self.path.split("?", 1)[0].removeprefix("/app.git/")
                file = (repo.bare / path).resolve()
                if not file.is_relative_to(repo.bare.resolve()) or not file.is_file():
                    self.send_error(404)
                    return
                body = file.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass

        return Handler

    def commit(self, version: str) -> str:
        (self.work / "version.txt").write_text(version + "\n")
        git("add", "--all", cwd=self.work)
        git("commit", "-q", "-m", version, cwd=self.work)
        git("push", "-q", self.bare, "main:refs/heads/main", cwd=self.work)
        # What the dumb protocol reads instead of asking a server side of git.
        git("update-server-info", cwd=self.bare)
        return git("rev-parse", "HEAD", cwd=self.work)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


GIT_PIPELINE = """
    on:
      repository: acme/app
    workdir: <WORKDIR>
    steps:
      - git: {remote: "<URL>"}
      - run: cat version.txt
      - name: note
        run: ["true", "<URL>"]
"""


def assert_nowhere(token: str, home: Home, run_id: int, workdir: Path) -> None:
    """``token`` is in none of the places runner writes a run, nor in the checkout's git files."""
    assert token not in home.log(run_id), home.log(run_id)
    listed = run_cli("runs", "--json", env=home.env)
    assert listed.returncode == 0 and token not in listed.stdout, listed.stdout
    logs = run_cli("logs", str(run_id), "--no-follow", env=home.env)
    assert token not in logs.stdout + logs.stderr
    assert token not in home.output()
    for reason in (home.path / "queues").glob("*/failed/*"):
        assert token not in reason.read_text(errors="replace"), reason
    if (workdir / ".git").exists():
        for path in (workdir / ".git").rglob("*"):
            assert not path.is_file() or token.encode() not in path.read_bytes(), path


@pytest.mark.parametrize(
    ("username", "password"),
    [("x-access-token", "SECRETTOKEN"), ("SECRETTOKEN", "")],
    ids=["user-and-token", "token-only"],
)
def test_a_token_in_the_remote_url_reaches_the_git_server_only(
    tmp_path: Path, home: Home, username: str, password: str
) -> None:
    token = "SECRETTOKEN"
    server = GitOverHTTP(tmp_path / "git", username, password)
    try:
        first = server.commit("version one")
        userinfo = f"{username}:{password}" if password else username
        url = f"http://{userinfo}@127.0.0.1:{server.port}/app.git"
        plain = f"http://127.0.0.1:{server.port}/app.git"
        home.pipeline("app", GIT_PIPELINE, WORKDIR="app", URL=url)
        workdir = home.path / "app"
        home.up()

        run_id = home.trigger("app")
        run = home.finished(run_id)
        assert (run.status, run.commit) == ("succeeded", first), home.details(run_id)
        assert step_output(home.log(run_id), 2) == ["version one"]
        # git asked without credentials first (as it does), then with the right ones only.
        assert server.authorized > 0 and set(server.refused) <= {None}, server.refused
        assert git("remote", "get-url", "origin", cwd=workdir) == plain
        # What runner writes of a command shows that a URL had credentials, and not which.
        assert f"$ true http://***@127.0.0.1:{server.port}/app.git" in home.log(run_id)
        assert_nowhere(token, home, run_id, workdir)

        # A checkout cloned before runner kept credentials out of .git/config: the next run takes them out.
        git("remote", "set-url", "origin", url, cwd=workdir)
        second = server.commit("version two")
        run_id = home.trigger("app")
        run = home.finished(run_id)
        assert (run.status, run.commit) == ("succeeded", second), home.details(run_id)
        assert step_output(home.log(run_id), 2) == ["version two"]
        assert git("remote", "get-url", "origin", cwd=workdir) == plain
        assert_nowhere(token, home, run_id, workdir)

        # Wrong credentials: the git step fails, and says so without them.
        wrong = url.replace(token, "WRONGTOKEN")
        home.pipeline("wrong", GIT_PIPELINE, WORKDIR="wrong", URL=wrong)
        run_id = home.trigger("wrong")
        run = home.finished(run_id)
        assert run.status == "failed" and (run.reason or "").startswith("step 1 (git) failed"), run.reason
        assert any(server.refused), "the server was never sent the wrong token"
        assert_nowhere("WRONGTOKEN", home, run_id, home.path / "wrong")
    finally:
        server.close()


def test_a_failure_reason_never_holds_a_urls_credentials(home: Home) -> None:
    program = "http://x-access-token:SECRETTOKEN@127.0.0.1/no-such-program"
    (home.path / "work").mkdir()
    home.pipeline(
        "bad",
        """
        on:
          repository: acme/app
        workdir: work
        steps:
          - run: ["<PROGRAM>", "--token", "https://SECRETTOKEN@example.com/"]
        """,
        PROGRAM=program,
    )
    home.up()
    run_id = home.trigger("bad")
    run = home.finished(run_id)
    [step] = home.store.steps(run_id)
    # The cause is still named: which program could not be started, and why.
    assert step.detail == "cannot start http://***@127.0.0.1/no-such-program: No such file or directory"
    assert run.status == "failed" and step.detail in (run.reason or ""), run.reason
    assert_nowhere("SECRETTOKEN", home, run_id, home.path / "work")


def test_masking_is_cheap_enough_to_run_on_every_line() -> None:
    # Not a benchmark: a guard against a pattern that backtracks without end on a long line.
    from runner.credentials import mask

    line = "a." * 50_000 + "://" + "b" * 100_000
    started = time.perf_counter()
    assert mask(line) == line
    assert time.perf_counter() - started < 1.0
