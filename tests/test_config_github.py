"""The settings for GitHub's API: its URL, the credentials, the public URL, catch-up and known hooks."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.config import DEFAULT_CATCH_UP_INTERVAL, ConfigError, GitHubHook, load
from runner.github_auth import AppCredentials, TokenCredentials, github_client


def test_without_github_settings_runner_has_no_client_and_catches_up_every_ten_minutes(
    tmp_path: Path,
) -> None:
    config = load({}, home=tmp_path)

    assert config.github_api_url == "https://api.github.com"
    assert (config.github_token_file, config.github_app_id, config.github_app_key_file) == (None, None, None)
    assert config.public_url is None
    assert config.catch_up_interval == DEFAULT_CATCH_UP_INTERVAL == 600
    assert config.github_hooks == ()
    assert github_client(config) is None


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("https://github.example.com/api/v3/", "https://github.example.com/api/v3"),
        ("http://127.0.0.1:8123", "http://127.0.0.1:8123"),
        ("http://localhost:8123/", "http://localhost:8123"),
        ("http://[::1]:8123", "http://[::1]:8123"),
    ],
)
def test_the_api_url_is_https_or_http_on_a_loopback_address(tmp_path: Path, given: str, kept: str) -> None:
    assert load({"RUNNER_GITHUB_API_URL": given}, home=tmp_path).github_api_url == kept


@pytest.mark.parametrize(
    "given",
    [
        "http://api.github.com",
        "http://10.0.0.1:8123",
        "ftp://api.github.com",
        "api.github.com",
        "https://user:token@api.github.com",
        "https://api.github.com?x=1",
    ],
)
def test_an_api_url_that_could_send_the_token_in_the_clear_or_elsewhere_is_refused(
    tmp_path: Path, given: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        load({"RUNNER_GITHUB_API_URL": given}, home=tmp_path)

    assert str(refused.value) == (
        f"RUNNER_GITHUB_API_URL={given!r} is not an https:// or http:// URL (http:// only on a loopback "
        "address) with no user, query or fragment"
    )


def test_a_token_file_makes_a_client_with_token_credentials_and_nothing_is_read_yet(tmp_path: Path) -> None:
    missing = tmp_path / "not-there-yet"
    config = load({"RUNNER_GITHUB_TOKEN_FILE": str(missing)}, home=tmp_path)

    client = github_client(config)

    assert config.github_token_file == missing
    assert client is not None and client.api_url == "https://api.github.com"
    assert isinstance(client.credentials, TokenCredentials) and client.credentials.path == missing


def test_an_app_id_and_key_file_make_a_client_with_app_credentials(tmp_path: Path) -> None:
    environ = {
        "RUNNER_GITHUB_APP_ID": "4242",
        "RUNNER_GITHUB_APP_KEY_FILE": str(tmp_path / "app.pem"),
        "RUNNER_GITHUB_API_URL": "http://127.0.0.1:8123",
    }
    config = load(environ, home=tmp_path)

    client = github_client(config)

    assert (config.github_app_id, config.github_app_key_file) == ("4242", tmp_path / "app.pem")
    assert client is not None and isinstance(client.credentials, AppCredentials)
    assert client.credentials.app_id == "4242"
    assert (
        load({**environ, "RUNNER_GITHUB_APP_ID": "Iv23liABCdef0123"}, home=tmp_path).github_app_id
        == "Iv23liABCdef0123"
    )


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"RUNNER_GITHUB_APP_ID": "4242"},
            "RUNNER_GITHUB_APP_KEY_FILE is not set: a GitHub App needs both RUNNER_GITHUB_APP_ID and "
            "RUNNER_GITHUB_APP_KEY_FILE",
        ),
        (
            {"RUNNER_GITHUB_APP_KEY_FILE": "/etc/runner/app.pem"},
            "RUNNER_GITHUB_APP_ID is not set: a GitHub App needs both RUNNER_GITHUB_APP_ID and "
            "RUNNER_GITHUB_APP_KEY_FILE",
        ),
        (
            {
                "RUNNER_GITHUB_TOKEN_FILE": "/etc/runner/token",
                "RUNNER_GITHUB_APP_ID": "4242",
                "RUNNER_GITHUB_APP_KEY_FILE": "/etc/runner/app.pem",
            },
            "both RUNNER_GITHUB_TOKEN_FILE and RUNNER_GITHUB_APP_ID are set: set only one",
        ),
        (
            {"RUNNER_GITHUB_APP_ID": "my app", "RUNNER_GITHUB_APP_KEY_FILE": "/etc/runner/app.pem"},
            "RUNNER_GITHUB_APP_ID='my app' is not a GitHub App's id or client ID",
        ),
    ],
)
def test_credentials_are_one_kind_complete_or_refused(
    tmp_path: Path, environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        load(environ, home=tmp_path)

    assert str(refused.value) == message


def test_the_public_url_is_an_http_url_kept_without_its_trailing_slash(tmp_path: Path) -> None:
    assert load({"RUNNER_PUBLIC_URL": "https://deploy.example.com/"}, home=tmp_path).public_url == (
        "https://deploy.example.com"
    )
    with pytest.raises(ConfigError) as refused:
        load({"RUNNER_PUBLIC_URL": "deploy.example.com"}, home=tmp_path)
    assert str(refused.value) == (
        "RUNNER_PUBLIC_URL='deploy.example.com' is not an https:// or http:// URL "
        "with no user, query or fragment"
    )


@pytest.mark.parametrize(("given", "seconds"), [("0", 0.0), ("5m", 300.0), ("1h", 3600.0), ("90", 90.0)])
def test_the_catch_up_interval_is_a_duration_and_0_turns_it_off(
    tmp_path: Path, given: str, seconds: float
) -> None:
    assert load({"RUNNER_CATCH_UP_INTERVAL": given}, home=tmp_path).catch_up_interval == seconds


def test_a_catch_up_interval_that_is_no_duration_is_refused_and_retention_still_refuses_0(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError) as refused:
        load({"RUNNER_CATCH_UP_INTERVAL": "-1"}, home=tmp_path)
    assert str(refused.value) == (
        "RUNNER_CATCH_UP_INTERVAL='-1' is not a duration: "
        "write e.g. 90d, 12h, 1d12h, 30m, or a whole number of seconds"
    )
    with pytest.raises(ConfigError, match=r"^RUNNER_RETENTION='0': it must be longer than 0 seconds$"):
        load({"RUNNER_RETENTION": "0"}, home=tmp_path)


def test_hooks_are_a_comma_separated_list_of_repository_and_organisation_hooks(tmp_path: Path) -> None:
    config = load(
        {"RUNNER_GITHUB_HOOKS": "octo-org/app:123, org:octo-org:456,,other/site.io:7"}, home=tmp_path
    )

    assert config.github_hooks == (
        GitHubHook("repository", "octo-org/app", 123),
        GitHubHook("organization", "octo-org", 456),
        GitHubHook("repository", "other/site.io", 7),
    )


@pytest.mark.parametrize(
    "item", ["octo-org/app", "octo-org:456", "org:octo-org", "octo-org/app:12x", "a/b/c:1"]
)
def test_a_hook_that_is_not_written_as_documented_is_refused(tmp_path: Path, item: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load({"RUNNER_GITHUB_HOOKS": f"octo-org/app:123,{item}"}, home=tmp_path)

    assert str(refused.value) == (
        f"RUNNER_GITHUB_HOOKS: {item!r} is not a hook: write OWNER/REPO:HOOK_ID for a repository's "
        "webhook or org:ORG:HOOK_ID for an organisation's, separated by commas"
    )
