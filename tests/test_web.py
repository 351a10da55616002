"""The webhook endpoint, against a real ``runner serve`` process on loopback."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
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
import sqlalchemy as sa
from inotify_simple import INotify, flags
from support import (
    SECRET,
    Server,
    payload_files,
    postgres_database,
    run_cli,
    runner_env,
    sign,
    stop_started,
    wait_for,
)

from runner.body import MEMORY_BODY_BYTES, SPOOL_BODIES, SPOOL_BYTES, signature, verify_signature

VECTOR_SECRET = "It's a Secret to Everybody"
VECTOR_BODY = b"Hello, World!"
VECTOR_SIGNATURE = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"


def start_server(home: Path, database_url: str | None = None, **env: str) -> Server:
    environment = runner_env(home, database_url, **env)
    upgraded = run_cli("db", "upgrade", env=environment)
    assert upgraded.returncode == 0, upgraded.stderr
    return Server(home, environment)


@pytest.fixture(autouse=True)
def _no_server_outlives_its_test() -> Iterator[None]:
    yield
    stop_started()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = start_server(tmp_path)
    yield srv
    assert srv.stop() == 0, srv.output()
    assert SECRET not in srv.output()


def queued(home: Path) -> list[str]:
    return sorted(p.name for p in (home / "queues" / "main").glob("*.json"))


def push_payload() -> bytes:
    return next(p for p in payload_files() if p.name == "with-new-branch.payload.json").read_bytes()


def test_signature_test_vector_from_githubs_documentation() -> None:
    assert signature(VECTOR_SECRET.encode(), VECTOR_BODY) == VECTOR_SIGNATURE
    assert verify_signature(VECTOR_SECRET.encode(), VECTOR_BODY, VECTOR_SIGNATURE)
    assert not verify_signature(VECTOR_SECRET.encode(), VECTOR_BODY + b" ", VECTOR_SIGNATURE)


def test_server_verifies_the_test_vector(tmp_path: Path) -> None:
    srv = start_server(tmp_path, RUNNER_SECRET=VECTOR_SECRET)
    try:
        headers = {
            "X-GitHub-Event": "ping",
            "X-GitHub-Delivery": "vector-1",
            "Content-Type": "application/json",
        }
        answer = srv.post(VECTOR_BODY, {**headers, "X-Hub-Signature-256": VECTOR_SIGNATURE})
        # The signature passed; the body, being no JSON, is what it refused.
        assert (answer.status, answer.json()["error"]) == (400, "body")
        wrong = srv.post(VECTOR_BODY, {**headers, "X-Hub-Signature-256": VECTOR_SIGNATURE[:-1] + "0"})
        assert (wrong.status, wrong.json()["error"]) == (403, "signature")
    finally:
        srv.stop()
    assert VECTOR_SECRET not in srv.output()


def test_every_shared_payload_is_queued_exactly_once(server: Server) -> None:
    files = payload_files()
    assert len(files) >= 200
    sent: dict[str, tuple[str, str, Path]] = {}
    connection = server.connection()
    for i, path in enumerate(files):
        event = path.parent.name
        delivery = str(uuid.uuid4())
        # GitHub sends both content types; so do we, alternately.
        answer = server.deliver(event, path.read_bytes(), delivery, form=i % 2 == 1, connection=connection)
        assert answer.status == 202, (path, answer.body)
        body = answer.json()
        assert body["delivery"] == delivery
        sent[body["entry"]] = (event, delivery, path)
    connection.close()
    assert queued(server.home) == sorted(sent)
    for name, (event, delivery, path) in sent.items():
        entry = json.loads((server.home / "queues" / "main" / name).read_bytes())
        assert entry["event"] == event
        assert entry["delivery"] == delivery
        assert entry["hook_id"] == "292430182"
        assert entry["received_at"]
        assert entry["payload"] == json.loads(path.read_bytes()), path


def test_refused_deliveries_enqueue_nothing(server: Server) -> None:
    body = push_payload()
    good = {
        "Content-Type": "application/json",
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": "f3a5e0a0-1d2c-11ef-8e2a-7c1e6f4d0001",
        "X-Hub-Signature-256": sign(body),
    }
    sha1 = "sha1=" + hmac.new(SECRET.encode(), body, hashlib.sha1).hexdigest()
    cases = [
        ({"X-Hub-Signature-256": None}, body, 401, "signature"),
        ({"X-Hub-Signature-256": ""}, body, 401, "signature"),
        ({"X-Hub-Signature-256": sign(body + b"x")}, body, 403, "signature"),
        ({"X-Hub-Signature-256": sign(body)[:-2]}, body, 403, "signature"),
        ({"X-Hub-Signature-256": sign(body, "another secret")}, body, 403, "signature"),
        ({"X-Hub-Signature-256": sha1}, body, 403, "signature"),
        ({"X-Hub-Signature-256": sign(body).upper()}, body, 403, "signature"),
        ({"X-GitHub-Event": None}, body, 400, "x-github-event"),
        ({"X-GitHub-Delivery": None}, body, 400, "x-github-delivery"),
        ({"X-GitHub-Delivery": "../../etc/passwd"}, body, 400, "x-github-delivery"),
        ({"X-Hub-Signature-256": sign(b'{"a": 1')}, b'{"a": 1', 400, "body"),
        ({"X-Hub-Signature-256": sign(b"[1, 2]")}, b"[1, 2]", 400, "body"),
        ({"X-Hub-Signature-256": sign(b'{"a": NaN}')}, b'{"a": NaN}', 400, "body"),
        ({"X-Hub-Signature-256": sign(b"")}, b"", 400, "body"),
        (
            {"Content-Type": "application/x-www-form-urlencoded", "X-Hub-Signature-256": sign(b"other=1")},
            b"other=1",
            400,
            "body",
        ),
    ]
    for changes, payload, status, check in cases:
        headers = {k: v for k, v in {**good, **changes}.items() if v is not None}
        answer = server.post(payload, headers)
        assert (answer.status, answer.json()["error"]) == (status, check), changes
        assert answer.json()["message"]
        assert queued(server.home) == []
    assert server.deliver("push", body).status == 202
    assert len(queued(server.home)) == 1


def _raw_request(port: int, head: bytes, chunks: Iterator[bytes]) -> bytes:
    """Send a request slowly enough that the answer comes while the body is still being sent."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(head)
        answer = b""
        for chunk in chunks:
            try:
                sock.sendall(chunk)
            except OSError:
                break
            sock.settimeout(0.05)
            try:
                answer += sock.recv(65536)
            except TimeoutError:
                pass
            except OSError:
                break
            finally:
                sock.settimeout(20)
            if b"\r\n\r\n" in answer:
                break
        try:
            while not _complete(answer) and (data := sock.recv(65536)):
                answer += data
        except OSError:
            pass
        return answer


