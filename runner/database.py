"""Connecting to runner's database: an engine for its URL, and the URL as it may be shown."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url


def safe_url(url: str) -> str:
    """The URL as it may be shown: without its password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparsable database URL>"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers (the CLI, /healthz) work beside a writer; FULL keeps a commit durable in WAL mode.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _durable_again(dbapi_connection: Any, _record: Any) -> None:
    # Back in the pool, a connection's commits wait for the disk again, whatever its last transaction did.
    if dbapi_connection is not None:
        dbapi_connection.execute("PRAGMA synchronous=FULL")


def commit_without_waiting(connection: Connection) -> None:
    """Let the connection's transaction (begun next on SQLite, where this must precede its first write; the
    current one on PostgreSQL) commit without waiting for the disk.

    Such a commit survives the process's crash, not a power cut or the system's crash, which can undo it,
    with whatever was committed after it and before the next commit that waits, never half of one: both
    write-ahead logs are replayed up to their last complete transaction, and a commit that waits makes all
    before it durable. Which transactions may be undone so: README, "Performance".
    """
    if connection.dialect.name == "sqlite":
        connection.exec_driver_sql("PRAGMA synchronous=NORMAL")
    elif connection.dialect.name == "postgresql":
        connection.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")


@contextlib.contextmanager
def foreign_keys_off(connection: Connection) -> Iterator[None]:
    """SQLite's foreign keys off while the schema changes (a no-op elsewhere), as SQLite's procedure for
    altering a table says: batch mode re-creates a table and drops the old one, and a drop with foreign keys
    on deletes the rows that refer to it (steps and GitHub reports, ON DELETE CASCADE). Set outside a
    transaction (SQLite ignores it inside one); the migration checks the keys before it commits."""
    if connection.dialect.name != "sqlite":
        yield
        return
    connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
    connection.commit()
    try:
        yield
    finally:
        connection.rollback()
        connection.exec_driver_sql("PRAGMA foreign_keys=ON")
        connection.commit()


def _sqlite_query_only(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA query_only=ON")
    cursor.close()


def create_engine_for(url: str, read_only: bool = False) -> Engine:
    """An engine for ``url``; with ``read_only``, every connection refuses to write (the status page's).

    Read-only is the database's own refusal, per connection: a bug in the page cannot write through it.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:" and not read_only:
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        # timeout: how long a writer waits for another process's write lock before giving up.
        engine = create_engine(parsed, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "checkin", _durable_again)
        if read_only:
            # After the pragmas above: journal_mode=WAL is a no-op on a database already in WAL mode.
            event.listen(engine, "connect", _sqlite_query_only)
        return engine
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() == "postgresql":
        connect_args["connect_timeout"] = 5
        if read_only:
            connect_args["options"] = "-c default_transaction_read_only=on"
    return create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)
