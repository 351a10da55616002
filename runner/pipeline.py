"""A pipeline: what its file says to run, for which pushes, and whether a delivery matches it."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.filters import Filter

# Step types the worker knows, with what each does. A new type goes here, in the schema's step definition
# (a property, its $defs entry and a oneOf branch) and in runner/steps/.
STEP_TYPES: dict[str, str] = {
    "git": "check out the pushed commit in the workdir, cloning the repository the first time",
    "run": "run a command: a string through a shell, a list of strings without one",
    "pnpm": "pnpm install (frozen lockfile) or pnpm run SCRIPT, with workspace filters",
    "nginx": "render a site from templates/nginx/, check it with nginx -t, reload nginx",
    "certbot": "obtain or renew a certificate through the root-owned runner-certbot wrapper",
    "systemctl": "reload or restart a unit through sudo, exactly as the sudoers file allows",
}
NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")
# A pipeline's queue is queues/<name>/: these names are other queues', with what each is.
RESERVED_NAMES = {"main": "the main queue", "recovered": "the queue of the deliveries the catch-up recovers"}
SUPPORTED_EVENTS = ("push",)
DEFAULT_EVENTS = ("push",)
DEFAULT_TIMEOUT = 3600.0
STEP_KEYS = ("name", "timeout", "env", "secrets", "cwd", "when", "cancel")
# GitHub lists at most 20 commits in a push payload; from 20 on, the changed files are not all known.
COMMITS_LISTED = 20

_DURATION = re.compile(r"^(?:(?P<h>[0-9]+)h)?(?:(?P<m>[0-9]+)m)?(?:(?P<s>[0-9]+)s)?$")
_SECONDS = re.compile(r"^[0-9]+$")


def parse_duration(value: str | int) -> float:
    """Seconds in ``90s``, ``10m``, ``1h30m``, ``2h5m10s`` or a whole number of seconds."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"bad duration {value!r}: write e.g. 90s, 10m, 1h30m, or a whole number of seconds")
    if isinstance(value, int):
        seconds = value
    elif _SECONDS.match(value):
        seconds = int(value)
    else:
        match = _DURATION.match(value)
        if not value or match is None:
            raise ValueError(
                f"bad duration {value!r}: write hours, minutes and seconds in that order, e.g. 90s, 10m, "
                "1h30m, 2h5m10s, or a whole number of seconds"
            )
        seconds = int(match["h"] or 0) * 3600 + int(match["m"] or 0) * 60 + int(match["s"] or 0)
    if seconds <= 0:
        raise ValueError(f"bad duration {value!r}: it must be longer than 0 seconds")
    return float(seconds)


def name_problem(name: str) -> str | None:
    if name in RESERVED_NAMES:
        return (
            f"'{name}' cannot be a pipeline's name: queues/{name}/ is {RESERVED_NAMES[name]}; rename the file"
        )
    if not NAME.match(name):
        return (
            f"'{name}' is not a valid pipeline name (the file's name without .yaml, which also names its "
            "queue directory): use lowercase letters, digits and '-', starting with a letter or digit"
        )
    return None


@dataclass(frozen=True)
class Trigger:
    repository: str
    events: tuple[str, ...]
    branches: Filter | None
    tags: Filter | None
    paths: Filter | None


@dataclass(frozen=True)
class StepSpec:
    type: str
    args: Any
    name: str
    timeout: float | None
    env: dict[str, str]
    cwd: str | None
    when: dict[str, Any] | None
    line: int
    # False: a cancel (runner cancel, cancel-in-progress) waits for the step, then stops the run after it.
    cancel: bool = True
    # NAME: the file whose content is the step's variable NAME (over the pipeline's secrets).
    secrets: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Concurrency:
    """Which of a pipeline's entries are carried out when several arrive, as GitHub Actions' concurrency."""

    # A newer entry of the group also stops the run going on.
    cancel_in_progress: bool = False
    # latest: at most one run going on and one waiting, the newest; all: every entry, in order.
    queue: str = "latest"
    # ref: only entries for the same ref supersede each other; pipeline: all of the pipeline's entries.
    group: str = "ref"


@dataclass(frozen=True)
class GitHubDeployment:
    """A GitHub deployment made for each run (``github.deployment``): GitHub shows the environment and
    its history on the repository's page."""

    environment: str
    # None: GitHub's default (production_environment is true for "production" only; transient false).
    production_environment: bool | None
    transient_environment: bool | None
    # Where the environment is reachable (its environment_url), a literal https URL.
    url: str | None


@dataclass(frozen=True)
class GitHubReporting:
    """What runner tells GitHub of the pipeline's runs (``github:``), when it has credentials: a commit
    status under ``context`` unless ``statuses`` is off, and a deployment when ``deployment`` is set."""

    context: str
    statuses: bool
    deployment: GitHubDeployment | None


# What a notification target (``notify:``) may be sent for, and what it is sent for by default.
NOTIFY_EVENTS = ("failure", "recovery", "success")
DEFAULT_NOTIFY_ON = ("failure", "recovery")
NOTIFY_FORMATS = ("slack", "discord", "json")