def _complete(answer: bytes) -> bool:
    head, sep, body = answer.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return True


def test_a_body_over_25_mib_is_refused_without_reading_it(server: Server) -> None:
    size = 26 * 1024 * 1024
    signature_of_zeros = sign(b"\0" * size)
    head = (
        f"POST /github-webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"X-GitHub-Event: push\r\nX-GitHub-Delivery: big-1\r\nX-Hub-Signature-256: {signature_of_zeros}\r\n"
    )
    chunk = b"\0" * (1024 * 1024)
    sent = [0]

    def body() -> Iterator[bytes]:
        for _ in range(26):
            sent[0] += 1
            yield chunk

    answer = _raw_request(server.port, (head + f"Content-Length: {size}\r\n\r\n").encode(), body())
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"size"' in answer
    assert sent[0] < 26, "the server waited for the whole body before answering"

    # Without a Content-Length (chunked), the server counts as it reads and stops past the limit.
    sent[0] = 0

    def chunked() -> Iterator[bytes]:
        for _ in range(27):
            sent[0] += 1
            yield b"%x\r\n" % len(chunk) + chunk + b"\r\n"
        yield b"0\r\n\r\n"

    answer = _raw_request(server.port, (head + "Transfer-Encoding: chunked\r\n\r\n").encode(), chunked())
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent[0] <= 27
    assert queued(server.home) == []
    assert server.get("/healthz").status == 200


