"""How a setting's value is read from the environment: ports, seconds, durations, counts, commands, URLs.

Only runner/config.py calls these: it is the one place settings are read.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit


class ConfigError(Exception):
    """A setting is missing or malformed; the message says which and how to fix it."""


@dataclass(frozen=True)
class SmtpServer:
    """Where notification e-mail goes (RUNNER_SMTP_URL): ``smtp://`` is STARTTLS, ``smtps://`` TLS from the
    start; plain SMTP only on a loopback address and without a login (a local relay, a test's server)."""

    scheme: Literal["smtp", "smtps"]
    host: str
    port: int
    username: str | None
    # STARTTLS, required: always for smtp:// with a user (the password never crosses in clear) or off the
    # loopback address; a loopback relay taking mail without a login may not offer it.
    starttls: bool


def read_port(environ: Mapping[str, str], default: int) -> int:
    raw = environ.get("RUNNER_PORT")
    if raw is None or raw == "":
        return default
    try:
        port = int(raw)
    except ValueError:
        raise ConfigError(f"RUNNER_PORT={raw!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"RUNNER_PORT={raw!r} is not a port number (0-65535)")
    return port


def read_seconds(environ: Mapping[str, str], name: str, default: float) -> float:
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


def read_command(environ: Mapping[str, str], name: str, default: str) -> tuple[str, ...]:
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


def read_duration(environ: Mapping[str, str], name: str, default: float, *, zero_ok: bool = False) -> float:
    """The duration ``name`` of ``environ`` (or of a command's options): seconds in ``90d``, ``12h``,
    ``1d12h``, ``30m`` (days, hours, minutes, seconds in that order), or a whole number of seconds; more
    than zero, unless ``zero_ok`` (where 0 turns something off)."""
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
    if seconds <= 0 and not (zero_ok and seconds == 0):
        raise ConfigError(f"{name}={raw!r}: it must be longer than 0 seconds")
    return float(seconds)


def read_count(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    if not _WHOLE_NUMBER.fullmatch(raw):
        raise ConfigError(f"{name}={raw!r} is not a whole number (0 or more)")
    return int(raw)


def read_workers(environ: Mapping[str, str], default: int) -> int:
    raw = environ.get("RUNNER_WORKERS")
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"RUNNER_WORKERS={raw!r} is not a positive number of server processes")
    return int(raw)


def read_url(environ: Mapping[str, str], name: str, *, http_on_loopback_only: bool = False) -> str | None:
    """An http(s) URL with no credentials, query or fragment, without its trailing slash. With
    ``http_on_loopback_only``, http only on a loopback address (a test's fake GitHub): the token that goes
    to that URL must not cross a network in the clear."""
    raw = environ.get(name)
    if not raw:
        return None
    url = urlsplit(raw)
    loopback = _loopback(url.hostname)
    schemes = ("https",) if http_on_loopback_only and not loopback else ("https", "http")
    if url.scheme not in schemes or not url.hostname or url.username is not None or url.query or url.fragment:
        only = " (http:// only on a loopback address)" if http_on_loopback_only else ""
        raise ConfigError(
            f"{name}={raw!r} is not an https:// or http:// URL{only} with no user, query or fragment"
        )
    return raw.rstrip("/")


def _loopback(host: str | None) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def read_smtp_url(environ: Mapping[str, str]) -> SmtpServer | None:
    """``smtp://[USER@]HOST[:PORT]`` (STARTTLS, port 587) or ``smtps://[USER@]HOST[:PORT]`` (port 465); the
    password is never in the URL (RUNNER_SMTP_PASSWORD_FILE holds it)."""
    raw = environ.get("RUNNER_SMTP_URL")
    if not raw:
        return None
    url = urlsplit(raw)
    problem = None
    if url.scheme not in ("smtp", "smtps") or not url.hostname:
        problem = "is not an smtp://HOST[:PORT] or smtps://HOST[:PORT] URL"
    elif url.password is not None:
        problem = "holds a password: put it in the file RUNNER_SMTP_PASSWORD_FILE names"
    elif url.path not in ("", "/") or url.query or url.fragment:
        problem = "has a path, query or fragment"
    if problem is None:
        try:
            port = url.port
        except ValueError:
            problem = "has a port that is not a number (0-65535)"
    if problem is not None:
        raise ConfigError(f"RUNNER_SMTP_URL={raw!r} {problem}")
    scheme: Literal["smtp", "smtps"] = "smtps" if url.scheme == "smtps" else "smtp"
    port = port or (465 if scheme == "smtps" else 587)
    starttls = scheme == "smtp" and (bool(url.username) or not _loopback(url.hostname))
    return SmtpServer(scheme, url.hostname or "", port, url.username or None, starttls)


_SERVER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def read_server_name(environ: Mapping[str, str]) -> str:
    """This server's name in a database several servers share (RUNNER_SERVER_NAME, default the host name)."""
    # The host name cut as the store and the migration cut it: a long FQDN still names this server.
    raw = environ.get("RUNNER_SERVER_NAME") or socket.gethostname()[:64]
    if not _SERVER_NAME.fullmatch(raw):
        raise ConfigError(
            f"RUNNER_SERVER_NAME={raw!r} is not a server name: 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return raw


_UI_PATH = re.compile(r"(/[A-Za-z0-9._~-]+)*/?")
# The webhook endpoint's own paths, which the status page may not take.
RESERVED_PATHS = ("/github-webhook", "/healthz")


def read_ui_path(environ: Mapping[str, str]) -> str:
    """Where the status page is served (RUNNER_UI_PATH, default ``/``): a path without its trailing slash,
    ``/`` for the root."""
    raw = environ.get("RUNNER_UI_PATH") or "/"
    path = raw.rstrip("/") or "/"
    if (
        not raw.startswith("/")
        or not _UI_PATH.fullmatch(raw)
        or any(p in (".", "..") for p in path.split("/"))
    ):
        raise ConfigError(f"RUNNER_UI_PATH={raw!r} is not a path such as / or /runner")
    if path in RESERVED_PATHS or any(path.startswith(reserved + "/") for reserved in RESERVED_PATHS):
        raise ConfigError(f"RUNNER_UI_PATH={raw!r} is the webhook endpoint's: choose another path")
    return path
