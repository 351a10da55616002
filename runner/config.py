"""Configuration, read in one place.

Every setting comes from the environment; command-line flags may override some of them.
Nothing else in the package reads ``os.environ`` for runner settings.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from runner.config_values import (
    ConfigError,
    SmtpServer,
    read_command,
    read_count,
    read_duration,
    read_port,
    read_seconds,
    read_server_name,
    read_smtp_url,
    read_ui_path,
    read_url,
    read_workers,
)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 3400
DATABASE_FILE = "runner.db"
DEFAULT_STOP_GRACE = 60.0
DEFAULT_WORKERS = 1
DEFAULT_NGINX_SITES_DIR = "/etc/nginx/conf.d"
DEFAULT_NGINX = "sudo -n /usr/local/libexec/runner-nginx"
DEFAULT_CERTBOT = "sudo -n /usr/local/libexec/runner-certbot"
DEFAULT_RETENTION = 90 * 86400.0
DEFAULT_KEEP_RUNS = 20
DEFAULT_GITHUB_API_URL = "https://api.github.com"
DEFAULT_CATCH_UP_INTERVAL = 600.0
DEFAULT_GITHUB_REPORT_FOR = 86400.0


class Secret:
    """Holds a secret so that it never shows in a repr, a log line or a traceback's locals."""

    def __init__(self, value: str) -> None:
        self._value = value

    def __repr__(self) -> str:
        return "Secret('**********')"

    def __str__(self) -> str:
        return "**********"

    def reveal(self) -> bytes:
        return self._value.encode()

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass(frozen=True)
class GitHubHook:
    """A webhook runner is told about (RUNNER_GITHUB_HOOKS): a repository's or an organisation's."""

    kind: Literal["repository", "organization"]
    # owner/name of the repository, or the organisation's login: what the GitHub client's calls are for.
    name: str
    id: int