def test_concurrent_deliveries_get_distinct_complete_entries_in_order(server: Server) -> None:
    body = push_payload()
    expected = json.loads(body)
    watch = INotify()
    watch.add_watch(server.home / "queues" / "main", flags.MOVED_TO)
    answers: dict[str, str] = {}
    failures: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(50)

    def client(n: int) -> None:
        connection = server.connection()
        barrier.wait()
        try:
            for i in range(10):
                delivery = f"c{n:02d}-{i:02d}-{uuid.uuid4()}"
                answer = server.deliver("push", body, delivery, connection=connection)
                with lock:
                    if answer.status == 202:
                        answers[answer.json()["entry"]] = delivery
                    else:
                        failures.append(f"{answer.status} {answer.body!r}")
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    published: list[str] = []
    while events := watch.read(timeout=300):
        for event in events:
            assert not event.mask & flags.Q_OVERFLOW
            published.append(event.name)
    watch.close()
    assert failures == []
    assert len(answers) == 500
    assert queued(server.home) == sorted(answers)
    assert published == sorted(published), "names were not published in increasing order"
    assert sorted(published) == sorted(answers)
    for name, delivery in answers.items():
        entry = json.loads((server.home / "queues" / "main" / name).read_bytes())
        assert entry["delivery"] == delivery
        assert entry["payload"] == expected
    leftovers = [p.name for p in (server.home / "queues" / "main").iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_healthz_reports_an_unusable_queue_directory(server: Server) -> None:
    assert server.get("/healthz").json() == {"status": "ok"}
    main = server.home / "queues" / "main"
    main.rename(server.home / "queues" / "moved")
    main.write_text("not a directory")
    answer = server.get("/healthz")
    assert answer.status == 503
    assert "queue" in answer.json()["problems"]
    main.unlink()
    (server.home / "queues" / "moved").rename(main)
    assert server.get("/healthz").status == 200


def test_healthz_reports_an_unreachable_database(tmp_path: Path) -> None:
    with postgres_database() as url:
        srv = start_server(tmp_path, url)
        try:
            assert srv.get("/healthz").status == 200
            admin = sa.create_engine(
                sa.engine.make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT"
            )
            with admin.connect() as connection:
                name = sa.engine.make_url(url).database
                connection.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
            admin.dispose()
            answer = srv.get("/healthz")
            assert answer.status == 503
            assert "database" in answer.json()["problems"]
            assert srv.deliver("ping", b'{"zen": "still queued"}').status == 202
        finally:
            srv.stop()


def test_serve_refuses_to_start_without_a_secret(tmp_path: Path) -> None:
    env = runner_env(tmp_path)
    del env["RUNNER_SECRET"]
    assert run_cli("db", "upgrade", env=env).returncode == 0
    result = run_cli("serve", "--port", "0", env=env, timeout=30)
    assert result.returncode == 1
    assert "RUNNER_SECRET" in result.stderr and "RUNNER_SECRET_FILE" in result.stderr
    assert not (tmp_path / "queues" / "main").exists() or queued(tmp_path) == []


def test_secret_from_a_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    env = runner_env(tmp_path)
    del env["RUNNER_SECRET"]
    env["RUNNER_SECRET_FILE"] = str(secret_file)
    assert run_cli("db", "upgrade", env=env).returncode == 0
    srv = Server(tmp_path, env)
    try:
        assert srv.deliver("ping", b'{"zen": "Keep it logically awesome."}').status == 202
    finally:
        srv.stop()
    assert len(queued(tmp_path)) == 1


def test_sigterm_answers_what_is_in_flight(tmp_path: Path) -> None:
    srv = start_server(tmp_path)
    body = push_payload()
    answers: list[int] = []

    def client() -> None:
        connection = srv.connection()
        try:
            for _ in range(40):
                answers.append(srv.deliver("push", body, connection=connection).status)
        except OSError:
            pass
        finally:
            connection.close()

    threads = [threading.Thread(target=client) for _ in range(10)]
    for t in threads:
        t.start()
    while len(answers) < 50:
        threading.Event().wait(0.01)
    assert srv.stop() == 0
    for t in threads:
        t.join()
    # Every delivery answered 202 is on disk; none was answered otherwise.
    assert set(answers) <= {202}
    assert len(queued(tmp_path)) >= answers.count(202)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # The command name may hold spaces and parentheses; the fields after the last ")" do not.
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return sorted(found)


def _serving_process(connection: http.client.HTTPConnection, server_port: int, pids: list[int]) -> int | None:
    """Which of ``pids`` holds the server's end of ``connection`` (after it has answered on it)."""
    client_port = connection.sock.getsockname()[1]
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1], fields[2]
        if int(local.split(":")[1], 16) == server_port and int(remote.split(":")[1], 16) == client_port:
            inodes.add(f"socket:[{fields[9]}]")
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd) in inodes:
                    return pid
    return None


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


