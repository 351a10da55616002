"""The database through its DB-API driver alone (runner/driver.py), as a server checks and pings it: the
URLs it takes and shows, and the schema check it makes, against the store's own (SQLAlchemy's) on real
SQLite and PostgreSQL databases."""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from support import SECRET

from runner import config as config_module
from runner import driver
from runner.config import Config
from runner.driver import Database, UrlError, libpq_uri, parse, safe_url
from runner.opening import OpenError, check_database
from runner.schema import SchemaError
from runner.store import Store

PASSWORD = "s3cret-Pw"

# Every part SQLAlchemy's reading knows: quoted characters, IPv6, ports, several options, none at all.
SHOWN_AS_SQLALCHEMY_SHOWS = [
    "sqlite:///runner.db",
    "sqlite:////var/lib/runner/runner.db",
    "sqlite+pysqlite:////var/lib/runner/a%20b.db",
    "sqlite://",
    f"postgresql+psycopg2://runner:{PASSWORD}@127.0.0.1:5432/runner",
    f"postgresql://runner:{PASSWORD}@db.example/runner?sslmode=verify-full&application_name=a+b",
    "postgresql+psycopg2://runner@/runner?host=/run/postgresql",
    "postgresql+psycopg2:///runner",
    f"postgresql+psycopg2://r%40x:{PASSWORD}%2F%40@[::1]:6432/d%2Fb",
    f"postgresql+psycopg2://runner:{PASSWORD}/@db.example:5433/runner?connect_timeout=3",
    f"mysql://root:{PASSWORD}@localhost/runner",
]


@pytest.mark.parametrize("url", SHOWN_AS_SQLALCHEMY_SHOWS)
def test_a_url_is_shown_as_sqlalchemy_shows_it_without_the_password(url: str) -> None:
    assert safe_url(url) == sa.engine.make_url(url).render_as_string(hide_password=True)
    assert PASSWORD not in safe_url(url)


@pytest.mark.parametrize("url", [u for u in SHOWN_AS_SQLALCHEMY_SHOWS if u.startswith("postgresql")])
def test_libpq_reads_a_url_as_sqlalchemys_psycopg2_dialect_connects_with_it(url: str) -> None:
    from psycopg2.extensions import parse_dsn

    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg2://"))
    try:
        _, sqlalchemys = engine.dialect.create_connect_args(engine.url)
    finally:
        engine.dispose()
    assert parse_dsn(libpq_uri(parse(url))) == {k: str(v) for k, v in sqlalchemys.items()}


@pytest.mark.parametrize(
    ("url", "said"),
    [
        (f"mysql://root:{PASSWORD}@localhost/runner", "unknown database scheme 'mysql'"),
        (f"postgresql+psycopg://runner:{PASSWORD}@h/runner", "unknown database scheme 'postgresql+psycopg'"),
        (f"postgres://runner:{PASSWORD}@h/runner", "unknown database scheme 'postgres'"),
        ("/var/lib/runner/runner.db", "not a database URL"),
        ("sqlite://host/runner.db", "a SQLite URL has no user or host"),
        ("sqlite:///runner.db?timeout=5", "no query options in a SQLite URL"),
    ],
)
def test_a_url_it_cannot_open_is_a_clear_error_without_the_password(url: str, said: str) -> None:
    with pytest.raises(UrlError, match=re.escape(said)) as caught:
        Database(url)
    assert PASSWORD not in str(caught.value)


def config_for(home: Path, url: str) -> Config:
    return config_module.load({"RUNNER_HOME": str(home), "RUNNER_DATABASE_URL": url, "RUNNER_SECRET": SECRET})


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    store = Store(database_url)
    try:
        yield store
    finally:
        store.close()


def refusal(home: Path, store: Store) -> tuple[str, str]:
    """What the driver's check says of the store's database, and what the store's own check says."""
    with pytest.raises(OpenError) as by_driver:
        check_database(config_for(home, store.url))
    with pytest.raises(SchemaError) as by_store:
        store.check_schema()
    return str(by_driver.value), str(by_store.value)


def set_revision(store: Store, revision: str) -> None:
    with store.engine.begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = :r"), {"r": revision})


def test_the_check_refuses_a_database_not_at_the_latest_revision_as_the_store_does(
    store: Store, tmp_path: Path
) -> None:
    not_initialised, _ = said = refusal(tmp_path, store)
    assert (
        said[0] == said[1]
        and "is not initialised" in not_initialised
        and "runner db upgrade" in not_initialised
    )

    store.upgrade("0001")  # behind
    behind, _ = said = refusal(tmp_path, store)
    assert said[0] == said[1] and "is at revision 0001, this runner needs revision" in behind

    store.upgrade()
    check_database(config_for(tmp_path, store.url))  # at the latest: no complaint

    set_revision(store, "9999")  # ahead: a newer runner migrated it
    ahead, _ = said = refusal(tmp_path, store)
    assert said[0] == said[1] and "is at revision 9999" in ahead


def test_the_check_refuses_a_database_at_several_revisions(store: Store, tmp_path: Path) -> None:
    store.upgrade()
    with store.engine.begin() as connection:
        connection.execute(sa.text("INSERT INTO alembic_version (version_num) VALUES ('0001')"))
    driver_said, store_said = refusal(tmp_path, store)
    assert driver_said == store_said and "is at several revisions" in driver_said


def test_the_check_of_a_missing_sqlite_file_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "no" / "runner.db"
    with pytest.raises(OpenError, match="is not initialised"):
        check_database(config_for(tmp_path, f"sqlite:///{path}"))
    assert not path.parent.exists()


def test_the_check_of_a_locked_sqlite_file_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'runner.db'}"
    with contextlib.closing(Store(url)) as store:
        store.upgrade()
    # Another process's exclusive lock, which even WAL readers wait for; waited for a moment, not 30 s.
    holder = sqlite3.connect(tmp_path / "runner.db", isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    monkeypatch.setattr(driver, "SQLITE_TIMEOUT", 0.2)
    try:
        with pytest.raises(OpenError, match="database is locked"):
            check_database(config_for(tmp_path, url))
    finally:
        holder.close()
    check_database(config_for(tmp_path, url))


def test_the_check_of_an_unreachable_postgresql_names_the_cause_not_the_password(tmp_path: Path) -> None:
    url = f"postgresql+psycopg2://runner:{PASSWORD}@127.0.0.1:1/runner"
    with pytest.raises(OpenError) as caught:
        check_database(config_for(tmp_path, url))
    said = str(caught.value)
    assert said.startswith("cannot use the database postgresql+psycopg2://runner:***@127.0.0.1:1/runner: ")
    assert "Connection refused" in said and PASSWORD not in said and "\n" not in said


def test_the_ping_connection_refuses_writes(store: Store) -> None:
    store.upgrade()
    database = Database(store.url, read_only=True)
    try:
        database.ping()
        with pytest.raises(Exception, match=r"(?i)read.only|readonly"):
            database._query("DELETE FROM deliveries")
    finally:
        database.close()


def test_the_ping_connects_again_after_postgresql_closed_its_connection(postgres_url: str) -> None:
    database = Database(postgres_url, read_only=True)
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    try:
        database.ping()
        backend = database._connection.get_backend_pid()
        with admin.connect() as connection:
            connection.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": backend})
        # As after a restart of the server: the kept connection is gone, and a new one answers.
        database.ping()
        assert database._connection.get_backend_pid() != backend
    finally:
        admin.dispose()
        database.close()
