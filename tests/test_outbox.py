"""The outbox of what runs tell GitHub, and the reporter's passes that send it, against the fake GitHub.

The outbox's rows are in the real database (SQLite and PostgreSQL, the ``database_url`` fixture); each
pass of the reporter is called here directly (``send_due``), as the worker's task calls it in a thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fake_github import Answer, FakeGitHub, rate_limited, server_error, too_many_requests
from fake_github_base import error
from sqlalchemy import update

from runner import config as config_module
from runner import retention, tables
from runner.config import Config, ConfigError
from runner.github import GitHub
from runner.github_auth import TokenCredentials
from runner.github_reports import DEPLOYMENT, DEPLOYMENT_STATUS, STATUS, Report
from runner.outbox import GIVEN_UP, PENDING, SENT, Outbox
from runner.reporter import RETRY_FIRST, Reporter
from runner.store import Store

TOKEN = "github_pat_11BBBBBBB0fake0token0for0the0outbox"
REPOSITORY = "acme/app"
SHA = "6dcb09b5b57875f334f61aebed695e2e4193db5e"
OTHER_SHA = "7dcb09b5b57875f334f61aebed695e2e4193db5f"


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    store = Store(database_url)
    store.upgrade()
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def outbox(store: Store) -> Outbox:
    return Outbox(store)


@pytest.fixture
def github(tmp_path: Path, fake_github: FakeGitHub) -> GitHub:
    fake_github.add_token(TOKEN)
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    return GitHub(fake_github.url, TokenCredentials(token), timeout=1.0)


@pytest.fixture
def reporter(store: Store, github: GitHub) -> Reporter:
    return Reporter(store, github, report_for=86400.0, public_url="https://runner.example.com")


def status(state: str, context: str = "runner/app") -> Report:
    return Report(STATUS, {"state": state, "context": context, "description": f"{state} here"})


def deployment(run_id: int, environment: str = "production") -> Report:
    body = {
        "ref": SHA,
        "environment": environment,
        "auto_merge": False,
        "required_contexts": [],
        "payload": {"runner_run": run_id},
    }
    return Report(DEPLOYMENT, body)


def deployment_status(state: str) -> Report:
    return Report(DEPLOYMENT_STATUS, {"state": state, "log_url": "https://runner.example.com/runs/1"})


def new_run(store: Store) -> int:
    return store.create_run("app", trigger="push", ref="refs/heads/main", commit=SHA)


def make_due(outbox: Outbox) -> None:
    """Every pending row's next attempt is now: the pause a test does not wait for."""
    with outbox.engine.begin() as connection:
        connection.execute(
            update(tables.github_reports)
            .where(tables.github_reports.c.state == PENDING)
            .values(next_attempt_at=datetime.now(UTC) - timedelta(seconds=1))
        )


def states(outbox: Outbox, run_id: int) -> list[tuple[str, str]]:
    return [(row.kind, row.state) for row in outbox.of_run(run_id)]


# The outbox ------------------------------------------------------------------------------------------------


def test_a_run_s_rows_keep_their_order_and_a_deployment_status_follows_its_deployment(
    store: Store, outbox: Outbox
) -> None:
    run = new_run(store)
    outbox.add(run, REPOSITORY, SHA, [status("pending"), deployment(run), deployment_status("in_progress")])
    outbox.add(run, REPOSITORY, SHA, [status("success"), deployment_status("success")])
    rows = outbox.of_run(run)
    assert [(row.kind, row.body.get("state")) for row in rows] == [
        (STATUS, "pending"),
        (DEPLOYMENT, None),
        (DEPLOYMENT_STATUS, "in_progress"),
        (STATUS, "success"),
        (DEPLOYMENT_STATUS, "success"),
    ]
    assert [row.follows for row in rows] == [None, None, rows[1].id, None, rows[1].id]
    assert {(row.run_id, row.repository, row.commit, row.state, row.attempts) for row in rows} == {
        (run, REPOSITORY, SHA, PENDING, 0)
    }
    assert rows[1].body["payload"] == {"runner_run": run}
    assert all(row.created_at.tzinfo is not None and row.sent_at is None for row in rows)


