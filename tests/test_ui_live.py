"""The status page's live parts and actions: the log follower on real files, the live log and run events as
server-sent events of a real runner, and the redeploy and cancel actions through the main queue and router."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from sqlalchemy import insert
from support import (
    FINISHED,
    SECRET,
    Server,
    WorkerProcess,
    failed_names,
    run_cli,
    runner_env,
    stop_started,
    wait_for,
)

from runner import tables
from runner.actions import ActionTaker, actions_of_run
from runner.config import Config, Secret
from runner.entry import Action
from runner.log_follow import Line, follow, follow_async
from runner.queue import Queue
from runner.store import Store
from runner.ui_actions import TOKEN_LIFETIME, CsrfTokens
from runner.ui_live import MAX_LOG_STREAMS

USER, PASSWORD = "alice", "correct horse"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def _cleanup() -> Iterator[None]:
    yield
    stop_started()


# The follower, on real files --------------------------------------------------------------------------


def _texts(batches: list[list[Line]]) -> list[bytes]:
    return [line.text for batch in batches for line in batch]


def test_lines_written_in_pieces_come_whole_and_the_follow_ends_with_the_run(tmp_path: Path) -> None:
    path = tmp_path / "1.log"
    log = path.open("ab", buffering=0)
    log.write(b"one\ntw")
    ended = threading.Event()
    seen: list[list[Line]] = []
    follower = follow(path, 0, ended.is_set, idle_check=0.2)
    seen.append(next(follower))
    assert _texts(seen) == [b"one"]
    log.write(b"o\nthr")
    seen.append(next(follower))
    # The partial "thr" is held back until its newline comes.
    assert _texts(seen) == [b"one", b"two"]
    assert seen[-1][-1].end == len(b"one\ntwo\n")
    log.write(b"ee\nno newline at the end")
    seen.append(next(follower))
    assert _texts(seen)[-1] == b"three"
    log.close()
    ended.set()
    seen.extend(follower)
    # Once the run has ended, a last line without its newline is passed on too; nothing more comes.
    assert _texts(seen) == [b"one", b"two", b"three", b"no newline at the end"]
    assert seen[-1][-1].end == path.stat().st_size


def test_a_log_that_appears_late_in_a_directory_not_made_yet_is_followed(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "app" / "7.log"
    ended = threading.Event()
    follower = follow(path, 0, ended.is_set, idle_check=0.2)
    started = threading.Event()

    def write() -> None:
        started.wait()
        path.parent.mkdir(parents=True)
        with path.open("ab", buffering=0) as log:
            log.write(b"first\n")

    writer = threading.Thread(target=write)
    writer.start()
    started.set()
    assert [line.text for line in next(follower)] == [b"first"]
    writer.join()
    ended.set()
    assert list(follower) == []


def test_a_follow_from_an_offset_skips_what_came_before(tmp_path: Path) -> None:
    path = tmp_path / "2.log"
    path.write_bytes(b"one\ntwo\nthree\n")
    batches = list(follow(path, len(b"one\n"), lambda: True))
    assert _texts(batches) == [b"two", b"three"]


def test_a_removed_log_is_read_to_its_end_and_the_follow_stops(tmp_path: Path) -> None:
    path = tmp_path / "3.log"
    path.write_bytes(b"kept\n")
    follower = follow(path, 0, lambda: False, idle_check=60)
    assert _texts([next(follower)]) == [b"kept"]
    with path.open("ab") as log:
        log.write(b"written before the removal\npartial")
    path.unlink()
    # Never ended by the run (ended() says no): the removal ends it, with what the open file still held.
    assert _texts(list(follower)) == [b"written before the removal", b"partial"]


def test_a_replaced_log_stops_the_follow(tmp_path: Path) -> None:
    path = tmp_path / "4.log"
    path.write_bytes(b"old\n")
    follower = follow(path, 0, lambda: False, idle_check=60)
    assert _texts([next(follower)]) == [b"old"]
    other = tmp_path / "other"
    other.write_bytes(b"another file's\n")
    other.replace(path)
    assert _texts(list(follower)) == []


def test_the_writer_closing_is_confirmed_by_the_caller_before_the_follow_ends(tmp_path: Path) -> None:
    path = tmp_path / "5.log"
    asked: list[bool] = []
    ended = threading.Event()

    def is_ended() -> bool:
        asked.append(ended.is_set())
        return ended.is_set()

    async def main() -> list[bytes]:
        got: list[bytes] = []

        async def read() -> None:
            # Asked every 60 s while nothing happens: only the writer's close makes it ask soon.
            async for batch in follow_async(path, 0, is_ended, idle_check=60):
                got.extend(line.text for line in batch)

        with path.open("ab", buffering=0) as log:
            log.write(b"a\n")
            reading = asyncio.ensure_future(read())
            while got != [b"a"] or not asked:
                await asyncio.sleep(0.01)
            log.write(b"b\n")
        # The writer closed it, and the run has not ended yet: the follow asks, and goes on.
        while len(asked) < 2:
            await asyncio.sleep(0.01)
        assert not reading.done()
        ended.set()
        await reading
        return got

    assert asyncio.run(asyncio.wait_for(main(), 30)) == [b"a", b"b"]
    assert asked[:2] == [False, False] and asked[-1] is True


# A real runner ------------------------------------------------------------------------------------------

PIPELINE = """\
on:
  repository: acme/app