@dataclass(frozen=True)
class Config:
    home: Path
    database_url: str
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    secret: Secret | None = field(default=None, repr=False)
    # Read only when the secret is needed (by `runner serve`): the worker and the deploy user's commands
    # cannot read it, and must not fail for that.
    secret_file: Path | None = None
    # How long a running step may go on after the worker is asked to stop; systemd's TimeoutStopSec
    # for the worker must be longer.
    stop_grace: float = DEFAULT_STOP_GRACE
    # Server processes sharing the listening socket: each has its own event loop and GIL, which is what
    # limits how many deliveries one process can make durable.
    workers: int = DEFAULT_WORKERS
    # Directories searched before PATH by every step: the deploy user's node and pnpm live outside PATH.
    tool_path: tuple[str, ...] = ()
    # Where systemd put the worker unit's LoadCredential= files (CREDENTIALS_DIRECTORY, set by systemd):
    # a pipeline's secret may be $CREDENTIALS_DIRECTORY/NAME.
    credentials_directory: str | None = None
    # The nginx step runs this (the root-owned wrapper through sudo): the deploy user may not write nginx's
    # configuration, whose master opens as root whatever files it names. How sites are tested and reloaded
    # is the wrapper's root-owned configuration (/etc/USER/nginx.conf).
    nginx: tuple[str, ...] = tuple(shlex.split(DEFAULT_NGINX))
    # Where the sites are, read only (the certbot step's domains-from-site, runner setup and doctor).
    nginx_sites_dir: Path = Path(DEFAULT_NGINX_SITES_DIR)
    # The templates the wrapper renders, for validation (RUNNER_NGINX_TEMPLATES; see nginx_templates_dir).
    nginx_templates: Path | None = None
    # The certbot step runs this (the root-owned wrapper through sudo), never certbot itself.
    certbot: tuple[str, ...] = tuple(shlex.split(DEFAULT_CERTBOT))
    # How long runs, deliveries and failed entries are kept (seconds), and how many of each pipeline's
    # last runs are kept whatever their age: the history an operator looks at when something goes wrong.
    # The user whose main-queue entries the router takes for verified deliveries: the web unit's
    # (RUNNER_WEB_USER, set by its unit). Unset: whoever owns queues/main (one user, as with runner up).
    web_user: str | None = None
    retention: float = DEFAULT_RETENTION
    keep_runs: int = DEFAULT_KEEP_RUNS
    # GitHub's API (GitHub Enterprise has its own) and its credentials: a token's file, or an App's id and
    # key file. Files are read when a call needs them: a rotated token is used, no secret is held here.
    github_api_url: str = DEFAULT_GITHUB_API_URL
    github_token_file: Path | None = None
    github_app_id: str | None = None
    github_app_key_file: Path | None = None
    # Where runner's pages are reachable, for the links it gives GitHub; None: no links.
    public_url: str | None = None
    # How long the worker tries to tell GitHub about a run (seconds) before it gives that report up.
    github_report_for: float = DEFAULT_GITHUB_REPORT_FOR
    # How often the worker asks GitHub for the deliveries it missed (seconds); 0: never.
    catch_up_interval: float = DEFAULT_CATCH_UP_INTERVAL
    # Hooks runner is told about, besides those it learns from the deliveries it receives.
    github_hooks: tuple[GitHubHook, ...] = ()
    # This server's name on its runs and deliveries, in a database several servers may share.
    server_name: str = "localhost"
    # Where the status page is served, beside the webhook endpoint; the users who may see it (bcrypt
    # hashes; no file, no page). None: the home's ui-users.
    ui_path: str = "/"
    ui_users_file: Path | None = None
    # Notification e-mail: the SMTP server, the file holding its password, the sender's address.
    smtp: SmtpServer | None = None
    smtp_password_file: Path | None = None
    smtp_from: str | None = None

    @property
    def queues_dir(self) -> Path:
        return self.home / "queues"

    @property
    def pipelines_dir(self) -> Path:
        return self.home / "pipelines"

    @property
    def nginx_templates_dir(self) -> Path:
        return self.nginx_templates or nginx_templates_dir(self.home, {})

    @property
    def ui_users(self) -> Path:
        return self.ui_users_file or self.home / "ui-users"

    @property
    def known_hosts(self) -> Path:
        """The ssh host keys git may connect to (runner's own, never the deploy user's ~/.ssh)."""
        return self.home / "known_hosts"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def main_queue_dir(self) -> Path:
        return self.queues_dir / "main"

    def web_uid(self) -> int | None:
        """The user id of RUNNER_WEB_USER, or None when it is not set."""
        if self.web_user is None:
            return None
        try:
            return pwd.getpwnam(self.web_user).pw_uid
        except KeyError:
            raise ConfigError(
                f"RUNNER_WEB_USER={self.web_user}: no such user (the webhook endpoint's, e.g. runner-web)"
            ) from None

    @property
    def worker_lock(self) -> Path:
        """Held by the one worker of this home (see runner/lock.py); it holds that worker's pid."""
        return self.queues_dir / ".worker.lock"

    @property
    def uses_default_database(self) -> bool:
        return self.database_url == default_database_url(self.home)

    def with_overrides(self, **overrides: Any) -> Config:
        """Apply command-line flags; ``None`` means the flag was not given."""
        given = {key: value for key, value in overrides.items() if value is not None}
        return replace(self, **given)

    def require_secret(self) -> Secret:
        if self.secret_file is not None:
            return _read_secret_file(self.secret_file)
        if not self.secret:
            raise ConfigError(
                "no webhook secret is configured: set RUNNER_SECRET to the secret entered in the GitHub "
                "webhook's settings, or RUNNER_SECRET_FILE to a file holding it "
                "(for example: openssl rand -hex 32 > secret && chmod 600 secret && "
                "export RUNNER_SECRET_FILE=$PWD/secret)"
            )
        return self.secret


