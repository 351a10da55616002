"""What the status page reads of the database: pipelines' last runs, runs and deliveries a page at a time,
of every server that shares the database (each row names its server).

Read-only queries, paginated in SQL (a page is one LIMIT/OFFSET query, one row more than the page to know
whether there is a next one): the page never loads the whole history.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, Row, Select, func, select

from runner import tables
from runner.store import Store

PAGE_SIZE = 50
# Statuses a run can have (runner/tables.py's runs.status), for the filter: anything else is no filter.
RUN_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled", "superseded", "interrupted")
# The runs that say whether a pipeline deploys: ended by their own steps' verdict (not called off).
VERDICTS = ("succeeded", "failed", "interrupted")

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of rows: its number (from 1) and whether there are pages before and after it."""

    rows: list[T]
    number: int
    has_next: bool

    @property
    def has_previous(self) -> bool:
        return self.number > 1


@dataclass(frozen=True)
class PipelineSummary:
    """A pipeline as the pipelines page shows it: its last run, the last that deployed, whether it has a
    pipeline file."""

    server: str
    name: str
    last_run: Row[Any] | None
    last_deployed: Row[Any] | None
    # The last run that ended with a verdict: a run going on, cancelled or superseded does not say.
    last_verdict: Row[Any] | None
    has_file: bool

    @property
    def failing(self) -> bool:
        return self.last_verdict is not None and self.last_verdict.status != "succeeded"


class History:
    """The page's queries, over a (read-only) store."""

    def __init__(self, store: Store, page_size: int = PAGE_SIZE) -> None:
        self.store = store
        self.page_size = page_size

    def _page(self, query: Select[Any], number: int) -> Page[Row[Any]]:
        number = max(number, 1)
        limited = query.limit(self.page_size + 1).offset((number - 1) * self.page_size)
        with self.store.engine.connect() as connection:
            rows = list(connection.execute(limited))
        return Page(rows[: self.page_size], number, len(rows) > self.page_size)

    def runs(
        self,
        pipeline: str | None = None,
        status: str | None = None,
        number: int = 1,
        server: str | None = None,
    ) -> Page[Row[Any]]:
        """Runs newest first, of every server unless ``server`` is given."""
        runs = tables.runs
        query = select(runs).order_by(runs.c.id.desc())
        if pipeline:
            query = query.where(runs.c.pipeline == pipeline)
        if status:
            query = query.where(runs.c.status == status)
        if server:
            query = query.where(runs.c.server == server)
        return self._page(query, number)

    def deliveries(self, number: int = 1, server: str | None = None) -> Page[Row[Any]]:
        """Deliveries newest first, of every server unless ``server`` is given."""
        deliveries = tables.deliveries
        query = select(deliveries).order_by(
            deliveries.c.received_at.desc(), deliveries.c.server, deliveries.c.delivery_id
        )
        if server:
            query = query.where(deliveries.c.server == server)
        return self._page(query, number)

    def pipeline_names(self) -> list[str]:
        """Every pipeline that has runs (on any server), by name."""
        pipeline = tables.runs.c.pipeline
        with self.store.engine.connect() as connection:
            return list(connection.scalars(select(pipeline).distinct().order_by(pipeline)))

    def servers(self) -> list[str]:
        """Every server with runs or deliveries in the database, by name."""
        return self.store.servers()

    def pipelines(self, with_files: Iterable[str]) -> list[PipelineSummary]:
        """Each pipeline of each server that has runs, and this server's with a file (``with_files``), by
        server and name, with its last and last deployed run there."""
        last = self._last_runs()
        deployed = self._last_runs(tables.runs.c.status == "succeeded")
        verdicts = self._last_runs(tables.runs.c.status.in_(VERDICTS))
        files = {(self.store.server, name) for name in with_files}
        return [
            PipelineSummary(*key, last.get(key), deployed.get(key), verdicts.get(key), key in files)
            for key in sorted(files | set(last))
        ]

    def _last_runs(self, *where: ColumnElement[bool]) -> dict[tuple[str, str], Row[Any]]:
        """Each server's pipelines' last run (of those ``where`` selects): one query, whatever the history's
        size. A pipeline's name is its own on each server: the same name elsewhere is another pipeline."""
        runs = tables.runs
        last = select(func.max(runs.c.id)).where(*where).group_by(runs.c.server, runs.c.pipeline)
        with self.store.engine.connect() as connection:
            found = connection.execute(select(runs).where(runs.c.id.in_(last)))
            return {(run.server, run.pipeline): run for run in found}
