"""The status page's actions, carried out by the router: redeploy a run's commit, cancel a run; each recorded.

The web process writes an action into the main queue (runner/entry.py's Action) and nothing else; the router,
which runs as the deploy user, does it here as `runner trigger --commit` and `runner cancel` do (without
waiting for the lane), and records in the ``actions`` table who asked, and what became of it. An action is
recorded before it is done: its entry taken again after a crash is not done a second time (it says it was
interrupted; the user can ask again).
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import Row, insert, or_, select, update

from runner import tables
from runner.cancel import CancelError, request_cancel
from runner.config import Config
from runner.entry import Action
from runner.store import Store
from runner.trigger import RunRequest, TriggerError

logger = logging.getLogger(__name__)

# Being done: what a record says until the action's outcome is known.
ASKED = "asked"


class ActionTaker:
    """Does the actions the router takes from the main queue, and records them."""

    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.store = store

    def __call__(self, entry: str, action: Action) -> tuple[str, str]:
        """Do ``action`` (of the main-queue entry ``entry``) once; its outcome and the detail recorded."""
        record_id, earlier = self._begin(entry, action)
        if earlier is not None:
            return earlier
        try:
            outcome, detail, new_run = self._do(action)
        except Exception as exc:
            # Recorded as refused, so that the page says so; the router goes on with the next entry.
            self._finish(record_id, "refused", f"could not be done: {exc}", None)
            raise
        self._finish(record_id, outcome, detail, new_run)
        return outcome, detail

    def _begin(self, entry: str, action: Action) -> tuple[int, tuple[str, str] | None]:
        actions = tables.actions
        with self.store.engine.begin() as connection:
            found = connection.execute(
                select(actions.c.id, actions.c.outcome, actions.c.detail).where(
                    actions.c.entry == entry, actions.c.at == action.at
                )
            ).first()
            if found is not None:
                outcome, detail = found.outcome, found.detail
                if outcome == ASKED:
                    outcome = "interrupted"
                    detail = "the worker stopped while it was being done; not done again"
                    connection.execute(
                        update(actions).where(actions.c.id == found.id).values(outcome=outcome, detail=detail)
                    )
                return found.id, (outcome, detail or "")
            record_id = connection.execute(
                insert(actions)
                .values(
                    at=action.at,
                    by=action.by,
                    action=action.action,
                    run_id=action.run_id,
                    outcome=ASKED,
                    entry=entry,
                )
                .returning(actions.c.id)
            ).scalar_one()
            return record_id, None

    def _finish(self, record_id: int, outcome: str, detail: str, new_run: int | None) -> None:
        with self.store.engine.begin() as connection:
            connection.execute(
                update(tables.actions)
                .where(tables.actions.c.id == record_id)
                .values(outcome=outcome, detail=detail, new_run_id=new_run)
            )

    def _do(self, action: Action) -> tuple[str, str, int | None]:
        if action.action == "cancel":
            try:
                had, _request = request_cancel(self.config, self.store, action.run_id, action.by)
            except CancelError as exc:
                return "refused", str(exc), None
            return "cancelled", f"it was {'waiting' if had == 'queued' else 'running'}", None
        run = self.store.run(action.run_id)
        if run is None:
            return "refused", f"there is no run {action.run_id}", None
        if run.server != self.store.server:
            # Its pipeline is that server's: a pipeline of the same name here may deploy something else.
            return "refused", f"run {run.id} is server {run.server}'s: redeploy it from its own page", None
        if run.commit is None:
            return "refused", f"run {run.id} deployed no known commit: there is nothing to redeploy", None
        try:
            request = RunRequest.checked(self.config, run.pipeline, run.ref, run.commit)
            queued = request.queue(
                self.config, self.store, reason=f"redeploy of run {run.id} by {action.by}", by=action.by
            )
        except TriggerError as exc:
            return "refused", str(exc), None
        return "queued", f"run {queued.run_id}", queued.run_id


def actions_of_run(store: Store, run_id: int) -> list[Row[Any]]:
    """The actions asked on run ``run_id``, and the redeploy that queued it, oldest first: rows whose
    attributes are the ``actions`` table's columns."""
    actions = tables.actions
    query = (
        select(actions)
        .where(or_(actions.c.run_id == run_id, actions.c.new_run_id == run_id))
        .order_by(actions.c.id)
    )
    with store.engine.connect() as connection:
        return list(connection.execute(query))
