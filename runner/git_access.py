"""How git reaches a private remote: over ssh with a deploy key and runner's own known_hosts (nothing of the
deploy user's ~/.ssh, agent or default keys), over HTTPS with a token read from a file when git asks for
it; and what ssh's refusals mean, in words that say what to do.

Used by the git step and by ``runner doctor`` (its ``git ls-remote``), so that both talk to the remote in
exactly the same way.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.credentials import TokenFile

SSH_SCHEMES = ("ssh", "git+ssh", "ssh+git")
# GitHub's convention for a token given as a password; any username works with a fine-grained token.
TOKEN_USERNAME = "x-access-token"  # noqa: S105 - a username, not a secret

_UNKNOWN = re.compile(r"No \S+ host key is known for (\S+) and you have requested strict checking")
_CHANGED = re.compile(r"Host key for (\S+) has changed and you have requested strict checking")


class AccessError(ValueError):
    """A key or token file cannot be used; the message names the file and the fix, never a secret."""


def remote_kind(url: str) -> str:
    """``ssh``, ``https``, ``http``, ``local`` (a path), or another URL scheme, as git reads the remote."""
    if "://" in url:
        scheme = url.split("://", 1)[0].lower()
        return "ssh" if scheme in SSH_SCHEMES else scheme
    # git's scp-like syntax, [user@]host:path: a colon before any slash.
    return "ssh" if ":" in url.split("/", 1)[0] else "local"


def _escaped(path: Path) -> str:
    """A path as ssh reads a file's name: ssh expands % tokens in it."""
    text = str(path)
    if any(c in text for c in '"\n\r\0'):
        raise AccessError(f"{text}: ssh cannot be given a path holding a double quote or a line break")
    return text.replace("%", "%%")


def _ssh_value(path: Path) -> str:
    """A path as an -o option's value: escaped, and quoted when it holds a space (else it is a list)."""
    text = _escaped(path)
    return f'"{text}"' if any(c.isspace() for c in text) else text


@dataclass(frozen=True)
class GitAccess:
    """How one git step authenticates: a deploy key, a token file, or neither; and whose host keys count."""

    known_hosts: Path
    ssh_key: Path | None = None
    token_file: Path | None = None

    @classmethod
    def from_args(cls, args: Mapping[str, Any] | None, home: Path, known_hosts: Path) -> GitAccess:
        """A git step's ``ssh-key`` and ``token-file``, relative paths under RUNNER_HOME."""
        args = args or {}
        key, token = args.get("ssh-key"), args.get("token-file")
        return cls(
            known_hosts=known_hosts,
            ssh_key=Path(os.path.abspath(home / key)) if key else None,
            token_file=Path(os.path.abspath(home / token)) if token else None,
        )

    def ssh_command(self) -> str:
        """GIT_SSH_COMMAND: git runs it through a shell, so every word is quoted.

        With a deploy key: that key only (IdentityFile, IdentitiesOnly), no agent, no ~/.ssh/config
        (-F /dev/null). Always: runner's known_hosts only, strict (an unknown or changed host key ends the
        connection before any key is offered), and never a prompt.
        """
        words = ["ssh"]
        if self.ssh_key is not None:
            # IdentityFile rather than -i: -i looks for the file before expanding its % tokens.
            words += ["-F", "/dev/null", "-o", f"IdentityFile={_ssh_value(self.ssh_key)}"]
            words += ["-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none"]
        words += [
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={_ssh_value(self.known_hosts)}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "UpdateHostKeys=no",
            "-o",
            "BatchMode=yes",
        ]
        return " ".join(shlex.quote(word) for word in words)

    def git_env(self, env: Mapping[str, str]) -> dict[str, str]:
        """``env`` as the git that talks to the remote gets it.

        Without a deploy key, a GIT_SSH_COMMAND the pipeline or the worker's environment sets is kept, and
        ssh uses the deploy user's keys and agent as before runner knew of deploy keys.
        """
        env = dict(env)
        if self.ssh_key is not None:
            env.pop("SSH_AUTH_SOCK", None)
            env["GIT_SSH_COMMAND"] = self.ssh_command()
        elif "GIT_SSH_COMMAND" not in env:
            env["GIT_SSH_COMMAND"] = self.ssh_command()
        env["GIT_TERMINAL_PROMPT"] = "0"
        return env

    def token(self, remote: str, username: str | None) -> TokenFile | None:
        """The token file's credentials for ``remote`` (the URL's username, else x-access-token)."""
        if self.token_file is None:
            return None
        return TokenFile(username or TOKEN_USERNAME, self.token_file, scope=_scope(remote))

    def remote_problem(self, remote: str) -> str | None:
        """Why this access cannot be used with ``remote`` (a deploy key for HTTPS, ...), or None."""
        kind = remote_kind(remote)
        if self.ssh_key is not None and self.token_file is not None:
            return "a git step takes ssh-key or token-file, not both"
        if self.ssh_key is not None and kind != "ssh":
            return f"ssh-key is for an ssh remote (git@host:owner/name.git or ssh://...), not a {kind} one"
        if self.token_file is not None and kind not in ("https", "http"):
            return f"token-file is for an https:// remote, not a {kind} one"
        return None

    def check_files(self) -> None:
        """Refuse a key or token file that ssh or git could not use, before git runs."""
        self.ssh_command()  # a path ssh cannot be given raises here, not in the middle of a fetch
        if self.ssh_key is not None:
            problem = key_file_problem(self.ssh_key)
            if problem:
                raise AccessError(problem)
        if self.token_file is not None:
            problem = token_file_problem(self.token_file)
            if problem:
                raise AccessError(problem)


