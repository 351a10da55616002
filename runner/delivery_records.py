"""What one server records of the deliveries it receives: each once, a redelivery counted as a duplicate.

Part of the Store (runner/store.py), which is a DeliveryRecords: the engine and the server's name are its.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Engine, Row, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from runner import tables
from runner.servers import THIS_SERVER, Servers, where_server


class DeliveryRecords:
    """The ``deliveries`` rows of the server ``server`` (several servers may share the database)."""

    def __init__(self, engine: Engine, server: str) -> None:
        self.engine = engine
        self.server = server

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
        repository: str | None = None,
        ref: str | None = None,
        recovered: bool = False,
    ) -> bool:
        """Record a delivery; False if its id was recorded before.

        The primary key decides, not a look-up first: of two processes recording the same id at once,
        exactly one succeeds.
        """
        row = self.delivery_row(
            delivery_id,
            event,
            received_at,
            hook_id=hook_id,
            entry=entry,
            outcome=outcome,
            detail=detail,
            repository=repository,
            ref=ref,
            recovered=recovered,
        )
        try:
            with self.engine.begin() as connection:
                connection.execute(insert(tables.deliveries), row)
        except IntegrityError:
            return False
        return True

    def delivery_row(
        self,
        delivery_id: str,
        event: str,
        received_at: datetime,
        *,
        hook_id: str | None,
        entry: str | None,
        outcome: str,
        detail: str | None,
        repository: str | None,
        ref: str | None,
        recovered: bool,
    ) -> dict[str, Any]:
        """The ``deliveries`` row that records a delivery (the Store inserts it with the delivery's runs)."""
        return {
            "server": self.server,
            "delivery_id": delivery_id,
            "event": event,
            "hook_id": hook_id,
            "received_at": received_at,
            "recorded_at": datetime.now(UTC),
            "entry": entry,
            "outcome": outcome,
            "detail": detail,
            "repository": repository,
            "ref": ref,
            "recovered": recovered,
        }

    def begin_routing(
        self,
        delivery_id: str,
        event: str,
        received_at: datetime,
        *,
        hook_id: str | None,
        entry: str,
        repository: str | None,
        ref: str | None,
        recovered: bool = False,
    ) -> str:
        """Record a delivery the router is about to route (``recovered``: the catch-up's). Returns what it is:

        ``new``; ``resume`` (this very entry was recorded before a crash and not yet routed); ``routed``
        (this entry was routed before a crash, only its removal is left); or ``duplicate`` (GitHub delivered
        the id before, as another entry: counted on the first delivery's record, routed nowhere).
        """
        if self.record_delivery(
            delivery_id,
            event,
            received_at,
            hook_id=hook_id,
            entry=entry,
            repository=repository,
            ref=ref,
            recovered=recovered,
        ):
            return "new"
        return self.seen_before(delivery_id, entry)

    def seen_before(self, delivery_id: str, entry: str) -> str:
        """What a delivery whose id is recorded already is, as the main-queue ``entry``: ``resume``,
        ``routed`` or ``duplicate`` (counted), as :meth:`begin_routing` says."""
        with self.engine.begin() as connection:
            first = connection.execute(
                select(tables.deliveries.c.entry, tables.deliveries.c.outcome).where(
                    *self._delivery(delivery_id)
                )
            ).one()
            if first.entry == entry:
                return "resume" if first.outcome == "received" else "routed"
            connection.execute(
                update(tables.deliveries)
                .where(*self._delivery(delivery_id))
                .values(duplicates=tables.deliveries.c.duplicates + 1)
            )
        return "duplicate"

    def finish_routing(self, delivery_id: str, outcome: str, detail: str | None) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                update(tables.deliveries)
                .where(*self._delivery(delivery_id))
                .values(outcome=outcome, detail=detail)
            )

    def fail_routing(
        self,
        delivery_id: str,
        event: str,
        received_at: datetime,
        entry: str,
        reason: str,
        *,
        recovered: bool = False,
    ) -> None:
        """Record that routing the delivery was given up, whether or not it was recorded before
        (``recovered``: the catch-up's)."""
        if not self.record_delivery(
            delivery_id, event, received_at, entry=entry, outcome="failed", detail=reason, recovered=recovered
        ):
            # Only this entry's record: a delivery first recorded through another entry keeps its outcome.
            with self.engine.begin() as connection:
                connection.execute(
                    update(tables.deliveries)
                    .where(*self._delivery(delivery_id), tables.deliveries.c.entry == entry)
                    .values(outcome="failed", detail=reason)
                )

    def _delivery(self, delivery_id: str) -> list[ColumnElement[bool]]:
        return [tables.deliveries.c.server == self.server, tables.deliveries.c.delivery_id == delivery_id]

    def delivery(self, delivery_id: str) -> Row[Any] | None:
        """This server's record of the delivery: a row whose attributes are the table's columns."""
        with self.engine.connect() as connection:
            return connection.execute(select(tables.deliveries).where(*self._delivery(delivery_id))).first()

    def deliveries(self, limit: int = 20, *, server: Servers = THIS_SERVER) -> list[Row[Any]]:
        """The last deliveries received, newest first: this server's, another's, or (None) every server's."""
        with self.engine.connect() as connection:
            query = (
                select(tables.deliveries)
                .where(*where_server(tables.deliveries.c.server, self.server, server))
                .order_by(
                    tables.deliveries.c.received_at.desc(),
                    tables.deliveries.c.server,
                    tables.deliveries.c.delivery_id,
                )
                .limit(limit)
            )
            return list(connection.execute(query))

    def forget_delivery(self, delivery_id: str, entry: str) -> bool:
        """Remove the record of a delivery as the main-queue ``entry``, so that the router records it anew
        when that entry comes back (``runner failed retry``); False if there is no such record."""
        with self.engine.begin() as connection:
            done = connection.execute(
                delete(tables.deliveries).where(
                    *self._delivery(delivery_id), tables.deliveries.c.entry == entry
                )
            )
        return done.rowcount > 0
