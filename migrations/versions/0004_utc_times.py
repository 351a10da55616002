"""times are UTC with their offset: SQLite's stored text gains "+00:00", PostgreSQL keeps timestamptz

Until this revision SQLite held each time as text without an offset (SQLAlchemy drops it), which readers
took for local time. Every value runner wrote was UTC, so each one is rewritten as the same instant with
its offset: ``2026-11-25 11:43:23.908134+00:00``, fixed width so that text order stays time order. A
value that already carries an offset is converted to UTC; one that is not a time at all stops the
upgrade with its table, column and row. On PostgreSQL the columns are ``timestamptz`` already; a column
found without a time zone (made by hand) is converted, reading its values as UTC.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The text SQLite holds from this revision on, and what it held before.
WITH_OFFSET = "%Y-%m-%d %H:%M:%S.%f+00:00"
WITHOUT_OFFSET = "%Y-%m-%d %H:%M:%S.%f"


def _time_columns(connection: sa.Connection) -> list[tuple[str, str, sa.DateTime]]:
    """Every (table, column, type) of a date-time type: found in the database, not in today's models."""
    inspector = sa.inspect(connection)
    return [
        (table, column["name"], column["type"])
        for table in inspector.get_table_names()
        for column in inspector.get_columns(table)
        if isinstance(column["type"], sa.DateTime)
    ]


def _rewrite_sqlite(form: str) -> None:
    connection = op.get_bind()
    for table, column, _type in _time_columns(connection):
        # Untyped: the values as SQLite holds them, not as a type would read them.
        t = sa.table(table, sa.column("rowid"), sa.column(column))
        rows = connection.execute(sa.select(t.c.rowid, t.c[column]).where(t.c[column].is_not(None))).all()
        for row, value in rows:
            try:
                moment = datetime.fromisoformat(value) if isinstance(value, str) else None
            except ValueError:
                moment = None
            if moment is None:
                # A SQLAlchemyError: `runner db upgrade` reports it as the database's problem, in one line.
                raise sa.exc.SQLAlchemyError(
                    f"{table}.{column} of the row with rowid {row} is {value!r}, not a time:"
                    " correct or clear it, then migrate again"
                )
            # Without an offset it is what runner wrote: UTC.
            moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
            text = moment.strftime(form)
            if text != value:
                connection.execute(sa.update(t).where(t.c.rowid == row).values({column: text}))


def upgrade() -> None:
    connection = op.get_bind()
    if connection.dialect.name == "sqlite":
        _rewrite_sqlite(WITH_OFFSET)
        return
    if connection.dialect.name == "postgresql":
        quote = connection.dialect.identifier_preparer.quote
        for table, column, column_type in _time_columns(connection):
            if not column_type.timezone:
                op.alter_column(
                    table,
                    column,
                    type_=sa.DateTime(timezone=True),
                    existing_type=column_type,
                    postgresql_using=f"{quote(column)} AT TIME ZONE 'UTC'",
                )


def downgrade() -> None:
    # Revision 0003's code reads SQLite's text without an offset as UTC; PostgreSQL has nothing to undo.
    if op.get_bind().dialect.name == "sqlite":
        _rewrite_sqlite(WITHOUT_OFFSET)
