"""An instance of runner on a machine: where ``runner setup`` puts its files, and what they hold.

The files rendered for it: the env file, runner-nginx's configuration, sudoers and the systemd units.

An instance is named by its user: the default user ``runner`` gets ``runner-web.service``,
``runner-worker.service`` and ``/etc/sudoers.d/runner``; another user name gives a second instance beside it.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from runner import shipped

PACKAGING = shipped.path(shipped.PACKAGING)
WRAPPER = "usr/local/libexec/runner-certbot"
NGINX_WRAPPER = "usr/local/libexec/runner-nginx"
# systemd waits this much longer than the worker's grace before it kills what is left: the step's own
# SIGTERM-to-SIGKILL grace, and the worker's bookkeeping.
STOP_TIMEOUT_MARGIN = 15


class SetupError(Exception):
    """What runner setup refuses to do, or an action of its that failed."""


@dataclass
class Instance:
    """One instance: its user, its home, nginx's sites, the worker's grace, and where it is installed."""

    user: str
    home: Path
    sites_dir: Path
    stop_grace: float
    prefix: Path = Path("/")
    database_url: str | None = None
    runner_bin: Path = field(default_factory=lambda: Path(sys.executable).with_name("runner"))

    # Where things go ---------------------------------------------------------------------------------

    def _at(self, path: str) -> Path:
        return self.prefix / path.lstrip("/")

    @property
    def etc_dir(self) -> Path:
        return self._at(f"/etc/{self.user}")

    @property
    def env_file(self) -> Path:
        return self.etc_dir / "runner.env"

    @property
    def secret_file(self) -> Path:
        return self.etc_dir / "secret"

    @property
    def web_user(self) -> str:
        """The webhook endpoint's own user: the only one, besides root, that gets the secret."""
        return f"{self.user}-web"

    @property
    def sudoers_file(self) -> Path:
        return self._at(f"/etc/sudoers.d/{self.user}")

    @property
    def units_dir(self) -> Path:
        return self._at("/etc/systemd/system")

    @property
    def wrapper(self) -> Path:
        return self._at(WRAPPER)

    @property
    def nginx_wrapper(self) -> Path:
        return self._at(NGINX_WRAPPER)

    @property
    def nginx_conf(self) -> Path:
        return self.etc_dir / "nginx.conf"

    @property
    def nginx_templates(self) -> Path:
        return self.etc_dir / "templates" / "nginx"

    # What its files hold -----------------------------------------------------------------------------

    def env_content(self) -> bytes:
        """The env file both units read, as setup first writes it."""
        database = (
            f"RUNNER_DATABASE_URL={self.database_url}\n"
            if self.database_url
            else "# No user in the URL: each unit connects as its own system user (peer authentication).\n"
            "# RUNNER_DATABASE_URL=postgresql+psycopg2:///runner\n"
        )
        env = (
            "# runner's settings for the systemd units (see the README's Configuration section).\n"
            "# Both units read this file, so it never names the webhook secret: the web unit gets it alone.\n"
            f"RUNNER_HOME={self.home}\n"
            f"{database}"
            f"RUNNER_NGINX_SITES_DIR={self.sites_dir}\n"
        )
        return env.encode()

    def nginx_conf_content(self) -> bytes:
        """runner-nginx's configuration for this instance, as setup first writes it."""
        text = (PACKAGING / "nginx.conf").read_text()
        text = re.sub(
            r"^templates-dir = .*$",
            f"templates-dir = {self._strip_prefix(self.nginx_templates)}",
            text,
            flags=re.M,
        )
        text = re.sub(r"^sites-dir = .*$", f"sites-dir = {self.sites_dir}", text, flags=re.M)
        return text.encode()

    def sudoers(self) -> bytes:
        """The shipped sudoers file for this instance's user, with the units its pipelines restart.

        Alias names are global in sudoers, so another instance's aliases get the user's name as suffix.
        """
        text = (PACKAGING / "sudoers" / "runner").read_text()
        text = re.sub(r"^(User_Alias RUNNER_DEPLOY = )runner$", rf"\g<1>{self.user}", text, flags=re.M)
        text = text.replace("restart runner-web.service", f"restart {self.user}-web.service")
        text = text.replace("restart runner-worker.service", f"restart {self.user}-worker.service")
        shipped = _sudoers_commands(text)
        extra = [" ".join(command) for command in self.pipeline_units() if " ".join(command) not in shipped]
        if extra:
            listed = ", \\\n    ".join(extra)
            text += (
                "\n# Units the pipelines in " + str(self.home / "pipelines") + " reload or restart "
                "(written by runner setup).\n"
                f"Cmnd_Alias RUNNER_UNITS = {listed}\n"
                "RUNNER_DEPLOY ALL = (root) NOPASSWD: RUNNER_UNITS\n"
            )
        if self.user != "runner":
            suffix = re.sub(r"[^A-Z0-9]", "_", self.user.upper())
            text = re.sub(r"\bRUNNER_([A-Z_]+)\b", rf"RUNNER_\1_{suffix}", text)
        return text.encode()

    def pipeline_units(self) -> list[list[str]]:
        """The systemctl commands of this instance's pipelines: each gets its own sudoers line."""
        from runner.pipelines import PipelineSet
        from runner.steps.systemctl import command

        pipelines = PipelineSet(self.home / "pipelines", self.home)
        pipelines.reload()
        commands: list[list[str]] = []
        for pipeline in pipelines.all():
            for step in pipeline.all_steps:
                if step.type == "systemctl":
                    args = step.args or {}
                    argv = command(args["action"], args["unit"], bool(args.get("no-block")))
                    if argv not in commands:
                        commands.append(argv)
        return commands

    def units(self) -> dict[str, bytes]:
        values = {
            "@USER@": self.user,
            "@GROUP@": self.user,
            "@HOME@": str(self.home),
            "@ENV_FILE@": str(self._strip_prefix(self.env_file)),
            "@RUNNER@": str(self.runner_bin),
            "@STOP_GRACE@": f"{self.stop_grace:g}",
            "@STOP_TIMEOUT@": f"{self.stop_grace + STOP_TIMEOUT_MARGIN:g}s",
            "@SITES_DIR@": str(self.sites_dir),
            "@WEB_USER@": self.web_user,
            "@SECRET_FILE@": str(self._strip_prefix(self.secret_file)),
            "@LISTEN@": self._listen_address(),
        }
        rendered = {}
        for unit in ("web.service", "web.socket", "worker.service"):
            text = (PACKAGING / "systemd" / f"runner-{unit}").read_text()
            for key, value in values.items():
                text = text.replace(key, value)
            rendered[f"{self.user}-{unit}"] = text.encode()
        return rendered

    def _listen_address(self) -> str:
        """The socket unit's ListenStream=: RUNNER_HOST and RUNNER_PORT of the env file, or the defaults.

        The address is the socket unit's alone once it is installed (runner serve takes the socket it is
        given): an admin who moves the endpoint edits the env file and runs setup again.
        """
        from runner.config import DEFAULT_HOST, DEFAULT_PORT

        settings: dict[str, str] = {}
        if self.env_file.is_file():
            for line in self.env_file.read_text().splitlines():
                name, equals, value = line.strip().removeprefix("export ").partition("=")
                if equals and name.strip() in ("RUNNER_HOST", "RUNNER_PORT"):
                    settings[name.strip()] = value.strip().strip("'\"")
        host = settings.get("RUNNER_HOST") or DEFAULT_HOST
        port = settings.get("RUNNER_PORT") or str(DEFAULT_PORT)
        if not port.isdigit() or not 0 < int(port) <= 65535:
            raise SetupError(f"RUNNER_PORT={port!r} in {self.env_file} is not a port number (1-65535)")
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def _strip_prefix(self, path: Path) -> Path:
        return Path("/") / path.relative_to(self.prefix)


def _sudoers_commands(text: str) -> set[str]:
    """The commands the Cmnd_Alias lines of a sudoers text name, each as one space-separated string."""
    joined = re.sub(r"\\\n\s*", " ", text)
    commands: set[str] = set()
    for line in joined.splitlines():
        if line.startswith("Cmnd_Alias") and "=" in line:
            for command in line.split("=", 1)[1].split(","):
                commands.add(" ".join(command.split()))
    return commands