def default_database_url(home: Path) -> str:
    return f"sqlite:///{home / DATABASE_FILE}"


def read_database_url(environ: Mapping[str, str], home: Path) -> str:
    """RUNNER_DATABASE_URL, with ``postgresql://`` taken as psycopg2's: SQLAlchemy 2.1 would pick psycopg 3
    for it, which runner does not install, and fail only once the worker first connects."""
    url = environ.get("RUNNER_DATABASE_URL") or default_database_url(home)
    if url.startswith("postgresql://"):
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def nginx_templates_dir(home: Path, environ: Mapping[str, str] | None = None) -> Path:
    """Where the nginx wrapper's templates are: RUNNER_NGINX_TEMPLATES, else the root-owned directory
    ``runner setup`` installs for this user (/etc/USER/templates/nginx) when there is one, else the home's
    templates/nginx (a development machine, where the wrapper's configuration names that directory)."""
    if environ is None:
        environ = os.environ
    if environ.get("RUNNER_NGINX_TEMPLATES"):
        return Path(environ["RUNNER_NGINX_TEMPLATES"])
    try:
        user = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        user = None
    installed = Path(f"/etc/{user}/templates/nginx")
    if user and installed.is_dir():
        return installed
    return home / "templates" / "nginx"


def _read_secret(environ: Mapping[str, str]) -> tuple[Secret | None, Path | None]:
    """The secret given in the environment, and the file named to hold it (read later, when needed)."""
    value = environ.get("RUNNER_SECRET")
    path = environ.get("RUNNER_SECRET_FILE")
    if value and path:
        raise ConfigError("both RUNNER_SECRET and RUNNER_SECRET_FILE are set: set only one of them")
    return (Secret(value) if value else None), (Path(path) if path else None)


def _read_secret_file(path: Path) -> Secret:
    try:
        # A trailing newline is what `echo` and editors leave; GitHub's secret never has one.
        value = path.read_text().rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(f"RUNNER_SECRET_FILE={path}: cannot read it: {exc.strerror}") from None
    if not value:
        raise ConfigError(f"RUNNER_SECRET_FILE={path}: the file is empty")
    return Secret(value)


def _read_github_credentials(environ: Mapping[str, str]) -> tuple[Path | None, str | None, Path | None]:
    """The token file, or the App's id and key file: one kind of credentials, or none."""
    token_file = environ.get("RUNNER_GITHUB_TOKEN_FILE")
    app_id = environ.get("RUNNER_GITHUB_APP_ID")
    key_file = environ.get("RUNNER_GITHUB_APP_KEY_FILE")
    if bool(app_id) != bool(key_file):
        missing = "RUNNER_GITHUB_APP_KEY_FILE" if app_id else "RUNNER_GITHUB_APP_ID"
        raise ConfigError(
            f"{missing} is not set: a GitHub App needs both RUNNER_GITHUB_APP_ID and "
            "RUNNER_GITHUB_APP_KEY_FILE"
        )
    if token_file and app_id:
        raise ConfigError("both RUNNER_GITHUB_TOKEN_FILE and RUNNER_GITHUB_APP_ID are set: set only one")
    # The App ID on the app's settings page, or its Client ID: GitHub takes either as the JWT's issuer.
    if app_id and not re.fullmatch(r"[0-9]+|Iv[0-9A-Za-z.]+", app_id):
        raise ConfigError(f"RUNNER_GITHUB_APP_ID={app_id!r} is not a GitHub App's id or client ID")
    return (Path(token_file) if token_file else None), app_id or None, (Path(key_file) if key_file else None)


_HOOK = re.compile(r"(?:org:(?P<organization>[\w.-]+)|(?P<repository>[\w.-]+/[\w.-]+)):(?P<id>[0-9]+)")


