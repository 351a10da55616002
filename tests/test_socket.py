"""Socket activation: ``runner serve`` takes the socket systemd passes, and a restart refuses nothing.

The test is systemd here: it binds the socket itself, keeps it open, and starts ``runner serve`` through
bash (dash knows no descriptor above 9), which puts it on descriptor 3, sets ``LISTEN_FDS=1`` and
``LISTEN_PID`` to its own pid, and execs (the pid stays), as systemd and systemd-socket-activate do.
Restarting is stopping (SIGTERM) and starting again on the same socket, while clients post deliveries:
connections made meanwhile wait in the socket's backlog.
"""

from __future__ import annotations

import fcntl
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import PAYLOADS, register, run_cli, runner_env, sign, stop_started

BACKLOG = 1024


@pytest.fixture(autouse=True)
def _no_server_outlives_its_test() -> Iterator[None]:
    yield
    stop_started()


class Activated:
    """``runner serve`` (or another command) started as systemd starts a socket-activated service."""

    def __init__(self, home: Path, env: dict[str, str], fd: int, *args: str, listen_pid: str = "$$") -> None:
        self.log_path = home / f"serve-{uuid.uuid4().hex[:8]}.log"
        self._log = self.log_path.open("wb")
        script = f'export LISTEN_PID={listen_pid} LISTEN_FDS=1 LISTEN_FDNAMES=web; exec "$@" 3<&{fd} {fd}<&-'
        self.process = subprocess.Popen(
            ["/bin/bash", "-c", script, "sh", sys.executable, "-m", "runner", *args],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            pass_fds=(fd,),
        )
        register(self)

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


@pytest.fixture
def home(tmp_path: Path) -> Path:
    upgraded = run_cli("db", "upgrade", env=runner_env(tmp_path))
    assert upgraded.returncode == 0, upgraded.stderr
    return tmp_path


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """The socket systemd would hold: bound once, open for the whole test, on a descriptor above 3."""
    sock = socket.create_server(("127.0.0.1", 0), backlog=BACKLOG)
    # Not 3 itself: the shell moves it there, and closes the number it came on.
    high = fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD_CLOEXEC, 10)
    sock.close()
    sock = socket.socket(fileno=high)
    try:
        yield sock
    finally:
        sock.close()


