"""A pipeline's secrets (``secrets: {NAME: FILE}``): checked when the file is loaded, read when a run starts,
their files' owners and modes looked at by ``runner validate`` and ``runner doctor``.

A secret's value is a file's content, never the pipeline's text: the pipeline names where it is. FILE is
absolute, or ``$CREDENTIALS_DIRECTORY/NAME``: the directory systemd's ``LoadCredential=`` fills for the
worker's unit, taken from the worker's environment when the run starts.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from runner.masking import MIN_LENGTH
from runner.pipeline import Pipeline
from runner.validation import Document, say
from runner.yaml_source import Where

CREDENTIALS = "$CREDENTIALS_DIRECTORY"
# The variables runner sets for a step (RUNNER_COMMIT, RUNNER_EXPR_1, ...): no secret takes their name.
OWN_PREFIX = "RUNNER_"
# A secret's file larger than this is not a secret but a mistake (a key store, a log).
MAX_SIZE = 64 * 1024


class SecretError(Exception):
    """A secret cannot be read or used; the message names the secret and its file, never the value."""


def _path_problem(path: str) -> str | None:
    if "{{" in path or "{%" in path:
        return "must be a fixed path: a secret's file never comes from an event"
    if path == CREDENTIALS or path.startswith(CREDENTIALS + "/"):
        name = path.removeprefix(CREDENTIALS + "/")
        if path == CREDENTIALS or not name or "/" in name or name in (".", ".."):
            return (
                f"must name one credential: {CREDENTIALS}/NAME, NAME as in the unit's LoadCredential=NAME:..."
            )
        return None
    if not posixpath.isabs(path):
        return f"must be an absolute path, or {CREDENTIALS}/NAME for a credential systemd loads"
    if posixpath.normpath(path) != path.rstrip("/") or path.endswith("/"):
        return "must be a normalised path to a file (no '..', '.', '//' or trailing '/')"
    return None


def _check_mapping(doc: Document, secrets: Any, where: Where, env: Mapping[str, Any]) -> None:
    if not isinstance(secrets, dict):
        return
    for name, path in secrets.items():
        if not isinstance(name, str):
            continue
        if name.startswith(OWN_PREFIX):
            problem = f"{name}: names starting with {OWN_PREFIX} are runner's own variables"
        elif name in env:
            problem = f"{name} is also set by env: give the secret, or the variable, another name"
        else:
            problem = None
        if problem and (*where, name) not in doc.flagged:
            doc.add((*where, name), say((*where, name), problem), key=True)  # at the name
            continue
        if isinstance(path, str):
            doc.check((*where, name), _path_problem(path))


# A secret a template names, {{ secrets.NAME }} (or secrets["NAME"]).
_USED = re.compile(r"""\bsecrets\s*(?:\.\s*([A-Za-z_]\w*)|\[\s*["']([^"']*)["']\s*\])""")


def _check_used(doc: Document, values: Any, where: Where, known: Mapping[str, Any], scope: str) -> None:
    """Each secret the templates in ``values`` name is one of ``known``, else said where it is named."""
    if isinstance(values, dict):
        items: Iterator[tuple[Any, Any]] = iter(values.items())
    elif isinstance(values, list):
        items = iter(enumerate(values))
    else:
        if isinstance(values, str) and "{" in values:
            for match in _USED.finditer(values):
                name = match[1] or match[2]
                if name not in known:
                    names = ", ".join(known) or "none"
                    doc.check(where, f"secrets.{name} is not one of {scope}'s secrets ({names})")
        return
    for key, item in items:
        _check_used(doc, item, (*where, key), known, scope)


def check_secrets(doc: Document) -> None:
    """Each ``secrets:`` mapping's names and files, at the top level and in each step, and each secret a
    template names."""
    data = doc.data
    top_env = data.get("env") if isinstance(data.get("env"), dict) else {}
    _check_mapping(doc, data.get("secrets"), ("secrets",), top_env)
    top = data.get("secrets") if isinstance(data.get("secrets"), dict) else {}
    # The pipeline's env: is rendered for every step: it may name only the pipeline's own secrets.
    _check_used(doc, top_env, ("env",), top, "the pipeline")
    for listed, label in (("steps", "step"), ("activate", "activate step")):
        steps = data.get(listed)
        for index, step in enumerate(steps if isinstance(steps, list) else []):
            if isinstance(step, dict):
                _check_step(doc, step, (listed, index), f"{label} {index + 1}", top_env, top)


def _check_step(
    doc: Document, step: dict[str, Any], at: Where, scope: str, top_env: dict[str, Any], top: dict[str, Any]
) -> None:
    own_env = step["env"] if isinstance(step.get("env"), dict) else {}
    _check_mapping(doc, step.get("secrets"), (*at, "secrets"), {**top_env, **own_env})
    own = step["secrets"] if isinstance(step.get("secrets"), dict) else {}
    known = {**top, **own}
    _check_used(doc, own_env, (*at, "env"), known, scope)
    nginx = step.get("nginx")
    if isinstance(nginx, dict):
        _check_used(doc, nginx.get("vars"), (*at, "nginx", "vars"), known, scope)
    for name in own_env:
        where = (*at, "env", name)
        if name in top and name not in (step.get("secrets") or {}) and where not in doc.flagged:
            message = f"{name} is one of the pipeline's secrets: give the variable another name"
            doc.add(where, say(where, message), key=True)


def resolve(path: str, credentials_directory: str | None) -> Path:
    """The file a secret's path names; raises SecretError for a credential without a credentials directory."""
    if path.startswith(CREDENTIALS + "/"):
        if not credentials_directory:
            raise SecretError(
                f"{path}: CREDENTIALS_DIRECTORY is not set: the worker's unit needs LoadCredential= for it"
            )
        return Path(credentials_directory) / path.removeprefix(CREDENTIALS + "/")
    return Path(path)


