"""The shipped sudoers file, runner.sudo and the systemctl step, against the real sudo.

A throw-away user gets the shipped file (its user name replaced) in /etc/sudoers.d/, and everything that
matters is done as that user: sudo's answers, runner.sudo's check, and a real ``runner work`` whose
systemctl step either fails naming the missing rule or gets through sudo to systemctl itself. systemd is
not PID 1 on these machines, so an allowed systemctl fails with "System has not been booted with
systemd": that failure is the proof that sudo let the command through. Needs root (to add the user and
the sudoers file), sudo and visudo.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import re
import secrets
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support import ROOT, Account, require, stop_process

from runner import sudo
from runner.config import DEFAULT_CERTBOT
from runner.steps.systemctl import command as systemctl

SHIPPED = ROOT / "packaging" / "sudoers" / "runner"
WRAPPER = Path("/usr/local/libexec/runner-certbot")
NGINX_WRAPPER = Path("/usr/local/libexec/runner-nginx")
NOT_BOOTED = "System has not been booted with systemd"

# What the shipped file allows, as the steps spell it.
ALLOWED = [
    [str(WRAPPER)],
    [str(WRAPPER), "certonly", "--domain", "example.com"],  # the wrapper checks its own arguments
    [str(NGINX_WRAPPER), "--site", "example.com", "--template", "proxy.conf.j2", "--vars", "{}"],
    systemctl("reload", "nginx"),
    systemctl("restart", "runner-web.service", no_block=True),
    systemctl("restart", "runner-worker.service", no_block=True),
]
REFUSED = [
    ["/usr/bin/systemctl", "reboot"],
    ["/usr/bin/systemctl", "restart", "sshd"],
    ["/usr/bin/systemctl", "reload", "sshd"],
    ["/usr/bin/systemctl", "reload", "nginx; id"],
    ["/usr/bin/systemctl", "reload", "nginx", ";", "id"],
    ["/usr/bin/systemctl", "reload", "nginx", "sshd"],
    ["/usr/bin/systemctl", "restart", "nginx"],
    ["/usr/bin/systemctl", "restart", "runner-worker.service"],  # only --no-block is allowed
    ["/usr/bin/systemctl", "--no-block", "restart", "runner-*.service"],
    ["/usr/bin/bash"],
    ["/usr/bin/certbot"],
    ["certbot", "renew", "--post-hook", "id > /tmp/owned"],
]


# Without root: what runner.sudo builds ----------------------------------------------------------------------


def test_privileged_puts_sudo_n_in_front_and_nothing_else() -> None:
    assert sudo.privileged(["/usr/bin/systemctl", "reload", "nginx"]) == [
        "sudo",
        "-n",
        "/usr/bin/systemctl",
        "reload",
        "nginx",
    ]
    assert sudo.unwrap(sudo.privileged(["/bin/true", "-x"])) == ["/bin/true", "-x"]
    assert sudo.unwrap(shlex.split(DEFAULT_CERTBOT)) == [str(WRAPPER)]
    assert sudo.unwrap(["/usr/bin/sudo", "-n", "/bin/true"]) == ["/bin/true"]
    # Not through sudo -n: not a privileged command, so nothing to check.
    assert sudo.unwrap(["/usr/bin/certbot", "renew"]) is None
    assert sudo.unwrap(["sudo", "/bin/true"]) is None


def test_the_missing_rule_is_spelled_as_sudoers_reads_it() -> None:
    assert sudo.rule(["/usr/bin/systemctl", "reload", "nginx"], "deploy") == (
        "deploy ALL=(root) NOPASSWD: /usr/bin/systemctl reload nginx"
    )
    assert (
        sudo.rule(["/x", "--opt=a,b:c\\d"], "deploy")
        == "deploy ALL=(root) NOPASSWD: /x --opt\\=a\\,b\\:c\\\\d"
    )


def test_a_command_not_through_sudo_is_not_checked() -> None:
    asyncio.run(sudo.check(["/nonexistent/program", "-n"], env={"PATH": "/nonexistent"}))


# With root: a throw-away user and the shipped file ---------------------------------------------------------


@dataclass
class DeployUser(Account):
    """The throw-away user, with the sudoers file installed for it."""

    sudoers: Path = Path()

    def runner(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = self.run(sys.executable, "-m", "runner", *args)
        assert done.returncode == 0, f"runner {' '.join(args)}: {done.returncode}\n{done.stdout}{done.stderr}"
        return done


def sudoers_for(user: str, suffix: str) -> str:
    """The shipped file for ``user``, its aliases renamed with ``suffix``.

    Aliases are global to all of sudoers: a copy of the file installed on this machine, or another test
    session's, would define them twice, which visudo rejects.
    """
    text, count = re.subn(
        r"^(User_Alias RUNNER_DEPLOY = )runner$", rf"\g<1>{user}", SHIPPED.read_text(), flags=re.M
    )
    assert count == 1, "the shipped file no longer names its user in `User_Alias RUNNER_DEPLOY = runner`"
    return re.sub(r"\bRUNNER_([A-Z_]+)\b", rf"RUNNER_\1_{suffix}", text)


def untraversable_ancestors(paths: Sequence[Path]) -> set[Path]:
    """Directories on the way to ``paths`` that others may not enter (a 0700 /root holding the venv)."""
    found = set()
    for path in paths:
        for directory in (path, *path.parents):
            if directory.is_dir() and not directory.stat().st_mode & stat.S_IXOTH:
                found.add(directory)
    return found


def restore_acl(directory: Path, user: str) -> None:
    """Take ``user``'s entry off ``directory``; an ACL left with nothing else in it goes altogether."""
    subprocess.run(["setfacl", "-x", f"u:{user}", str(directory)], check=False)
    acl = subprocess.run(
        ["getfacl", "--omit-header", "--absolute-names", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    if not re.search(r"^(default:|(user|group):[^:]+:)", acl, re.MULTILINE):
        subprocess.run(["setfacl", "-b", str(directory)], check=False)


def remove_if_empty(directory: Path) -> None:
    with contextlib.suppress(OSError):
        directory.rmdir()


def check(argv: Sequence[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{shlex.join(argv)}: {done.returncode}\n{done.stdout}{done.stderr}"


@pytest.fixture(scope="module")
def user() -> Iterator[DeployUser]:
    require(os.geteuid() == 0, "the sudo tests add a user and a sudoers file: they must run as root")
    for program in ("sudo", "visudo", "useradd", "userdel", "setpriv"):
        require(shutil.which(program) is not None, f"{program} is not installed")
    suffix = secrets.token_hex(4)
    name = f"runner-sudo-test-{suffix}"
    with contextlib.ExitStack() as cleanup:
        home = Path(tempfile.mkdtemp(prefix=f"{name}-"))
        cleanup.callback(shutil.rmtree, home, ignore_errors=True)
        check(["useradd", "--no-create-home", "--home-dir", str(home), "--shell", "/usr/sbin/nologin",
               "--user-group", name])  # fmt: skip
        cleanup.callback(subprocess.run, ["userdel", name], check=False)
        entry = pwd.getpwnam(name)
        uid, gid = entry.pw_uid, entry.pw_gid
        os.chown(home, uid, gid)

        # The user runs this checkout's Python; let it through directories it could not enter.
        python = Path(sys.executable)
        blocked = untraversable_ancestors(
            [python.parent, python.resolve().parent, Path(sys.base_prefix), ROOT]
        )
        if blocked:
            require(shutil.which("setfacl") is not None, f"setfacl is needed to let {name} into {blocked}")
        for directory in blocked:
            cleanup.callback(restore_acl, directory, name)
            check(["setfacl", "-m", f"u:{name}:x", str(directory)])

        # sudo -l only answers for a command that exists: a stand-in when a wrapper is not installed.
        for wrapper in (WRAPPER, NGINX_WRAPPER):
            if wrapper.exists():
                continue
            for directory in reversed([wrapper.parent, *wrapper.parent.parents]):
                if not directory.exists():
                    directory.mkdir()
                    cleanup.callback(remove_if_empty, directory)
            cleanup.callback(wrapper.unlink, missing_ok=True)
            wrapper.write_text("#!/bin/sh\n# stand-in left by runner's tests/test_sudo.py\nexit 64\n")
            wrapper.chmod(0o755)

        # Checked before it is in force, since a broken file in /etc/sudoers.d breaks sudo for everyone:
        # sudo skips a name with a "." in it, so the file is checked there and then renamed into place.
        installed = Path("/etc/sudoers.d") / name
        staged = installed.with_name(f".{name}.tmp")
        cleanup.callback(staged.unlink, missing_ok=True)
        cleanup.callback(installed.unlink, missing_ok=True)
        staged.write_text(sudoers_for(name, suffix.upper()))
        staged.chmod(0o440)
        check(["visudo", "-c", "-q", "-f", str(staged)])
        staged.rename(installed)

        deploy = DeployUser(name, home, installed)
        done = deploy.run(sys.executable, "-c", "import runner.cli")
        assert done.returncode == 0, f"{name} cannot run {sys.executable} with runner:\n{done.stderr}"
        yield deploy


def sudo_list(user: DeployUser, command: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return user.run("sudo", "-n", "-l", *command)


def test_the_shipped_file_passes_visudo_and_so_does_the_whole_configuration(user: DeployUser) -> None:
    check(["visudo", "-c", "-f", str(SHIPPED)])
    check(["visudo", "-c"])


def test_sudo_lists_exactly_the_allowed_commands(user: DeployUser) -> None:
    listing = subprocess.run(
        ["sudo", "-l", "-U", user.name], capture_output=True, text=True, check=True
    ).stdout
    _, found, rules = listing.partition(f"User {user.name} may run the following commands on")
    assert found, listing
    rules = " ".join(rules.split(":", 1)[1].split())  # sudo wraps long lines
    assert rules == "(root) NOPASSWD: " + ", ".join(
        [
            str(WRAPPER),
            str(NGINX_WRAPPER),
            "/usr/bin/systemctl reload nginx",
            "/usr/bin/systemctl --no-block restart runner-web.service",
            "/usr/bin/systemctl --no-block restart runner-worker.service",
        ]
    ), listing


@pytest.mark.parametrize("command", ALLOWED, ids=shlex.join)
def test_the_steps_commands_are_allowed(user: DeployUser, command: list[str]) -> None:
    done = sudo_list(user, command)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == " ".join(command), done.stdout


@pytest.mark.parametrize("command", REFUSED, ids=shlex.join)
def test_anything_else_is_refused(user: DeployUser, command: list[str]) -> None:
    done = sudo_list(user, command)
    assert done.returncode != 0, f"sudo allows {shlex.join(command)}: {done.stdout}"
    assert done.stdout == ""


CHECK = """
import asyncio, json, os, sys
from runner import sudo
try:
    asyncio.run(sudo.check(sys.argv[1:], env=os.environ))
    print(json.dumps(None))
except sudo.SudoRefused as exc:
    print(json.dumps(str(exc)))
"""


def test_runner_sudo_names_the_missing_rule(user: DeployUser) -> None:
    def refusal(command: list[str]) -> str | None:
        done = user.run(sys.executable, "-c", CHECK, *command)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    assert refusal(sudo.privileged(systemctl("reload", "nginx"))) is None
    # As the certbot step will use it: its configured command already starts with sudo -n.
    assert refusal([*shlex.split(DEFAULT_CERTBOT), "renew"]) is None
    assert refusal(sudo.privileged(["/usr/bin/systemctl", "restart", "sshd"])) == (
        f'sudo refused "/usr/bin/systemctl restart sshd": add to /etc/sudoers.d/{user.name}: '
        f"{user.name} ALL=(root) NOPASSWD: /usr/bin/systemctl restart sshd"
    )


# The systemctl step in a real `runner work`, as the deploy user --------------------------------------------

PIPELINE = """
    on: {repository: acme/app, events: [push], branches: [main]}
    workdir: checkout
    steps:
      - systemctl: <STEP>
"""


def wait_for_runs(user: DeployUser, count: int, worker: subprocess.Popen[bytes], log: Path) -> list[Any]:
    deadline = time.monotonic() + 60
    while True:
        runs = json.loads(user.runner("runs", "--json").stdout)
        if len(runs) == count and all(r["status"] in ("succeeded", "failed") for r in runs):
            return runs
        assert worker.poll() is None, f"runner work exited {worker.returncode}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"runs did not finish: {runs}\n{log.read_text()}"
        time.sleep(0.2)


def test_the_systemctl_step_run_by_the_deploy_user(user: DeployUser) -> None:
    steps = {
        "nginx": {"action": "reload", "unit": "nginx"},
        "itself": {"action": "restart", "unit": "runner-worker.service", "no-block": True},
        "sshd": {"action": "reload", "unit": "sshd"},
    }
    pipelines = user.home / "pipelines"
    pipelines.mkdir()
    for name, step in steps.items():
        (pipelines / f"{name}.yaml").write_text(textwrap.dedent(PIPELINE).replace("<STEP>", json.dumps(step)))
    subprocess.run(["chown", "-R", f"{user.uid}:{user.gid}", str(pipelines)], check=True)
    user.runner("db", "upgrade")

    log = user.home / "worker.log"
    with log.open("wb") as output:
        worker = subprocess.Popen(
            user.argv(sys.executable, "-m", "runner", "work"),
            env=user.env(),
            cwd=user.home,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        for name in steps:
            user.runner("trigger", name, "--ref", "main")
        runs = {r["pipeline"]: r for r in wait_for_runs(user, len(steps), worker, log)}
    finally:
        stop_process(worker)

    def outcome(name: str) -> tuple[str, str, str]:
        run = runs[name]
        [step] = run["steps"]
        return run["status"], step["detail"], Path(run["log"]).read_text()

    # Not in the sudoers file: refused before anything runs, with the rule to add.
    status, detail, text = outcome("sshd")
    assert status == "failed"
    assert detail == (
        f'sudo refused "/usr/bin/systemctl reload sshd": add to /etc/sudoers.d/{user.name}: '
        f"{user.name} ALL=(root) NOPASSWD: /usr/bin/systemctl reload sshd"
    ), text
    assert "$ sudo" not in text and NOT_BOOTED not in text

    # Allowed: sudo runs systemctl as root, which fails only because systemd does not run here.
    for name, argv in (
        ("nginx", "sudo -n /usr/bin/systemctl reload nginx"),
        ("itself", "sudo -n /usr/bin/systemctl --no-block restart runner-worker.service"),
    ):
        status, detail, text = outcome(name)
        assert (status, detail) == ("failed", "exited with status 1"), text
        assert f"| $ {argv}\n" in text, text
        assert re.search(rf"^\S+ err +\| {NOT_BOOTED}", text, re.M), text
