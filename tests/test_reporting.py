"""What runs tell GitHub, end to end: real ``runner serve`` and ``runner work`` (or ``runner up``) processes,
signed deliveries, and the fake GitHub (tests/fake_github.py) receiving the commit statuses and deployments.

The worker finds GitHub through RUNNER_GITHUB_API_URL and a token file (RUNNER_GITHUB_TOKEN_FILE), or a
GitHub App whose key is made here; its links point under RUNNER_PUBLIC_URL.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fake_github import Answer, FakeGitHub, rate_limited, server_error, too_many_requests
from fake_github_base import error
from sqlalchemy import Row
from support import Server, WorkerProcess, run_cli, runner_env, wait_for
from test_worker import ZERO_COMMIT, Rig, fake_commit, push_payload

from runner.outbox import Outbox

TOKEN = "github_pat_11CCCCCCC0fake0token0for0the0reports"
PUBLIC_URL = "https://runner.example.com"
REPOSITORY = "acme/app"

ECHO = """
    on: {repository: acme/app, branches: [main]}
    workdir: <WORKDIR>
    <GITHUB>
    steps:
      - name: deploy
        run: <RUN>
"""


class ReportingRig(Rig):
    """A rig (tests/test_worker.py's, on SQLite) whose workers report to the fake GitHub with a token."""

    def __init__(self, tmp: Path, github: FakeGitHub) -> None:
        super().__init__(tmp, f"sqlite:///{tmp / 'runner.db'}")
        github.add_token(TOKEN)
        token = tmp / "github-token"
        token.write_text(TOKEN + "\n")
        token.chmod(0o600)
        self.github_env = {
            "RUNNER_GITHUB_API_URL": github.url,
            "RUNNER_GITHUB_TOKEN_FILE": str(token),
            "RUNNER_PUBLIC_URL": PUBLIC_URL,
            # The catch-up's calls (tests/test_catch_up.py) would be among the reports' and take their
            # injected failures.
            "RUNNER_CATCH_UP_INTERVAL": "0",
        }

    def start_worker(self, **env: str) -> WorkerProcess:
        return super().start_worker(**{**self.github_env, **env})


@pytest.fixture
def rig(tmp_path: Path, fake_github: FakeGitHub) -> Iterator[ReportingRig]:
    rig = ReportingRig(tmp_path, fake_github)
    try:
        yield rig
    finally:
        rig.close()


def echo_pipeline(rig: Rig, name: str, github: str = "", run: str = "echo deployed") -> None:
    rig.pipeline(name, ECHO, WORKDIR=rig.workdir(name), GITHUB=github, RUN=run)


def push(rig: Rig, n: int) -> tuple[str, str]:
    """Deliver a push of fake commit ``n`` to main; its delivery and its commit."""
    commit = fake_commit(n)
    return rig.deliver(
        "push", push_payload("refs/heads/main", ZERO_COMMIT, [(commit, f"commit {n}")])
    ), commit


def statuses(fake: FakeGitHub, commit: str, context: str | None = None) -> list[dict[str, Any]]:
    return [s for s in fake.commit_statuses(REPOSITORY, commit) if context is None or s["context"] == context]


def wait_for_states(
    rig: Rig,
    fake: FakeGitHub,
    commit: str,
    states: list[str],
    context: str = "runner/app",
    timeout: float = 30,
) -> list[dict[str, Any]]:
    """The commit's statuses under ``context``, once they are ``states`` (oldest first)."""

    def check() -> list[dict[str, Any]] | None:
        found = statuses(fake, commit, context)
        return found if [s["state"] for s in found] == states else None

    return wait_for(
        check,
        f"the statuses {states} of {context} on {commit[:7]}",
        timeout,
        lambda: f"{rig.details()}\nstatuses: {statuses(fake, commit)}",
    )


def finished(rig: Rig, delivery: str) -> Row[Any]:
    [run] = rig.runs_of(delivery, ["succeeded"])
    return run


def pending_rows(rig: Rig) -> int:
    outbox = Outbox(rig.store)
    return sum(row.state == "pending" for run in rig.runs() for row in outbox.of_run(run.id))


# Commit statuses -------------------------------------------------------------------------------------------


def test_a_deployed_push_gets_pending_then_success_under_each_pipeline_s_context_with_a_link(
    rig: ReportingRig, fake_github: FakeGitHub
) -> None:
    echo_pipeline(rig, "app")
    echo_pipeline(rig, "web", "github: {context: deploy/web}")
    echo_pipeline(rig, "quiet", "github: {statuses: false}")
    rig.start_worker()
    delivery, commit = push(rig, 1)
    runs = {run.pipeline: run for run in rig.runs_of(delivery, ["succeeded"] * 3)}

    for pipeline, context in (("app", "runner/app"), ("web", "deploy/web")):
        run = runs[pipeline]
        pending, success = wait_for_states(rig, fake_github, commit, ["pending", "success"], context)
        assert pending["target_url"] == success["target_url"] == f"{PUBLIC_URL}/runs/{run.id}"
        assert pending["description"] == f"Deploying {commit[:7]} (run {run.id})"
        assert success["description"] == f"Deployed {commit[:7]} (run {run.id})"
    assert {s["context"] for s in statuses(fake_github, commit)} == {"runner/app", "deploy/web"}
    # Every call was a commit status: no deployment was asked for.
    assert {(r.method, r.path) for r in fake_github.requests} == {
        ("POST", f"/repos/{REPOSITORY}/statuses/{commit}")
    }
    said = rig.workers[0].output()
    assert f"reporting runs to GitHub at {fake_github.url}" in said
    assert " ERROR " not in said and " WARNING " not in said, said


def test_a_failing_push_gets_failure_naming_the_step(rig: ReportingRig, fake_github: FakeGitHub) -> None:
    rig.pipeline(
        "app",
        """
        on: {repository: acme/app}
        workdir: <WORKDIR>
        steps:
          - run: "true"
          - name: build the site
            run: exit 3
        """,
        WORKDIR=rig.workdir("app"),
    )
    rig.start_worker()
    delivery, commit = push(rig, 2)
    [run] = rig.runs_of(delivery, ["failed"])
    _, failure = wait_for_states(rig, fake_github, commit, ["pending", "failure"])
    assert failure["description"] == f"Step 2 (build the site) failed (run {run.id})"
    assert failure["target_url"] == f"{PUBLIC_URL}/runs/{run.id}"


def test_the_github_token_is_masked_in_a_run_s_log(rig: ReportingRig, fake_github: FakeGitHub) -> None:
    # A step that reads the token (the deploy user can) prints ***, from the worker's first run on.
    token = rig.tmp / "github-token"
    echo_pipeline(rig, "app", run=json.dumps(f"cat {token}; echo token: $(cat {token})"))
    rig.start_worker()
    delivery, _ = push(rig, 1)
    log = rig.log_of(finished(rig, delivery))
    assert TOKEN not in log and "| ***\n" in log and "| token: ***\n" in log, log


def test_without_credentials_nothing_is_sent_and_nothing_fails(
    rig: ReportingRig, fake_github: FakeGitHub
) -> None:
    echo_pipeline(rig, "app", "github: {deployment: {environment: production}}")
    worker = rig.start_worker(RUNNER_GITHUB_TOKEN_FILE="")
    delivery, _ = push(rig, 3)
    [run] = rig.runs_of(delivery, ["succeeded"])
    time.sleep(0.5)
    assert fake_github.requests == []
    assert Outbox(rig.store).of_run(run.id) == []
    said = worker.output()
    assert "reporting runs to GitHub" not in said and " ERROR " not in said, said


# Deployments -----------------------------------------------------------------------------------------------

DEPLOYED = """\
github:
  context: runner/app
  deployment:
    environment: production
    production_environment: true
    transient_environment: false
    url: https://app.example.com"""


def deployments_of(fake: FakeGitHub, commit: str) -> list[dict[str, Any]]:
    return [d for d in fake.deployments.get(REPOSITORY, []) if d["commit_sha"] == commit]


@pytest.mark.parametrize("outcome", ["success", "failure"])
def test_a_deployment_is_created_for_the_commit_then_in_progress_then_how_it_ended(
    rig: ReportingRig, fake_github: FakeGitHub, outcome: str
) -> None:
    echo_pipeline(rig, "app", DEPLOYED, run="echo deployed" if outcome == "success" else "exit 1")
    rig.start_worker()
    delivery, commit = push(rig, 4)
    [run] = rig.runs_of(delivery, ["succeeded" if outcome == "success" else "failed"])
    wait_for_states(rig, fake_github, commit, ["pending", outcome])

    def ended() -> list[dict[str, Any]] | None:
        made = deployments_of(fake_github, commit)
        found = fake_github.deployment_statuses[made[0]["id"]] if made else []
        return found if [s["state"] for s in found] == ["in_progress", outcome] else None

    progress, end = wait_for(ended, f"the deployment's statuses to end in {outcome}", details=rig.details)
    [made] = deployments_of(fake_github, commit)
    [asked] = fake_github.calls("POST", f"/repos/{REPOSITORY}/deployments")
    assert asked.body == {
        "ref": commit,
        "environment": "production",
        "auto_merge": False,
        "required_contexts": [],
        "description": f"Deploying {commit[:7]} (run {run.id})",
        "payload": {"runner_run": run.id},
        "production_environment": True,
        "transient_environment": False,
    }
    assert (made["environment"], made["production_environment"], made["transient_environment"]) == (
        "production",
        True,
        False,
    )
    for status in (progress, end):
        assert status["log_url"] == f"{PUBLIC_URL}/runs/{run.id}"
        assert status["environment_url"] == "https://app.example.com"
    if outcome == "failure":
        assert end["description"] == f"Step 1 (deploy) failed (run {run.id})"


# GitHub down, failing, refusing ----------------------------------------------------------------------------


@pytest.mark.parametrize("refuse", [False, True], ids=["503", "refused"])
def test_github_down_during_a_run_delays_nothing_and_the_reports_arrive_in_order_after(
    rig: ReportingRig, fake_github: FakeGitHub, refuse: bool
) -> None:
    echo_pipeline(rig, "app", DEPLOYED, run="sleep 1")
    rig.start_worker()
    delivery, first = push(rig, 5)
    baseline = finished(rig, delivery)
    wait_for_states(rig, fake_github, first, ["pending", "success"])
    wait_for(lambda: pending_rows(rig) == 0, "the first run's reports to be sent", details=rig.details)

    fake_github.outage(refuse=refuse)
    delivery, second = push(rig, 6)
    during = finished(rig, delivery)
    took = (during.finished_at - during.started_at).total_seconds()
    before = (baseline.finished_at - baseline.started_at).total_seconds()
    assert took < before + 0.5, (took, before)
    # The run's five reports (two statuses, the deployment, two of its statuses) wait for GitHub.
    wait_for(lambda: pending_rows(rig) == 5, "the run's reports to be recorded", details=rig.details)
    assert statuses(fake_github, second) == []

    fake_github.end_outage()
    wait_for_states(rig, fake_github, second, ["pending", "success"])
    wait_for(lambda: pending_rows(rig) == 0, "every report to be sent", details=rig.details)
    [made] = deployments_of(fake_github, second)
    assert [s["state"] for s in fake_github.deployment_statuses[made["id"]]] == ["in_progress", "success"]
    said = rig.workers[0].output()
    assert re.search(r" WARNING runner\.reporter: GitHub report \d+ of run \d+ .*kept", said), said
    assert " ERROR " not in said, said


def test_failures_github_answers_for_a_while_are_retried_and_the_reports_delivered(
    rig: ReportingRig, fake_github: FakeGitHub
) -> None:
    echo_pipeline(rig, "app")
    fake_github.inject(server_error(500), too_many_requests(1), rate_limited(time.time() + 2))
    rig.start_worker()
    delivery, commit = push(rig, 7)
    finished(rig, delivery)
    wait_for_states(rig, fake_github, commit, ["pending", "success"])
    posts = fake_github.calls("POST", f"/repos/{REPOSITORY}/statuses/{commit}")
    assert len(posts) == 5, posts


def test_a_refused_report_is_given_up_logged_once_and_later_runs_still_report(
    rig: ReportingRig, fake_github: FakeGitHub
) -> None:
    echo_pipeline(rig, "app")
    fake_github.inject(Answer(422, error(422, "Validation Failed")))
    worker = rig.start_worker()
    delivery, commit = push(rig, 8)
    finished(rig, delivery)
    # The pending status was refused; the run's next report still went.
    wait_for_states(rig, fake_github, commit, ["success"])
    delivery, later = push(rig, 9)
    finished(rig, delivery)
    wait_for_states(rig, fake_github, later, ["pending", "success"])
    given_up = [line for line in worker.output().splitlines() if "given up" in line]
    assert len(given_up) == 1, worker.output()
    assert " ERROR runner.reporter: " in given_up[0] and "422 Validation Failed" in given_up[0], given_up
    assert TOKEN not in worker.output()


def test_reports_left_unsent_are_sent_by_the_next_worker(rig: ReportingRig, fake_github: FakeGitHub) -> None:
    echo_pipeline(rig, "app", DEPLOYED)
    fake_github.outage(refuse=True)
    worker = rig.start_worker()
    delivery, commit = push(rig, 10)
    finished(rig, delivery)
    wait_for(lambda: pending_rows(rig) == 5, "the run's five reports to be recorded", details=rig.details)
    assert worker.stop() == 0

    fake_github.end_outage()
    rig.start_worker()
    wait_for_states(rig, fake_github, commit, ["pending", "success"])
    wait_for(lambda: pending_rows(rig) == 0, "every report to be sent", details=rig.details)
    [made] = deployments_of(fake_github, commit)
    assert [s["state"] for s in fake_github.deployment_statuses[made["id"]]] == ["in_progress", "success"]


def test_a_worker_stopped_during_a_run_reports_the_run_as_an_error(
    rig: ReportingRig, fake_github: FakeGitHub
) -> None:
    echo_pipeline(rig, "app", run="echo begin && sleep 30")
    worker = rig.start_worker(RUNNER_STOP_GRACE="0")
    delivery, commit = push(rig, 11)
    run = rig.step_started(delivery)
    wait_for_states(rig, fake_github, commit, ["pending"])
    assert worker.stop() == 0
    assert rig.run(run.id).status == "cancelled"
    # Sent by the next worker, which also does the entry again.
    rig.start_worker(RUNNER_STOP_GRACE="0")
    _, error_status, _ = wait_for_states(rig, fake_github, commit, ["pending", "error", "pending"])
    assert error_status["description"] == f"Cancelled: the worker stopped before run {run.id} ended"


# The token -------------------------------------------------------------------------------------------------


def test_the_token_is_in_no_log_run_log_step_environment_or_listing(
    rig: ReportingRig, fake_github: FakeGitHub
) -> None:
    echo_pipeline(rig, "app", DEPLOYED, run="env")
    worker = rig.start_worker()
    delivery, commit = push(rig, 12)
    run = finished(rig, delivery)
    wait_for_states(rig, fake_github, commit, ["pending", "success"])
    log = rig.log_of(run)
    assert "PATH=" in log, log
    listing = rig.cli("runs", "--json").stdout + rig.cli("logs", str(run.id), "--no-follow").stdout
    for text in (worker.output(), rig.server.output(), log, listing):
        assert TOKEN not in text
    assert "RUNNER_GITHUB_TOKEN_FILE" not in log
    # It did reach GitHub, in the Authorization header.
    assert {r.headers["Authorization"] for r in fake_github.requests} == {f"Bearer {TOKEN}"}


def test_a_github_app_reports_end_to_end_through_runner_up(tmp_path: Path, fake_github: FakeGitHub) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = tmp_path / "app.pem"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_file.chmod(0o600)
    fake_github.add_app("314159", key.public_key())
    fake_github.install("314159", "acme", 2718)
    home = tmp_path / "home"
    (home / "pipelines").mkdir(parents=True)
    (tmp_path / "work").mkdir()
    (home / "pipelines" / "app.yaml").write_text(
        f"on: {{repository: acme/app}}\nworkdir: {tmp_path / 'work'}\nsteps:\n  - run: echo deployed\n"
    )
    env = runner_env(
        home,
        f"sqlite:///{tmp_path / 'runner.db'}",
        RUNNER_GITHUB_API_URL=fake_github.url,
        RUNNER_GITHUB_APP_ID="314159",
        RUNNER_GITHUB_APP_KEY_FILE=str(key_file),
    )
    assert run_cli("db", "upgrade", env=env).returncode == 0
    server = Server(home, env, command="up")
    try:
        commit = fake_commit(13)
        answer = server.deliver("push", push_payload("refs/heads/main", ZERO_COMMIT, [(commit, "thirteen")]))
        assert answer.status == 202, answer.body

        def check() -> list[str] | None:
            found = [s["state"] for s in statuses(fake_github, commit)]
            return found if found == ["pending", "success"] else None

        wait_for(check, "the App's statuses", details=server.output)
    finally:
        assert server.stop() == 0
    # One installation token, made for the owner and used for both calls.
    [issued] = fake_github.issued
    assert (issued["owner"], issued["installation"]) == ("acme", 2718)
    posts = fake_github.calls("POST", f"/repos/{REPOSITORY}/statuses/{commit}")
    assert {r.headers["Authorization"] for r in posts} == {f"Bearer {issued['token']}"}
    assert issued["token"] not in server.output()
    assert "target_url" not in posts[0].body


# Superseded and cancelled runs -----------------------------------------------------------------------------


def test_a_superseded_run_s_commit_says_so_and_the_newest_is_deployed(
    rig: ReportingRig, fake_github: FakeGitHub
) -> None:
    echo_pipeline(rig, "app", run="sleep 2")
    rig.start_worker()
    first, first_commit = push(rig, 21)
    wait_for_states(rig, fake_github, first_commit, ["pending"])
    middle, middle_commit = push(rig, 22)
    newest, newest_commit = push(rig, 23)
    [superseded] = rig.runs_of(middle, ["superseded"])
    [deployed] = rig.runs_of(newest, ["succeeded"])
    rig.runs_of(first, ["succeeded"])

    [said] = wait_for_states(rig, fake_github, middle_commit, ["error"])
    assert said["description"] == f"Not deployed: superseded by run {deployed.id} (run {superseded.id})"
    assert said["target_url"] == f"{PUBLIC_URL}/runs/{superseded.id}"
    wait_for_states(rig, fake_github, newest_commit, ["pending", "success"])
    wait_for_states(rig, fake_github, first_commit, ["pending", "success"])


def test_a_run_cancelled_in_progress_by_a_newer_push_says_it_was_superseded(
    rig: ReportingRig, fake_github: FakeGitHub
) -> None:
    rig.pipeline(
        "app",
        """
        on: {repository: acme/app, branches: [main]}
        workdir: <WORKDIR>
        concurrency: {cancel-in-progress: true}
        steps:
          - name: deploy
            run: sleep 30
        """,
        WORKDIR=rig.workdir("app"),
    )
    rig.start_worker(RUNNER_STOP_GRACE="1")
    first, first_commit = push(rig, 31)
    wait_for_states(rig, fake_github, first_commit, ["pending"])
    newest, newest_commit = push(rig, 32)
    [cancelled] = rig.runs_of(first, ["cancelled"])
    [running] = rig.runs_of(newest, ["running"])
    _, said = wait_for_states(rig, fake_github, first_commit, ["pending", "error"])
    assert said["description"] == f"Cancelled: superseded by run {running.id} (run {cancelled.id})"
    wait_for_states(rig, fake_github, newest_commit, ["pending"])