# Imports what ``runner serve`` imports before it forks, freezes them (with "freeze") as it does, forks, and
# prints the minor page faults of the child's first full garbage collection: each is a page the child shared
# with its parent and now copies.
FORK_COLLECTION_PROBE = """
import gc, os, sys
import hypercorn.asyncio, hypercorn.config
import runner.web
from runner.server import freeze_startup
if sys.argv[1] == "freeze":
    freeze_startup()
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    def faults():
        return int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[7])
    before = faults()
    gc.collect()
    os.write(write, str(faults() - before).encode())
    os._exit(0)
os.waitpid(pid, 0)
print(os.read(read, 64).decode())
"""


def _collection_faults(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", FORK_COLLECTION_PROBE, mode], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


def test_a_forked_server_process_collects_garbage_without_copying_its_parents_pages() -> None:
    # Unfrozen, a full collection walks (and so writes to) every object the imports made, some 74,000: the
    # child copies thousands of pages, and its event loop stands still for tens of milliseconds meanwhile.
    unfrozen = _collection_faults("no-freeze")
    frozen = _collection_faults("freeze")
    assert frozen < 1000, (frozen, unfrozen)
    assert frozen * 5 < unfrozen, (frozen, unfrozen)


def test_two_server_processes_share_the_port_and_the_queue(tmp_path: Path) -> None:
    environment = runner_env(tmp_path)
    assert run_cli("db", "upgrade", env=environment).returncode == 0
    srv = Server(tmp_path, environment, args=("--workers", "2"))
    children = _children(srv.process.pid)
    try:
        assert len(children) == 2, srv.output()
        body = push_payload()
        watch = INotify()
        watch.add_watch(tmp_path / "queues" / "main", flags.MOVED_TO)
        answers: dict[str, str] = {}
        failures: list[str] = []
        lock = threading.Lock()

        def deliver(connection: http.client.HTTPConnection, delivery: str) -> None:
            answer = srv.deliver("push", body, delivery, connection=connection)
            with lock:
                if answer.status == 202:
                    answers[answer.json()["entry"]] = delivery
                else:
                    failures.append(f"{answer.status} {answer.body!r}")

        # Connections until each process holds some: the kernel hands each to whichever accepts first.
        connections: dict[int, list[http.client.HTTPConnection]] = {pid: [] for pid in children}
        for n in range(40):
            connection = srv.connection()
            deliver(connection, f"first-{n}")
            holder = _serving_process(connection, srv.port, children)
            assert holder in connections, (holder, children)
            connections[holder].append(connection)
            if n >= 5 and all(connections.values()):
                break
        assert all(connections.values()), {pid: len(c) for pid, c in connections.items()}

        def client(connection: http.client.HTTPConnection, n: int) -> None:
            for i in range(20):
                deliver(connection, f"c{n:02d}-{i:02d}-{uuid.uuid4()}")

        threads = [
            threading.Thread(target=client, args=(connection, n))
            for n, connection in enumerate(c for group in connections.values() for c in group)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for group in connections.values():
            for connection in group:
                connection.close()
        published: list[str] = []
        while events := watch.read(timeout=300):
            published.extend(event.name for event in events)
        watch.close()
        assert failures == []
        assert len(answers) == len(set(answers.values())) == len(threads) * 21
        # Names come from the lock both processes take: distinct, and published in increasing order.
        assert queued(tmp_path) == sorted(answers)
        assert published == sorted(published) == sorted(answers)
        for name, delivery in answers.items():
            assert json.loads((tmp_path / "queues" / "main" / name).read_bytes())["delivery"] == delivery
    finally:
        code = srv.stop()
    assert code == 0, srv.output()
    assert all(_gone(pid) for pid in children), srv.output()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", srv.port), timeout=5).close()
    assert SECRET not in srv.output()


def test_a_server_process_that_dies_stops_the_others(tmp_path: Path) -> None:
    environment = runner_env(tmp_path)
    assert run_cli("db", "upgrade", env=environment).returncode == 0
    srv = Server(tmp_path, environment, args=("--workers", "2"))
    children = _children(srv.process.pid)
    try:
        assert len(children) == 2, srv.output()
        os.kill(children[0], signal.SIGKILL)
        assert srv.process.wait(timeout=20) == 1
    finally:
        srv.stop()
    assert all(_gone(pid) for pid in children), srv.output()
    assert f"server process {children[0]} exited with status -9" in srv.output()


def test_server_processes_stop_when_their_parent_is_killed(tmp_path: Path) -> None:
    environment = runner_env(tmp_path)
    assert run_cli("db", "upgrade", env=environment).returncode == 0
    srv = Server(tmp_path, environment, args=("--workers", "2"))
    children = _children(srv.process.pid)
    try:
        assert len(children) == 2, srv.output()
        srv.process.kill()
        srv.process.wait(timeout=20)
        deadline = time.monotonic() + 20
        while not all(_gone(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(_gone(pid) for pid in children), srv.output()
    finally:
        srv.stop()
        for pid in children:
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)
    assert "the parent process is gone" in srv.output()


# Large bodies and hostile load -----------------------------------------------------------------------------


def large_push(size: int) -> bytes:
    """A real push payload whose commits are repeated until its JSON text is ``size`` bytes or more."""
    payload = json.loads(push_payload())
    commits = payload["commits"]
    while len(body := json.dumps(payload).encode()) < size:
        payload["commits"] = payload["commits"] + commits * max(1, len(payload["commits"]))
    return body


def temps(home: Path) -> dict[str, int]:
    """The hidden temporary files in the main queue, with their sizes."""
    found = {}
    for path in (home / "queues" / "main").glob(".*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            found[path.name] = path.stat().st_size
    return found


def upload_head(size: int | None, signature: str | None, delivery: str = "large-1") -> bytes:
    """A delivery's request line and headers; the body is the caller's to send."""
    lines = [
        "POST /github-webhook HTTP/1.1",
        "Host: 127.0.0.1",
        "Content-Type: application/json",
        "X-GitHub-Event: push",
        f"X-GitHub-Delivery: {delivery}",
        "X-GitHub-Hook-ID: 292430182",
    ]
    if signature is not None:
        lines.append(f"X-Hub-Signature-256: {signature}")
    lines.append("Transfer-Encoding: chunked" if size is None else f"Content-Length: {size}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_answer(sock: socket.socket, timeout: float = 20) -> tuple[int, bytes]:
    """The status and body of the answer on ``sock``, which may come before the request's body has gone."""
    sock.settimeout(timeout)
    answer = b""
    with contextlib.suppress(ConnectionResetError):
        while not _complete(answer) and (data := sock.recv(65536)):
            answer += data
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer.split()[1]), answer.partition(b"\r\n\r\n")[2]


def closed_by_server(sock: socket.socket, timeout: float = 5) -> bool:
    """Whether the server closes ``sock`` within ``timeout`` s, whatever it has not read yet."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True


def memory_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


@pytest.mark.parametrize("form", [False, True], ids=["json", "form"])
def test_a_large_body_goes_to_disk_as_it_arrives_and_becomes_its_entry(server: Server, form: bool) -> None:
    payload = large_push(3 * 1024 * 1024)
    if form:
        from urllib.parse import urlencode

        body, content_type = (
            urlencode({"payload": payload.decode()}).encode(),
            "application/x-www-form-urlencoded",
        )
    else:
        body, content_type = payload, "application/json"
    head = upload_head(len(body), sign(body)).replace(b"application/json", content_type.encode())
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(head + body[: 1024 * 1024])
        # Past the small buffer, the body is in a hidden temporary file of the queue, not in memory.
        spooled = wait_for(
            lambda: [size for size in temps(server.home).values() if size >= 1024 * 1024 - MEMORY_BODY_BYTES],
            "the body's first MiB in a temporary file",
        )
        assert spooled and queued(server.home) == []
        sock.sendall(body[1024 * 1024 :])
        status, answer = read_answer(sock)
    assert status == 202, answer
    name = json.loads(answer)["entry"]
    assert queued(server.home) == [name]
    entry = json.loads((server.home / "queues" / "main" / name).read_bytes())
    assert (entry["event"], entry["delivery"], entry["hook_id"]) == ("push", "large-1", "292430182")
    assert entry["payload"] == json.loads(payload)
    assert temps(server.home) == {}


def test_a_large_body_that_fails_a_check_leaves_nothing_behind(server: Server) -> None:
    payload = large_push(2 * 1024 * 1024)
    cases = [
        (payload, sign(payload + b"x"), 403, "signature"),
        (b"[" + payload + b"]", None, 400, "body"),
        # Valid JSON as a whole once spliced into the entry, but not an object on its own: it must not pass.
        (payload + b', "event": "forged"', None, 400, "body"),
        (payload[:-1], None, 400, "body"),
    ]
    for body, signature_value, status, check in cases:
        answer = server.post(
            body,
            {
                "Content-Type": "application/json",
                "X-GitHub-Event": "push",
                "X-GitHub-Delivery": "large-2",
                "X-Hub-Signature-256": signature_value or sign(body),
            },
        )
        assert (answer.status, answer.json()["error"]) == (status, check), body[-40:]
        assert queued(server.home) == [] and temps(server.home) == {}
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(upload_head(len(payload), sign(payload)) + payload[: 1024 * 1024])
        wait_for(lambda: temps(server.home), "the body in a temporary file")
    # The client went away half-way: its temporary file goes too.
    wait_for(lambda: temps(server.home) == {}, "the temporary file of a delivery cut off to be removed")
    assert queued(server.home) == []
    assert server.deliver("push", payload).status == 202


def test_large_bodies_with_made_up_signatures_do_not_fill_memory(server: Server) -> None:
    pid = server.process.pid
    size = 24 * 1024 * 1024
    count = min(SPOOL_BODIES, SPOOL_BYTES // size)
    assert count >= 2
    chunk = b" " * (1024 * 1024)
    before = memory_kb(pid, "VmRSS")
    answers: list[int] = []

    def upload(n: int) -> None:
        with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
            sock.sendall(upload_head(size, "sha256=" + "0" * 64, f"attack-{n}"))
            for _ in range(24):
                sock.sendall(chunk)
            answers.append(read_answer(sock, timeout=60)[0])

    threads = [threading.Thread(target=upload, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == [403] * count
    # Held in memory, these bodies alone would be count * 24 MiB.
    grown_mb = (memory_kb(pid, "VmHWM") - before) / 1024
    assert grown_mb < 40, f"resident memory grew by {grown_mb:.0f} MB for {count} bodies of 24 MiB"
    assert temps(server.home) == {} and queued(server.home) == []


def test_bodies_beyond_the_budget_are_refused_503_at_once_and_valid_deliveries_go_on(server: Server) -> None:
    size = 10 * 1024 * 1024
    admitted = min(SPOOL_BODIES, SPOOL_BYTES // size)
    slow: list[socket.socket] = []
    try:
        for n in range(admitted):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=20)
            slow.append(sock)
            sock.sendall(
                upload_head(size, "sha256=" + "0" * 64, f"slow-{n}") + b"{" + b" " * MEMORY_BODY_BYTES
            )
        wait_for(lambda: len(temps(server.home)) == admitted, f"{admitted} bodies in temporary files")
        # One more large body, declared or chunked, has no place: refused before its body is read.
        for declared in (size, None):
            with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
                sock.sendall(upload_head(declared, "sha256=" + "0" * 64, "one-too-many"))
                if declared is None:
                    sock.sendall(b"%x\r\n%s\r\n" % (MEMORY_BODY_BYTES, b" " * MEMORY_BODY_BYTES))
                status, answer = read_answer(sock)
                assert (status, json.loads(answer)["error"]) == (503, "busy")
                assert closed_by_server(sock), "the connection of a refused body stayed open"
        wait_for(lambda: "deliveries (503)" in server.output(), "the refusal in the server's log")
        assert len(temps(server.home)) == admitted
        # GitHub's usual small deliveries have a budget of their own.
        assert server.deliver("push", push_payload()).status == 202
    finally:
        for sock in slow:
            sock.close()
    wait_for(lambda: temps(server.home) == {}, "the cut-off bodies' temporary files to be removed")
    large = large_push(2 * 1024 * 1024)
    assert server.deliver("push", large).status == 202
    assert len(queued(server.home)) == 2


def test_an_answer_before_the_body_has_arrived_closes_the_connection(server: Server) -> None:
    """The client learns at once, and the server keeps neither the connection nor what it had read of it."""
    for signature_value, size, status in [(None, 20 * 1024 * 1024, 401), (sign(b"x"), 30 * 1024 * 1024, 413)]:
        with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
            sock.sendall(upload_head(size, signature_value))
            with contextlib.suppress(OSError):
                sock.sendall(b" " * (2 * 1024 * 1024))
            assert read_answer(sock)[0] == status
            assert closed_by_server(sock), f"the connection stayed open after the {status}"
    assert server.deliver("ping", b'{"zen": "still here"}').status == 202
