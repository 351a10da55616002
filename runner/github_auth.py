"""Credentials for GitHub's API: a token read from its file, or a GitHub App's installation tokens.

Each kind gives ``token(repository)`` (see runner/github.py). The files are read when a token is needed,
never kept: a rotated token or key is used from the next call on. A file other users may read or write is
refused, and no message names more of a file than its path.
"""

from __future__ import annotations

import contextlib
import logging
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from runner import masking
from runner.config import Config
from runner.github import Credentials, GitHub, GitHubError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import rsa

logger = logging.getLogger(__name__)

# An installation token lives an hour; a new one is made this long before the old one expires, so that no
# call is made with a token about to expire.
RENEW_BEFORE = 300.0
# GitHub refuses a JWT that expires more than 10 minutes after it was made; its clock may be behind ours.
JWT_ISSUED_BEFORE = 60
JWT_LIFETIME = 540


class CredentialsError(GitHubError):
    """The credentials cannot be used: the message says which file or setting, and what to do."""


def _read_private_file(path: Path, setting: str) -> str:
    """The content of ``path`` (``setting`` names it), stripped; refused when other users may read or
    write it."""
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except OSError as exc:
        raise CredentialsError(f"{setting}={path}: cannot read it: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise CredentialsError(f"{setting}={path}: the file is not text") from None
    if mode & (stat.S_IROTH | stat.S_IWOTH):
        raise CredentialsError(
            f"{setting}={path}: other users may read or write it (mode {stat.S_IMODE(mode):04o}): "
            f"chmod o-rwx {path}"
        )
    if not text.strip():
        raise CredentialsError(f"{setting}={path}: the file is empty")
    return text.strip()


class TokenCredentials:
    """A token (a fine-grained personal access token) read from its file for each call."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"TokenCredentials({str(self.path)!r})"

    def token(self, repository: str) -> str:
        token = _read_private_file(self.path, "RUNNER_GITHUB_TOKEN_FILE")
        masking.PROCESS.add(token)  # a step that prints it (it may read the same file) shows ***
        return token


class AppJWT:
    """The GitHub App itself, for the App's own endpoints: a new JWT for each call, signed (RS256) with
    the App's private key."""

    def __init__(self, app_id: str, key_path: Path, *, now: Callable[[], float] = time.time) -> None:
        self.app_id = app_id
        self.key_path = key_path
        self._now = now

    def __repr__(self) -> str:
        return f"AppJWT({self.app_id!r}, {str(self.key_path)!r})"

    def token(self, repository: str) -> str:
        # Imported here: PyJWT and cryptography are about 10 MB, which only a GitHub App's worker needs.
        import jwt

        now = int(self._now())
        claims = {"iat": now - JWT_ISSUED_BEFORE, "exp": now + JWT_LIFETIME, "iss": self.app_id}
        return jwt.encode(claims, self._private_key(), algorithm="RS256")

    def _private_key(self) -> rsa.RSAPrivateKey:
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        text = _read_private_file(self.key_path, "RUNNER_GITHUB_APP_KEY_FILE")
        try:
            key = serialization.load_pem_private_key(text.encode(), password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            key = None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise CredentialsError(
                f"RUNNER_GITHUB_APP_KEY_FILE={self.key_path}: not an unencrypted RSA private key in PEM "
                "(the .pem file GitHub makes on the App's settings page)"
            )
        return key


@dataclass(frozen=True)
class _InstallationToken:
    token: str = field(repr=False)
    expires_at: float


class AppCredentials:
    """A GitHub App's installation tokens: one per repository owner (the installation found through
    ``GET /repos/{owner}/{repo}/installation``, or ``/orgs/{org}/installation``), kept until
    ``renew_before`` seconds before it expires by the clock ``now``.

    One lock serialises the making of tokens: threads wait for the one being made instead of each making
    their own.
    """

    def __init__(
        self,
        app_id: str,
        key_path: Path,
        *,
        api_url: str,
        timeout: float = 10.0,
        renew_before: float = RENEW_BEFORE,
        now: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.app_id = app_id
        self.key_path = key_path
        self.renew_before = renew_before
        self._now = now
        self._app = GitHub(api_url, AppJWT(app_id, key_path, now=now), timeout=timeout, sleep=sleep)
        self._tokens: dict[str, _InstallationToken] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"AppCredentials({self.app_id!r}, {str(self.key_path)!r})"

    def token(self, repository: str) -> str:
        owner = repository.split("/", 1)[0].lower()
        with self._lock:
            cached = self._tokens.get(owner)
            if cached is None or self._now() >= cached.expires_at - self.renew_before:
                old = cached
                cached = self._tokens[owner] = self._installation_token(repository)
                if old is not None:
                    # Expiring: no longer masked, so that a worker running for months masks a few values.
                    masking.PROCESS.discard(old.token)
            return cached.token

    def _installation_token(self, repository: str) -> _InstallationToken:
        where = (
            f"/repos/{repository}/installation" if "/" in repository else f"/orgs/{repository}/installation"
        )
        try:
            installation = self._app.request("GET", where, repository=repository).data["id"]
        except GitHubError as exc:
            if exc.status != 404:
                raise
            raise CredentialsError(
                f"the GitHub App {self.app_id} is not installed for {repository} ({exc}): install it there"
            ) from None
        except (KeyError, TypeError):
            raise GitHubError(f"GitHub: GET {where}: the answer has no installation id") from None
        path = f"/app/installations/{installation}/access_tokens"
        created = self._app.request("POST", path, repository=repository).data
        try:
            made = _InstallationToken(
                created["token"], datetime.fromisoformat(created["expires_at"]).timestamp()
            )
        except (KeyError, TypeError, ValueError):
            raise GitHubError(f"GitHub: POST {path}: the answer has no token and expires_at") from None
        masking.PROCESS.add(made.token)
        logger.info(
            "GitHub App %s: a new token for installation %s (%s), valid until %s",
            self.app_id,
            installation,
            repository.split("/", 1)[0],
            created["expires_at"],
        )
        return made


def github_client(config: Config) -> GitHub | None:
    """The client for the credentials the configuration names; None when it names none."""
    credentials: Credentials
    if config.github_token_file is not None:
        credentials = TokenCredentials(config.github_token_file)
        # Read once now, so that the token is masked in run logs before the first call to GitHub reads it.
        with contextlib.suppress(CredentialsError):
            credentials.token("")
    elif config.github_app_id is not None and config.github_app_key_file is not None:
        credentials = AppCredentials(
            config.github_app_id, config.github_app_key_file, api_url=config.github_api_url
        )
    else:
        return None
    return GitHub(config.github_api_url, credentials)
