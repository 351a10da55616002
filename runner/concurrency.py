"""Which entries of a pipeline's queue a newer entry supersedes, and whether it stops the run going on.

GitHub Actions' concurrency groups, per pipeline (``concurrency:``, runner.pipeline.Concurrency). By
default at most one run goes on and one entry waits: a newer entry of the group supersedes the waiting one,
which never reaches a step; with ``cancel-in-progress: true`` it also stops the run going on; ``queue: all``
carries out every entry, in order. An entry's group is its ref (``group: ref``) or the whole pipeline
(``group: pipeline``); an entry without a ref (``runner trigger --commit`` alone: a rollback of the
pipeline's deployment) is of every ref's group.
"""

from __future__ import annotations

from collections.abc import Sequence

from runner.claims import SUPERSEDED_BY
from runner.entry import RunEntry
from runner.pipeline import Concurrency

# A waiting entry: its name in the queue, and the run it is for.
Waiting = tuple[str, RunEntry]


def same_group(policy: Concurrency, older: RunEntry, newer: RunEntry) -> bool:
    if policy.group == "pipeline":
        return True
    return older.ref is None or newer.ref is None or older.ref == newer.ref


def superseded(policy: Concurrency, waiting: Sequence[Waiting]) -> list[tuple[str, RunEntry]]:
    """The waiting entries (given oldest first) that a newer one supersedes, each with the newest entry of its
    group: the one it is superseded by."""
    if policy.queue == "all":
        return []
    found = []
    for index, (name, entry) in enumerate(waiting):
        newer = [later for _, later in waiting[index + 1 :] if same_group(policy, entry, later)]
        if newer:
            found.append((name, newer[-1]))
    return found


def canceller(policy: Concurrency, running: RunEntry, waiting: Sequence[Waiting]) -> RunEntry | None:
    """The newest waiting entry that stops the run going on (``cancel-in-progress``), or None."""
    if not policy.cancel_in_progress:
        return None
    newer = [entry for _, entry in waiting if same_group(policy, running, entry)]
    return newer[-1] if newer else None


def superseded_reason(newer: RunEntry) -> str:
    """What a run superseded (or cancelled) by the ``newer`` entry records: "superseded by run N", and, when N
    is a rollback, to which commit."""
    by = f"run {newer.run_id}" if newer.run_id is not None else "a newer entry"
    if newer.trigger in ("manual", "rollback") and newer.commit is not None:
        return f"{SUPERSEDED_BY}{by} (rollback to {newer.commit[:7]})"
    return f"{SUPERSEDED_BY}{by}"
