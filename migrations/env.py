"""Alembic's entry point. The database URL comes from runner's configuration, never from a file."""

from alembic import context
from sqlalchemy import Connection

from runner.database import create_engine_for
from runner.models import Base

config = context.config


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    engine = create_engine_for(config.get_main_option("sqlalchemy.url"))
    try:
        with engine.connect() as connection:
            run(connection)
    finally:
        engine.dispose()
