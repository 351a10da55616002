"""The CLI's conventions: options anywhere, quiet closed pipes, exit statuses, abbreviated commits, limits."""

from __future__ import annotations

import collections
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from support import GIT_ENV, run_cli, runner_env

from runner.store import Store


def _store(home: Path) -> Store:
    return Store(f"sqlite:///{home / 'runner.db'}")


def test_home_and_verbose_work_after_the_command(tmp_path: Path) -> None:
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "app.yaml").write_text("on:\n  repository: octo/app\nworkdir: app\nsteps: 3\n")
    env = runner_env(Path("/nonexistent"))
    after = run_cli("validate", "--home", str(tmp_path), "-v", env=env)
    before = run_cli("--home", str(tmp_path), "validate", env=env)
    assert after.returncode == before.returncode == 1
    assert after.stdout == before.stdout
    assert f"{tmp_path / 'pipelines' / 'app.yaml'}:4:8: steps:" in after.stdout
    # Also after a command's own subcommand.
    upgraded = run_cli("db", "upgrade", "--home", str(tmp_path), env=env)
    assert upgraded.returncode == 0, upgraded.stderr
    assert str(tmp_path / "runner.db") in upgraded.stdout


def test_validate_without_pipeline_files_says_so_and_fails(tmp_path: Path) -> None:
    result = run_cli("validate", env=runner_env(tmp_path))
    assert result.returncode == 1
    assert f"no pipeline files in {tmp_path / 'pipelines'}" in result.stderr
    assert "file(s) valid" not in result.stderr


def test_db_current_fails_when_not_at_head(tmp_path: Path) -> None:
    env = runner_env(tmp_path)
    behind = run_cli("db", "current", env=env)
    assert behind.returncode == 1
    assert "needs `runner db upgrade`" in behind.stdout
    assert run_cli("db", "upgrade", env=env).returncode == 0
    current = run_cli("db", "current", env=env)
    assert current.returncode == 0, current.stdout + current.stderr
    assert "(up to date)" in current.stdout


def test_a_listing_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    store = _store(tmp_path)
    try:
        store.upgrade()
        for number in range(1500):  # far more than a pipe holds, so that the writes meet the closed pipe
            store.create_run("app", trigger="manual", ref=f"refs/heads/b{number}", commit=None)
    finally:
        store.close()
    command = f"{shlex.quote(sys.executable)} -m runner runs --json --limit 1500"
    script = f"{command} 2>{tmp_path / 'err'} | head -1; echo ${{PIPESTATUS[0]}}"
    result = subprocess.run(
        ["bash", "-c", script], env=runner_env(tmp_path), capture_output=True, text=True, timeout=60
    )
    first, status = result.stdout.splitlines()
    assert first == "["
    assert status in ("0", "141")
    assert (tmp_path / "err").read_text() == ""


@pytest.mark.parametrize("limit", ["0", "-1", "x"])
@pytest.mark.parametrize("command", ["runs", "deliveries"])
def test_limit_must_be_positive(tmp_path: Path, command: str, limit: str) -> None:
    result = run_cli(command, "--limit", limit, env=runner_env(tmp_path))
    assert result.returncode == 2
    assert f"argument --limit: {limit!r} is not a positive number" in result.stderr


def test_limit_is_documented(tmp_path: Path) -> None:
    result = run_cli("runs", "--help", env=runner_env(tmp_path))
    assert "--limit LIMIT" in result.stdout
    assert "positive number" in result.stdout