def test_only_the_first_pending_row_of_each_run_is_due_and_runs_do_not_wait_for_each_other(
    store: Store, outbox: Outbox
) -> None:
    first, second = new_run(store), new_run(store)
    outbox.add(first, REPOSITORY, SHA, [status("pending"), status("success")])
    outbox.add(second, REPOSITORY, OTHER_SHA, [status("pending")])
    now = datetime.now(UTC) + timedelta(seconds=1)
    head, other = outbox.due(now)
    assert (head.run_id, head.body["state"], other.run_id) == (first, "pending", second)

    # The first run's head waits for a minute: its next row waits with it, the other run's does not.
    later = datetime.now(UTC) + timedelta(minutes=1)
    outbox.retry(head.id, later, "GitHub: POST ...: 503 Service Unavailable")
    assert [row.run_id for row in outbox.due(now)] == [second]
    assert outbox.next_due() == other.next_attempt_at
    outbox.sent(other.id, 42)
    assert outbox.due(now) == []
    assert outbox.next_due() == later
    [kept] = [row for row in outbox.of_run(first) if row.id == head.id]
    assert (kept.state, kept.attempts, kept.error) == (
        PENDING,
        1,
        "GitHub: POST ...: 503 Service Unavailable",
    )

    # Given up, the head no longer holds the run's next row back.
    outbox.give_up(head.id, "GitHub: POST ...: 422 Validation Failed")
    [after] = outbox.due(now)
    assert after.body["state"] == "success"
    assert states(outbox, first) == [(STATUS, GIVEN_UP), (STATUS, PENDING)]
    [sent] = outbox.of_run(second)
    assert (sent.state, sent.result, sent.attempts, sent.error) == (SENT, 42, 1, None)
    assert sent.sent_at is not None
    outbox.sent(after.id, 43)
    assert outbox.next_due() is None


def test_pending_rows_older_than_the_bound_are_given_up_with_their_last_error(
    store: Store, outbox: Outbox
) -> None:
    run = new_run(store)
    outbox.add(run, REPOSITORY, SHA, [status("pending")])
    [row] = outbox.of_run(run)
    outbox.retry(row.id, datetime.now(UTC), "GitHub: POST ...: no answer within 10 s")
    assert outbox.give_up_older(row.created_at, "too old") == []
    [given_up] = outbox.give_up_older(row.created_at + timedelta(seconds=1), "not sent within 1 s")
    assert given_up.id == row.id
    [kept] = outbox.of_run(run)
    assert (kept.state, kept.error) == (
        GIVEN_UP,
        "not sent within 1 s (last: GitHub: POST ...: no answer within 10 s)",
    )


def test_retention_drops_the_rows_of_pruned_runs_and_old_rows_sent_or_given_up(
    store: Store, outbox: Outbox, tmp_path: Path
) -> None:
    old = datetime.now(UTC) - timedelta(days=100)
    pruned, kept, waiting = new_run(store), new_run(store), new_run(store)
    for run in (pruned, kept, waiting):
        outbox.add(run, REPOSITORY, SHA, [deployment(run), deployment_status("in_progress")])
        outbox.add(run, REPOSITORY, SHA, [deployment_status("success")])
    store.set_run(pruned, status="failed", queued_at=old, started_at=old, finished_at=old)
    for run in (kept, waiting):
        store.finish_run(run, "succeeded")
    rows = {run: outbox.of_run(run) for run in (pruned, kept, waiting)}
    for row in rows[kept] + rows[waiting][:2]:
        outbox.sent(row.id, 1)
    outbox.give_up(rows[kept][2].id, "GitHub: ...: 422 Validation Failed")
    with outbox.engine.begin() as connection:
        connection.execute(update(tables.github_reports).values(created_at=old))
    outbox.add(kept, REPOSITORY, SHA, [status("success")])
    recent = outbox.of_run(kept)[-1]
    outbox.sent(recent.id, 2)

    config = Config(home=tmp_path, database_url=store.url, keep_runs=0)
    selected = retention.plan(config, store)
    assert [run.id for run in selected.runs] == [pruned]
    # The kept run's old rows, sent or given up; not the recent one; none of a run with a row to send.
    assert selected.reports == [row.id for row in rows[kept]]
    assert "3 GitHub report(s)" in selected.summary()
    retention.apply(config, store, selected)
    assert outbox.of_run(pruned) == []
    assert [row.id for row in outbox.of_run(kept)] == [recent.id]
    assert [row.state for row in outbox.of_run(waiting)] == [SENT, SENT, PENDING]


