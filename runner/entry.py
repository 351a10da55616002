"""A queue entry: the keys a delivery entry and a manual entry hold, written and read in this one place.

A delivery entry is what the webhook endpoint writes to the main queue: the event, the delivery id, the hook
id, when it was received, and the payload, last, exactly as GitHub sent it. The catch-up writes the same
into the recovered queue for a delivery it fetched from GitHub's record, with ``recovered: true``. The router
forwards it to the queue of each pipeline it matches with two keys more, the main queue's entry and the run
it is for. A manual entry is what ``runner trigger`` puts into a pipeline's queue: the run, its ref and
commit, who asked, when; ``runner rollback`` puts the same there with the release to switch to. A cancel
request is what ``runner cancel`` puts there for the pipeline's lane:
the run to call off. An action is what the status page puts into the main queue for the router: a
redeploy or a cancel of a run, asked by a user of the page.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runner.events import pushed_commit
from runner.events import ref as event_ref
from runner.queue import Queue

# What follows a delivery entry's payload: the entry's end.
DELIVERY_END = b"}"


class BadEntry(ValueError):
    """An entry that is not what its queue holds: not a JSON object, or a key missing or malformed."""


def _envelope(
    event: str, delivery: str, hook_id: str | None, received_at: datetime, recovered: bool
) -> dict[str, Any]:
    envelope = {
        "event": event,
        "delivery": delivery,
        "hook_id": hook_id,
        "received_at": received_at.isoformat(),
    }
    # Said only by the catch-up's entries: a received delivery's entry has no such key.
    if recovered:
        envelope["recovered"] = True
    return envelope


def delivery_head(
    event: str, delivery: str, hook_id: str | None, received_at: datetime, *, recovered: bool = False
) -> bytes:
    """An entry's text up to its payload's, which is last so that it can follow as the body arrives."""
    head = json.dumps(_envelope(event, delivery, hook_id, received_at, recovered), separators=(",", ":"))
    return head[:-1].encode() + b',"payload":'


def delivery_entry(head: bytes, payload: bytes) -> bytes:
    # The payload is spliced in as the verified JSON text, so it is stored exactly as GitHub sent it.
    return head + payload + DELIVERY_END


def _received_at(value: Any) -> datetime:
    try:
        received_at = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return datetime.now(UTC)
    # The endpoint writes UTC; a time without an offset is read as that, not refused by the store.
    return received_at.replace(tzinfo=UTC) if received_at.tzinfo is None else received_at.astimezone(UTC)


@dataclass(frozen=True)
class Delivery:
    """A delivery entry of the main queue, as the router reads it."""

    event: str
    delivery: str
    hook_id: str | None
    received_at: datetime
    payload: dict[str, Any]
    # Fetched from GitHub's record by the catch-up, not received.
    recovered: bool = False

    @classmethod
    def read(cls, data: Any) -> Delivery:
        """The delivery of a main queue entry's JSON. Raises BadEntry, saying what is missing."""
        if not isinstance(data, dict):
            raise BadEntry("the entry is not a JSON object")
        for key in ("event", "delivery"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise BadEntry(f"the entry has no {key!r}")
        if not isinstance(data.get("payload"), dict):
            raise BadEntry("the entry has no payload object")
        hook_id = data.get("hook_id")
        return cls(
            data["event"],
            data["delivery"],
            hook_id if isinstance(hook_id, str) else None,
            _received_at(data.get("received_at")),
            data["payload"],
            data.get("recovered") is True,
        )

    def forwarded(self, main_entry: str, run_id: int) -> dict[str, Any]:
        """The entry for a pipeline's queue: this one, with the main queue's entry and the run it is for."""
        envelope = _envelope(self.event, self.delivery, self.hook_id, self.received_at, self.recovered)
        return {**envelope, "payload": self.payload, "main_entry": main_entry, "run_id": run_id}


@dataclass(frozen=True)
class Manual:
    """A manual entry, as ``runner trigger`` writes it into a pipeline's queue."""

    run_id: int
    pipeline: str
    ref: str | None
    commit: str | None
    requested_at: datetime
    requested_by: str
    # A rollback (``runner rollback``): the kept release to switch to, whose activate steps alone run.
    release: str | None = None

    def written(self) -> dict[str, Any]:
        return {
            "kind": "manual" if self.release is None else "rollback",
            **({} if self.release is None else {"release": self.release}),
            "run_id": self.run_id,
            "pipeline": self.pipeline,
            "ref": self.ref,
            "commit": self.commit,
            "requested_at": self.requested_at.isoformat(),
            "requested_by": self.requested_by,
        }


@dataclass(frozen=True)
class CancelRequest:
    """A cancel request, as ``runner cancel`` writes it into the queue of the run's pipeline."""

    run_id: int
    requested_at: datetime
    requested_by: str

    def written(self) -> dict[str, Any]:
        # Under "cancel", not "run_id": this entry is not the run's, and find_run_entry must not find it.
        return {
            "kind": "cancel",
            "cancel": self.run_id,
            "requested_at": self.requested_at.isoformat(),
            "requested_by": self.requested_by,
        }

    @classmethod
    def read(cls, data: Any) -> CancelRequest | None:
        """The request an entry's JSON holds; None if it is not a cancel request. Raises BadEntry."""
        if not isinstance(data, dict) or data.get("kind") != "cancel":
            return None
        run_id = data.get("cancel")
        if not isinstance(run_id, int) or isinstance(run_id, bool):
            raise BadEntry("the cancel request names no run")
        by = data.get("requested_by")
        return cls(run_id, _received_at(data.get("requested_at")), by if isinstance(by, str) else "?")


# What a user of the status page may ask for.
ACTIONS = ("redeploy", "cancel")


@dataclass(frozen=True)
class Action:
    """An action, as the status page writes it into the main queue: redeploy or cancel a run."""

    action: str
    run_id: int
    by: str
    at: datetime

    def written(self) -> dict[str, Any]:
        # Under "run", not "run_id": this entry is not the run's, and find_run_entry must not find it.
        return {
            "kind": "action",
            "action": self.action,
            "run": self.run_id,
            "by": self.by,
            "at": self.at.isoformat(),
        }

    @classmethod
    def read(cls, data: Any) -> Action | None:
        """The action an entry's JSON holds; None if it is not an action. Raises BadEntry."""
        if not isinstance(data, dict) or data.get("kind") != "action":
            return None
        action, run_id, by = data.get("action"), data.get("run"), data.get("by")
        if action not in ACTIONS:
            raise BadEntry(f"the action {action!r} is none of {', '.join(ACTIONS)}")
        if not isinstance(run_id, int) or isinstance(run_id, bool):
            raise BadEntry("the action names no run")
        if not isinstance(by, str) or not by:
            raise BadEntry("the action names no user")
        return cls(action, run_id, by, _received_at(data.get("at")))


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class RunEntry:
    """An entry of a pipeline's queue, forwarded or manual, as its run is made of it.

    Read leniently: what is missing or malformed is left out of the run, not refused.
    """

    # The run the entry was queued with; None: the lane makes one.
    run_id: int | None
    trigger: str
    ref: str | None
    commit: str | None
    delivery: str | None
    event: str | None
    payload: dict[str, Any]
    # A rollback's release (its trigger is "rollback").
    release: str | None = None

    @classmethod
    def read(cls, data: Any) -> RunEntry:
        """The run of an entry's JSON. Raises BadEntry if it is not a JSON object."""
        if not isinstance(data, dict):
            raise BadEntry("the entry is not a JSON object")
        run_id = data.get("run_id")
        payload = data.get("payload") if isinstance(data.get("payload"), dict) else {}
        kind = data.get("kind", "delivery")
        manual = kind in ("manual", "rollback")
        return cls(
            run_id=run_id if isinstance(run_id, int) else None,
            trigger=kind if manual else str(data.get("event")),
            ref=_text(data.get("ref")) if manual else event_ref(payload),
            commit=_text(data.get("commit")) if manual else pushed_commit(payload),
            delivery=_text(data.get("delivery")),
            event=_text(data.get("event")),
            payload=payload,
            release=_text(data.get("release")) if kind == "rollback" else None,
        )


def put_entry(directory: Path, data: dict[str, Any]) -> str:
    """Put one entry (a manual run, a cancel request) into the pipeline queue ``directory``; its name."""
    queue = Queue(directory)
    try:
        return queue.put(data)
    finally:
        queue.close()


def find_run_entry(queue: Queue, run_id: int) -> str | None:
    """The entry of ``queue`` that names run ``run_id``: one that a crash left unrecorded."""
    for name in queue.entries():
        with contextlib.suppress(OSError, ValueError):
            data = queue.read(name)
            if isinstance(data, dict) and data.get("run_id") == run_id:
                return name
    return None
