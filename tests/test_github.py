"""The GitHub client and its credentials, against the fake GitHub API (tests/fake_github.py)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fake_github import Answer, FakeGitHub, rate_limited, server_error, slow, too_many_requests
from fake_github_base import error
from support import PAYLOADS, sign

from runner import __version__
from runner.github import GitHub, GitHubError, GitHubUnavailable
from runner.github_auth import AppCredentials, CredentialsError, TokenCredentials

TOKEN = "github_pat_11AAAAAAA0fake0token0for0the0tests"
SHA = "6dcb09b5b57875f334f61aebed695e2e4193db5e"


class Sleeps(list[float]):
    """Records the waits a client asks for instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


class Clock:
    """A clock a test moves; the fake GitHub and the App's credentials share it."""

    def __init__(self) -> None:
        self.time = time.time()

    def __call__(self) -> float:
        return self.time


def write_private(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


@pytest.fixture
def token_file(tmp_path: Path, fake_github: FakeGitHub) -> Path:
    fake_github.add_token(TOKEN)
    return write_private(tmp_path / "token", TOKEN + "\n")


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def client(fake_github: FakeGitHub, token_file: Path, sleeps: Sleeps) -> GitHub:
    return GitHub(fake_github.url, TokenCredentials(token_file), timeout=0.5, sleep=sleeps)


@pytest.fixture(scope="module")
def app_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def app_github(clock: Clock) -> Iterator[FakeGitHub]:
    """A fake GitHub on the test's clock."""
    github = FakeGitHub(now=clock)
    github.start()
    try:
        yield github
    finally:
        github.stop()


@pytest.fixture
def app_credentials(
    tmp_path: Path, app_github: FakeGitHub, app_key: rsa.RSAPrivateKey, clock: Clock
) -> AppCredentials:
    app_github.add_app("4242", app_key.public_key())
    app_github.install("4242", "octo-org", 11)
    app_github.install("4242", "other", 12)
    key_file = write_private(tmp_path / "app.pem", pem(app_key))
    return AppCredentials("4242", key_file, api_url=app_github.url, now=clock, sleep=Sleeps())


# What is sent, and what comes back.


def test_a_call_sends_githubs_headers_and_json_and_decodes_the_answer(
    client: GitHub, fake_github: FakeGitHub
) -> None:
    body = {"state": "pending", "context": "runner/app", "description": "deploying", "target_url": None}
    response = client.request(
        "POST", f"/repos/octo-org/app/statuses/{SHA}", repository="octo-org/app", json=body
    )

    assert response.status == 201
    assert response.data["state"] == "pending" and response.data["context"] == "runner/app"
    assert response.headers["content-type"].startswith("application/json")
    (sent,) = fake_github.requests
    assert sent.body == body
    assert sent.headers["Accept"] == "application/vnd.github+json"
    assert sent.headers["X-GitHub-Api-Version"] == "2022-11-28"
    assert sent.headers["User-Agent"] == f"runner/{__version__}"
    assert sent.headers["Authorization"] == f"Bearer {TOKEN}"
    assert sent.headers["Content-Type"] == "application/json"
    assert fake_github.commit_statuses("octo-org/app", SHA)[0]["description"] == "deploying"


def test_a_call_without_a_body_sends_none_and_query_parameters_are_encoded(
    client: GitHub, fake_github: FakeGitHub
) -> None:
    response = client.request(
        "GET",
        "/repos/octo-org/app/deployments",
        repository="octo-org/app",
        params={"environment": "prod env"},
    )

    assert response.data == []
    (sent,) = fake_github.requests
    assert sent.body is None and "Content-Type" not in sent.headers
    assert sent.query == {"environment": ["prod env"]}


def test_a_path_must_start_with_one_slash_so_it_cannot_name_another_host(client: GitHub) -> None:
    for path in ("@evil.example/x", "//evil.example/x", "repos/o/r"):
        with pytest.raises(ValueError, match="starts with one '/'"):
            client.request("GET", path, repository="o/r")


# Pagination.


def test_paginate_follows_the_cursor_of_the_link_header_through_three_pages(
    client: GitHub, fake_github: FakeGitHub
) -> None:
    hook = fake_github.add_hook("octo-org/app", 42)
    made = [fake_github.add_delivery(hook, "push", {"ref": f"refs/heads/b{n}"}) for n in range(5)]

    listed = list(
        client.paginate(
            "/repos/octo-org/app/hooks/42/deliveries", repository="octo-org/app", params={"per_page": 2}
        )
    )

    assert [d["id"] for d in listed] == [d["id"] for d in reversed(made)]
    # A listing's shape: each delivery without its request and response.
    assert {"id", "guid", "delivered_at", "redelivery", "status", "status_code", "event"} <= set(listed[0])
    assert "request" not in listed[0] and "response" not in listed[0]
    pages = fake_github.calls("GET", "/repos/octo-org/app/hooks/42/deliveries")
    assert [page.query.get("cursor") for page in pages] == [None, [str(made[2]["id"])], [str(made[0]["id"])]]


def test_paginate_follows_page_numbers_too(client: GitHub, fake_github: FakeGitHub) -> None:
    for state in ("pending", "failure", "pending", "success", "pending"):
        client.request("POST", f"/repos/o/r/statuses/{SHA}", repository="o/r", json={"state": state})

    listed = list(
        client.paginate(f"/repos/o/r/commits/{SHA}/statuses", repository="o/r", params={"per_page": 2})
    )

    assert [s["state"] for s in listed] == ["pending", "success", "pending", "failure", "pending"]
    assert len(fake_github.calls("GET", f"/repos/o/r/commits/{SHA}/statuses")) == 3


def test_a_next_page_off_the_apis_origin_is_refused_and_the_token_never_goes_there(
    client: GitHub, fake_github: FakeGitHub
) -> None:
    elsewhere = FakeGitHub()
    elsewhere.start()
    try:
        link = f'<{elsewhere.url}/repos/o/r/deployments?page=2>; rel="next"'
        fake_github.inject(Answer(200, [{"id": 1}], {"Link": link}))
        pages = client.paginate("/repos/o/r/deployments", repository="o/r")

        assert next(pages) == {"id": 1}
        with pytest.raises(GitHubError, match=r"is not on http://127\.0\.0\.1:.*: not followed") as refused:
            next(pages)
        assert elsewhere.requests == []
        assert TOKEN not in str(refused.value)
    finally:
        elsewhere.stop()


def test_a_redirect_is_followed_on_the_api_and_refused_off_it(
    client: GitHub, fake_github: FakeGitHub
) -> None:
    fake_github.inject(Answer(307, headers={"Location": f"/repos/octo-org/renamed/statuses/{SHA}"}))
    response = client.request(
        "POST", f"/repos/octo-org/app/statuses/{SHA}", repository="octo-org/app", json={"state": "success"}
    )

    assert response.status == 201
    assert fake_github.commit_statuses("octo-org/renamed", SHA)[0]["state"] == "success"
    assert [r.body for r in fake_github.requests] == [{"state": "success"}] * 2

    fake_github.inject(Answer(301, headers={"Location": "https://evil.example/steal"}))
    with pytest.raises(
        GitHubError, match=r"redirected to https://evil\.example/steal, not on .*: not followed"
    ):
        client.request("GET", "/repos/octo-org/app/deployments", repository="octo-org/app")


# Failures: retried, waited for, or raised.


def test_a_server_error_is_retried_after_a_backoff_then_succeeds(
    client: GitHub, fake_github: FakeGitHub, sleeps: Sleeps
) -> None:
    fake_github.inject(server_error(500), server_error(502))

    response = client.request("GET", "/repos/o/r/deployments", repository="o/r")

    assert response.status == 200
    assert sleeps == [1.0, 2.0]
    assert len(fake_github.calls("GET", "/repos/o/r/deployments")) == 3


def test_server_errors_on_every_attempt_make_github_unavailable(
    client: GitHub, fake_github: FakeGitHub, sleeps: Sleeps
) -> None:
    fake_github.inject(*[server_error()] * 3)

    with pytest.raises(GitHubUnavailable) as unavailable:
        client.request("GET", "/repos/o/r/deployments", repository="o/r")

    assert str(unavailable.value) == "GitHub: GET /repos/o/r/deployments: 500 Server Error"
    assert unavailable.value.status == 500 and unavailable.value.retry_at is None
    assert sleeps == [1.0, 2.0]


def test_a_rate_limit_that_resets_soon_is_waited_for(
    client: GitHub, fake_github: FakeGitHub, sleeps: Sleeps
) -> None:
    fake_github.inject(rate_limited(reset=time.time() + 3))

    assert client.request("GET", "/repos/o/r/deployments", repository="o/r").status == 200
    (waited,) = sleeps
    assert 1 <= waited <= 4


def test_a_rate_limit_that_resets_too_late_makes_github_unavailable_until_the_reset(
    client: GitHub, fake_github: FakeGitHub, sleeps: Sleeps
) -> None:
    reset = int(time.time()) + 3600
    fake_github.inject(rate_limited(reset=reset))

    with pytest.raises(GitHubUnavailable) as unavailable:
        client.request("GET", "/repos/o/r/deployments", repository="o/r")

    assert unavailable.value.retry_at == reset
    assert unavailable.value.status == 403
    assert "403 API rate limit exceeded for user ID 1. (rate limited until " in str(unavailable.value)
    assert sleeps == []
    assert len(fake_github.requests) == 1


def test_too_many_requests_waits_retry_after_or_makes_github_unavailable(
    client: GitHub, fake_github: FakeGitHub, sleeps: Sleeps
) -> None:
    fake_github.inject(too_many_requests(retry_after=5))
    assert client.request("GET", "/repos/o/r/deployments", repository="o/r").status == 200
    assert sleeps == [pytest.approx(5.0, abs=0.5)]

    fake_github.inject(too_many_requests(retry_after=120))
    before = time.time()
    with pytest.raises(
        GitHubUnavailable, match="429 You have exceeded a secondary rate limit"
    ) as unavailable:
        client.request("GET", "/repos/o/r/deployments", repository="o/r")
    assert unavailable.value.retry_at is not None
    assert before + 120 <= unavailable.value.retry_at <= time.time() + 120
    assert len(sleeps) == 1


def test_a_timeout_is_retried_then_makes_github_unavailable(
    client: GitHub, fake_github: FakeGitHub, sleeps: Sleeps
) -> None:
    fake_github.inject(slow(1.0))
    assert client.request("GET", "/repos/o/r/deployments", repository="o/r").status == 200
    assert sleeps == [1.0]

    fake_github.inject(*[slow(2.0)] * 3)
    with pytest.raises(GitHubUnavailable) as unavailable:
        client.request("GET", "/repos/o/r/deployments", repository="o/r")
    assert str(unavailable.value) == "GitHub: GET /repos/o/r/deployments: no answer within 0.5 s"
    assert unavailable.value.status is None
    assert sleeps == [1.0, 1.0, 2.0]


def test_a_refused_connection_makes_github_unavailable_until_the_outage_ends(
    client: GitHub, fake_github: FakeGitHub, sleeps: Sleeps
) -> None:
    fake_github.outage(refuse=True)
    with pytest.raises(
        GitHubUnavailable, match=r"^GitHub: GET /repos/o/r/deployments: cannot connect: Connection refused$"
    ):
        client.request("GET", "/repos/o/r/deployments", repository="o/r")
    assert sleeps == [1.0, 2.0]

    fake_github.end_outage()
    assert client.request("GET", "/repos/o/r/deployments", repository="o/r").status == 200


def test_an_outage_answering_503_makes_github_unavailable(client: GitHub, fake_github: FakeGitHub) -> None:
    fake_github.outage()
    with pytest.raises(GitHubUnavailable, match="503 Service Unavailable") as unavailable:
        client.request("POST", f"/repos/o/r/statuses/{SHA}", repository="o/r", json={"state": "pending"})
    assert unavailable.value.status == 503

    fake_github.end_outage()
    client.request("POST", f"/repos/o/r/statuses/{SHA}", repository="o/r", json={"state": "pending"})
    assert len(fake_github.commit_statuses("o/r", SHA)) == 1


def test_a_refusal_raises_github_error_with_githubs_message_at_once(
    client: GitHub, fake_github: FakeGitHub, sleeps: Sleeps
) -> None:
    with pytest.raises(GitHubError) as missing:
        client.request("GET", "/repos/o/r/branches/gone", repository="o/r")
    assert type(missing.value) is GitHubError
    assert str(missing.value) == "GitHub: GET /repos/o/r/branches/gone: 404 Branch not found"
    assert missing.value.status == 404

    with pytest.raises(GitHubError) as invalid:
        client.request("POST", f"/repos/o/r/statuses/{SHA}", repository="o/r", json={"state": "done"})
    assert type(invalid.value) is GitHubError
    assert (
        str(invalid.value)
        == f"GitHub: POST /repos/o/r/statuses/{SHA}: 422 Validation Failed (Status state invalid)"
    )

    fake_github.inject(Answer(403, error(403, "Resource not accessible by personal access token")))
    with pytest.raises(
        GitHubError, match=r"403 Resource not accessible by personal access token$"
    ) as forbidden:
        client.request("GET", "/repos/o/r/deployments", repository="o/r")
    assert type(forbidden.value) is GitHubError
    assert sleeps == []


def test_a_wrong_token_is_refused_with_githubs_message(fake_github: FakeGitHub, tmp_path: Path) -> None:
    wrong = "github_pat_11AAAAAAA0not0a0token0the0fake0knows"
    client = GitHub(fake_github.url, TokenCredentials(write_private(tmp_path / "token", wrong)))

    with pytest.raises(GitHubError) as refused:
        client.request("GET", "/repos/o/r/deployments", repository="o/r")

    assert str(refused.value) == "GitHub: GET /repos/o/r/deployments: 401 Bad credentials"


# The token's file.


def test_the_token_file_is_read_for_each_call_so_a_rotated_token_is_used(
    client: GitHub, fake_github: FakeGitHub, token_file: Path
) -> None:
    client.request("GET", "/repos/o/r/deployments", repository="o/r")
    fake_github.add_token("github_pat_rotated")
    write_private(token_file, "  github_pat_rotated\n\n")
    client.request("GET", "/repos/o/r/deployments", repository="o/r")

    assert [r.headers["Authorization"] for r in fake_github.requests] == [
        f"Bearer {TOKEN}",
        "Bearer github_pat_rotated",
    ]


def test_a_token_file_that_is_missing_empty_or_readable_by_others_is_refused_naming_it(
    client: GitHub, fake_github: FakeGitHub, token_file: Path
) -> None:
    token_file.unlink()
    with pytest.raises(CredentialsError) as missing:
        client.request("GET", "/repos/o/r/deployments", repository="o/r")
    assert (
        str(missing.value)
        == f"RUNNER_GITHUB_TOKEN_FILE={token_file}: cannot read it: No such file or directory"
    )

    write_private(token_file, " \n")
    with pytest.raises(CredentialsError, match=f"^RUNNER_GITHUB_TOKEN_FILE={token_file}: the file is empty$"):
        client.request("GET", "/repos/o/r/deployments", repository="o/r")

    write_private(token_file, TOKEN)
    token_file.chmod(0o644)
    with pytest.raises(CredentialsError) as readable:
        client.request("GET", "/repos/o/r/deployments", repository="o/r")
    assert str(readable.value) == (
        f"RUNNER_GITHUB_TOKEN_FILE={token_file}: other users may read or write it (mode 0644): "
        f"chmod o-rwx {token_file}"
    )
    assert TOKEN not in str(readable.value)
    assert fake_github.requests == []


# A GitHub App.


def test_an_apps_jwt_is_verified_by_github_and_exchanged_for_an_installation_token(
    app_credentials: AppCredentials, app_github: FakeGitHub, app_key: rsa.RSAPrivateKey, clock: Clock
) -> None:
    client = GitHub(app_github.url, app_credentials)
    client.request(
        "POST", f"/repos/octo-org/app/statuses/{SHA}", repository="octo-org/app", json={"state": "success"}
    )

    lookup, exchange, call = app_github.requests
    assert (lookup.method, lookup.path) == ("GET", "/repos/octo-org/app/installation")
    assert (exchange.method, exchange.path) == ("POST", "/app/installations/11/access_tokens")
    signed = exchange.headers["Authorization"].removeprefix("Bearer ")
    assert jwt.get_unverified_header(signed)["alg"] == "RS256"
    claims = jwt.decode(signed, app_key.public_key(), algorithms=["RS256"], options={"verify_exp": False})
    assert claims["iss"] == "4242"
    assert claims["iat"] == int(clock.time) - 60
    assert claims["exp"] - claims["iat"] <= 600
    (issued,) = app_github.issued
    assert call.headers["Authorization"] == f"Bearer {issued['token']}"
    assert app_github.commit_statuses("octo-org/app", SHA)[0]["state"] == "success"


def test_an_installation_token_is_reused_until_shortly_before_it_expires(
    app_credentials: AppCredentials, app_github: FakeGitHub, clock: Clock
) -> None:
    first = app_credentials.token("octo-org/app")
    assert app_credentials.token("octo-org/other-repo") == first
    clock.time += 3600 - 301
    assert app_credentials.token("octo-org/app") == first
    assert len(app_github.issued) == 1

    clock.time += 2
    renewed = app_credentials.token("octo-org/app")

    assert renewed != first
    assert [t["token"] for t in app_github.issued] == [first, renewed]


def test_two_owners_get_two_installations_tokens_each_good_for_its_owner_only(
    app_credentials: AppCredentials, app_github: FakeGitHub
) -> None:
    client = GitHub(app_github.url, app_credentials)
    client.request("GET", "/repos/octo-org/app/deployments", repository="octo-org/app")
    client.request("GET", "/repos/other/site/deployments", repository="other/site")

    assert [(t["installation"], t["owner"]) for t in app_github.issued] == [(11, "octo-org"), (12, "other")]
    assert app_github.issued[0]["token"] != app_github.issued[1]["token"]
    wrong_owner = GitHub(app_github.url, TokenCredentialsFor(app_github.issued[0]["token"]))
    with pytest.raises(GitHubError, match="403 Resource not accessible by integration"):
        wrong_owner.request("GET", "/repos/other/site/deployments", repository="other/site")


class TokenCredentialsFor:
    """Credentials that give one token, whatever the repository."""

    def __init__(self, token: str) -> None:
        self._token = token

    def token(self, repository: str) -> str:
        return self._token


def test_an_organisations_installation_is_found_through_the_organisation(
    app_credentials: AppCredentials, app_github: FakeGitHub
) -> None:
    app_credentials.token("octo-org")

    assert [r.path for r in app_github.requests] == [
        "/orgs/octo-org/installation",
        "/app/installations/11/access_tokens",
    ]


def test_threads_asking_at_once_share_one_installation_token(
    app_credentials: AppCredentials, app_github: FakeGitHub
) -> None:
    tokens: list[str] = []
    threads = [
        threading.Thread(target=lambda: tokens.append(app_credentials.token("octo-org/app")))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(set(tokens)) == 1 and len(tokens) == 8
    assert len(app_github.issued) == 1


def test_an_app_not_installed_for_an_owner_says_so(app_credentials: AppCredentials) -> None:
    with pytest.raises(CredentialsError) as refused:
        app_credentials.token("nobody/repo")

    assert str(refused.value) == (
        "the GitHub App 4242 is not installed for nobody/repo "
        "(GitHub: GET /repos/nobody/repo/installation: 404 Not Found): install it there"
    )


def test_a_jwt_signed_with_another_key_is_refused_by_github(
    tmp_path: Path, app_github: FakeGitHub, app_key: rsa.RSAPrivateKey, clock: Clock
) -> None:
    app_github.add_app("4242", app_key.public_key())
    app_github.install("4242", "octo-org", 11)
    other_key = write_private(
        tmp_path / "other.pem", pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    )
    credentials = AppCredentials("4242", other_key, api_url=app_github.url, now=clock)

    with pytest.raises(GitHubError, match=r"401 A JSON web token could not be decoded$"):
        credentials.token("octo-org/app")
    assert app_github.issued == []


def test_a_jwt_valid_longer_than_ten_minutes_is_refused_by_github(
    app_github: FakeGitHub, app_key: rsa.RSAPrivateKey, clock: Clock
) -> None:
    app_github.add_app("4242", app_key.public_key())
    app_github.install("4242", "octo-org", 11)
    now = int(clock.time)
    too_long = jwt.encode({"iat": now - 60, "exp": now + 3600, "iss": "4242"}, app_key, algorithm="RS256")

    with pytest.raises(GitHubError, match=r"401 'Expiration time' claim \('exp'\) is too far in the future$"):
        GitHub(app_github.url, TokenCredentialsFor(too_long)).request(
            "GET", "/repos/octo-org/app/installation", repository="octo-org/app"
        )


def test_an_app_key_file_that_is_no_private_key_is_refused_naming_it(
    tmp_path: Path, app_github: FakeGitHub, clock: Clock
) -> None:
    key_file = write_private(
        tmp_path / "app.pem", "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n"
    )
    credentials = AppCredentials("4242", key_file, api_url=app_github.url, now=clock)

    with pytest.raises(CredentialsError) as refused:
        credentials.token("octo-org/app")

    assert str(refused.value) == (
        f"RUNNER_GITHUB_APP_KEY_FILE={key_file}: not an unencrypted RSA private key in PEM "
        "(the .pem file GitHub makes on the App's settings page)"
    )
    assert "not a key" not in str(refused.value)
    assert app_github.requests == []


# The token is never shown.


def test_the_token_is_in_no_message_log_line_or_repr(
    client: GitHub, fake_github: FakeGitHub, token_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake_github.inject(server_error(), Answer(422, error(422, f"Validation Failed: {TOKEN} is not allowed")))
    messages = []
    for call in (
        lambda: client.request(
            "POST", f"/repos/o/r/statuses/{SHA}", repository="o/r", json={"state": "success"}
        ),
        lambda: client.request("GET", "/repos/o/r/branches/gone", repository="o/r"),
    ):
        with pytest.raises(GitHubError) as failed:
            call()
        messages.append(str(failed.value))
    fake_github.inject(slow(2.0), server_error(503))
    client.request("GET", "/repos/o/r/deployments", repository="o/r")

    assert messages[0] == f"GitHub: POST /repos/o/r/statuses/{SHA}: 422 Validation Failed: *** is not allowed"
    assert "500 Server Error; trying again in 1 s (attempt 1 of 3)" in caplog.text
    assert "no answer within 0.5 s; trying again" in caplog.text
    assert "GitHub: GET /repos/o/r/deployments: 200" in caplog.text
    for shown in (*messages, caplog.text, repr(client), repr(client.credentials)):
        assert TOKEN not in shown
    assert repr(client) == f"GitHub({fake_github.url!r})"
    assert repr(client.credentials) == f"TokenCredentials({str(token_file)!r})"


def test_an_apps_tokens_and_jwts_are_in_no_log_line_or_repr(
    app_credentials: AppCredentials, app_github: FakeGitHub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = GitHub(app_github.url, app_credentials)
    client.request("GET", "/repos/octo-org/app/deployments", repository="octo-org/app")

    (issued,) = app_github.issued
    jwt_sent = app_github.requests[0].headers["Authorization"].removeprefix("Bearer ")
    assert "GitHub App 4242: a new token for installation 11 (octo-org), valid until " in caplog.text
    for shown in (caplog.text, repr(client), repr(app_credentials), repr(app_credentials._tokens)):
        assert issued["token"] not in shown
        assert jwt_sent not in shown


# The fake GitHub speaks GitHub's shapes: what later tests rely on.


def test_a_deployments_lifecycle(client: GitHub, fake_github: FakeGitHub) -> None:
    fake_github.set_branch("o/r", "main", SHA)
    created = client.request(
        "POST",
        "/repos/o/r/deployments",
        repository="o/r",
        json={"ref": "main", "environment": "staging", "auto_merge": False, "required_contexts": []},
    ).data
    path = f"/repos/o/r/deployments/{created['id']}/statuses"
    client.request(
        "POST",
        path,
        repository="o/r",
        json={"state": "in_progress", "log_url": "https://runner.example/runs/1"},
    )
    client.request(
        "POST", path, repository="o/r", json={"state": "success", "environment_url": "https://app.example"}
    )

    assert (created["commit_sha"], created["environment"], created["production_environment"]) == (
        SHA,
        "staging",
        False,
    )
    listed = list(client.paginate(path, repository="o/r"))
    assert [(s["state"], s["environment"]) for s in listed] == [
        ("success", "staging"),
        ("in_progress", "staging"),
    ]
    assert listed[1]["target_url"] == listed[1]["log_url"] == "https://runner.example/runs/1"
    assert client.request("GET", "/repos/o/r/deployments", repository="o/r", params={"sha": SHA}).data == [
        created
    ]


def test_a_deployment_is_refused_while_the_commits_statuses_are_not_all_successes(
    client: GitHub, fake_github: FakeGitHub
) -> None:
    fake_github.set_branch("o/r", "main", SHA)
    client.request(
        "POST",
        f"/repos/o/r/statuses/{SHA}",
        repository="o/r",
        json={"state": "pending", "context": "runner/app"},
    )

    with pytest.raises(GitHubError, match=r"409 Conflict: Commit status checks failed for main\."):
        client.request("POST", "/repos/o/r/deployments", repository="o/r", json={"ref": "main"})
    created = client.request(
        "POST", "/repos/o/r/deployments", repository="o/r", json={"ref": "main", "required_contexts": []}
    )
    assert created.status == 201


def test_a_delivery_is_fetched_with_its_request_and_redelivered_with_the_same_guid(
    client: GitHub, fake_github: FakeGitHub
) -> None:
    received: list[tuple[dict[str, str], bytes]] = []
    receiver = Receiver(received)
    hook = fake_github.add_hook("octo-org", 7, url=receiver.url, secret="s3cret")
    payload = json.loads((PAYLOADS / "push" / "with-new-branch.payload.json").read_text())
    delivery = fake_github.add_delivery(hook, "push", payload, status_code=502, status="failed to connect")
    path = f"/orgs/octo-org/hooks/7/deliveries/{delivery['id']}"

    fetched = client.request("GET", path, repository="octo-org").data
    assert fetched["request"]["payload"] == payload
    assert fetched["request"]["headers"]["X-GitHub-Delivery"] == delivery["guid"]
    assert fetched["request"]["headers"]["X-GitHub-Hook-ID"] == "7"
    assert (fetched["status"], fetched["status_code"], fetched["event"]) == ("failed to connect", 502, "push")
    assert client.request("POST", f"{path}/attempts", repository="octo-org").status == 202
    fake_github.settle()
    receiver.stop()

    ((headers, body),) = received
    assert headers["X-GitHub-Delivery"] == delivery["guid"] and json.loads(body) == payload
    assert headers["X-Hub-Signature-256"] == sign(body, "s3cret")
    again = list(client.paginate("/orgs/octo-org/hooks/7/deliveries", repository="octo-org"))
    assert [(d["guid"], d["redelivery"], d["status_code"]) for d in again] == [
        (delivery["guid"], True, 200),
        (delivery["guid"], False, 502),
    ]


class Receiver:
    """A webhook endpoint on loopback that records what it receives and answers 200."""

    def __init__(self, received: list[tuple[dict[str, str], bytes]]) -> None:
        from http.server import BaseHTTPRequestHandler, HTTPServer

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append((dict(self.headers.items()), body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/webhook"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