# The reporter's passes -------------------------------------------------------------------------------------


def test_a_pass_sends_a_run_s_rows_in_order_and_records_what_github_made(
    store: Store, outbox: Outbox, reporter: Reporter, fake_github: FakeGitHub
) -> None:
    run = new_run(store)
    outbox.add(run, REPOSITORY, SHA, [status("pending"), deployment(run), deployment_status("in_progress")])
    outbox.add(run, REPOSITORY, SHA, [status("success"), deployment_status("success")])
    assert reporter.send_due() is None
    assert [s["state"] for s in fake_github.commit_statuses(REPOSITORY, SHA)] == ["pending", "success"]
    [made] = fake_github.deployments[REPOSITORY]
    assert [s["state"] for s in fake_github.deployment_statuses[made["id"]]] == ["in_progress", "success"]
    rows = outbox.of_run(run)
    assert {row.state for row in rows} == {SENT}
    assert rows[1].result == made["id"]
    assert rows[0].result == fake_github.commit_statuses(REPOSITORY, SHA)[0]["id"]
    methods = [(r.method, r.path) for r in fake_github.requests]
    assert methods == [
        ("POST", f"/repos/{REPOSITORY}/statuses/{SHA}"),
        # Looked for first: a deployment an earlier attempt may have made is not made again.
        ("GET", f"/repos/{REPOSITORY}/deployments"),
        ("POST", f"/repos/{REPOSITORY}/deployments"),
        ("POST", f"/repos/{REPOSITORY}/deployments/{made['id']}/statuses"),
        ("POST", f"/repos/{REPOSITORY}/statuses/{SHA}"),
        ("POST", f"/repos/{REPOSITORY}/deployments/{made['id']}/statuses"),
    ]
    assert fake_github.requests[1].query == {"sha": [SHA], "environment": ["production"]}


