"""``runner doctor``'s checks of private repositories: each git step's key or token file (there, readable by
the deploy user, by nobody else), and ``git ls-remote`` against its remote, run as the step runs git."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path

from runner.config import Config
from runner.credentials import CredentialsError, mask, split
from runner.git_access import (
    AccessError,
    GitAccess,
    key_file_problem,
    others_may_read,
    refusal,
    token_file_problem,
)
from runner.pipeline import Pipeline, StepSpec

LS_REMOTE_TIMEOUT = 60
# How much of git's own message a failed check shows.
SHOWN_LINES = 3


def _default_remote(pipeline: Pipeline, access: GitAccess) -> str:
    """What a push's event would name: the repository on GitHub, its ssh URL for a deploy key."""
    name = pipeline.trigger.repository
    return f"git@github.com:{name}.git" if access.ssh_key else f"https://github.com/{name}.git"


def _remote(pipeline: Pipeline, step: StepSpec, access: GitAccess, home: Path) -> str | None:
    """The step's remote, or None when it depends on the run (an expression)."""
    remote = (step.args or {}).get("remote")
    if not remote:
        return _default_remote(pipeline, access)
    if "{{" in remote or "{%" in remote:
        return None
    if "://" not in remote and ":" not in remote.split("/", 1)[0] and not remote.startswith("/"):
        return str(home / remote)
    return remote


def check_repositories(
    config: Config, pipelines: list[Pipeline], environ: Mapping[str, str]
) -> Iterator[tuple[str, bool, str]]:
    """(name, ok, message) for each git step's key or token file and its remote."""
    for pipeline in pipelines:
        for step in pipeline.steps:
            if step.type != "git":
                continue
            access = GitAccess.from_args(step.args, config.home, config.known_hosts)
            if access.ssh_key is None and access.token_file is None:
                continue
            name = f"repository of {pipeline.name}"
            file_check = _file_check(access)
            yield name, file_check is None, file_check or "its key or token file is fit for use"
            if file_check is not None:
                continue
            remote = _remote(pipeline, step, access, config.home)
            if remote is None:
                yield name, True, "its remote depends on the run: git ls-remote not tried"
                continue
            problem = _ls_remote(remote, access, environ)
            yield name, problem is None, problem or f"git ls-remote {mask(remote)} works"


def _file_check(access: GitAccess) -> str | None:
    if access.ssh_key is not None:
        return key_file_problem(access.ssh_key)
    assert access.token_file is not None
    problem = token_file_problem(access.token_file)
    if problem is None and others_may_read(access.token_file):
        problem = (
            f"the token-file {access.token_file} is readable by others: the token is a credential; "
            f"chmod 600 {access.token_file}"
        )
    return problem


def _ls_remote(remote: str, access: GitAccess, environ: Mapping[str, str]) -> str | None:
    """Why ``git ls-remote`` fails against ``remote`` with the step's access, or None."""
    problem = access.remote_problem(remote)
    if problem:
        return problem
    try:
        plain, credentials = split(remote)
    except CredentialsError as exc:
        return str(exc)
    try:
        env = access.git_env(environ)
    except AccessError as exc:
        return str(exc)
    options: list[str] = []
    given = access.token(plain, credentials.username if credentials else None) or credentials
    if given is not None:
        options = given.git_options()
        env.update(given.git_env())
    try:
        done = subprocess.run(
            ["git", *options, "ls-remote", "--heads", "--", plain],
            env=env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=LS_REMOTE_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        return f"git ls-remote {mask(remote)} did not answer in {LS_REMOTE_TIMEOUT} s"
    except OSError as exc:
        return f"cannot start git: {exc.strerror}"
    if done.returncode == 0:
        return None
    lines = done.stderr.splitlines()
    said = refusal(lines, access) or "; ".join(line.strip() for line in lines[-SHOWN_LINES:] if line)
    return mask(f"git ls-remote {remote} failed: {said or f'exit status {done.returncode}'}")
