"""The database: engines, the delivery records, and the schema's revision (Alembic)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event, insert, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from runner.models import Delivery

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


class SchemaError(Exception):
    """The database's schema is not at the revision this code expects."""


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


def create_engine_for(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        # timeout: how long a writer waits for another process's write lock before giving up.
        engine = create_engine(parsed, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() == "postgresql":
        connect_args["connect_timeout"] = 5
    return create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)


def alembic_config(url: str) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    if not (MIGRATIONS_DIR / "env.py").is_file():
        raise SchemaError(f"the migrations are missing: no {MIGRATIONS_DIR / 'env.py'}")
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolation would read a "%" in a password as a reference.
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


class Store:
    """What runner keeps in its database."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_engine_for(url)

    def __repr__(self) -> str:
        return f"Store({safe_url(self.url)!r})"

    def close(self) -> None:
        self.engine.dispose()

    # Schema --------------------------------------------------------------------------------------------

    def current_revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    def upgrade(self, revision: str = "head") -> None:
        from alembic import command

        cfg = alembic_config(self.url)
        with self.engine.begin() as connection:
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, revision)

    def downgrade(self, revision: str) -> None:
        from alembic import command

        cfg = alembic_config(self.url)
        with self.engine.begin() as connection:
            cfg.attributes["connection"] = connection
            command.downgrade(cfg, revision)

    def check_schema(self) -> None:
        """Refuse a database whose schema is not at the latest revision."""
        current, head = self.current_revision(), head_revision()
        if current != head:
            where = f"at revision {current}" if current else "not initialised"
            raise SchemaError(
                f"the database {safe_url(self.url)} is {where}, this runner needs revision {head}: "
                "run `runner db upgrade` (with the same RUNNER_DATABASE_URL) first"
            )

    def ping(self) -> None:
        """Raise unless the database answers."""
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    # Deliveries ----------------------------------------------------------------------------------------

    def record_delivery(
        self,
        delivery_id: str,
        event: str,
        received_at: datetime,
        *,
        hook_id: str | None = None,
        entry: str | None = None,
        outcome: str = "received",
        detail: str | None = None,
    ) -> bool:
        """Record a delivery; False if its id was recorded before.

        The primary key decides, not a look-up first: of two processes recording the same id at once,
        exactly one succeeds.
        """
        row = {
            "delivery_id": delivery_id,
            "event": event,
            "hook_id": hook_id,
            "received_at": received_at,
            "recorded_at": datetime.now(UTC),
            "entry": entry,
            "outcome": outcome,
            "detail": detail,
        }
        try:
            with self.engine.begin() as connection:
                connection.execute(insert(Delivery), row)
        except IntegrityError:
            return False
        return True

    def delivery(self, delivery_id: str) -> Delivery | None:
        from sqlalchemy.orm import Session

        with Session(self.engine) as session:
            return session.scalars(select(Delivery).where(Delivery.delivery_id == delivery_id)).first()
