"""What a run tells GitHub: a pipeline's ``github:`` keys, and the calls a run's start and end make.

The calls' sending is tests/test_outbox.py's; a real worker reporting to the fake GitHub is
tests/test_reporting.py's.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

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
