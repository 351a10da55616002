"""Alembic's entry point. The database URL comes from runner's configuration, never from a file."""

from alembic import context
from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from runner.database import create_engine_for, foreign_keys_off
from runner.tables import metadata

config = context.config


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
        if connection.dialect.name == "sqlite":
            # Their keys were off (runner.database.foreign_keys_off): a row left without its parent stops it.
            broken = connection.exec_driver_sql("PRAGMA foreign_key_check").first()
            if broken is not None:
                raise SQLAlchemyError(
                    f"after the migration, a row of {broken[0]} refers to no row of {broken[2]}"
                )


connection = config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    engine = create_engine_for(config.get_main_option("sqlalchemy.url"))
    try:
        with engine.connect() as connection, foreign_keys_off(connection):
            run(connection)
    finally:
        engine.dispose()
