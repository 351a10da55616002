"""The tables. Their schema changes only through the Alembic migrations in ``migrations/``."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Named constraints keep migrations identical on SQLite and PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Delivery(Base):
    """One GitHub delivery, by its delivery id: a redelivery carries the same id and is not a new delivery."""

    __tablename__ = "deliveries"

    delivery_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    event: Mapped[str] = mapped_column(String(64))
    hook_id: Mapped[str | None] = mapped_column(String(32))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # The main queue entry it arrived as.
    entry: Mapped[str | None] = mapped_column(String(32))
    # What became of it: "received" until routed; the router fills in the outcome and why.
    outcome: Mapped[str] = mapped_column(String(32), default="received")
    detail: Mapped[str | None] = mapped_column(Text)
