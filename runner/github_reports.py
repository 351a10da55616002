"""What a run tells GitHub: the calls its start and its end make, as the outbox keeps them (pure functions).

A run with a commit posts a ``pending`` commit status under its pipeline's context when it starts and,
with ``github.deployment``, creates a deployment of the commit followed by an ``in_progress`` deployment
status; when it ends, a commit status and a deployment status say how (ENDINGS). A description names what
was deployed or the step that failed, nothing else (never a step's output, which may hold a secret), in at
most GitHub's 140 characters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runner.pipeline import GitHubReporting

if TYPE_CHECKING:
    from sqlalchemy import Row

# The kinds of call: POST .../statuses/{sha}, POST .../deployments, POST .../deployments/{id}/statuses.
STATUS = "status"
DEPLOYMENT = "deployment"
DEPLOYMENT_STATUS = "deployment_status"
# GitHub refuses a longer description (422).
DESCRIPTION_LIMIT = 140
SHORT_COMMIT = 7
# The states a run's start reports; any other says how it ended.
STARTED = ("pending", "in_progress")


@dataclass(frozen=True)
class Report:
    """A call GitHub must receive: its kind and its JSON body. A deployment status is about the run's
    deployment, whose id GitHub gives when it is made: the outbox links the two."""

    kind: str
    body: dict[str, Any]


@dataclass(frozen=True)
class Ending:
    """How a run that ended is told: the commit status's state, the deployment status's, and the
    description ({commit}: the short commit; {run}: the run's id; {position} and {step}: the step's
    position and name)."""

    state: str
    deployment_state: str
    description: str


# How a run ended (see ending_of): a failure is the pipeline's (a step failed, the time ran out); an error
# is runner's (it could not carry the run out), or a run called off ({reason}: superseded, or by hand).
ENDINGS: dict[str, Ending] = {
    "succeeded": Ending("success", "success", "Deployed {commit} (run {run})"),
    "step_failed": Ending("failure", "failure", "Step {position} ({step}) failed (run {run})"),
    "step_timed_out": Ending("failure", "failure", "Step {position} ({step}) timed out (run {run})"),
    "time_limit": Ending("failure", "failure", "The run's time limit was reached (run {run})"),
    "error": Ending("error", "error", "runner could not carry out run {run}: see its log"),
    "interrupted": Ending("error", "error", "Interrupted: the worker stopped during run {run}"),
    "stopped": Ending("error", "error", "Cancelled: the worker stopped before run {run} ended"),
    "superseded": Ending("error", "inactive", "Not deployed: {reason} (run {run})"),
    "called_off": Ending("error", "error", "Cancelled: {reason} (run {run})"),
}
# What a lane says of a run it called off while it went on (superseded by a newer entry, or by hand).
CALLED_OFF = "called_off"


def run_url(public_url: str | None, run_id: int) -> str | None:
    """The run's page under RUNNER_PUBLIC_URL; None without one."""
    return f"{public_url.rstrip('/')}/runs/{run_id}" if public_url else None


def description(
    text: str, *, commit: str, run_id: int, step: tuple[int, str] | None = None, reason: str = ""
) -> str:
    """``text`` with its values (``step``: a position and a name; ``reason``: why a run was called off),
    within GitHub's limit: a step's name too long for it is cut with "…"."""
    position, name = step or (0, "")
    values = {
        "commit": commit[:SHORT_COMMIT],
        "run": run_id,
        "position": position,
        "step": name,
        "reason": reason,
    }
    said = text.format(**values)
    over = len(said) - DESCRIPTION_LIMIT
    if over > 0 and len(name) > over + 1:
        said = text.format(**{**values, "step": name[: len(name) - over - 1] + "…"})
    return said if len(said) <= DESCRIPTION_LIMIT else said[: DESCRIPTION_LIMIT - 1] + "…"


def _linked(body: dict[str, Any], **links: str | None) -> dict[str, Any]:
    return {**body, **{key: url for key, url in links.items() if url}}


def start_reports(
    reporting: GitHubReporting, run_id: int, commit: str, public_url: str | None
) -> list[Report]:
    """What a run of ``commit`` tells GitHub when it starts, in the order GitHub must receive it."""
    link = run_url(public_url, run_id)
    what = description("Deploying {commit} (run {run})", commit=commit, run_id=run_id)
    reports = []
    if reporting.statuses:
        status = {"state": "pending", "context": reporting.context, "description": what}
        reports.append(Report(STATUS, _linked(status, target_url=link)))
    deployment = reporting.deployment
    if deployment is not None:
        body: dict[str, Any] = {
            "ref": commit,
            "environment": deployment.environment,
            "auto_merge": False,
            # Not GitHub's default (every context must have succeeded): the run's own pending status would
            # refuse it.
            "required_contexts": [],
            "description": what,
            # How the reporter finds the deployment again after a call that may have made it.
            "payload": {"runner_run": run_id},
        }
        for flag in ("production_environment", "transient_environment"):
            if getattr(deployment, flag) is not None:
                body[flag] = getattr(deployment, flag)
        reports.append(Report(DEPLOYMENT, body))
        progress = {"state": "in_progress", "description": what}
        reports.append(
            Report(DEPLOYMENT_STATUS, _linked(progress, log_url=link, environment_url=deployment.url))
        )
    return reports


def ending_of(status: str, steps: Sequence[Row[Any]]) -> tuple[Ending, tuple[int, str] | None]:
    """How a run that ended in ``status``, with ``steps`` recorded, is told; and the step it names (its
    position and name)."""
    last = steps[-1] if steps else None
    if status == "failed" and last is not None and last.status in ("failed", "timed_out"):
        return ENDINGS[f"step_{last.status}"], (last.position, last.name)
    # A failed run whose steps all succeeded ran out of time between two of them.
    by_status = {
        "succeeded": "succeeded",
        "failed": "time_limit",
        "cancelled": "stopped",
        "superseded": "superseded",
        CALLED_OFF: CALLED_OFF,
    }
    return ENDINGS.get(by_status.get(status, status), ENDINGS["error"]), None


def end_reports(started: Sequence[Report], ending: Ending, said: str) -> list[Report]:
    """What a run tells GitHub when it ends, after what its start told (``started``), with the description
    ``said``: nothing if its start told nothing, or if its end was told already."""
    if any(report.body.get("state", "pending") not in STARTED for report in started):
        return []
    ended = []
    for report in started:
        if report.kind == STATUS:
            ended.append(Report(STATUS, {**report.body, "state": ending.state, "description": said}))
        elif report.kind == DEPLOYMENT_STATUS:
            state = ending.deployment_state
            ended.append(Report(DEPLOYMENT_STATUS, {**report.body, "state": state, "description": said}))
    return ended


def waiting_ended_reports(
    reporting: GitHubReporting, ending: Ending, said: str, public_url: str | None, run_id: int
) -> list[Report]:
    """What a run called off before it started tells GitHub: its commit status alone (no deployment was
    made for it)."""
    if not reporting.statuses:
        return []
    status = {"state": ending.state, "context": reporting.context, "description": said}
    return [Report(STATUS, _linked(status, target_url=run_url(public_url, run_id)))]
