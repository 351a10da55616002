"""Opening the database for a command: a store whose schema is checked (the default database migrated
first, for `runner up`), or, for a server alone, only the schema checked, through the DB-API driver.

A server process keeps no store: it only pings the database (runner/driver.py's Database), and neither
SQLAlchemy nor the tables (runner/tables.py) are imported into it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runner.config import Config
from runner.driver import Database, safe_url
from runner.schema import VERSION_TABLE, SchemaError, check_revision, head_revision, one_revision

if TYPE_CHECKING:
    from runner.store import Store


class OpenError(Exception):
    """The database cannot be used by this runner; the message says why."""


def _cannot_use(url: str, exc: Exception) -> OpenError:
    if isinstance(exc, SchemaError):
        return OpenError(str(exc))
    # In one line: a driver's message (libpq's) may run over several.
    said = " ".join(str(exc).split()) or type(exc).__name__
    return OpenError(f"cannot use the database {safe_url(url)}: {said}")


def open_store(config: Config, migrate_default: bool = False) -> Store:
    """The store, its schema checked; with ``migrate_default``, the default database is migrated first."""
    from runner.schema import check_schema, current_revision
    from runner.store import Store

    store = Store(config.database_url, server=config.server_name)
    try:
        # Only when behind: Alembic (with Mako and Pygments, about 7 MB) is then not imported at all.
        if (
            migrate_default
            and config.uses_default_database
            and current_revision(store.engine) != head_revision()
        ):
            store.upgrade()
        check_schema(store.engine, config.database_url)
    except Exception as exc:
        store.close()
        raise _cannot_use(config.database_url, exc) from None
    return store


def check_database(config: Config) -> None:
    """Check the schema through the DB-API driver alone, keeping nothing open."""
    url = config.database_url
    try:
        database = Database(url, read_only=True)
    except Exception as exc:
        raise _cannot_use(url, exc) from None
    try:
        check_revision(one_revision(database.revisions(VERSION_TABLE), url), url)
    except Exception as exc:
        raise _cannot_use(url, exc) from None
    finally:
        database.close()
