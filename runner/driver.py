"""Opening a database through its DB-API driver alone (sqlite3, psycopg2), for a process that needs no
SQLAlchemy: a server's schema check at start, and its /healthz ping.

SQLAlchemy (Core, with what it imports) is some 16 MB of a process that only ever runs two queries. The URL
is read as SQLAlchemy reads it (runner/database.py's engine takes the same one), but only for the databases
runner supports: any other scheme is refused, not guessed at.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, unquote

SQLITE_SCHEMES = ("sqlite", "sqlite+pysqlite")
POSTGRESQL_SCHEMES = ("postgresql", "postgresql+psycopg2")
# How long a connection waits: for another process's lock on SQLite, for the server on PostgreSQL (as the
# engines of runner/database.py do).
SQLITE_TIMEOUT = 30
CONNECT_TIMEOUT = 5
# How long a /healthz ping waits for another one still under way before it gives up.
PING_WAIT = 10

# SQLAlchemy's own reading of a URL (sqlalchemy.engine.url._parse_url), so that the same URL means the same.
_URL = re.compile(
    r"""(?P<scheme>[\w+]+)://
    (?:(?P<username>[^:/]*)(?::(?P<password>[^@]*))?@)?
    (?:(?:\[(?P<ipv6host>[^/?]+)\]|(?P<ipv4host>[^/:?]+))?(?::(?P<port>[^/?]*))?)?
    (?:/(?P<database>[^?]*))?
    (?:\?(?P<query>.*))?""",
    re.VERBOSE,
)


class UrlError(ValueError):
    """A database URL this module cannot open; the message says why (without the URL, which holds the
    password)."""


@dataclass(frozen=True)
class Url:
    """A database URL's parts, unquoted."""

    scheme: str
    username: str | None
    password: str | None
    host: str | None
    port: str | None
    database: str | None
    query: tuple[tuple[str, str], ...]


def parse(url: str) -> Url:
    """The parts of ``url``, as SQLAlchemy reads them, whatever its scheme."""
    match = _URL.match(url)
    if match is None:
        raise UrlError("not a database URL: it does not start with SCHEME://")
    parts = match.groupdict()
    username, password, database = (
        None if parts[name] is None else unquote(parts[name]) for name in ("username", "password", "database")
    )
    query = tuple(parse_qsl(parts["query"])) if parts["query"] is not None else ()
    host = parts["ipv4host"] or parts["ipv6host"]
    return Url(parts["scheme"], username, password, host, parts["port"] or None, database, query)


def safe_url(url: str) -> str:
    """The URL as it may be shown: without its password. As SQLAlchemy shows it (runner/database.py)."""
    try:
        parts = parse(url)
    except UrlError:
        return "<unparsable database URL>"
    shown = parts.scheme + "://"
    if parts.username is not None:
        shown += quote(parts.username, safe=" +") + (":***" if parts.password is not None else "") + "@"
    if parts.host is not None:
        shown += f"[{parts.host}]" if ":" in parts.host else parts.host
    if parts.port is not None:
        shown += ":" + parts.port
    if parts.database is not None:
        shown += "/" + quote(parts.database, safe=" +/")
    if parts.query:
        shown += "?" + "&".join(
            f"{quote_plus(k)}={quote_plus(v)}" for k, v in sorted(parts.query, key=lambda kv: kv[0])
        )
    return shown


def _sqlite_path(parts: Url) -> str:
    if parts.username is not None or parts.host is not None or parts.port is not None:
        raise UrlError(
            "a SQLite URL has no user or host: sqlite:///relative/path or sqlite:////absolute/path"
        )
    if parts.query:
        raise UrlError("runner takes no query options in a SQLite URL")
    return parts.database or ":memory:"


def _sqlite_connect(path: str, read_only: bool) -> sqlite3.Connection:
    # mode=rw: a file that is not there is an error, not a new empty database.
    target = ":memory:" if path == ":memory:" else f"file:{quote(os.path.abspath(path))}?mode=rw"
    # The connection is kept across /healthz's threads, one at a time (Database's lock).
    connection = sqlite3.connect(
        target, uri=True, timeout=SQLITE_TIMEOUT, check_same_thread=False, isolation_level=None
    )
    if read_only:
        connection.execute("PRAGMA query_only=ON")
    return connection