@pytest.mark.parametrize(
    "failure",
    [
        lambda: server_error(500),
        lambda: server_error(502),
        lambda: too_many_requests(2),
        lambda: rate_limited(time.time() + 30),
    ],
    ids=["500", "502", "429", "403-rate-limit"],
)
def test_a_call_github_could_not_take_is_kept_and_made_again_when_github_said(
    store: Store,
    outbox: Outbox,
    reporter: Reporter,
    fake_github: FakeGitHub,
    failure: Callable[[], Answer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    answer = failure()
    run = new_run(store)
    outbox.add(run, REPOSITORY, SHA, [status("pending"), status("success")])
    fake_github.inject(answer)
    before = time.time()
    with caplog.at_level(logging.INFO, "runner.reporter"):
        due = reporter.send_due()
    assert due is not None
    [kept, waiting] = outbox.of_run(run)
    assert (kept.state, kept.attempts, waiting.state, waiting.attempts) == (PENDING, 1, PENDING, 0)
    assert kept.error and str(answer.status) in kept.error
    wait = kept.next_attempt_at.timestamp() - before
    if answer.status == 429:
        assert 1.5 <= wait <= 3.5, wait
    elif answer.status == 403:
        assert 28 <= wait <= 31, wait
    else:
        assert RETRY_FIRST - 0.5 <= wait <= RETRY_FIRST + 1, wait
    assert due == kept.next_attempt_at
    assert fake_github.commit_statuses(REPOSITORY, SHA) == []
    [said] = [r for r in caplog.records if r.name == "runner.reporter"]
    assert said.levelno == logging.WARNING and "kept" in said.getMessage(), said.getMessage()

    make_due(outbox)
    assert reporter.send_due() is None
    assert [s["state"] for s in fake_github.commit_statuses(REPOSITORY, SHA)] == ["pending", "success"]
    assert [(row.state, row.attempts) for row in outbox.of_run(run)] == [(SENT, 2), (SENT, 1)]


def test_the_pause_doubles_with_each_attempt_up_to_a_few_minutes(
    store: Store, outbox: Outbox, reporter: Reporter, fake_github: FakeGitHub
) -> None:
    run = new_run(store)
    outbox.add(run, REPOSITORY, SHA, [status("pending")])
    fake_github.outage()
    pauses = []
    for _ in range(12):
        make_due(outbox)
        before = time.time()
        due = reporter.send_due()
        assert due is not None
        pauses.append(round(due.timestamp() - before))
    assert pauses[:5] == [1, 2, 4, 8, 16], pauses
    assert pauses[-1] == 300, pauses
    fake_github.end_outage()
    make_due(outbox)
    assert reporter.send_due() is None
    [row] = outbox.of_run(run)
    assert (row.state, row.attempts) == (SENT, 13)


def test_a_refused_call_is_given_up_and_logged_once_and_the_run_s_next_rows_still_go(
    store: Store,
    outbox: Outbox,
    reporter: Reporter,
    fake_github: FakeGitHub,
    caplog: pytest.LogCaptureFixture,
) -> None:
    run = new_run(store)
    outbox.add(run, REPOSITORY, SHA, [status("pending"), status("success")])
    # What GitHub says of a status on a commit it does not know.
    fake_github.inject(Answer(422, error(422, f"No commit found for SHA: {SHA}")))
    with caplog.at_level(logging.INFO, "runner.reporter"):
        assert reporter.send_due() is None
    assert [(row.state, row.attempts) for row in outbox.of_run(run)] == [(GIVEN_UP, 1), (SENT, 1)]
    [given_up, _] = outbox.of_run(run)
    assert (
        given_up.error
        == f"GitHub: POST /repos/{REPOSITORY}/statuses/{SHA}: 422 No commit found for SHA: {SHA}"
    )
    said = [r for r in caplog.records if r.name == "runner.reporter"]
    assert [(r.levelname, "given up" in r.getMessage()) for r in said] == [("ERROR", True)], said
    assert len(said[0].getMessage().splitlines()) == 1
    assert TOKEN not in caplog.text
    assert [s["state"] for s in fake_github.commit_statuses(REPOSITORY, SHA)] == ["success"]


def test_a_deployment_whose_answer_was_lost_is_found_and_not_made_twice(
    store: Store, outbox: Outbox, reporter: Reporter, fake_github: FakeGitHub
) -> None:
    run = new_run(store)
    outbox.add(run, REPOSITORY, SHA, [deployment(run), deployment_status("in_progress")])
    # The look-up is answered; the deployment is made by GitHub, but answered after the client's timeout.
    path = f"/repos/{REPOSITORY}/deployments"
    fake_github.inject(Answer(path=path), Answer(delay=1.5, path=path))
    assert reporter.send_due() is not None
    [kept, waiting] = outbox.of_run(run)
    assert (kept.state, kept.attempts, waiting.state) == (PENDING, 1, PENDING)
    assert "no answer within 1 s" in (kept.error or ""), kept.error
    deadline = time.monotonic() + 5
    while not fake_github.deployments.get(REPOSITORY) and time.monotonic() < deadline:
        time.sleep(0.05)
    # Another run's deployment of the same commit and environment is not taken for this one's.
    with fake_github.lock:
        [first] = fake_github.deployments[REPOSITORY]
        fake_github.deployments[REPOSITORY].insert(
            0, {**first, "id": 999, "payload": {"runner_run": run + 1}}
        )

    make_due(outbox)
    assert reporter.send_due() is None
    assert len(fake_github.calls("POST", f"/repos/{REPOSITORY}/deployments")) == 1
    made = [d for d in fake_github.deployments[REPOSITORY] if d["id"] != 999]
    assert len(made) == 1
    [sent, status_sent] = outbox.of_run(run)
    assert (sent.state, sent.result, status_sent.state) == (SENT, made[0]["id"], SENT)
    assert [s["state"] for s in fake_github.deployment_statuses[made[0]["id"]]] == ["in_progress"]


def test_a_given_up_deployment_gives_up_its_statuses_without_a_call(
    store: Store, outbox: Outbox, reporter: Reporter, fake_github: FakeGitHub
) -> None:
    run = new_run(store)
    outbox.add(run, REPOSITORY, SHA, [deployment(run), deployment_status("in_progress")])
    outbox.add(run, REPOSITORY, SHA, [deployment_status("success")])
    path = f"/repos/{REPOSITORY}/deployments"
    fake_github.inject(Answer(path=path), Answer(422, error(422, f"No ref found for: {SHA}"), path=path))
    assert reporter.send_due() is None
    rows = outbox.of_run(run)
    assert [(row.state, row.attempts) for row in rows] == [(GIVEN_UP, 1), (GIVEN_UP, 0), (GIVEN_UP, 0)]
    assert "deployment was given up" in (rows[1].error or ""), rows[1].error
    assert fake_github.calls("POST", f"/repos/{REPOSITORY}/deployments/1/statuses") == []


def test_rows_not_sent_within_the_bound_are_given_up(
    store: Store, github: GitHub, fake_github: FakeGitHub, caplog: pytest.LogCaptureFixture
) -> None:
    reporter = Reporter(store, github, report_for=1.0, public_url=None)
    run = new_run(store)
    reporter.outbox.add(run, REPOSITORY, SHA, [status("pending"), status("success")])
    fake_github.outage(refuse=True)
    assert reporter.send_due() is not None
    time.sleep(1.1)
    with caplog.at_level(logging.INFO, "runner.reporter"):
        assert reporter.send_due() is None
    rows = reporter.outbox.of_run(run)
    assert [row.state for row in rows] == [GIVEN_UP, GIVEN_UP]
    assert rows[0].error and rows[0].error.startswith(
        "not sent within RUNNER_GITHUB_REPORT_FOR (1 s) (last: "
    )
    assert "cannot connect" in rows[0].error, rows[0].error
    said = [r for r in caplog.records if r.name == "runner.reporter"]
    assert [r.levelname for r in said] == ["WARNING", "ERROR", "ERROR"], said


def test_an_unreadable_token_file_keeps_the_rows_until_it_is_put_right(
    store: Store, outbox: Outbox, reporter: Reporter, fake_github: FakeGitHub, tmp_path: Path
) -> None:
    run = new_run(store)
    outbox.add(run, REPOSITORY, SHA, [status("pending")])
    (tmp_path / "token").chmod(0o644)
    assert reporter.send_due() is not None
    [kept] = outbox.of_run(run)
    assert kept.state == PENDING and "other users may read" in (kept.error or ""), kept.error
    (tmp_path / "token").chmod(0o600)
    make_due(outbox)
    assert reporter.send_due() is None
    assert [s["state"] for s in fake_github.commit_statuses(REPOSITORY, SHA)] == ["pending"]


def test_a_pass_stops_between_rows_when_the_worker_stops(
    store: Store, outbox: Outbox, reporter: Reporter, fake_github: FakeGitHub
) -> None:
    first, second = new_run(store), new_run(store)
    outbox.add(first, REPOSITORY, SHA, [status("pending")])
    outbox.add(second, REPOSITORY, OTHER_SHA, [status("pending")])

    def stopping() -> bool:
        return len(fake_github.requests) >= 1

    assert reporter.send_due(stopping) is not None
    assert len(fake_github.requests) == 1
    assert [row.state for row in outbox.of_run(second)] == [PENDING]


# The setting -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "seconds"), [(None, 86400.0), ("6h", 21600.0), ("1d12h", 129600.0), ("90", 90.0)]
)
def test_reports_are_tried_for_a_day_unless_runner_github_report_for_says(
    tmp_path: Path, given: str | None, seconds: float
) -> None:
    environ = {} if given is None else {"RUNNER_GITHUB_REPORT_FOR": given}
    assert config_module.load(environ, home=tmp_path).github_report_for == seconds


@pytest.mark.parametrize("given", ["0", "a day", "-1"])
def test_a_bad_runner_github_report_for_is_refused(tmp_path: Path, given: str) -> None:
    with pytest.raises(ConfigError, match="RUNNER_GITHUB_REPORT_FOR"):
        config_module.load({"RUNNER_GITHUB_REPORT_FOR": given}, home=tmp_path)
