"""What the schema cannot say of a git step's access to a private repository: its key or token file is a
fixed path, one of them at most, fit for the remote it names."""

from __future__ import annotations

from runner.credentials import CredentialsError, split
from runner.git_access import GitAccess
from runner.templating import has_expression
from runner.validation import Document

ACCESS_KEYS = ("ssh-key", "token-file")


def check_git_access(doc: Document) -> None:
    """Each git step's ssh-key and token-file: literal paths, not both, and fit for a literal remote."""
    steps = doc.data.get("steps")
    if not isinstance(steps, list):
        return
    for index, step in enumerate(steps):
        git = step.get("git") if isinstance(step, dict) else None
        if not isinstance(git, dict):
            continue
        where = ("steps", index, "git")
        for key in ACCESS_KEYS:
            value = git.get(key)
            if isinstance(value, str) and _templated(value):
                doc.check(
                    (*where, key), "must be a fixed path: a key or token file never comes from an event"
                )
        given = [key for key in ACCESS_KEYS if isinstance(git.get(key), str)]
        if len(given) > 1:
            doc.check((*where, given[1]), "a git step takes ssh-key or token-file, not both")
            continue
        remote = git.get("remote")
        if not given or not isinstance(remote, str) or _templated(remote):
            continue
        # Only whether there is a key or a token counts here, not where it is.
        placeholder = doc.path
        access = GitAccess(
            known_hosts=placeholder,
            ssh_key=placeholder if given == ["ssh-key"] else None,
            token_file=placeholder if given == ["token-file"] else None,
        )
        # A relative path is a repository under RUNNER_HOME, which takes no key or token either.
        doc.check((*where, "remote"), access.remote_problem(remote))
        try:
            _, credentials = split(remote)
        except CredentialsError:
            continue  # said when the step runs
        if given == ["token-file"] and credentials is not None and credentials.password:
            doc.check((*where, "remote"), "holds a password and the step names a token-file: keep one")


def _templated(value: str) -> bool:
    return "{{" in value or "{%" in value or has_expression(value)
