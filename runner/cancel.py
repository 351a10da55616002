"""A run cancelled by hand (``runner cancel RUN``), waiting or going on, while the worker runs elsewhere.

The database decides first (runner/claims.py): the run ends as cancelled by hand, unless it has ended, or
its lane claims it in between (then it is cancelled as running, and never runs its steps on). A cancel
request in the run's pipeline queue then tells its lane, which removes a waiting run's entry, or stops the
run going on (a step with ``cancel: false`` finishes first); the lane removes the request once it is done,
which this command waits for, a while.
"""

from __future__ import annotations

import getpass
import time
from datetime import UTC, datetime
from pathlib import Path

from runner import claims
from runner.config import Config
from runner.entry import CancelRequest, put_entry
from runner.lock import NotTheOwner, require_owner, worker_alive
from runner.store import Store

# How long the command waits for the lane to have removed the entry, or stopped the run.
HANDLED_WAIT = 30.0
# How often it looks whether the lane has.
LOOK_INTERVAL = 0.05


class CancelError(Exception):
    """The run cannot be cancelled; the message says why."""


def _ended(store: Store, run_id: int) -> CancelError:
    run = store.run(run_id)
    if run is None:
        return CancelError(f"there is no run {run_id}: `runner runs` lists them")
    reason = f" ({run.reason})" if run.reason else ""
    return CancelError(f"run {run_id} has ended already: {run.status}{reason}")


def _handled(request: Path, config: Config) -> bool:
    """Whether the lane removes the request within HANDLED_WAIT seconds; False at once if no worker runs."""
    deadline = time.monotonic() + HANDLED_WAIT
    while request.exists():
        if time.monotonic() > deadline or not worker_alive(config.worker_lock):
            return False
        time.sleep(LOOK_INTERVAL)
    return True


def request_cancel(config: Config, store: Store, run_id: int, by: str) -> tuple[str, Path]:
    """Record run ``run_id`` as cancelled by hand and tell its lane, without waiting for it: the status it
    had (queued or running) and the request's path, which the lane removes once done. Raises CancelError."""
    run = store.run(run_id)
    if run is not None and run.server != store.server:
        # Its lane and queue are on that server: only its runner can stop it.
        raise CancelError(
            f"run {run_id} is server {run.server}'s, not this server's ({store.server}): "
            f"cancel it there (`runner cancel {run_id}` on {run.server})"
        )
    if run is None or run.status not in claims.OPEN:
        raise _ended(store, run_id)
    directory = config.queues_dir / run.pipeline
    try:
        require_owner(directory, "cancel")
    except NotTheOwner as exc:
        raise CancelError(str(exc)) from None
    had = claims.cancel_run(store, run_id)
    if had is None:
        raise _ended(store, run_id)
    request = CancelRequest(run_id, datetime.now(UTC), by)
    try:
        name = put_entry(directory, request.written())
    except OSError as exc:
        raise CancelError(
            f"run {run_id} is recorded as cancelled, but its lane could not be told ({directory}: {exc}): "
            "a waiting run's entry is removed when the lane takes it; a run going on goes on"
        ) from None
    return had, directory / name


def cancel(config: Config, store: Store, run_id: int) -> str:
    """Cancel run ``run_id``; returns what became of it, for a person to read. Raises CancelError."""
    had, request = request_cancel(config, store, run_id, getpass.getuser())
    if _handled(request, config):
        done = "its entry left the queue" if had == "queued" else "it has stopped"
        return f"run {run_id} cancelled: it was {'waiting' if had == 'queued' else 'running'}; {done}"
    if not worker_alive(config.worker_lock):
        return f"run {run_id} cancelled; no worker is running: its lane removes its entry when one starts"
    return (
        f"run {run_id} cancelled; its lane is still stopping it "
        "(a step with `cancel: false` is waited for, then the run stops)"
    )
