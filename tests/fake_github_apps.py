"""The fake GitHub's credentials: tokens the tests give, and GitHub Apps (their installations, JWTs
verified with the App's public key, and the installation tokens issued for them)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

import jwt
from fake_github_base import NOT_FOUND, Base, Call, Reply, error, iso

PERMISSIONS = {"deployments": "write", "metadata": "read", "repository_hooks": "write", "statuses": "write"}
# GitHub refuses a JWT that expires more than 10 minutes after it was issued.
JWT_LONGEST = 600


@dataclass
class App:
    id: str
    public_key: Any
    # Owner's login in lower case -> the installation's id.
    installations: dict[str, int] = field(default_factory=dict)


class Apps(Base):
    def __init__(self, **clock: Any) -> None:
        super().__init__(**clock)
        self.tokens: set[str] = set()
        self.apps: dict[str, App] = {}
        self.token_lifetime = 3600.0
        # The installation tokens issued, oldest first: {"token", "installation", "owner", "expires_at"}.
        self.issued: list[dict[str, Any]] = []

    def add_token(self, token: str) -> None:
        """A token (a personal access token's) that may call about every repository."""
        with self.lock:
            self.tokens.add(token)

    def add_app(self, app_id: str, public_key: Any) -> App:
        with self.lock:
            app = self.apps[app_id] = App(app_id, public_key)
            return app

    def install(self, app_id: str, owner: str, installation_id: int) -> None:
        with self.lock:
            self.apps[app_id].installations[owner.lower()] = installation_id

    def check_token(self, credential: str, owner: str) -> Reply | None:
        """None when ``credential`` may call about ``owner``'s resources; else GitHub's refusal."""
        if credential in self.tokens:
            return None
        issued = next((t for t in self.issued if t["token"] == credential), None)
        if issued is None or issued["expires_at"] <= self.now():
            return Reply(401, error(401, "Bad credentials"))
        if issued["owner"] != owner.lower():
            return Reply(403, error(403, "Resource not accessible by integration"))
        return None

    def check_jwt(self, credential: str) -> App | Reply:
        """The App that signed ``credential`` as GitHub wants it (RS256, ``iss`` the App's id, at most 10
        minutes long, not expired by the fake's clock); else GitHub's refusal."""
        try:
            app = self.apps[str(jwt.decode(credential, options={"verify_signature": False})["iss"])]
            claims = jwt.decode(
                credential,
                app.public_key,
                algorithms=["RS256"],
                # By the fake's clock, below, which a test may have moved.
                options={"require": ["iat", "exp", "iss"], "verify_exp": False, "verify_iat": False},
            )
        except (jwt.PyJWTError, KeyError, TypeError):
            return Reply(401, error(401, "A JSON web token could not be decoded"))
        now = self.now()
        if claims["exp"] - claims["iat"] > JWT_LONGEST + 60 or claims["exp"] > now + JWT_LONGEST:
            return Reply(401, error(401, "'Expiration time' claim ('exp') is too far in the future"))
        if claims["exp"] <= now:
            return Reply(401, error(401, "'Expiration time' claim ('exp') must be in the future"))
        return app

    def get_installation(self, call: Call) -> Reply:
        owner = (call.match["repo"] or call.match["org"]).split("/")[0]
        installation = call.app.installations.get(owner.lower())
        if installation is None:
            return NOT_FOUND
        return Reply(200, self._installation(call.app, owner, installation))

    def _installation(self, app: App, owner: str, installation: int) -> dict[str, Any]:
        return {
            "id": installation,
            "account": {"login": owner, "id": installation, "type": "Organization", "site_admin": False},
            "access_tokens_url": f"{self.url}/app/installations/{installation}/access_tokens",
            "repositories_url": f"{self.url}/installation/repositories",
            "html_url": f"https://github.com/organizations/{owner}/settings/installations/{installation}",
            "app_id": int(app.id) if app.id.isdigit() else app.id,
            "target_id": installation,
            "target_type": "Organization",
            "permissions": PERMISSIONS,
            "events": ["push"],
            "single_file_name": None,
            "has_multiple_single_files": False,
            "single_file_paths": [],
            "repository_selection": "all",
            "created_at": iso(self.now()),
            "updated_at": iso(self.now()),
            "app_slug": "runner",
            "suspended_at": None,
            "suspended_by": None,
        }

    def create_access_token(self, call: Call) -> Reply:
        installation = int(call.match["id"])
        owner = next((o for o, i in call.app.installations.items() if i == installation), None)
        if owner is None:
            return NOT_FOUND
        token, expires_at = f"ghs_{secrets.token_hex(18)}", self.now() + self.token_lifetime
        self.issued.append(
            {"token": token, "installation": installation, "owner": owner, "expires_at": expires_at}
        )
        body = {
            "token": token,
            "expires_at": iso(expires_at),
            "permissions": PERMISSIONS,
            "repository_selection": "all",
        }
        return Reply(201, body)