def _read_github_hooks(environ: Mapping[str, str]) -> tuple[GitHubHook, ...]:
    """``OWNER/REPO:HOOK_ID`` for a repository's webhook, ``org:ORG:HOOK_ID`` for an organisation's,
    separated by commas."""
    hooks = []
    for item in filter(None, (part.strip() for part in environ.get("RUNNER_GITHUB_HOOKS", "").split(","))):
        match = _HOOK.fullmatch(item)
        if match is None:
            raise ConfigError(
                f"RUNNER_GITHUB_HOOKS: {item!r} is not a hook: write OWNER/REPO:HOOK_ID for a repository's "
                "webhook or org:ORG:HOOK_ID for an organisation's, separated by commas"
            )
        kind = "organization" if match["organization"] else "repository"
        hooks.append(GitHubHook(kind, match["organization"] or match["repository"], int(match["id"])))
    return tuple(hooks)


def _path(environ: Mapping[str, str], name: str) -> Path | None:
    raw = environ.get(name)
    return Path(raw) if raw else None


def load(environ: Mapping[str, str] | None = None, *, home: Path | None = None) -> Config:
    """Read the configuration from the environment (``os.environ`` unless given).

    ``home`` overrides RUNNER_HOME, and so moves the default database with it.
    """
    if environ is None:
        environ = os.environ
    home = (home or Path(environ.get("RUNNER_HOME") or os.getcwd())).resolve()
    secret, secret_file = _read_secret(environ)
    token_file, app_id, key_file = _read_github_credentials(environ)
    return Config(
        home=home,
        database_url=read_database_url(environ, home),
        host=environ.get("RUNNER_HOST") or DEFAULT_HOST,
        port=read_port(environ, DEFAULT_PORT),
        secret=secret,
        secret_file=secret_file,
        stop_grace=read_seconds(environ, "RUNNER_STOP_GRACE", DEFAULT_STOP_GRACE),
        workers=read_workers(environ, DEFAULT_WORKERS),
        tool_path=tuple(d for d in environ.get("RUNNER_TOOL_PATH", "").split(":") if d),
        credentials_directory=environ.get("CREDENTIALS_DIRECTORY") or None,
        nginx_sites_dir=Path(environ.get("RUNNER_NGINX_SITES_DIR") or DEFAULT_NGINX_SITES_DIR),
        nginx=read_command(environ, "RUNNER_NGINX", DEFAULT_NGINX),
        nginx_templates=nginx_templates_dir(home, environ),
        certbot=read_command(environ, "RUNNER_CERTBOT", DEFAULT_CERTBOT),
        web_user=environ.get("RUNNER_WEB_USER") or None,
        retention=read_duration(environ, "RUNNER_RETENTION", DEFAULT_RETENTION),
        keep_runs=read_count(environ, "RUNNER_KEEP_RUNS", DEFAULT_KEEP_RUNS),
        github_api_url=read_url(environ, "RUNNER_GITHUB_API_URL", http_on_loopback_only=True)
        or DEFAULT_GITHUB_API_URL,
        github_token_file=token_file,
        github_app_id=app_id,
        github_app_key_file=key_file,
        public_url=read_url(environ, "RUNNER_PUBLIC_URL"),
        github_report_for=read_duration(environ, "RUNNER_GITHUB_REPORT_FOR", DEFAULT_GITHUB_REPORT_FOR),
        catch_up_interval=read_duration(
            environ, "RUNNER_CATCH_UP_INTERVAL", DEFAULT_CATCH_UP_INTERVAL, zero_ok=True
        ),
        github_hooks=_read_github_hooks(environ),
        server_name=read_server_name(environ),
        ui_path=read_ui_path(environ),
        ui_users_file=_path(environ, "RUNNER_UI_USERS_FILE"),
        smtp=read_smtp_url(environ),
        smtp_password_file=_path(environ, "RUNNER_SMTP_PASSWORD_FILE"),
        smtp_from=environ.get("RUNNER_SMTP_FROM") or None,
    )
