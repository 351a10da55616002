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
from typing import Any

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


class ConfigError(Exception):
    """A setting is missing or malformed; the message says which and how to fix it."""


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

    @property
    def queues_dir(self) -> Path:
        return self.home / "queues"

    @property
    def pipelines_dir(self) -> Path:
        return self.home / "pipelines"

    @property
    def templates_dir(self) -> Path:
        return self.home / "templates"

    @property
    def nginx_templates_dir(self) -> Path:
        return self.nginx_templates or nginx_templates_dir(self.home, {})

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


def _read_port(environ: Mapping[str, str]) -> int:
    raw = environ.get("RUNNER_PORT")
    if raw is None or raw == "":
        return DEFAULT_PORT
    try:
        port = int(raw)
    except ValueError:
        raise ConfigError(f"RUNNER_PORT={raw!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"RUNNER_PORT={raw!r} is not a port number (0-65535)")
    return port


def _read_seconds(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number of seconds") from None
    if value < 0:
        raise ConfigError(f"{name}={raw!r} is negative")
    return value


def _read_command(environ: Mapping[str, str], name: str, default: str) -> tuple[str, ...]:
    raw = environ.get(name) or default
    try:
        argv = tuple(shlex.split(raw))
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r}: {exc}") from None
    if not argv:
        raise ConfigError(f"{name} is empty")
    return argv


_WHOLE_NUMBER = re.compile(r"[0-9]+")
_DAYS_HOURS_MINUTES_SECONDS = re.compile(
    r"(?:(?P<d>[0-9]+)d)?(?:(?P<h>[0-9]+)h)?(?:(?P<m>[0-9]+)m)?(?:(?P<s>[0-9]+)s)?"
)


def _read_duration(environ: Mapping[str, str], name: str, default: float) -> float:
    """Seconds in ``90d``, ``12h``, ``1d12h``, ``30m`` (days, hours, minutes, seconds in that order), or a
    whole number of seconds; more than zero."""
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    match = _DAYS_HOURS_MINUTES_SECONDS.fullmatch(raw)
    if _WHOLE_NUMBER.fullmatch(raw):
        seconds = int(raw)
    elif match is not None and any(match.groupdict().values()):
        seconds = sum(
            int(match[unit] or 0) * size for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
        )
    else:
        raise ConfigError(
            f"{name}={raw!r} is not a duration: write e.g. 90d, 12h, 1d12h, 30m, or a whole number of seconds"
        )
    if seconds <= 0:
        raise ConfigError(f"{name}={raw!r}: it must be longer than 0 seconds")
    return float(seconds)


def _read_count(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    if not _WHOLE_NUMBER.fullmatch(raw):
        raise ConfigError(f"{name}={raw!r} is not a whole number (0 or more)")
    return int(raw)


def _read_workers(environ: Mapping[str, str]) -> int:
    raw = environ.get("RUNNER_WORKERS")
    if raw is None or raw == "":
        return DEFAULT_WORKERS
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"RUNNER_WORKERS={raw!r} is not a positive number of server processes")
    return int(raw)


def load(environ: Mapping[str, str] | None = None, *, home: Path | None = None) -> Config:
    """Read the configuration from the environment (``os.environ`` unless given).

    ``home`` overrides RUNNER_HOME, and so moves the default database with it.
    """
    if environ is None:
        environ = os.environ
    home = (home or Path(environ.get("RUNNER_HOME") or os.getcwd())).resolve()
    secret, secret_file = _read_secret(environ)
    return Config(
        home=home,
        database_url=environ.get("RUNNER_DATABASE_URL") or default_database_url(home),
        host=environ.get("RUNNER_HOST") or DEFAULT_HOST,
        port=_read_port(environ),
        secret=secret,
        secret_file=secret_file,
        stop_grace=_read_seconds(environ, "RUNNER_STOP_GRACE", DEFAULT_STOP_GRACE),
        workers=_read_workers(environ),
        tool_path=tuple(d for d in environ.get("RUNNER_TOOL_PATH", "").split(":") if d),
        nginx_sites_dir=Path(environ.get("RUNNER_NGINX_SITES_DIR") or DEFAULT_NGINX_SITES_DIR),
        nginx=_read_command(environ, "RUNNER_NGINX", DEFAULT_NGINX),
        nginx_templates=nginx_templates_dir(home, environ),
        certbot=_read_command(environ, "RUNNER_CERTBOT", DEFAULT_CERTBOT),
        web_user=environ.get("RUNNER_WEB_USER") or None,
        retention=_read_duration(environ, "RUNNER_RETENTION", DEFAULT_RETENTION),
        keep_runs=_read_count(environ, "RUNNER_KEEP_RUNS", DEFAULT_KEEP_RUNS),
    )
