"""What a run tells GitHub: a pipeline's ``github:`` keys, and the calls a run's start and end make.

The calls' sending is tests/test_outbox.py's; a real worker reporting to the fake GitHub is
tests/test_reporting.py's.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import Row

from runner.github_reports import (
    DEPLOYMENT,
    DEPLOYMENT_STATUS,
    STATUS,
    Report,
    description,
    end_reports,
    ending_of,
    start_reports,
)
from runner.loading import load_pipeline
from runner.pipeline import GitHubDeployment, GitHubReporting, Pipeline
from runner.validation import PipelineError


def load(tmp_path: Path, github: str = "", name: str = "app") -> Pipeline:
    text = "on: {repository: acme/app}\nworkdir: srv\nsteps:\n  - run: make\n"
    if github:
        text += "github:\n" + textwrap.indent(textwrap.dedent(github), "  ")
    path = tmp_path / "pipelines" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return load_pipeline(path, tmp_path)


# The pipeline's keys ---------------------------------------------------------------------------------------


def test_without_github_keys_statuses_are_on_under_runner_slash_the_pipeline_and_no_deployment(
    tmp_path: Path,
) -> None:
    assert load(tmp_path, name="api-server").github == GitHubReporting(
        context="runner/api-server", statuses=True, deployment=None
    )


def test_the_github_keys_load_with_their_values(tmp_path: Path) -> None:
    pipeline = load(
        tmp_path,
        """\
        statuses: false
        context: deploy/app
        deployment:
          environment: staging
          production_environment: false
          transient_environment: true
          url: https://staging.example.com/app
        """,
    )
    assert pipeline.github == GitHubReporting(
        context="deploy/app",
        statuses=False,
        deployment=GitHubDeployment(
            environment="staging",
            production_environment=False,
            transient_environment=True,
            url="https://staging.example.com/app",
        ),
    )


def test_a_deployment_needs_only_its_environment(tmp_path: Path) -> None:
    pipeline = load(tmp_path, "deployment: {environment: production}\n")
    assert pipeline.github.deployment == GitHubDeployment("production", None, None, None)
    assert (pipeline.github.context, pipeline.github.statuses) == ("runner/app", True)


@pytest.mark.parametrize(
    ("github", "message"),
    [
        ("statuses: 1\n", "github.statuses: must be true or false (got the number 1)"),
        ("context: [a]\n", "github.context: must be a string, e.g. runner/api (got a list)"),
        (
            "deployment: production\n",
            "github.deployment: must be a mapping with at least `environment: NAME`",
        ),
        (
            "deployment: {environment: " + "e" * 256 + "}\n",
            "github.deployment.environment: must be at most 255 characters (got 256)",
        ),
        ("deployment: {environment: ''}\n", "github.deployment.environment: must not be empty"),
        (
            "deployment: {environment: production, url: 'http://app.example.com'}\n",
            "github.deployment.url: must be a literal https:// URL",
        ),
        (
            "deployment: {environment: production, url: 'https://user@app.example.com'}\n",
            "github.deployment.url: must be a literal https:// URL",
        ),
        (
            "deployment: {environment: production, url: 'https://app.example.com/{{ branch }}'}\n",
            "(it may not hold {{ expressions }})",
        ),
        (
            "deployment: {environment: production, url: 'https://app.example.com/a b'}\n",
            "github.deployment.url: must be a literal https:// URL",
        ),
    ],
)
def test_bad_github_keys_are_refused(tmp_path: Path, github: str, message: str) -> None:
    with pytest.raises(PipelineError) as caught:
        load(tmp_path, github)
    [problem] = caught.value.problems
    assert message in problem.message, problem


# What a run's start and end tell GitHub --------------------------------------------------------------------

SHA = "6dcb09b5b57875f334f61aebed695e2e4193db5e"
STATUSES = GitHubReporting(context="runner/app", statuses=True, deployment=None)
DEPLOYED = GitHubReporting(
    context="runner/app",
    statuses=True,
    deployment=GitHubDeployment("production", True, False, "https://app.example.com"),
)


def step(position: int, name: str, status: str) -> Any:
    # What the reports read of a step's row.
    return SimpleNamespace(position=position, name=name, status=status)


def test_a_start_posts_a_pending_status_linked_to_the_run_s_page() -> None:
    [report] = start_reports(STATUSES, 12, SHA, "https://runner.example.com/")
    assert report == Report(
        STATUS,
        {
            "state": "pending",
            "context": "runner/app",
            "description": "Deploying 6dcb09b (run 12)",
            "target_url": "https://runner.example.com/runs/12",
        },
    )
    [unlinked] = start_reports(STATUSES, 12, SHA, None)
    assert "target_url" not in unlinked.body


def test_a_start_with_a_deployment_makes_it_then_says_it_is_in_progress() -> None:
    status, deployment, progress = start_reports(DEPLOYED, 7, SHA, "https://runner.example.com/ci")
    assert status.kind == STATUS
    assert deployment == Report(
        DEPLOYMENT,
        {
            "ref": SHA,
            "environment": "production",
            "auto_merge": False,
            "required_contexts": [],
            "description": "Deploying 6dcb09b (run 7)",
            "payload": {"runner_run": 7},
            "production_environment": True,
            "transient_environment": False,
        },
    )
    assert progress == Report(
        DEPLOYMENT_STATUS,
        {
            "state": "in_progress",
            "description": "Deploying 6dcb09b (run 7)",
            "log_url": "https://runner.example.com/ci/runs/7",
            "environment_url": "https://app.example.com",
        },
    )


def test_unset_flags_are_left_to_github_and_statuses_can_be_off() -> None:
    reporting = GitHubReporting("runner/app", False, GitHubDeployment("staging", None, None, None))
    deployment, progress = start_reports(reporting, 3, SHA, None)
    assert (deployment.kind, progress.kind) == (DEPLOYMENT, DEPLOYMENT_STATUS)
    assert "production_environment" not in deployment.body and "transient_environment" not in deployment.body
    assert progress.body == {"state": "in_progress", "description": "Deploying 6dcb09b (run 3)"}
    assert start_reports(GitHubReporting("runner/app", False, None), 3, SHA, None) == []


@pytest.mark.parametrize(
    ("status", "steps", "states", "said"),
    [
        ("succeeded", [step(1, "git", "succeeded")], ("success", "success"), "Deployed 6dcb09b (run 9)"),
        (
            "failed",
            [step(1, "git", "succeeded"), step(2, "build", "failed")],
            ("failure", "failure"),
            "Step 2 (build) failed (run 9)",
        ),
        ("failed", [step(1, "slow", "timed_out")], ("failure", "failure"), "Step 1 (slow) timed out (run 9)"),
        (
            "failed",
            [step(1, "git", "succeeded")],
            ("failure", "failure"),
            "The run's time limit was reached (run 9)",
        ),
        (
            "error",
            [step(1, "git", "failed")],
            ("error", "error"),
            "runner could not carry out run 9: see its log",
        ),
        ("interrupted", [], ("error", "error"), "Interrupted: the worker stopped during run 9"),
        ("cancelled", [], ("error", "error"), "Cancelled: the worker stopped before run 9 ended"),
    ],
)
def test_an_end_says_how_the_run_ended(
    status: str, steps: list[Row[Any]], states: tuple[str, str], said: str
) -> None:
    ending, named = ending_of(status, steps)
    assert (ending.state, ending.deployment_state) == states
    assert description(ending.description, commit=SHA, run_id=9, step=named) == said


def test_an_end_follows_what_the_start_said_once() -> None:
    started = start_reports(DEPLOYED, 9, SHA, "https://runner.example.com")
    ending, step_name = ending_of("failed", [step(2, "build", "failed")])
    said = description(ending.description, commit=SHA, run_id=9, step=step_name)
    status, progress = end_reports(started, ending, said)
    assert status == Report(STATUS, {**started[0].body, "state": "failure", "description": said})
    assert progress == Report(DEPLOYMENT_STATUS, {**started[2].body, "state": "failure", "description": said})
    assert progress.body["environment_url"] == "https://app.example.com"
    # Told once: a second end (the worker's settling after the lane's) tells nothing.
    assert end_reports([*started, status, progress], ending, said) == []
    assert end_reports([], ending, said) == []


def test_a_description_fits_github_s_140_characters_cutting_the_step_s_name() -> None:
    ending, named = ending_of("failed", [step(3, "x" * 200, "failed")])
    said = description(ending.description, commit=SHA, run_id=123456, step=named)
    assert len(said) == 140
    assert said.startswith("Step 3 (xxx") and said.endswith("x…) failed (run 123456)"), said
    assert len(description("{step}", commit=SHA, run_id=1, step=(1, "y" * 300))) == 140
    assert description("a" * 150, commit=SHA, run_id=1) == "a" * 139 + "…"