def libpq_uri(parts: Url) -> str:
    """The URI libpq reads (it knows no "+psycopg2"), of the parts as SQLAlchemy read them: each quoted again,
    so that libpq, which reads a URI's options (sslmode, ...) itself, reads the same user, password, host."""
    uri = "postgresql://"
    if parts.username is not None:
        uri += quote(parts.username, safe="")
        uri += (":" + quote(parts.password, safe="") if parts.password is not None else "") + "@"
    if parts.host is not None:
        uri += f"[{parts.host}]" if ":" in parts.host else quote(parts.host, safe="")
    if parts.port is not None:
        uri += ":" + quote(parts.port, safe="")
    if parts.database is not None:
        uri += "/" + quote(parts.database, safe="")
    if parts.query:
        uri += "?" + "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in parts.query)
    return uri


def _postgresql_connect(parts: Url, read_only: bool) -> Any:
    import psycopg2

    uri = libpq_uri(parts)
    options = {"options": "-c default_transaction_read_only=on"} if read_only else {}
    connection = psycopg2.connect(uri, connect_timeout=CONNECT_TIMEOUT, **options)
    # Each query its own transaction: nothing is left open between pings.
    connection.autocommit = True
    return connection


class Database:
    """One DB-API connection to runner's database, opened when first needed and again after it failed.

    ``read_only``: the database itself refuses this connection's writes. Safe to use from several threads
    (each /healthz ping runs in one): they take turns.
    """

    def __init__(self, url: str, *, read_only: bool = False) -> None:
        self.url = url
        self.read_only = read_only
        self.parts = parts = parse(url)
        if parts.scheme in SQLITE_SCHEMES:
            self.sqlite_path: str | None = _sqlite_path(parts)
        elif parts.scheme in POSTGRESQL_SCHEMES:
            self.sqlite_path = None
        else:
            supported = ", ".join(f"{s}://" for s in (*SQLITE_SCHEMES, *POSTGRESQL_SCHEMES))
            raise UrlError(f"unknown database scheme {parts.scheme!r}: runner takes {supported}")
        self._connection: Any = None
        self._lock = threading.Lock()

    def _connect(self) -> Any:
        if self.sqlite_path is not None:
            return _sqlite_connect(self.sqlite_path, self.read_only)
        return _postgresql_connect(self.parts, self.read_only)

    def _query(self, sql: str, *parameters: str) -> list[tuple[Any, ...]]:
        """The rows of ``sql`` (a read), on the kept connection; when that fails, once more on a new one (the
        server may have closed the old one since: a restart), as SQLAlchemy's pre-ping would."""
        if not self._lock.acquire(timeout=PING_WAIT):
            raise TimeoutError("the database's connection is still busy with an earlier query")
        try:
            if self._connection is not None:
                try:
                    return self._rows(sql, parameters)
                except Exception:
                    self._drop()
            self._connection = self._connect()
            try:
                return self._rows(sql, parameters)
            except Exception:
                self._drop()
                raise
        finally:
            self._lock.release()

    def _rows(self, sql: str, parameters: tuple[str, ...]) -> list[tuple[Any, ...]]:
        cursor = self._connection.cursor()
        try:
            cursor.execute(sql, parameters)
            return list(cursor.fetchall())
        finally:
            cursor.close()

    def ping(self) -> None:
        """Raise unless the database answers."""
        self._query("SELECT 1")

    def revisions(self, table: str) -> list[str] | None:
        """The rows of Alembic's version table ``table`` (None: there is no such table, or no database)."""
        if self.sqlite_path is not None:
            # A check creates nothing: a database file that is not there is not initialised.
            if self.sqlite_path != ":memory:" and not os.path.exists(self.sqlite_path):
                return None
            found = self._query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", table)
        else:
            # Visible on the search path, as SQLAlchemy's has_table() finds it and Alembic writes it.
            found = self._query(
                "SELECT 1 FROM pg_catalog.pg_class WHERE relname = %s "
                "AND relkind IN ('r', 'p', 'v', 'm', 'f') AND pg_catalog.pg_table_is_visible(oid)",
                table,
            )
        if not found:
            return None
        # ``table`` is the caller's constant (runner/schema.py's), not input; quoted as an identifier anyway.
        quoted = '"' + table.replace('"', '""') + '"'
        return [row[0] for row in self._query(f"SELECT version_num FROM {quoted}")]  # noqa: S608

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            # Already broken, maybe: closing it is only tidying up.
            with contextlib.suppress(Exception):
                connection.close()

    def close(self) -> None:
        self._drop()
