"""Missed deliveries: those GitHub could not make to runner, fetched from its record and queued as recovered.

GitHub keeps a hook's deliveries for 3 days: each attempt (a redelivery has the GUID of the delivery it
makes again) with the status its receiver answered. A GUID that none of its attempts delivered (no 2xx)
and that runner has not recorded is missed: its request, headers and payload, is fetched from GitHub's
record and written into the recovered queue as the entry of a received delivery (runner/entry.py), which
the router takes as it takes the main queue's. Fetched, not redelivered: a redelivery needs GitHub to reach
the endpoint, which is often what failed (a firewall, DNS, an expired certificate, the endpoint down while
the worker runs); a fetch needs only outbound HTTPS, and the delivery is queued at once.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from runner import tables
from runner.catchup_finding import Finding
from runner.config import Config, GitHubHook
from runner.entry import delivery_entry, delivery_head
from runner.events import ref as event_ref
from runner.events import repository_name
from runner.github import GitHub, GitHubError
from runner.queue import Queue
from runner.store import Store

# What a learned hook's repository may be: GitHub's owner/name, nothing that would change the call's path.
REPOSITORY = re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+")
PER_PAGE = 100
# Delivery ids looked up in the database at once: well within SQLite's limit of bound parameters.
LOOKUP_BATCH = 500


def hooks(config: Config, store: Store) -> list[GitHubHook]:
    """The hooks to look at: those configured, then those this server learned from its deliveries (their
    repository and X-GitHub-Hook-ID), each once: another server's hook (sharing the database) is its own."""
    found = list(config.github_hooks)
    # A hook's id is unique on GitHub: one configured as an organisation's is not listed again as the
    # hook of a repository whose deliveries it made.
    known = {hook.id for hook in found}
    with store.engine.connect() as connection:
        learned = connection.execute(
            select(tables.deliveries.c.repository, tables.deliveries.c.hook_id)
            .where(
                tables.deliveries.c.server == store.server,
                tables.deliveries.c.repository.is_not(None),
                tables.deliveries.c.hook_id.is_not(None),
            )
            .distinct()
            .order_by(tables.deliveries.c.repository, tables.deliveries.c.hook_id)
        ).all()
    for repository, hook_id in learned:
        if hook_id.isdigit() and int(hook_id) not in known and REPOSITORY.fullmatch(repository):
            found.append(GitHubHook("repository", repository, int(hook_id)))
            known.add(int(hook_id))
    return found


def _deliveries_path(hook: GitHubHook) -> str:
    owner = f"/repos/{hook.name}" if hook.kind == "repository" else f"/orgs/{hook.name}"
    return f"{owner}/hooks/{hook.id}/deliveries"


def _time(value: Any) -> datetime | None:
    try:
        when = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


@dataclass(frozen=True)
class Attempts:
    """A delivery in GitHub's record: its GUID, and its attempts as the listing gives them, newest first."""

    guid: str
    listed: list[dict[str, Any]]

    @property
    def event(self) -> str:
        return self.listed[0]["event"]

    @property
    def first_at(self) -> datetime:
        """When GitHub first made it: the time its entry says it was received."""
        return min(_time(attempt["delivered_at"]) or datetime.now(UTC) for attempt in self.listed)

    def delivered(self) -> dict[str, Any] | None:
        """The attempt that the receiver answered with a 2xx, if one was."""
        return next((attempt for attempt in self.listed if _answered(attempt)), None)

    def said(self) -> str:
        """What GitHub recorded of the last attempt."""
        last = self.listed[0]
        return f"{last.get('status_code')} {last.get('status') or ''}".strip()


def _answered(attempt: dict[str, Any]) -> bool:
    code = attempt.get("status_code")
    return isinstance(code, int) and 200 <= code < 300


def _complete(item: dict[str, Any]) -> bool:
    """Whether a listed attempt has what the catch-up reads of it: its id, GUID and event."""
    return isinstance(item.get("id"), int) and all(
        isinstance(item.get(key), str) and item[key] for key in ("guid", "event")
    )


def listed(github: GitHub, hook: GitHubHook, since: datetime) -> list[Attempts]:
    """The hook's deliveries made since ``since``, by GUID, the earliest first. Raises GitHubError.

    GitHub lists the newest first: the listing stops at the first attempt made before ``since``.
    """
    by_guid: dict[str, list[dict[str, Any]]] = {}
    params = {"per_page": PER_PAGE}
    for item in github.paginate(_deliveries_path(hook), repository=hook.name, params=params):
        delivered_at = _time(item.get("delivered_at")) if isinstance(item, dict) else None
        if delivered_at is None or not _complete(item):
            continue
        if delivered_at < since:
            break
        by_guid.setdefault(item["guid"], []).append(item)
    return sorted((Attempts(guid, items) for guid, items in by_guid.items()), key=lambda a: a.first_at)