def get(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def start(home: Path, listener: socket.socket, *args: str) -> Activated:
    server = Activated(home, runner_env(home), listener.fileno(), "serve", *args)
    # The socket accepts before runner does (it is the test's): healthy means runner answered.
    status, _ = get(listener.getsockname()[1], "/healthz")
    assert status == 200, server.output()
    return server


def ping_body() -> bytes:
    files = sorted((PAYLOADS / "ping").glob("*.json"))
    assert files, f"no ping payload in {PAYLOADS}"
    return files[0].read_bytes()


def queued_deliveries(home: Path) -> list[str]:
    return sorted(
        json.loads(path.read_bytes())["delivery"] for path in (home / "queues" / "main").glob("*.json")
    )


@pytest.mark.parametrize("workers", [1, 2])
def test_a_restart_on_the_passed_socket_refuses_no_delivery(
    home: Path, listener: socket.socket, workers: int
) -> None:
    port = listener.getsockname()[1]
    body = ping_body()
    acknowledged: list[str] = []
    failures: list[str] = []
    waits: list[float] = []
    done = threading.Event()
    lock = threading.Lock()

    def client() -> None:
        while not done.is_set():
            delivery = str(uuid.uuid4())
            headers = {
                "Content-Type": "application/json",
                "X-GitHub-Event": "ping",
                "X-GitHub-Delivery": delivery,
                "X-GitHub-Hook-ID": "292430182",
                "X-Hub-Signature-256": sign(body),
                "User-Agent": "GitHub-Hookshot/044aadd",
                "Connection": "close",
            }
            # A connection of its own each time, as GitHub's: each must reach a server, old or new.
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            began = time.monotonic()
            try:
                connection.request("POST", "/github-webhook", body=body, headers=headers)
                response = connection.getresponse()
                answer = response.read()
                with lock:
                    waits.append(time.monotonic() - began)
                    if response.status == 202:
                        acknowledged.append(delivery)
                    else:
                        failures.append(f"{response.status} {answer!r}")
            except OSError as exc:
                with lock:
                    failures.append(f"{type(exc).__name__}: {exc}")
            finally:
                connection.close()

    args = ("--workers", str(workers))
    server = start(home, listener, *args)
    logs = []
    clients = [threading.Thread(target=client) for _ in range(4)]
    for thread in clients:
        thread.start()
    try:
        for _ in range(2):
            time.sleep(1.0)
            assert server.stop() == 0, server.output()
            logs.append(server.output())
            # Nothing serves now: what arrives waits in the backlog until the new process accepts it. The gap
            # is held open, whatever a start takes, so that connections surely wait in it. The new process is
            # stopped only once it serves (a SIGTERM before its handlers are set ends it as a signal would).
            time.sleep(0.5)
            server = start(home, listener, *args)
        time.sleep(1.5)
    finally:
        done.set()
        for thread in clients:
            thread.join(timeout=60)
        server.stop()
        logs.append(server.output())
    assert failures == [], failures[:5]
    assert len(acknowledged) > 20, f"only {len(acknowledged)} deliveries went through"
    # Some connections were made while no runner served: they waited.
    assert max(waits) > 0.3, "no delivery was sent during a restart: this test proves nothing"
    assert queued_deliveries(home) == sorted(acknowledged)
    for log in logs:
        assert f"webhook endpoint: http://127.0.0.1:{port}/github-webhook" in log, log
        assert f"{workers} server process(es)" in log, log


def test_the_socket_systemd_passes_is_used_and_its_variables_are_not_passed_on(
    home: Path, listener: socket.socket
) -> None:
    # --port names another port: a passed socket wins over the settings, as the .socket unit decides.
    other = socket.create_server(("127.0.0.1", 0))
    try:
        server = Activated(
            home, runner_env(home), listener.fileno(), "serve", "--port", str(other.getsockname()[1])
        )
        try:
            status, _ = get(listener.getsockname()[1], "/healthz")
            assert status == 200, server.output()
            environ = Path(f"/proc/{server.process.pid}/environ").read_bytes().split(b"\0")
            # /proc shows the environment exec gave; what runner passes on to children is os.environ.
            assert any(item.startswith(b"LISTEN_FDS=") for item in environ)
            fd3 = os.readlink(f"/proc/{server.process.pid}/fd/3")
            assert fd3.startswith("socket:"), fd3
            flags = Path(f"/proc/{server.process.pid}/fdinfo/3").read_text()
            cloexec = int(
                next(line for line in flags.splitlines() if line.startswith("flags:")).split()[1], 8
            )
            assert cloexec & 0o2000000, "the passed socket must be close-on-exec: no step may inherit it"
        finally:
            assert server.stop() == 0, server.output()
    finally:
        other.close()


def test_a_socket_meant_for_another_process_is_ignored(home: Path, listener: socket.socket) -> None:
    # LISTEN_PID names the parent (the shell's parent): not this process's socket, so it binds its own.
    own = socket.create_server(("127.0.0.1", 0))
    port = own.getsockname()[1]
    own.close()
    server = Activated(
        home, runner_env(home), listener.fileno(), "serve", "--port", str(port), listen_pid=str(os.getpid())
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status, _ = get(port, "/healthz")
                break
            except OSError:
                assert server.process.poll() is None, server.output()
                assert time.monotonic() < deadline, server.output()
                time.sleep(0.05)
        assert status == 200
    finally:
        assert server.stop() == 0, server.output()
    assert f"LISTEN_FDS is set for process {os.getpid()}, not this one" in server.output()
    assert f"webhook endpoint: http://127.0.0.1:{port}/github-webhook" in server.output()


def refusal(home: Path, fd: int) -> str:
    server = Activated(home, runner_env(home), fd, "serve")
    try:
        server.process.wait(timeout=30)
    finally:
        server.stop()
    assert server.process.returncode == 1, server.output()
    output = server.output()
    assert "Traceback" not in output, output
    return output


def test_a_descriptor_that_is_no_listening_stream_socket_is_refused_clearly(
    home: Path, tmp_path: Path
) -> None:
    with (tmp_path / "file").open("wb") as file:
        assert "descriptor 3 is not a socket" in refusal(home, file.fileno())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as datagram:
        datagram.bind(("127.0.0.1", 0))
        assert "is not a TCP or Unix stream socket" in refusal(home, datagram.fileno())
    with socket.socket() as unlistened:
        unlistened.bind(("127.0.0.1", 0))
        assert "a socket that does not listen" in refusal(home, unlistened.fileno())


def test_runner_serves_a_passed_unix_socket(home: Path, tmp_path: Path) -> None:
    path = tmp_path / "web.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
        sock.listen(BACKLOG)
        server = Activated(home, runner_env(home), sock.fileno(), "serve")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.settimeout(30)
                client.connect(str(path))
                client.sendall(b"GET /healthz HTTP/1.1\r\nHost: runner\r\nConnection: close\r\n\r\n")
                answer = b""
                while chunk := client.recv(65536):
                    answer += chunk
            assert answer.startswith(b"HTTP/1.1 200"), answer
        finally:
            assert server.stop() == 0, server.output()
    assert f"webhook endpoint: unix:{path}/github-webhook" in server.output()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_steps_of_runner_up_on_a_passed_socket_get_neither_it_nor_its_variables(
    tmp_path: Path, listener: socket.socket, workers: str
) -> None:
    from test_isolation import Home, _fd_pipeline, listed_fds

    home = Home(tmp_path, RUNNER_WORKERS=workers)
    try:
        _fd_pipeline(home)
        home.pipeline("env", "on:\n  repository: acme/app\nworkdir: work\nsteps:\n  - run: [env]\n")
        upgraded = run_cli("db", "upgrade", env=home.env)
        assert upgraded.returncode == 0, upgraded.stderr
        server = Activated(home.path, home.env, listener.fileno(), "up")
        home.servers.append(server)  # type: ignore[arg-type]
        status, _ = get(listener.getsockname()[1], "/healthz")
        assert status == 200, server.output()
        fds_run, env_run = home.trigger("fds"), home.trigger("env")
        for run_id in (fds_run, env_run):
            assert home.finished(run_id).status == "succeeded", home.details(run_id)
        log = home.log(fds_run)
        program, shell = listed_fds(log, 1), listed_fds(log, 2)
        for where, listing in [("program", program["self"]), *(("shell " + k, v) for k, v in shell.items())]:
            assert sorted(map(int, listing)) == [0, 1, 2], f"the {where} step has open {listing}"
        environment = home.log(env_run)
        assert "RUNNER_PIPELINE=env" in environment, environment
        assert "LISTEN_" not in environment, environment
    finally:
        home.close()
