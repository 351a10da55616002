"""Commands run as root: through ``sudo -n``, and only as the sudoers file allows.

Every privileged command a step runs is built here, so that what runner asks sudo for and what
packaging/sudoers/runner allows can be compared in one place. ``sudo -n`` never waits for a password:
without a NOPASSWD rule for exactly that argument list it fails at once rather than hanging the step.
Before the command runs, ``check`` asks sudo whether it would run it (``sudo -n -l COMMAND``), so that a
missing rule fails the step with the line to add to the sudoers file instead of sudo's bare refusal.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path

from runner.process import DEVNULL, spawn

SUDO = ("sudo", "-n")
# sudo -n -l answers in milliseconds; only a hung name service (LDAP, sssd) makes it take longer.
CHECK_TIMEOUT = 30.0
# Characters sudoers reads as syntax inside a command's arguments unless escaped.
SUDOERS_SPECIAL = frozenset("\\,:=")


class SudoRefused(Exception):
    """sudo will not run a command for this user; the message names the sudoers rule that is missing."""


def privileged(argv: Sequence[str]) -> list[str]:
    """``argv`` run as root: ``sudo -n`` in front, and nothing else."""
    return [*SUDO, *argv]


def unwrap(argv: Sequence[str]) -> list[str] | None:
    """The command that ``argv`` runs as root, when it starts with ``sudo -n``; None otherwise.

    A configured command (such as RUNNER_CERTBOT) may name sudo by its path, or not use it at all.
    """
    if len(argv) > 2 and Path(argv[0]).name == "sudo" and argv[1] == "-n":
        return list(argv[2:])
    return None


def current_user() -> str:
    """The user sudo checks the rules for.

    Not getpass.getuser(): that believes $LOGNAME and $USER, which need not name the process's user
    (a worker started from su, or with an environment file), and the rule must name the real one.
    """
    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"#{uid}"  # sudoers' spelling of a user id with no name


def rule(command: Sequence[str], user: str | None = None) -> str:
    """The sudoers line that allows exactly ``command`` as root without a password."""
    words = ("".join("\\" + c if c in SUDOERS_SPECIAL else c for c in word) for word in command)
    return f"{user or current_user()} ALL=(root) NOPASSWD: {' '.join(words)}"


def sudoers_file(user: str | None = None) -> str:
    """The sudoers file ``runner setup`` writes for a deploy user (an instance is named by its user)."""
    return f"/etc/sudoers.d/{user or current_user()}"


def refusal(command: Sequence[str], said: str = "") -> str:
    """Why the step fails when sudo refuses ``command``, and the rule that would allow it."""
    message = f'sudo refused "{shlex.join(command)}": add to {sudoers_file()}: {rule(command)}'
    return f"{message} (sudo: {said})" if said else message


async def check(argv: Sequence[str], *, env: Mapping[str, str], timeout: float = CHECK_TIMEOUT) -> None:
    """Raise SudoRefused unless sudo would run ``argv`` (``sudo -n COMMAND...``) without a password.

    An ``argv`` that does not start with ``sudo -n`` is not checked: it runs with runner's own rights.
    """
    command = unwrap(argv)
    if command is None:
        return
    try:
        process = await spawn([argv[0], "-n", "-l", *command], env=env, stdout=DEVNULL)
    except OSError as exc:
        raise SudoRefused(f"cannot start {argv[0]} to run {shlex.join(command)}: {exc.strerror}") from None
    try:
        _, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise SudoRefused(f"sudo -n -l {shlex.join(command)} did not answer in {timeout:.0f} s") from None
    if process.returncode != 0:
        said = err.decode(errors="replace").strip().removeprefix("sudo: ")
        raise SudoRefused(refusal(command, " ".join(said.split())))
