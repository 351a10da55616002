"""``runner doctor``: what a deployment needs on this server, checked one thing at a time, as the deploy user.

Each check gives one line: ``ok`` and what holds, or ``FAIL`` and the exact fix. The aim is that what would
fail a deployment at 2 a.m. is found the afternoon before.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from runner import pipeline_secrets, repo_checks, sudo
from runner.catchup import RECOVERED_QUEUE
from runner.config import Config
from runner.pipeline import Pipeline
from runner.pipelines import pipeline_files, validate

# The commands runner itself may ask sudo for, whatever the pipelines: anything else sudo allows the
# deploy user is wider than needed.
SELF_RESTART = ("web", "worker")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    message: str

    def __str__(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.name}: {self.message}"


class Doctor:
    def __init__(self, config: Config, environ: dict[str, str]) -> None:
        self.config = config
        self.environ = environ
        self.pipelines: list[Pipeline] = []

    def checks(self) -> Iterator[Check]:
        yield self.check_secret()
        yield self.check_database()
        yield self.check_pipelines()
        yield from self.check_queues()
        yield from self.check_workdirs()
        yield from (
            Check(*found)
            for found in repo_checks.check_repositories(self.config, self.pipelines, self.environ)
        )
        yield from (
            Check(*found)
            for pipeline in self.pipelines
            for found in pipeline_secrets.doctor_checks(
                pipeline, self.config.home, self.config.credentials_directory
            )
        )
        yield from self.check_tools()
        yield from self.check_sites_dir()
        yield from self.check_sudo_rights()
        yield self.check_no_wider_sudo()

    # Each check ---------------------------------------------------------------------------------------

    def check_secret(self) -> Check:
        """The deploy user (and so every step) must not get the webhook secret: it could forge deliveries.

        Only the web unit, running as a user of its own, gets it (LoadCredential=).
        """
        user = sudo.current_user()
        paths = [Path(f"/etc/{user}/secret")]
        named = [name for name in ("RUNNER_SECRET", "RUNNER_SECRET_FILE") if self.environ.get(name)]
        if self.environ.get("RUNNER_SECRET_FILE"):
            paths.append(Path(self.environ["RUNNER_SECRET_FILE"]))
        denied = []
        for path in paths:
            reason = _unreadable(path)
            if reason is None:
                return Check(
                    "secret",
                    False,
                    f"{user} can read the webhook secret {path}, and so can every step: "
                    f"`sudo chown root:root {path} && sudo chmod 600 {path}` (or run `sudo runner setup`)",
                )
            denied.append(f"{path}: {reason}")
        if named:
            return Check(
                "secret",
                False,
                f"{' and '.join(named)} set in the worker's environment: delete it from the env file; "
                "only the web unit gets the secret, as a credential (`sudo runner setup` says how)",
            )
        return Check("secret", True, f"{user} cannot read the webhook secret ({'; '.join(denied)})")

    def check_database(self) -> Check:
        from runner.database import safe_url
        from runner.schema import SchemaError
        from runner.store import Store

        store = Store(self.config.database_url, server=self.config.server_name)
        where = safe_url(self.config.database_url)
        try:
            store.check_schema()
        except SchemaError as exc:
            return Check("database", False, str(exc))
        except Exception as exc:
            return Check(
                "database",
                False,
                f"{where} is not reachable ({type(exc).__name__}): check RUNNER_DATABASE_URL",
            )
        finally:
            store.close()
        return Check("database", True, f"{where} is reachable and migrated")

    def check_pipelines(self) -> Check:
        from runner.loading import load_pipeline

        files = pipeline_files(self.config.pipelines_dir)
        problems = validate(files, self.config.home)
        # The valid ones are still checked: their needs (and sudo rights) hold whatever the broken one says.
        invalid = {problem.path for problem in problems}
        self.pipelines = [load_pipeline(path, self.config.home) for path in files if path not in invalid]
        if problems:
            shown = "; ".join(str(p) for p in problems[:3]) + (" ..." if len(problems) > 3 else "")
            return Check("pipelines", False, f"{len(problems)} problem(s): {shown}; run `runner validate`")
        names = ", ".join(p.name for p in self.pipelines) or "none"
        return Check("pipelines", True, f"{len(files)} valid ({names})")

    def check_queues(self) -> Iterator[Check]:
        # The recovered queue too: the catch-up writes into it, as the worker's user.
        queues = self.config.queues_dir
        directories = [
            self.config.main_queue_dir,
            queues / RECOVERED_QUEUE,
            *(queues / pipeline.name for pipeline in self.pipelines),
        ]
        for directory in directories:
            # A pipeline's queue appears when the worker first routes to it: its parent must allow that.
            target = directory if directory.exists() else _nearest_existing(directory)
            problem = _writable(target)
            if problem is not None:
                yield Check(f"queue {directory.name}", False, f"{problem}: {_own_fix(directory)}")
            elif directory.exists():
                yield Check(f"queue {directory.name}", True, f"{directory} is writable")
            else:
                yield Check(f"queue {directory.name}", True, f"{directory} can be created (in {target})")

    def check_workdirs(self) -> Iterator[Check]:
        for pipeline in self.pipelines:
            workdir = pipeline.workdir
            target = workdir if workdir.exists() else _nearest_existing(workdir)
            problem = _writable(target)
            if problem is None:
                what = "is writable" if workdir.exists() else f"can be created (in {target})"
                yield Check(f"workdir of {pipeline.name}", True, f"{workdir} {what}")
            else:
                yield Check(f"workdir of {pipeline.name}", False, f"{problem}: {_own_fix(workdir)}")

    def _step_types(self) -> set[str]:
        return {step.type for pipeline in self.pipelines for step in pipeline.all_steps}

    def check_tools(self) -> Iterator[Check]:
        path = ":".join([*self.config.tool_path, self.environ.get("PATH", os.defpath)])
        used = self._step_types()
        wanted = {"git": "git" in used, "pnpm": "pnpm" in used, "node": "pnpm" in used}
        for tool, needed in wanted.items():
            found = shutil.which(tool, path=path)
            if found:
                yield Check(f"tool {tool}", True, f"found at {found}")
            elif needed:
                hint = "install it, or add its directory to RUNNER_TOOL_PATH"
                yield Check(f"tool {tool}", False, f"not found on RUNNER_TOOL_PATH or PATH: {hint}")
        if "nginx" in used:
            yield self._check_wrapper("nginx", self.config.nginx)
            if not shutil.which("nginx", path="/usr/sbin:/usr/bin:/usr/local/sbin"):
                yield Check("tool nginx", False, "nginx is not installed: apt-get install nginx")
        if "certbot" in used:
            command = sudo.unwrap(self.config.certbot) or list(self.config.certbot)
            wrapper = Path(command[0])
            if wrapper.is_file() and os.access(wrapper, os.X_OK):
                yield Check("tool certbot", True, f"the wrapper {wrapper} is installed")
            else:
                yield Check("tool certbot", False, f"{wrapper} is missing: run `sudo runner setup`")
            if not shutil.which("certbot", path="/usr/bin:/usr/local/bin:/snap/bin"):
                yield Check("tool certbot", False, "certbot is not installed: apt-get install certbot")

    def _check_wrapper(self, tool: str, configured: tuple[str, ...]) -> Check:
        """A wrapper sudo runs as root: installed, and root's alone to change (or it is root for anyone)."""
        command = sudo.unwrap(configured) or list(configured)
        wrapper = Path(command[0])
        if not wrapper.is_file() or not os.access(wrapper, os.X_OK):
            return Check(f"tool {tool}", False, f"the wrapper {wrapper} is missing: run `sudo runner setup`")
        if sudo.unwrap(configured) is not None:
            problem = _not_roots(wrapper)
            if problem:
                return Check(f"tool {tool}", False, f"{problem}: run `sudo runner setup`")
        return Check(f"tool {tool}", True, f"the wrapper {wrapper} is installed")

    def check_sites_dir(self) -> Iterator[Check]:
        """The deploy user must not be able to change nginx's configuration, nor what becomes of it: nginx's
        master opens as root whatever a site names, so that right is root's own."""
        if "nginx" not in self._step_types():
            return
        user = sudo.current_user()
        for what, directory in (
            ("nginx sites", self.config.nginx_sites_dir),
            ("nginx templates", self.config.nginx_templates_dir),
        ):
            if not directory.is_dir():
                yield Check(what, False, f"{directory} is not a directory: run `sudo runner setup`")
                continue
            writable = [str(directory)] if _writable(directory) is None else []
            files = sorted(p for p in directory.iterdir() if p.is_file())
            writable += [str(p) for p in files if os.access(p, os.W_OK)]
            if writable:
                yield Check(
                    what,
                    False,
                    f"{user} can write {', '.join(writable[:3])}{' ...' if len(writable) > 3 else ''}: a "
                    "root-equivalent right (nginx's master opens as root the files a site names); "
                    f"`sudo setfacl -R -x u:{user} {directory}` and make it root's, 0755 (its files 0644), "
                    "or run `sudo runner setup`",
                )
            else:
                yield Check(what, True, f"{directory} is not writable by {user}: only runner-nginx, as root")

    def needed_sudo(self) -> list[list[str]]:
        """The exact commands the pipelines will ask sudo for."""
        from runner.steps.systemctl import command as systemctl_command

        needed: list[list[str]] = []
        for pipeline in self.pipelines:
            for step in pipeline.all_steps:
                argv: list[str] | None = None
                if step.type == "systemctl":
                    args = step.args or {}
                    argv = sudo.privileged(
                        systemctl_command(args["action"], args["unit"], bool(args.get("no-block")))
                    )
                elif step.type == "nginx":
                    argv = list(self.config.nginx)
                elif step.type == "certbot":
                    argv = list(self.config.certbot)
                command = sudo.unwrap(argv) if argv else None
                if command is not None and command not in needed:
                    needed.append(command)
        return needed

    def check_sudo_rights(self) -> Iterator[Check]:
        for command in self.needed_sudo():
            try:
                asyncio.run(sudo.check(sudo.privileged(command), env=self.environ))
            except sudo.SudoRefused as exc:
                yield Check(f"sudo {command[0]}", False, str(exc))
            else:
                yield Check(f"sudo {command[0]}", True, f"may run `{' '.join(command)}`")

    def check_no_wider_sudo(self) -> Check:
        allowed = {" ".join(command) for command in self.needed_sudo()}
        user = sudo.current_user()
        allowed |= {f"/usr/bin/systemctl --no-block restart {user}-{role}.service" for role in SELF_RESTART}
        # The shipped sudoers file's rules: each wrapper checks its own arguments, and reloading nginx grants
        # nothing while the deploy user cannot write nginx's configuration.
        allowed.add("/usr/bin/systemctl reload nginx")
        for configured in (self.config.certbot, self.config.nginx):
            wrapper = sudo.unwrap(configured)
            if wrapper:
                allowed.add(wrapper[0])
        granted = _granted_commands()
        if granted is None:
            return Check("sudo scope", True, "sudo grants this user nothing (or is not installed)")
        wider = [command for command in granted if command not in allowed]
        if wider:
            return Check(
                "sudo scope",
                False,
                "sudo allows more than the pipelines need: "
                + ", ".join(wider)
                + f"; remove it from the sudoers files (`sudo -l -U {user}` lists them)",
            )
        return Check("sudo scope", True, f"sudo allows only what is needed ({len(granted)} command(s))")


