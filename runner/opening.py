"""Opening the database for a command: a store whose schema is checked (the default database migrated
first, for `runner up`), or, for a server alone, only the schema checked, with SQLAlchemy Core.

A server process keeps no store: it only pings the database (runner/database.py's Database), and the ORM and
the models are not imported into it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runner.config import Config
from runner.database import Database, safe_url
from runner.schema import SchemaError, check_schema, current_revision, head_revision

if TYPE_CHECKING:
    from runner.store import Store


class OpenError(Exception):
    """The database cannot be used by this runner; the message says why."""


def _checked(config: Config, database: Store | Database, migrate: bool = False) -> None:
    """Migrate the schema (``migrate``: a Store's) and check it; if that fails, ``database`` is closed."""
    try:
        # Only when behind: Alembic (with Mako and Pygments, about 7 MB) is then not imported at all.
        if migrate and current_revision(database.engine) != head_revision():
            database.upgrade()  # type: ignore[union-attr]
        check_schema(database.engine, config.database_url)
    except SchemaError as exc:
        database.close()
        raise OpenError(str(exc)) from None
    except Exception as exc:
        database.close()
        raise OpenError(f"cannot use the database {safe_url(config.database_url)}: {exc}") from None


def open_store(config: Config, migrate_default: bool = False) -> Store:
    """The store, its schema checked; with ``migrate_default``, the default database is migrated first."""
    from runner.store import Store

    store = Store(config.database_url, server=config.server_name)
    _checked(config, store, migrate=migrate_default and config.uses_default_database)
    return store


def check_database(config: Config) -> None:
    """Check the schema with SQLAlchemy Core alone, keeping nothing open."""
    database = Database(config.database_url)
    _checked(config, database)
    database.close()