def _scope(remote: str) -> str:
    """scheme://host[:port] of a URL: the token is given to that host only."""
    scheme, _, rest = remote.partition("://")
    host = rest.split("/", 1)[0].rpartition("@")[2]
    return f"{scheme.lower()}://{host}"


def _readable(path: Path, what: str) -> tuple[os.stat_result | None, str | None]:
    try:
        with path.open("rb") as file:
            first = file.readline(4096)
            st = os.fstat(file.fileno())
    except OSError as exc:
        return None, f"the {what} {path} cannot be read: {(exc.strerror or type(exc).__name__).lower()}"
    if not first.strip():
        return None, f"the {what} {path} is empty"
    return st, None


def key_file_problem(path: Path) -> str | None:
    """Why ssh would not use ``path`` as a deploy key, or None."""
    st, problem = _readable(path, "ssh-key")
    if st is None:
        return problem
    if st.st_mode & 0o077:
        return (
            f"the ssh-key {path} is readable by others (mode {stat.S_IMODE(st.st_mode):o}), and ssh ignores "
            f"such a key: chmod 600 {path}"
        )
    return None


def token_file_problem(path: Path) -> str | None:
    """Why ``path`` cannot give git a token, or None."""
    return _readable(path, "token-file")[1]


def others_may_read(path: Path) -> bool:
    try:
        return bool(path.stat().st_mode & 0o077)
    except OSError:
        return False


def _hostport(shown: str) -> str:
    """ssh's ``[host]:port`` as ``host:port``, what `runner known-hosts add` takes."""
    match = re.fullmatch(r"\[(.+)\]:(\d+)", shown.strip("'\""))
    return f"{match[1]}:{match[2]}" if match else shown.strip("'\"")


def refusal(stderr: Iterable[str], access: GitAccess) -> str | None:
    """What ssh's or git's messages say the remote refused, with the fix; None when they say nothing runner
    knows of."""
    text = "\n".join(stderr)
    found = _UNKNOWN.search(text)
    if found:
        host = _hostport(found[1])
        return (
            f"the host key of {host} is not in runner's known_hosts ({access.known_hosts}), so git did not "
            f"connect: check the host's key fingerprint, then `runner known-hosts add {host}`"
        )
    found = _CHANGED.search(text)
    if found or "REMOTE HOST IDENTIFICATION HAS CHANGED" in text:
        shown = found[1] if found else "the remote"
        host = _hostport(shown)
        return (
            f"the host key of {host} has CHANGED since it was added to runner's known_hosts "
            f"({access.known_hosts}): someone may be in between, or the host's key was replaced. Ask the "
            f"host's operator; if it was replaced, `ssh-keygen -R '{shown}' -f {access.known_hosts}` and "
            f"`runner known-hosts add {host}`"
        )
    if "Permission denied (publickey" in text and access.ssh_key is not None:
        return (
            f"the remote refused the deploy key {access.ssh_key}: add its public key "
            f"(`ssh-keygen -y -f {access.ssh_key}`) to the repository's deploy keys"
        )
    if "Authentication failed for" in text and access.token_file is not None:
        return (
            f"the remote refused the token in {access.token_file}: it may have expired, or lack read access "
            "to the repository's contents"
        )
    return None
