from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_github import FakeGitHub
from support import postgres_database, stop_started


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with postgres_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test that takes this runs on the embedded default and on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'runner.db'}"
    else:
        with postgres_database() as url:
            yield url


@pytest.fixture(autouse=True, scope="session")
def _no_process_outlives_the_suite() -> Iterator[None]:
    """Whatever a failing test (or a module's fixture) left running is stopped when the suite ends."""
    yield
    stop_started()


@pytest.fixture
def fake_github() -> Iterator[FakeGitHub]:
    """A fake GitHub API on loopback (tests/fake_github.py), stopped after the test."""
    github = FakeGitHub()
    github.start()
    try:
        yield github
    finally:
        github.stop()