def _git(cwd: Path, *args: str, stdin: str | None = None) -> str:
    return subprocess.run(
        ["git", *args],
        cwd=cwd,
        env={**os.environ, **GIT_ENV},
        input=stdin,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def _commits(workdir: Path, count: int) -> list[str]:
    """A checkout with ``count`` commits, made in one git fast-import; their ids."""
    workdir.mkdir(parents=True)
    _git(workdir, "init", "-q", "-b", "main")
    stream = []
    for number in range(count):
        message = f"commit {number}\n"
        stream.append(
            f"commit refs/heads/main\ncommitter T <t@example.com> {1700000000 + number} +0000\n"
            f"data {len(message)}\n{message}"
        )
    _git(workdir, "fast-import", "--quiet", stdin="".join(stream))
    return _git(workdir, "rev-list", "main").split()


def _trigger_home(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "app.yaml").write_text(
        "on:\n  repository: octo/app\nworkdir: app\nsteps:\n  - git:\n"
    )
    env = runner_env(tmp_path)
    assert run_cli("db", "upgrade", env=env).returncode == 0
    return env


def test_trigger_commit_abbreviated_resolves_in_the_checkout(tmp_path: Path) -> None:
    env = _trigger_home(tmp_path)
    commits = _commits(tmp_path / "app", 3)
    result = run_cli("trigger", "app", "--commit", commits[1][:12], env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(commits[1])
    store = _store(tmp_path)
    try:
        (run,) = store.runs("app", limit=5)
    finally:
        store.close()
    assert run.commit == commits[1]


def test_trigger_commit_ambiguous_or_unknown_is_refused(tmp_path: Path) -> None:
    env = _trigger_home(tmp_path)
    commits = _commits(tmp_path / "app", 1200)
    by_prefix = collections.defaultdict(list)
    for commit in commits:
        by_prefix[commit[:4]].append(commit)
    shared = next(prefix for prefix, group in by_prefix.items() if len(group) > 1)
    ambiguous = run_cli("trigger", "app", "--commit", shared, env=env)
    assert ambiguous.returncode == 1
    assert f"--commit '{shared}' is ambiguous" in ambiguous.stderr
    unknown = next(f"{n:08x}" for n in range(1 << 20) if not any(c.startswith(f"{n:08x}") for c in commits))
    missing = run_cli("trigger", "app", "--commit", unknown, env=env)
    assert missing.returncode == 1
    assert f"--commit '{unknown}' names no commit" in missing.stderr
    store = _store(tmp_path)
    try:
        assert store.runs("app", limit=5) == []
    finally:
        store.close()


def test_trigger_commit_abbreviated_without_a_checkout_is_refused(tmp_path: Path) -> None:
    env = _trigger_home(tmp_path)
    result = run_cli("trigger", "app", "--commit", "abcdef12", env=env)
    assert result.returncode == 1
    assert "there is no checkout" in result.stderr
    assert "full 40-character commit id" in result.stderr
    full = run_cli("trigger", "app", "--commit", "ab" * 20, env=env)
    assert full.returncode == 0, full.stderr


def test_setup_dry_run_lists_each_directory_once(tmp_path: Path) -> None:
    # The default instance's name: its /etc/runner is both its settings' and certbot.conf's directory.
    result = run_cli(
        *("setup", "--dry-run", "--home-dir", str(tmp_path / "home"), "--prefix", str(tmp_path / "root")),
        *("--sites-dir", str(tmp_path / "sites")),
        env=runner_env(tmp_path),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    created = [line.split()[2] for line in result.stdout.splitlines() if line.startswith("would create /")]
    assert str(tmp_path / "root" / "etc" / "runner") in created
    assert str(tmp_path / "root" / "usr" / "local" / "libexec") in created
    assert len(created) == len(set(created)), result.stdout


def test_a_plain_postgresql_url_is_psycopg2s(tmp_path: Path, postgres_url: str) -> None:
    """``postgresql://`` names no driver: SQLAlchemy 2.1 would take psycopg 3, which runner does not install,
    so every command takes it as psycopg2's, the server's driver and the worker's alike."""
    plain = "postgresql://" + postgres_url.split("://", 1)[1]
    env = {**runner_env(tmp_path), "RUNNER_DATABASE_URL": plain}
    upgraded = run_cli("db", "upgrade", env=env)
    assert upgraded.returncode == 0, upgraded.stderr
    current = run_cli("db", "current", env=env)
    assert current.returncode == 0, current.stderr
    assert "psycopg" not in current.stderr