def _granted_commands() -> list[str] | None:
    """The commands ``sudo -n -l`` says this user may run, one per entry; None if none or no sudo."""
    if shutil.which("sudo") is None:
        return None
    result = subprocess.run(["sudo", "-n", "-l"], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        return None
    commands: list[str] = []
    listing = result.stdout.split("may run the following commands", 1)[-1]
    for line in listing.splitlines()[1:]:
        line = line.strip()
        if not line:
            continue
        # "(root) NOPASSWD: /a, /b c" -- the run-as part, tags, then commands separated by ", ".
        line = re.sub(r"^\([^)]*\)\s*", "", line)
        line = re.sub(r"^(?:[A-Z_]+:\s*)+", "", line)
        commands.extend(part.strip() for part in re.split(r",\s+", line) if part.strip())
    return commands


def _writable(directory: Path) -> str | None:
    """Why this user cannot create files in ``directory``, or None. Tried for real: ACLs count."""
    if not directory.is_dir():
        return f"{directory} is not a directory"
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".runner-doctor."):
            pass
    except OSError as exc:
        return f"cannot create a file in {directory} ({exc.strerror})"
    return None


def _unreadable(path: Path) -> str | None:
    """Why this user cannot read ``path``, or None when it can. Tried for real: ACLs count."""
    try:
        with path.open("rb") as file:
            file.read(1)
    except OSError as exc:
        return (exc.strerror or type(exc).__name__).lower()
    return None


def _not_roots(path: Path) -> str | None:
    """Why ``path`` is not root's alone to change (it or a directory above it), or None."""
    for entry in [path, *path.parents]:
        st = entry.stat()
        if st.st_uid != 0 or (st.st_mode & 0o022 and not (entry != path and st.st_mode & 0o1000)):
            return f"{entry} is not root's or is writable by group or others, and sudo runs {path} as root"
    return None


def _nearest_existing(path: Path) -> Path:
    for parent in path.parents:
        if parent.exists():
            return parent
    return Path("/")


def _own_fix(path: Path) -> str:
    user = sudo.current_user()
    return f"sudo install -d -o {user} -g {user} {path}"


def run(config: Config, environ: dict[str, str]) -> int:
    """Print every check; 0 only when all pass."""
    failed = 0
    for check in Doctor(config, environ).checks():
        print(check, flush=True)
        failed += not check.ok
    print(f"{failed} check(s) failed" if failed else "all checks passed")
    return 1 if failed else 0