@dataclass(frozen=True)
class NotifyTarget:
    """Where a pipeline's runs are told of (``notify:``): a webhook (its URL, or a file holding it: chat
    webhook URLs are credentials) in a format, or e-mail addresses; and for which events."""

    # webhook, webhook-file or email
    kind: str
    on: tuple[str, ...]
    url: str | None = None
    file: Path | None = None
    format: str = "json"
    addresses: tuple[str, ...] = ()
    line: int = 0


# A release's health check, by default: each try's limit, the tries after a failed one, the wait between.
HEALTH_TIMEOUT = 30.0
HEALTH_RETRIES = 3
HEALTH_INTERVAL = 2.0
DEFAULT_KEEP = 5


@dataclass(frozen=True)
class HealthCheck:
    """What must hold once a release is current (``release.health``): a URL's status, or a command's exit."""

    url: str | None
    run: str | list[str] | None
    expect: int = 200
    timeout: float = HEALTH_TIMEOUT
    retries: int = HEALTH_RETRIES
    interval: float = HEALTH_INTERVAL


@dataclass(frozen=True)
class Release:
    """Release directories (``release:``): how many successful ones stay, what persists across them, and
    the health check after a switch."""

    keep: int = DEFAULT_KEEP
    shared: tuple[str, ...] = ()
    health: HealthCheck | None = None


@dataclass(frozen=True)
class Match:
    matched: bool
    reason: str | None


def _changed_files(commits: Sequence[Any]) -> set[str]:
    changed: set[str] = set()
    for commit in commits:
        if isinstance(commit, Mapping):
            for key in ("added", "removed", "modified"):
                changed.update(name for name in commit.get(key) or () if isinstance(name, str))
    return changed


@dataclass(frozen=True)
class Pipeline:
    name: str
    path: Path
    trigger: Trigger
    workdir: Path
    env: dict[str, str]
    timeout: float
    steps: tuple[StepSpec, ...]
    github: GitHubReporting
    concurrency: Concurrency = Concurrency()
    notify: tuple[NotifyTarget, ...] = ()
    # None: the pipeline builds in its workdir. Set: in release directories, ``activate`` after the switch.
    release: Release | None = None
    activate: tuple[StepSpec, ...] = ()
    # NAME: the file whose content is the variable NAME of every step (see runner/pipeline_secrets.py).
    secrets: dict[str, str] = field(default_factory=dict)

    @property
    def all_steps(self) -> tuple[StepSpec, ...]:
        """Every step, building and activating: what setup and doctor look at (sudo rules, tools)."""
        return self.steps + self.activate

    def step_secrets(self, spec: StepSpec) -> dict[str, str]:
        """The secrets a step gets, NAME: file: the pipeline's, with the step's own over them."""
        return {**self.secrets, **spec.secrets}

    def match(self, event: str, payload: Mapping[str, Any]) -> Match:
        """Whether a delivery runs this pipeline, and if not, why not, in words for an operator."""
        trigger = self.trigger
        if event not in trigger.events:
            events = ", ".join(trigger.events)
            return Match(False, f"event '{event}' is not handled by pipeline {self.name} (events: {events})")
        repository = payload.get("repository")
        full_name = repository.get("full_name") if isinstance(repository, Mapping) else None
        if not isinstance(full_name, str) or full_name.lower() != trigger.repository.lower():
            return Match(
                False,
                f"repository {full_name or '(none)'} is not pipeline {self.name}'s ({trigger.repository})",
            )
        ref = payload.get("ref")
        if not isinstance(ref, str):
            return Match(False, f"the {event} event names no ref")
        if ref.startswith("refs/heads/"):
            kind, name = "branch", ref.removeprefix("refs/heads/")
        elif ref.startswith("refs/tags/"):
            kind, name = "tag", ref.removeprefix("refs/tags/")
        else:
            return Match(False, f"ref '{ref}' is neither a branch nor a tag")
        if payload.get("deleted"):
            return Match(False, f"{kind} '{name}' was deleted")
        # GitHub Actions' rules: with neither filter everything matches; with one, the other kind never does.
        if trigger.branches is not None or trigger.tags is not None:
            own, other = (trigger.branches, "tags") if kind == "branch" else (trigger.tags, "branches")
            if own is None:
                return Match(False, f"pipeline {self.name} runs for {other} only; '{name}' is a {kind}")
            if not own.matches(name):
                what = "branches" if kind == "branch" else "tags"
                return Match(False, f"{kind} '{name}' does not match pipeline {self.name}'s {what} {own}")
        # As in GitHub Actions, paths do not apply to tags.
        if trigger.paths is not None and kind == "branch":
            commits = payload.get("commits")
            # With no commits listed, or a list GitHub may have cut short, the changed files are not known:
            # deploy, since a missed deployment is worse than an extra one.
            if isinstance(commits, list) and 0 < len(commits) < COMMITS_LISTED:
                changed = _changed_files(commits)
                if not any(trigger.paths.matches(path) for path in changed):
                    shown = ", ".join(sorted(changed)[:5]) + (", ..." if len(changed) > 5 else "")
                    return Match(
                        False,
                        f"no file changed on {kind} '{name}' matches pipeline {self.name}'s paths "
                        f"{trigger.paths} (changed: {shown or 'none'})",
                    )
        return Match(True, None)
