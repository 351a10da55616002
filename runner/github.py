"""The GitHub REST API client: JSON over HTTPS with timeouts, retries, rate limits and Link pagination.

Standard library only. Each call names what it is about, ``repository`` ("owner/name", or an
organisation's login for an organisation's endpoints), because the credentials depend on it: a GitHub
App's installation token is per owner. The token goes into the Authorization header and nowhere else: not
into an exception's message, a log line or a repr.
"""

from __future__ import annotations

import json as jsonlib
import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlencode, urljoin, urlsplit

from runner import __version__

if TYPE_CHECKING:
    import ssl

logger = logging.getLogger(__name__)

API_VERSION = "2022-11-28"
# GitHub's advice for a rate limit that says neither when it resets nor how long to wait: a minute.
UNTIMED_RATE_LIMIT_WAIT = 60.0
# GitHub redirects a renamed repository's calls (301, and 307 for other methods than GET).
REDIRECTS = 3
_REDIRECT_STATUSES = (301, 302, 307, 308)
_LINK = re.compile(r'<([^>]*)>\s*;\s*rel="([^"]*)"')
_DEFAULT_PORTS = {"https": 443, "http": 80}


class GitHubError(Exception):
    """GitHub refused a call for good (a 4xx other than a rate limit), or it could not be made (e.g. the
    credentials cannot be read). ``status`` is GitHub's answer; None when there was none."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class GitHubUnavailable(GitHubError):
    """GitHub did not answer, failed (5xx), or limits the rate for longer than a call may wait: the call is
    worth making again later, not before ``retry_at`` (epoch seconds) when GitHub said when."""

    def __init__(self, message: str, *, status: int | None = None, retry_at: float | None = None) -> None:
        super().__init__(message, status=status)
        self.retry_at = retry_at


class Credentials(Protocol):
    """Gives the token for a call about ``repository`` (see the module's docstring)."""

    def token(self, repository: str) -> str: ...


@dataclass(frozen=True)
class Response:
    status: int
    # Header names in lower case.
    headers: Mapping[str, str]
    # The decoded JSON body; the text of a body that is not JSON; None for an empty body.
    data: Any


class GitHub:
    """Calls GitHub's REST API at ``api_url``.

    A call that fails for a while (5xx, a timeout, a refused connection) is made again after 1 s, 2 s, ...
    up to ``attempts`` times in all; one that is rate limited waits as long as GitHub says (Retry-After, or
    until X-RateLimit-Reset) when that is at most ``max_wait`` seconds. Whatever still fails raises
    GitHubUnavailable; a refusal raises GitHubError at once. Safe to share between threads.
    """

    def __init__(
        self,
        api_url: str,
        credentials: Credentials,
        *,
        timeout: float = 10.0,
        attempts: int = 3,
        max_wait: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.credentials = credentials
        self.timeout = timeout
        self.attempts = attempts
        self.max_wait = max_wait
        self.sleep = sleep
        # Made on the first HTTPS call: ssl and http.client are imported then (see _exchange).
        self._ssl: ssl.SSLContext | None = None

    def __repr__(self) -> str:
        return f"GitHub({self.api_url!r})"

    def request(
        self,
        method: str,
        path: str,
        *,
        repository: str,
        json: Any = None,
        params: Mapping[str, str | int] | None = None,
    ) -> Response:
        """``method`` on ``path`` (below the API's URL, starting with "/", its parts already quoted), with
        ``json`` as the body unless it is None."""
        return self._call(method, self._url(path, params), repository, json)

    def paginate(
        self, path: str, *, repository: str, params: Mapping[str, str | int] | None = None
    ) -> Iterator[Any]:
        """The items of a listing, page after page, following the Link header's rel="next"."""
        url: str | None = self._url(path, params)
        while url is not None:
            response = self._call("GET", url, repository, None)
            if not isinstance(response.data, list):
                raise GitHubError(
                    f"GitHub: GET {_shown(url)}: the answer is not a list", status=response.status
                )
            yield from response.data
            url = self._next_page(url, response)

    def _url(self, path: str, params: Mapping[str, str | int] | None) -> str:
        # Refused, not joined: "@host" or "//host" after the API's URL would name another host.
        if not path.startswith("/") or path.startswith("//"):
            raise ValueError(f"a GitHub API path starts with one '/': {path!r}")
        return self.api_url + path + (f"?{urlencode(params)}" if params else "")

    def _on_api(self, url: str) -> bool:
        """Whether ``url`` is below the API's URL, on its origin: the only place the token may go."""
        api, other = urlsplit(self.api_url), urlsplit(url)
        return (
            (other.scheme, other.hostname, other.port or _DEFAULT_PORTS.get(other.scheme))
            == (api.scheme, api.hostname, api.port or _DEFAULT_PORTS.get(api.scheme))
            and other.username is None
            and (other.path + "/").startswith(api.path + "/")
        )

    def _next_page(self, url: str, response: Response) -> str | None:
        for target, rels in _LINK.findall(response.headers.get("link", "")):
            if "next" in rels.split():
                if not self._on_api(target):
                    raise GitHubError(
                        f"GitHub: GET {_shown(url)}: its next page, {target}, is not on {self.api_url}: "
                        "not followed",
                        status=response.status,
                    )
                return target
        return None

    def _call(self, method: str, url: str, repository: str, body: Any) -> Response:
        import http.client

        what = f"{method} {_shown(url)}"
        for attempt in range(1, self.attempts + 1):
            token = self.credentials.token(repository)
            error: GitHubError
            try:
                response = self._send(method, url, token, body)
            except (OSError, http.client.HTTPException) as exc:
                error = GitHubUnavailable(_redact(f"GitHub: {what}: {_describe(exc, self.timeout)}", token))
            else:
                if response.status < 400:
                    return response
                error = _error(what, response, token)
            if not isinstance(error, GitHubUnavailable) or attempt == self.attempts:
                raise error
            wait = 2.0 ** (attempt - 1) if error.retry_at is None else max(0.0, error.retry_at - time.time())
            if wait > self.max_wait:
                raise error
            logger.warning(
                "%s; trying again in %.0f s (attempt %d of %d)", error, wait, attempt, self.attempts
            )
            self.sleep(wait)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _send(self, method: str, url: str, token: str, body: Any) -> Response:
        """One call, following GitHub's redirects as long as they stay on the API."""
        for _ in range(REDIRECTS + 1):
            response = self._exchange(method, url, token, body)
            location = response.headers.get("location")
            if response.status not in _REDIRECT_STATUSES or not location:
                return response
            target = urljoin(url, location)
            if not self._on_api(target):
                raise GitHubError(
                    f"GitHub: {method} {_shown(url)}: redirected to {target}, not on {self.api_url}: "
                    "not followed",
                    status=response.status,
                )
            url = target
        raise GitHubError(
            f"GitHub: {method} {_shown(url)}: more than {REDIRECTS} redirects", status=response.status
        )

    def _exchange(self, method: str, url: str, token: str, body: Any) -> Response:
        # Here, not at the top: they import ssl (OpenSSL's libraries, 4 MB), which a worker without GitHub
        # credentials would hold for nothing, since it never calls GitHub (runner/start.py).
        import http.client
        import ssl

        parts = urlsplit(url)
        connection: http.client.HTTPConnection
        if parts.scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            connection = http.client.HTTPSConnection(
                parts.hostname or "", parts.port, timeout=self.timeout, context=self._ssl
            )
        else:
            connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=self.timeout)
        headers = {
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": API_VERSION,
            "User-Agent": f"runner/{__version__}",
            "Authorization": f"Bearer {token}",
        }
        payload = None
        if body is not None:
            payload = jsonlib.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            connection.request(method, _shown(url), body=payload, headers=headers)
            answer = connection.getresponse()
            raw = answer.read()
        finally:
            connection.close()
        logger.debug("GitHub: %s %s: %d", method, _shown(url), answer.status)
        return Response(answer.status, {k.lower(): v for k, v in answer.getheaders()}, _decode(raw))


def _shown(url: str) -> str:
    """The path and query of ``url``: what a message names."""
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def _decode(raw: bytes) -> Any:
    if not raw.strip():
        return None
    text = raw.decode("utf-8", "replace")
    try:
        return jsonlib.loads(text)
    except ValueError:
        return text


def _describe(exc: BaseException, timeout: float) -> str:
    import http.client

    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "the connection was closed without an answer"
    if isinstance(exc, OSError) and exc.strerror:
        return f"cannot connect: {exc.strerror}"
    return f"{type(exc).__name__}: {exc}"


def _github_message(response: Response) -> str:
    """GitHub's ``message``, with what its ``errors`` say, or the start of a body that is not GitHub's."""
    data = response.data
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        errors = [
            error.get("message") or " ".join(str(error.get(key, "")) for key in ("resource", "field", "code"))
            for error in data.get("errors") or []
            if isinstance(error, dict)
        ]
        return data["message"] + (f" ({'; '.join(errors)})" if errors else "")
    if isinstance(data, str):
        return data.strip().splitlines()[0][:200]
    import http.client

    return http.client.responses.get(response.status, "")


def _rate_limited_until(response: Response, message: str) -> float | None:
    """When GitHub lets the next call be made (epoch seconds), or None when ``response`` is no rate limit.

    GitHub's rules: wait Retry-After seconds; with X-RateLimit-Remaining 0, until X-RateLimit-Reset;
    otherwise (a secondary rate limit that names no time) a minute.
    """
    if response.status not in (403, 429):
        return None
    retry_after = response.headers.get("retry-after", "")
    reset = response.headers.get("x-ratelimit-reset", "")
    if retry_after.isdigit():
        return time.time() + int(retry_after)
    if response.headers.get("x-ratelimit-remaining") == "0" and reset.isdigit():
        return float(reset)
    if response.status == 429 or "rate limit" in message.lower():
        return time.time() + UNTIMED_RATE_LIMIT_WAIT
    return None


def _redact(text: str, token: str) -> str:
    return text.replace(token, "***") if token else text


def _error(what: str, response: Response, token: str) -> GitHubError:
    message = _redact(_github_message(response), token)
    text = f"GitHub: {what}: {response.status} {message}".rstrip()
    retry_at = _rate_limited_until(response, message)
    if retry_at is not None:
        until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(retry_at))
        return GitHubUnavailable(
            f"{text} (rate limited until {until})", status=response.status, retry_at=retry_at
        )
    if response.status >= 500:
        return GitHubUnavailable(text, status=response.status)
    return GitHubError(text, status=response.status)
