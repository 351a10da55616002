"""Credentials in URLs (``https://user:token@host/...``): masked wherever runner writes a command or a
reason, and handed to git without being stored in a checkout.

git keeps the URL it clones from in ``.git/config`` and prints it in its messages; a token in it would
outlive the run and reach the run's log. So the URL git is given carries no userinfo, and git asks for the
credentials through a credential helper, named on its command line, that reads them from the environment
of that one git process.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

# The userinfo of any URL in a text: a password may hold an unencoded "@", so up to the last "@" before
# the path.
USERINFO = re.compile(r"(?i)([a-z][a-z0-9+.-]{0,31}://)[^/\s?#]*@")
MASK = "***"
# Static text: no value ever becomes part of it. git calls it with "get", "store" or "erase".
HELPER = (
    '!f() { test "$1" = get || return 0; '
    'printf "username=%s\\npassword=%s\\n" "$RUNNER_GIT_USERNAME" "$RUNNER_GIT_PASSWORD"; }; f'
)
# The same, with the password read from a file at git's request (a token file): the token is in no
# environment, no command line, no URL; only this helper's output, read by git. Its first line, without
# a carriage return.
FILE_HELPER = (
    '!f() { test "$1" = get || return 0; printf "username=%s\\npassword=" "$RUNNER_GIT_USERNAME"; '
    'head -n 1 -- "$RUNNER_GIT_TOKEN_FILE" | tr -d "\\r\\n"; printf "\\n"; }; f'
)
# Only these schemes take a username and password through git's credential helpers; the user of an
# ssh:// URL is a login name, not a secret, and stays in it.
HELPER_SCHEMES = ("http", "https")


def mask(text: str) -> str:
    """``text`` with the userinfo of every URL in it replaced by ``***``."""
    return USERINFO.sub(rf"\1{MASK}@", text)


@dataclass(frozen=True)
class Credentials:
    # The username may be the token itself (https://TOKEN@github.com/...): neither shows in a repr.
    username: str = field(repr=False)
    password: str = field(repr=False)

    def git_options(self) -> list[str]:
        """git's global options that make it ask for these credentials, and only these."""
        # The empty value drops every helper configured before (system, global), e.g. "store", which
        # would write the token to a file of its own.
        return ["-c", "credential.helper=", "-c", f"credential.helper={HELPER}"]

    def git_env(self) -> dict[str, str]:
        """The environment of the git process that talks to the remote."""
        return {
            "RUNNER_GIT_USERNAME": self.username,
            "RUNNER_GIT_PASSWORD": self.password,
            # Wrong credentials fail at once instead of waiting for a terminal that is not there.
            "GIT_TERMINAL_PROMPT": "0",
        }


@dataclass(frozen=True)
class TokenFile:
    """A token kept in a file, given to git for ``scope`` (scheme://host) only, read when git asks."""

    username: str
    path: Path
    scope: str

    def git_options(self) -> list[str]:
        # The empty value drops every helper configured before; the one after it answers for the remote's
        # host only, so that a submodule or a redirect elsewhere is never sent the token.
        return ["-c", "credential.helper=", "-c", f"credential.{self.scope}.helper={FILE_HELPER}"]

    def git_env(self) -> dict[str, str]:
        return {
            "RUNNER_GIT_USERNAME": self.username,
            "RUNNER_GIT_TOKEN_FILE": str(self.path),
            "GIT_TERMINAL_PROMPT": "0",
        }


class CredentialsError(ValueError):
    """A URL's credentials cannot be handed to git; the message names the cause, never the value."""


def split(url: str) -> tuple[str, Credentials | None]:
    """``url`` without its userinfo, and the credentials it held (None when it held none)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url, None
    if parts.scheme.lower() not in HELPER_SCHEMES or "@" not in parts.netloc:
        return url, None
    userinfo, _, host = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    credentials = Credentials(unquote(username), unquote(password))
    if any(c in value for value in (credentials.username, credentials.password) for c in "\n\r\0"):
        raise CredentialsError(f"the credentials in the remote {mask(url)} hold a line break or a NUL")
    return urlunsplit(parts._replace(netloc=host)), credentials