workdir: work
env:
  GATES: {gates}
steps:
  - name: talk
    run: |
      echo "first line"
      while [ ! -e "$GATES/1" ]; do sleep 0.02; done
      echo "second line"
      while [ ! -e "$GATES/2" ]; do sleep 0.02; done
      echo "third line"
"""


@dataclass
class Home:
    path: Path
    env: dict[str, str]
    gates: Path

    def open_gate(self, number: int) -> None:
        (self.gates / str(number)).touch()

    def trigger(self, *args: str) -> int:
        done = run_cli("trigger", "live", *args, env=self.env)
        assert done.returncode == 0, done.stderr
        found = re.search(r"run (\d+) queued", done.stdout + done.stderr)
        assert found, done.stdout + done.stderr
        return int(found.group(1))

    def db(self, query: str, *args: Any) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.path / "runner.db") as connection:
            return connection.execute(query, args).fetchall()

    def status(self, run_id: int) -> str:
        return self.db("SELECT status FROM runs WHERE id = ?", run_id)[0][0]

    def finished(self, run_id: int) -> str:
        return wait_for(
            lambda: self.status(run_id) if self.status(run_id) in FINISHED else None, f"run {run_id}"
        )


@pytest.fixture
def home(tmp_path: Path) -> Home:
    gates = tmp_path / "gates"
    gates.mkdir()
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "work").mkdir()
    (tmp_path / "pipelines" / "live.yaml").write_text(PIPELINE.format(gates=gates))
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    (tmp_path / "ui-users").write_text(f"{USER}:{hashed}\n")
    env = runner_env(tmp_path, RUNNER_STOP_GRACE="1")
    migrated = run_cli("db", "upgrade", env=env)
    assert migrated.returncode == 0, migrated.stderr
    return Home(tmp_path, env, gates)


AUTH = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


class EventStream:
    """A server-sent event stream read as a browser's EventSource reads it."""

    def __init__(self, server: Server, path: str, last_event_id: str | None = None) -> None:
        self.connection = server.connection(timeout=30)
        headers = {"Authorization": AUTH, "Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        self.connection.request("GET", path, headers=headers)
        self.response = self.connection.getresponse()
        assert self.response.status == 200, self.response.read()
        assert self.response.getheader("content-type", "").startswith("text/event-stream")

    def next(self, deadline: float | None = None) -> dict[str, str] | None:
        """The next event (its event, id and data), or None at the stream's clean end."""
        event: dict[str, str] = {}
        data: list[str] = []
        while True:
            # Comments keep the stream open for ever: a deadline ends the wait for an event.
            if deadline is not None and time.monotonic() > deadline:
                pytest.fail("timed out waiting for an event")
            raw = self.response.readline()
            if not raw:
                return None
            line = raw.decode().rstrip("\n")
            if line == "":
                if data or event:
                    return {**event, "data": "\n".join(data)}
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "data":
                data.append(value)
            else:
                event[field] = value

    def until(self, check: Any, timeout: float = 60) -> list[dict[str, str]]:
        """The events up to the first that ``check`` accepts; a failure at the stream's end or deadline."""
        seen: list[dict[str, str]] = []
        deadline = time.monotonic() + timeout
        while True:
            event = self.next(deadline)
            assert event is not None, f"the stream ended; seen: {seen}"
            seen.append(event)
            if check(event):
                return seen

    def close(self) -> None:
        self.connection.close()


def _out(event: dict[str, str]) -> str | None:
    """What a log line's step printed on its standard output; None for any other line (runner's own)."""
    found = re.match(r"^\S+ out\s*\| (.*)$", event["data"])
    return found.group(1) if found else None


def _said(event: dict[str, str]) -> str:
    """A log line's text, without its time and stream."""
    return event["data"].split("| ", 1)[-1]


def test_a_running_runs_log_grows_line_by_line_and_last_event_id_resumes(home: Home) -> None:
    server = Server(home.path, home.env, command="up")
    run_id = home.trigger("--ref", "main")
    stream = EventStream(server, f"/runs/{run_id}/log/stream")
    seen = stream.until(lambda e: _out(e) == "first line")
    # The run waits at the gate: nothing of the second line yet, and the first came while the run runs.
    assert home.status(run_id) == "running"
    assert all(_out(e) != "second line" for e in seen)
    home.open_gate(1)
    second = stream.until(lambda e: _out(e) == "second line")[-1]
    assert home.status(run_id) == "running"
    stream.close()
    log = home.path / "logs" / "live" / f"{run_id}.log"
    # The id is the offset just past the line: where a reconnect goes on.
    assert log.read_bytes()[: int(second["id"])].endswith(b"| second line\n")
    resumed = EventStream(server, f"/runs/{run_id}/log/stream", last_event_id=second["id"])
    home.open_gate(2)
    rest = resumed.until(lambda e: e.get("event") == "end")
    lines = [_out(e) for e in rest[:-1]]
    assert "second line" not in lines and "first line" not in lines
    assert "third line" in lines and _said(rest[-2]) == "run finished"
    assert json.loads(rest[-1]["data"])["status"] == "succeeded"
    assert resumed.next() is None
    # An ended run's stream is its log and its end at once.
    whole = EventStream(server, f"/runs/{run_id}/log/stream").until(lambda e: e.get("event") == "end")
    assert [_out(e) for e in whole if _out(e)] == ["first line", "second line", "third line"]


def test_the_log_stream_refuses_a_bad_offset_and_an_unknown_run(home: Home) -> None:
    server = Server(home.path, home.env, command="serve")
    for path, headers, status in [
        ("/runs/999/log/stream", {}, 404),
        ("/runs/1/log/stream", {"Last-Event-ID": "12abc"}, 400),
    ]:
        connection = server.connection()
        connection.request("GET", path, headers={"Authorization": AUTH, **headers})
        answer = connection.getresponse()
        assert answer.status == status or (status == 400 and answer.status == 404), answer.read()
        connection.close()
    connection = server.connection()
    connection.request("GET", "/runs/1/log/stream")
    assert connection.getresponse().status == 401
    connection.close()


def test_a_process_follows_a_bounded_number_of_logs_and_refuses_one_more_until_they_end(home: Home) -> None:
    # Each follow holds an inotify instance: a user's 128 would otherwise go to one page's client, and the
    # worker's queues (the same user under runner up) could no longer be watched.
    server = Server(home.path, home.env, command="up")
    run_id = home.trigger("--ref", "main")
    streams = [EventStream(server, f"/runs/{run_id}/log/stream") for _ in range(MAX_LOG_STREAMS)]
    for stream in streams:
        stream.until(lambda e: _out(e) == "first line")
    connection = server.connection()
    connection.request("GET", f"/runs/{run_id}/log/stream", headers={"Authorization": AUTH})
    refused = connection.getresponse()
    # Not read before it is known to be refused: a stream served instead would never end.
    assert refused.status == 503, refused.getheaders()
    assert refused.getheader("Retry-After") == "30"
    assert f"{MAX_LOG_STREAMS} live logs are followed on this server process".encode() in refused.read()
    connection.close()
    # The page itself, and the events, are not refused.
    events = EventStream(server, "/events")
    home.open_gate(1)
    home.open_gate(2)
    for stream in streams:
        stream.until(lambda e: e.get("event") == "end")
        assert stream.next() is None
        stream.close()
    events.until(lambda e: e.get("event") == "run" and json.loads(e["data"])["status"] == "succeeded")
    # Their ends let go of their follows: a new stream is served again.
    again = EventStream(server, f"/runs/{run_id}/log/stream")
    assert json.loads(again.until(lambda e: e.get("event") == "end")[-1]["data"])["status"] == "succeeded"


def test_events_tell_a_run_starting_and_ending(home: Home) -> None:
    server = Server(home.path, home.env, command="up")
    events = EventStream(server, "/events")
    run_id = home.trigger("--ref", "main")
    started = events.until(lambda e: e.get("event") == "run")[-1]
    assert json.loads(started["data"]) == {"run": run_id, "pipeline": "live", "status": "running"}
    home.open_gate(1)
    home.open_gate(2)
    ended = events.until(lambda e: e.get("event") == "run")[-1]
    assert json.loads(ended["data"]) == {"run": run_id, "pipeline": "live", "status": "succeeded"}


def test_serve_stops_promptly_with_streams_open(home: Home) -> None:
    server = Server(home.path, home.env, command="serve")
    worker = WorkerProcess(home.env, home.path / "work.log")
    worker.wait_started()
    run_id = home.trigger("--ref", "main")
    log = EventStream(server, f"/runs/{run_id}/log/stream")
    log.until(lambda e: _out(e) == "first line")
    events = EventStream(server, "/events")
    server.process.terminate()
    # Each stream ends cleanly, by itself (the chunked body's last chunk): not cut off by Hypercorn at its
    # graceful timeout, which would raise IncompleteRead here.
    assert events.next() is None
    assert log.next() is None
    # Well within Hypercorn's 10 s graceful timeout, which a stream left open would have used up.
    assert server.process.wait(timeout=8) == 0
    home.open_gate(1)
    home.open_gate(2)
    assert home.finished(run_id) == "succeeded"


def test_runner_logs_follows_a_running_run_as_its_lines_come(home: Home) -> None:
    Server(home.path, home.env, command="up")
    run_id = home.trigger("--ref", "main")
    follower = subprocess.Popen(
        [sys.executable, "-m", "runner", "logs", str(run_id)],
        env=home.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert follower.stdout is not None

        def line_saying(text: bytes) -> bytes:
            while True:
                line = follower.stdout.readline()  # type: ignore[union-attr]
                assert line, "runner logs ended early"
                if line.rstrip().endswith(b"out   | " + text):
                    return line

        line_saying(b"first line")
        home.open_gate(1)
        line_saying(b"second line")
        home.open_gate(2)
        line_saying(b"third line")
        _, err = follower.communicate(timeout=60)
        assert follower.returncode == 0
        assert f"run {run_id}: succeeded" in err.decode()
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()


# Actions ------------------------------------------------------------------------------------------------


def _page(server: Server, path: str) -> str:
    connection = server.connection()
    connection.request("GET", path, headers={"Authorization": AUTH})
    answer = connection.getresponse()
    page = answer.read().decode()
    connection.close()
    assert answer.status == 200, page
    return page


def _token(home: Home, server: Server, run_id: int) -> str:
    """The CSRF token, from the run page's form."""
    page = _page(server, f"/runs/{run_id}")
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert found, page
    return found.group(1)


def _post(server: Server, path: str, body: str, **headers: str) -> http.client.HTTPResponse:
    connection = server.connection()
    connection.request(
        "POST",
        path,
        body=body.encode(),
        headers={"Authorization": AUTH, "Content-Type": "application/x-www-form-urlencoded", **headers},
    )
    answer = connection.getresponse()
    answer.read()
    connection.close()
    return answer


def _main_entries(home: Home) -> list[str]:
    return Queue(home.path / "queues" / "main").entries()


def test_an_action_without_a_valid_token_or_from_another_site_is_refused_and_nothing_is_queued(
    home: Home,
) -> None:
    run_id = home.trigger("--commit", COMMIT)
    server = Server(home.path, home.env, command="serve")
    token = _token(home, server, run_id)
    for body, headers in [
        ("", {}),
        ("csrf=", {}),
        ("csrf=" + "0" * 64, {}),
        ("csrf=" + token[:-1], {}),
        ("csrf=" + token, {"Origin": "https://evil.example"}),
        ("csrf=" + token, {"Referer": "https://evil.example/runs/1"}),
        ("csrf=" + token, {"Origin": "null"}),
    ]:
        answer = _post(server, f"/runs/{run_id}/redeploy", body, **headers)
        assert answer.status == 403, (body, headers)
    # Another user's token, and this user's once 12 hours old, are refused too.
    expired = CsrfTokens(Secret(SECRET)).token(USER, now=time.time() - TOKEN_LIFETIME - 60)
    for other in (_token_for(home, "bob"), expired):
        assert other != token
        answer = _post(server, f"/runs/{run_id}/redeploy", "csrf=" + other)
        assert answer.status == 403, other
    assert _main_entries(home) == []
    answer = _post(
        server, f"/runs/{run_id}/cancel", "csrf=" + token, Origin=f"http://127.0.0.1:{server.port}"
    )
    assert answer.status == 303
    assert answer.getheader("location") == f"/runs/{run_id}?asked=cancel"
    assert len(_main_entries(home)) == 1


def _token_for(home: Home, user: str) -> str:
    return CsrfTokens(Secret(SECRET)).token(user)


def test_a_csrf_token_is_its_user_s_for_12_hours_and_its_time_cannot_be_changed() -> None:
    tokens, now = CsrfTokens(Secret(SECRET)), 1_800_000_000.0
    token = tokens.token(USER, now)
    assert tokens.valid(USER, token, now) and tokens.valid(USER, token, now + TOKEN_LIFETIME - 1)
    assert TOKEN_LIFETIME == 12 * 3600
    assert not tokens.valid(USER, token, now + TOKEN_LIFETIME + 1)
    assert not tokens.valid("bob", token, now)
    # Made "later" by rewriting its time: the HMAC covers the time.
    redated = tokens.token(USER, now + 3600)[:10] + token[10:]
    assert not tokens.valid(USER, redated, now + TOKEN_LIFETIME + 1)
    # Another secret's token (another runner's) is not this one's; nor one dated well ahead.
    assert not CsrfTokens(Secret("another secret")).valid(USER, token, now)
    assert not tokens.valid(USER, tokens.token(USER, now + 3600), now)
    assert not tokens.valid(USER, "", now) and not tokens.valid(USER, "zz" * 37, now)


def test_redeploy_queues_the_same_commit_again_recorded_with_the_user(home: Home) -> None:
    server = Server(home.path, home.env, command="up")
    first = home.trigger("--ref", "main", "--commit", COMMIT)
    home.open_gate(1)
    home.open_gate(2)
    assert home.finished(first) == "succeeded"
    answer = _post(server, f"/runs/{first}/redeploy", "csrf=" + _token(home, server, first))
    assert answer.status == 303
    recorded = wait_for(
        lambda: home.db(
            "SELECT by, action, outcome, new_run_id FROM actions WHERE run_id = ? AND outcome != 'asked'",
            first,
        ),
        "the redeploy to be recorded",
    )
    by, action, outcome, new_run = recorded[0]
    assert (by, action, outcome) == (USER, "redeploy", "queued"), recorded
    assert home.finished(new_run) == "succeeded"
    pipeline, ref, commit, trigger = home.db(
        "SELECT pipeline, ref, [commit], trigger FROM runs WHERE id = ?", new_run
    )[0]
    assert (pipeline, ref, commit, trigger) == ("live", "refs/heads/main", COMMIT, "manual")
    # The pages say who did it: the old run lists the action, the new one says it was redeployed by whom.
    old_page = _page(server, f"/runs/{first}")
    assert f"redeployed by {USER}" in old_page and f"run {new_run}" in old_page
    assert f"Redeployed by {USER}" in _page(server, f"/runs/{new_run}")


def test_cancel_of_a_running_and_of_a_waiting_run_and_a_bad_action_is_recorded(home: Home) -> None:
    server = Server(home.path, home.env, command="up")
    running = home.trigger("--ref", "main")
    waiting = home.trigger("--ref", "main")
    wait_for(lambda: home.status(running) == "running", "the first run to start")
    token = _token(home, server, running)
    assert _post(server, f"/runs/{waiting}/cancel", "csrf=" + token).status == 303
    assert _post(server, f"/runs/{running}/cancel", "csrf=" + token).status == 303
    assert home.finished(running) == "cancelled"
    assert home.finished(waiting) == "cancelled"
    # An ended run cannot be cancelled: recorded with the reason, and the router goes on.
    assert _post(server, f"/runs/{running}/cancel", "csrf=" + token).status == 303
    rows = wait_for(
        lambda: (
            (r := home.db("SELECT run_id, outcome, detail FROM actions WHERE outcome != 'asked' ORDER BY id"))
            and len(r) == 3
            and r
        ),
        "the three actions to be recorded",
    )
    assert rows[0][:2] == (waiting, "cancelled") and "waiting" in rows[0][2]
    assert rows[1][:2] == (running, "cancelled") and "running" in rows[1][2]
    assert rows[2][:2] == (running, "refused") and "has ended already" in rows[2][2]
    later = home.trigger("--ref", "main")
    home.open_gate(1)
    home.open_gate(2)
    assert home.finished(later) == "succeeded"
    page = _page(server, f"/runs/{running}")
    assert f"cancel asked by {USER}: cancelled" in page and "refused" in page


def test_an_action_written_by_another_user_is_not_trusted(home: Home) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root, to give an entry to another user")
    run_id = home.trigger("--ref", "main")
    main = Queue(home.path / "queues" / "main")

    name = main.put(Action("cancel", run_id, "mallory", datetime.now(UTC)).written())
    os.chown(main.path(name), 65534, 65534)
    worker = WorkerProcess(home.env, home.path / "work.log")
    worker.wait_started()
    wait_for(lambda: failed_names(main) == [name], "the foreign action to be moved to failed/")
    reason = (main.directory / "failed" / f"{name}.reason").read_text()
    assert "not written by the webhook endpoint" in reason and "65534" in reason
    assert home.db("SELECT COUNT(*) FROM actions") == [(0,)]
    assert home.status(run_id) in ("queued", "running")
    home.open_gate(1)
    home.open_gate(2)
    assert home.finished(run_id) == "succeeded"


def test_an_action_is_done_once_and_a_bad_one_recorded_on_either_database(
    tmp_path: Path, database_url: str
) -> None:

    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "live.yaml").write_text(PIPELINE.format(gates=tmp_path))
    store = Store(database_url)
    try:
        store.upgrade()
        config = Config(home=tmp_path, database_url=database_url)
        run_id = store.create_run("live", trigger="manual", ref="refs/heads/main", commit=COMMIT)
        take = ActionTaker(config, store)
        asked = Action("redeploy", run_id, USER, datetime.now(UTC))
        outcome, detail = take("00000000000000000001.json", asked)
        assert outcome == "queued"
        new_run = int(detail.removeprefix("run "))
        # The same entry taken again (a crash before it left the queue) is not done again.
        assert take("00000000000000000001.json", asked) == ("queued", detail)
        assert [r.id for r in store.runs("live", limit=10)] == [new_run, run_id]
        made = store.run(new_run)
        assert made is not None and (made.ref, made.commit, made.trigger) == (
            "refs/heads/main",
            COMMIT,
            "manual",
        )
        queued = Queue(tmp_path / "queues" / "live")
        entries = [queued.read(name) for name in queued.entries()]
        assert [(e["run_id"], e["requested_by"]) for e in entries] == [(new_run, USER)]
        # Bad actions: recorded with the reason, nothing done.
        assert (
            take("00000000000000000002.json", Action("cancel", 999, USER, datetime.now(UTC)))[0] == "refused"
        )
        store.finish_run(run_id, "succeeded")
        outcome, detail = take(
            "00000000000000000003.json", Action("cancel", run_id, "bob", datetime.now(UTC))
        )
        assert outcome == "refused" and "has ended already" in detail
        (tmp_path / "pipelines" / "live.yaml").unlink()
        outcome, detail = take(
            "00000000000000000004.json", Action("redeploy", run_id, "bob", datetime.now(UTC))
        )
        assert outcome == "refused" and "no valid pipeline 'live'" in detail
        recorded = [(a.action, a.by, a.outcome, a.new_run_id) for a in actions_of_run(store, run_id)]
        assert recorded == [
            ("redeploy", USER, "queued", new_run),
            ("cancel", "bob", "refused", None),
            ("redeploy", "bob", "refused", None),
        ]
        assert [a.outcome for a in actions_of_run(store, new_run)] == ["queued"]
        # One the worker stopped in the middle of, before its outcome was recorded: not done again.
        at = datetime.now(UTC)
        with store.engine.begin() as connection:
            connection.execute(
                insert(tables.actions).values(
                    at=at, by="carol", action="redeploy", run_id=new_run, outcome="asked", entry="5.json"
                )
            )
        outcome, _ = take("5.json", Action("redeploy", new_run, "carol", at))
        assert outcome == "interrupted"
        assert len(store.runs("live", limit=10)) == 2
    finally:
        store.close()


# In a real browser ---------------------------------------------------------------------------------------


def _wait_in(driver: Any, check: Any, what: str) -> Any:
    return wait_for(lambda: check(), what, details=lambda: driver.page_source)


def test_in_a_browser_the_log_grows_line_by_line_and_the_pipeline_list_follows(home: Home) -> None:
    from browser import browser, log_in, screenshot
    from selenium.webdriver.common.by import By

    server = Server(home.path, home.env, command="up")
    base = f"http://127.0.0.1:{server.port}"
    with browser() as driver:
        log_in(driver, USER, PASSWORD)
        driver.get(base + "/")
        row = driver.find_element(By.ID, "pipeline-live")
        assert "run " not in row.text
        run_id = home.trigger("--ref", "main")
        # The list is fetched again when the run starts, without a reload.
        _wait_in(
            driver, lambda: f"run {run_id}" in driver.find_element(By.ID, "pipeline-live").text, "the list"
        )
        screenshot(driver, "live-pipelines")
        listing = driver.current_window_handle
        assert "running" in driver.find_element(By.ID, "pipeline-live").text

        # The run's page in a tab of its own: the list stays open in the first, to see the run's end.
        driver.switch_to.new_window("tab")
        log_in(driver, USER, PASSWORD)  # the login's header is set per tab
        driver.get(f"{base}/runs/{run_id}")
        state = driver.find_element(By.ID, "live-state")
        _wait_in(driver, lambda: state.text == "live", "the log to be followed")

        def printed() -> list[str]:
            # What the step printed, as the page shows it: TIME TEXT, live lines like those rendered.
            lines = driver.find_elements(By.CSS_SELECTOR, "#log .line.stream-out")
            return [line.text.split(" ", 1)[1] for line in lines]

        _wait_in(driver, lambda: printed() == ["first line"], "the first line")
        home.open_gate(1)
        # Written after the page was loaded: only the live stream can have brought it.
        _wait_in(driver, lambda: printed() == ["first line", "second line"], "the second line, live")
        assert driver.find_elements(By.CSS_SELECTOR, "#log .line.live.stream-out")
        screenshot(driver, "live-log-running")
        home.open_gate(2)
        _wait_in(driver, lambda: state.text == "ended: succeeded", "the end of the run")
        assert printed() == ["first line", "second line", "third line"]
        screenshot(driver, "live-log-ended")

        # The list, loaded before the run started and never reloaded, now has it ended.
        driver.switch_to.window(listing)
        _wait_in(
            driver,
            lambda: f"run {run_id}: succeeded" in driver.find_element(By.ID, "pipeline-live").text,
            "the list to show the run's end",
        )
        assert "never deployed" not in driver.find_element(By.ID, "pipeline-live").text
        screenshot(driver, "live-pipelines-ended")


def test_in_a_browser_redeploy_from_the_page_and_see_the_new_run(home: Home) -> None:
    from browser import browser, log_in, screenshot
    from selenium.webdriver.common.by import By

    server = Server(home.path, home.env, command="up")
    base = f"http://127.0.0.1:{server.port}"
    first = home.trigger("--ref", "main", "--commit", COMMIT)
    home.open_gate(1)
    home.open_gate(2)
    assert home.finished(first) == "succeeded"
    with browser() as driver:
        log_in(driver, USER, PASSWORD)
        driver.get(f"{base}/runs/{first}")
        driver.find_element(By.CSS_SELECTOR, "#redeploy button").click()
        _wait_in(driver, lambda: driver.find_elements(By.ID, "notice"), "the notice")
        assert driver.current_url == f"{base}/runs/{first}?asked=redeploy"
        screenshot(driver, "redeploy-asked")

        def new_run_link() -> Any:
            driver.refresh()
            links = driver.find_elements(By.CSS_SELECTOR, "#actions a")
            return links[0] if links else None

        link = _wait_in(driver, new_run_link, "the redeploy's new run on the page")
        new_run = int(link.text.removeprefix("run "))
        assert f"redeployed by {USER}" in driver.find_element(By.ID, "actions").text
        link.click()
        assert driver.current_url == f"{base}/runs/{new_run}"
        assert f"Redeployed by {USER} from run {first}" in driver.find_element(By.ID, "redeployed-by").text
        assert driver.find_element(By.ID, "commit").text == COMMIT
        screenshot(driver, "redeploy-new-run")
    assert home.finished(new_run) == "succeeded"


def test_under_runner_ui_path_the_forms_streams_and_the_redirect_after_a_post_keep_the_path(
    home: Home,
) -> None:
    env = {**home.env, "RUNNER_UI_PATH": "/runner"}
    run_id = home.trigger("--ref", "main", "--commit", COMMIT)
    server = Server(home.path, env, command="serve")
    page = _page(server, f"/runner/runs/{run_id}")
    assert (
        f'action="/runner/runs/{run_id}/redeploy"' in page
        and f'action="/runner/runs/{run_id}/cancel"' in page
    )
    assert f'data-log-stream="/runner/runs/{run_id}/log/stream"' in page, page
    token = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert token, page
    answer = _post(server, f"/runner/runs/{run_id}/cancel", "csrf=" + token.group(1))
    assert (answer.status, answer.getheader("location")) == (303, f"/runner/runs/{run_id}?asked=cancel")
    assert len(_main_entries(home)) == 1
    assert 'data-events="/runner/events"' in _page(server, "/runner/")
    # The streams answer under the path (EventStream checks the status and the type).
    EventStream(server, f"/runner/runs/{run_id}/log/stream").close()
    EventStream(server, "/runner/events").close()