def all_secrets(pipeline: Pipeline) -> Iterator[tuple[str, str]]:
    """Every (NAME, FILE) the pipeline and its steps name, each once."""
    steps = (item for step in pipeline.all_steps for item in step.secrets.items())
    yield from dict.fromkeys([*pipeline.secrets.items(), *steps])


def read_secret(name: str, path: str, credentials_directory: str | None) -> str:
    """The secret's value: its file's content, a trailing newline dropped."""
    try:
        file = resolve(path, credentials_directory)
    except SecretError as exc:
        raise SecretError(f"secret {name}: {exc}") from None
    try:
        # O_NONBLOCK: a FIFO (or a device) opens at once instead of holding the run's start until some
        # writer comes; anything but a regular file is refused before it is read.
        descriptor = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise SecretError(f"secret {name}: cannot read {file}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise SecretError(f"secret {name}: {file} is not a regular file (a FIFO, a device, a directory?)")
    with os.fdopen(descriptor, "rb") as handle:
        try:
            raw = handle.read(MAX_SIZE + 1)
        except OSError as exc:
            raise SecretError(f"secret {name}: cannot read {file}: {exc.strerror or exc}") from None
    if len(raw) > MAX_SIZE:
        raise SecretError(f"secret {name}: {file} is larger than {MAX_SIZE} bytes")
    try:
        value = raw.decode()
    except UnicodeDecodeError:
        raise SecretError(f"secret {name}: {file} is not UTF-8 text") from None
    value = value.removesuffix("\n").removesuffix("\r")
    if "\0" in value:
        raise SecretError(f"secret {name}: {file} holds a NUL byte, which no environment variable can")
    if len(value.strip()) < MIN_LENGTH:
        raise SecretError(
            f"secret {name}: the value in {file} is shorter than {MIN_LENGTH} characters, too short to be "
            "masked in logs without masking everything: use a longer secret"
        )
    return value


def read_secrets(pipeline: Pipeline, credentials_directory: str | None) -> dict[str, str]:
    """Each secret file's value, by the path the pipeline names; raises SecretError for the first that
    cannot be used."""
    values: dict[str, str] = {}
    for name, path in all_secrets(pipeline):
        if path not in values:
            values[path] = read_secret(name, path, credentials_directory)
    return values


def notify_urls(pipeline: Pipeline) -> list[str]:
    """The pipeline's notification webhook URLs (a webhook-file's first line, read now): each a
    credential, masked in the run's log like a secret."""
    urls = []
    for target in pipeline.notify:
        if target.url:
            urls.append(target.url)
        elif target.file is not None:
            try:
                urls.append(target.file.read_text().strip())
            except (OSError, UnicodeDecodeError):
                continue  # said when a notification is sent
    return urls


def file_problem(file: Path, deploy_uid: int, deploy_gid: int | None) -> str | None:
    """What is wrong with a secret file's owner or mode, or None. Root's or the deploy user's, readable by
    nobody else: root:root 0600 would be unreadable for the worker, so root's file is shared through the
    deploy user's group (root:runner 0640); systemd's credentials are the service user's, 0400."""
    try:
        info = file.stat()
    except FileNotFoundError:
        return "does not exist"
    except OSError as exc:
        return f"cannot be looked at: {exc.strerror}"
    mode = stat.S_IMODE(info.st_mode)
    if info.st_uid not in (0, deploy_uid):
        return f"is owned by uid {info.st_uid}, not root or the deploy user: chown root {file}"
    if mode & (stat.S_IROTH | stat.S_IWOTH | stat.S_IWGRP):
        return f"others may read or write it (mode {mode:04o}): chmod o-rwx,g-w {file}"
    if mode & stat.S_IRGRP and info.st_gid not in (0, deploy_gid):
        return f"its group (gid {info.st_gid}) may read it: chgrp the deploy user's group or chmod g-r {file}"
    if not os.access(file, os.R_OK) and os.geteuid() == deploy_uid:
        return f"the deploy user cannot read it: chgrp to the deploy user's group and chmod 0640 {file}"
    return None


def deploy_ids(home: Path) -> tuple[int, int]:
    """The deploy user's uid and gid: whoever asks, or, for root, the owner of RUNNER_HOME (runner setup
    makes it the deploy user's)."""
    if os.geteuid() != 0:
        return os.geteuid(), os.getegid()
    try:
        info = home.stat()
    except OSError:
        return 0, 0
    return info.st_uid, info.st_gid


def secret_file_problems(
    pipeline: Pipeline, home: Path, credentials_directory: str | None, *, missing: bool
) -> list[tuple[str, str, str]]:
    """(NAME, file, problem) for each secret file on this machine whose owner or mode is wrong, and with
    ``missing`` each that is not there (runner validate may run where the secrets are not)."""
    found = []
    uid, gid = deploy_ids(home)
    for name, path in all_secrets(pipeline):
        try:
            file = resolve(path, credentials_directory)
        except SecretError as exc:
            if missing:
                found.append((name, path, str(exc).removeprefix(f"{path}: ")))
            continue
        problem = file_problem(file, uid, gid)
        if problem and (missing or problem != "does not exist"):
            found.append((name, str(file), problem))
    return found


def doctor_checks(
    pipeline: Pipeline, home: Path, credentials_directory: str | None
) -> Iterator[tuple[str, bool, str]]:
    """(name, ok, message) for each secret file of a pipeline: there, readable, a value long enough to be
    masked, owned and moded as a secret's file should be. A systemd credential outside the worker's unit
    (no CREDENTIALS_DIRECTORY) is checked when the unit starts, not here."""
    problems = {
        (name, problem)
        for name, _, problem in secret_file_problems(pipeline, home, credentials_directory, missing=True)
    }
    for name, path in all_secrets(pipeline):
        label = f"secret {name} of {pipeline.name}"
        if path.startswith(CREDENTIALS + "/") and not credentials_directory:
            yield label, True, f"{path}: a systemd credential (LoadCredential= in the worker's unit)"
            continue
        said = [problem for secret, problem in problems if secret == name]
        if said:
            yield label, False, f"{path} {said[0]}"
            continue
        try:
            read_secret(name, path, credentials_directory)
        except SecretError as exc:
            yield label, False, str(exc).removeprefix(f"secret {name}: ")
            continue
        yield label, True, f"{path} is readable by the deploy user alone (and root)"