def _recorded(store: Store, guids: list[str]) -> dict[str, bool]:
    """Those of ``guids`` that this server has recorded, each with whether it was recovered (not received)."""
    found: dict[str, bool] = {}
    with store.engine.connect() as connection:
        for start in range(0, len(guids), LOOKUP_BATCH):
            batch = guids[start : start + LOOKUP_BATCH]
            query = select(tables.deliveries.c.delivery_id, tables.deliveries.c.recovered).where(
                tables.deliveries.c.server == store.server, tables.deliveries.c.delivery_id.in_(batch)
            )
            found.update((guid, recovered) for guid, recovered in connection.execute(query))
    return found


class Recovery:
    """The recovery of one hook's missed deliveries into the recovered queue."""

    def __init__(self, github: GitHub, store: Store, queue: Queue, hook: GitHubHook) -> None:
        self.github = github
        self.store = store
        self.queue = queue
        self.hook = hook

    def run(
        self,
        since: datetime,
        waiting: Collection[str],
        say: Callable[[Finding], None],
        stop: threading.Event,
    ) -> int:
        """Look at the deliveries made since ``since``, ``say`` what became of each that is not simply
        recorded; returns how many were listed. ``waiting``: the delivery ids in runner's queues, not yet
        recorded. Raises GitHubError when the listing fails."""
        deliveries = listed(self.github, self.hook, since)
        recorded = _recorded(self.store, [delivery.guid for delivery in deliveries])
        for delivery in deliveries:
            if stop.is_set():
                break
            finding = self._look_at(delivery, recorded.get(delivery.guid), delivery.guid in waiting)
            if finding is not None:
                say(finding)
        return len(deliveries)

    def _look_at(self, delivery: Attempts, recovered: bool | None, waiting: bool) -> Finding | None:
        """A line about ``delivery``, unless it is simply recorded. ``recovered``: None when runner has not
        recorded it, else whether the catch-up recovered it; ``waiting``: whether it is in runner's queues."""
        subject = f"{delivery.guid} {delivery.event} {self.hook.name}"
        data = {
            "delivery": delivery.guid,
            "event": delivery.event,
            "hook": self.hook.id,
            "github": delivery.said(),
        }
        answered = delivery.delivered()
        # Runner has it: recorded, or in one of its queues.
        known = recovered is not None or waiting
        if recovered or (known and answered is not None):
            return None
        if known:
            # GitHub gave up waiting for the answer (10 s) that the endpoint gave too late; or the entry
            # waits for the router (the endpoint's, or an earlier pass's).
            how = "delivered to runner before" if recovered is not None else "waiting in runner's queues"
            detail = f"{how} (GitHub recorded {delivery.said()}): not queued again"
            return Finding("delivery", subject, "delivered-before", detail, data)
        if answered is not None:
            # A 2xx is what runner's endpoint answers once the delivery is durable in its queue, or what
            # something else answered at the hook's URL: either way GitHub's receiver took it, and a copy
            # queued here could run it a second time.
            said = f"{answered['status_code']} {answered.get('status') or ''}".strip()
            detail = (
                f"GitHub recorded {said}, but runner has no record of it: not queued "
                "(another receiver at the hook's URL?)"
            )
            return Finding("delivery", subject, "answered-elsewhere", detail, data)
        return self._recover(delivery, subject, data)

    def _recover(self, delivery: Attempts, subject: str, data: dict[str, Any]) -> Finding:
        path = f"{_deliveries_path(self.hook)}/{delivery.listed[0]['id']}"
        try:
            payload = _payload(self.github.request("GET", path, repository=self.hook.name).data)
        except GitHubError as exc:
            return Finding("delivery", subject, "error", f"cannot fetch it: {exc}", data)
        if payload is None:
            detail = f"cannot recover it: GitHub's record of it (GET {path}) has no request payload"
            return Finding("delivery", subject, "error", detail, data)
        head = delivery_head(
            delivery.event, delivery.guid, str(self.hook.id), delivery.first_at, recovered=True
        )
        entry = self.queue.put(delivery_entry(head, json.dumps(payload, separators=(",", ":")).encode()))
        repository, ref = repository_name(payload), event_ref(payload)
        subject = f"{delivery.guid} {delivery.event} {repository or self.hook.name}"
        found = {**data, "repository": repository, "ref": ref, "entry": f"recovered/{entry}"}
        return Finding(
            "delivery", subject, "recovered", f"recovered (GitHub recorded {delivery.said()})", found
        )


def _payload(record: Any) -> dict[str, Any] | None:
    """The payload of GitHub's record of a delivery (GET .../deliveries/{id}): its request's."""
    request = record.get("request") if isinstance(record, dict) else None
    payload = request.get("payload") if isinstance(request, dict) else None
    if isinstance(payload, str):
        try:
            payload = json.loads(payload)
        except ValueError:
            return None
    return payload if isinstance(payload, dict) else None
