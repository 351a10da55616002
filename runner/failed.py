"""The entries of every queue's ``failed/``: listing them, naming one, putting one back, dropping one.

An entry is named ``QUEUE/NAME`` (``main/00000001764071003123456789.json``, or a pipeline's queue instead of
``main``), or by its bare ``NAME`` when only one queue has it. Nothing else is accepted: a name never leads
out of ``queues/*/failed/``, through ``..``, a symlink or otherwise.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runner.entry import RunEntry
from runner.files import fsync_directory
from runner.queue import FAILED_DIR, LOCK_FILE, Queue, is_entry_name
from runner.store import Store

MAIN = "main"
RECOVERED = "recovered"
# "main", "recovered" and every pipeline's name: the only directories of queues/ that hold queues.
QUEUE_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")
REASON_SUFFIX = ".reason"
# A reason is a few lines; more is not read.
REASON_LIMIT = 64 * 1024
# What the router has finished with: a copy put back would be counted as a duplicate, not routed.
ROUTED_OUTCOMES = ("routed", "ping", "unmatched", "duplicate")


class FailedError(Exception):
    """An entry cannot be named, retried or dropped; the message says why and what to do."""


@dataclass(frozen=True)
class FailedEntry:
    queue: str
    name: str
    path: Path
    # When it failed: when its reason was written (its file keeps the time it was first published).
    failed_at: datetime
    reason: str | None

    @property
    def key(self) -> str:
        return f"{self.queue}/{self.name}"

    @property
    def reason_path(self) -> Path:
        return self.path.with_name(self.name + REASON_SUFFIX)


def _is_real_directory(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _failed_dir(queues_dir: Path, queue: str) -> Path | None:
    """``queues/QUEUE/failed`` if both are directories of their own, not symlinks to somewhere else."""
    if not QUEUE_NAME.fullmatch(queue):
        return None
    directory = queues_dir / queue
    if not _is_real_directory(directory) or not _is_real_directory(directory / FAILED_DIR):
        return None
    return directory / FAILED_DIR


def queue_names(queues_dir: Path) -> list[str]:
    """The queues that have a ``failed/``, ``main`` first."""
    try:
        names = [e.name for e in os.scandir(queues_dir) if _failed_dir(queues_dir, e.name) is not None]
    except FileNotFoundError:
        return []
    return sorted(names, key=lambda name: (name != MAIN, name))


def _mtime(path: Path) -> datetime | None:
    try:
        return datetime.fromtimestamp(os.lstat(path).st_mtime, UTC)
    except OSError:
        return None


def _read_reason(path: Path) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as file:
        return file.read(REASON_LIMIT).decode(errors="replace").rstrip("\n")


def _entry(queue: str, path: Path) -> FailedEntry | None:
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
    except OSError:
        return None
    reason_path = path.with_name(path.name + REASON_SUFFIX)
    failed_at = _mtime(reason_path) or _mtime(path) or datetime.now(UTC)
    return FailedEntry(queue, path.name, path, failed_at, _read_reason(reason_path))


def failed_entries(queues_dir: Path) -> list[FailedEntry]:
    """Every failed entry of every queue: ``main``'s first, then by queue and name (the order they came)."""
    found = []
    for queue in queue_names(queues_dir):
        directory = queues_dir / queue / FAILED_DIR
        for name in sorted(n for n in os.listdir(directory) if is_entry_name(n)):
            entry = _entry(queue, directory / name)
            if entry is not None:
                found.append(entry)
    return found


def orphan_reasons(queues_dir: Path) -> list[tuple[Path, datetime]]:
    """``.reason`` files whose entry is gone (moved back or removed by hand), with when they were written."""
    found = []
    for queue in queue_names(queues_dir):
        directory = queues_dir / queue / FAILED_DIR
        for name in sorted(os.listdir(directory)):
            entry_name = name.removesuffix(REASON_SUFFIX)
            if name.endswith(REASON_SUFFIX) and is_entry_name(entry_name):
                path = directory / name
                when = _mtime(path)
                if when is not None and not os.path.lexists(directory / entry_name):
                    found.append((path, when))
    return found


def find(queues_dir: Path, spec: str) -> FailedEntry:
    """The failed entry ``spec`` names: ``QUEUE/NAME``, ``QUEUE/failed/NAME`` or a ``NAME`` found once."""
    parts = spec.split("/")
    if len(parts) == 3 and parts[1] == FAILED_DIR:
        parts = [parts[0], parts[2]]
    queue, name = (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])
    if len(parts) > 2 or not is_entry_name(name) or (queue is not None and not QUEUE_NAME.fullmatch(queue)):
        raise FailedError(
            f"{spec!r} does not name a failed entry: give QUEUE/NAME as `runner failed` lists it "
            "(e.g. main/00000001764071003123456789.json), or its NAME alone"
        )
    if queue is None:
        matches = [entry for entry in failed_entries(queues_dir) if entry.name == name]
        if len(matches) > 1:
            raise FailedError(
                f"{name} is in more than one queue: give one of {', '.join(m.key for m in matches)}"
            )
        if not matches:
            raise FailedError(f"there is no failed entry {name}: `runner failed` lists them")
        return matches[0]
    directory = _failed_dir(queues_dir, queue)
    entry = _entry(queue, directory / name) if directory is not None else None
    if entry is None:
        raise FailedError(f"there is no failed entry {queue}/{name}: `runner failed` lists them")
    return entry


def drop(entry: FailedEntry) -> None:
    """Remove the entry and its reason, for good."""
    try:
        entry.path.unlink()
    except FileNotFoundError:
        raise FailedError(f"{entry.key} is gone already") from None
    entry.reason_path.unlink(missing_ok=True)
    fsync_directory(entry.path.parent)


def _read(entry: FailedEntry) -> dict[str, Any]:
    try:
        fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as file:
            data = json.loads(file.read())
    except (OSError, ValueError) as exc:
        raise FailedError(
            f"{entry.key} cannot be retried, it is unreadable ({exc}): `runner failed drop {entry.key}` "
            "removes it"
        ) from None
    if not isinstance(data, dict):
        raise FailedError(f"{entry.key} cannot be retried, it is not a JSON object: drop it")
    return data


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"user id {uid}"


def retry(entry: FailedEntry, queues_dir: Path, store: Store) -> str:
    """Put ``entry`` back at the end of its queue; returns what was done, for a person to read."""
    if entry.queue in (MAIN, RECOVERED):
        return _retry_main(entry, queues_dir / entry.queue, store)
    return _retry_pipeline(entry, queues_dir / entry.queue, store)


def _retry_main(entry: FailedEntry, directory: Path, store: Store) -> str:
    """Moved back as it is, under a new name: the same bytes and the same owner, so the router takes it as
    written by the webhook endpoint, or refuses it as before if it was not. So is a recovered queue's entry,
    which the catch-up wrote as the owner of its queue."""
    owner = os.stat(directory).st_uid
    writer = os.lstat(entry.path).st_uid
    if writer != owner:
        who = "the webhook endpoint" if entry.queue == MAIN else "the catch-up"
        raise FailedError(
            f"{entry.key} was not written by {who} ({_user(owner)}) but by {_user(writer)}: "
            f"the router would refuse it again; `runner failed drop {entry.key}` removes it"
        )
    if not (directory / LOCK_FILE).exists() and os.geteuid() != owner:
        # Queue would create it, as this user: the webhook endpoint could then not hand out names.
        raise FailedError(f"{directory / LOCK_FILE} is missing: retry as {_user(owner)}, who owns the queue")
    delivery = _read(entry).get("delivery")
    if isinstance(delivery, str):
        record = store.delivery(delivery)
        if record is not None and (record.entry != entry.name or record.outcome in ROUTED_OUTCOMES):
            raise FailedError(
                f"delivery {delivery} was {record.outcome} already (as entry {record.entry}): put back, "
                f"{entry.key} would count as a duplicate; `runner failed drop {entry.key}` removes it"
            )
        # The record of the failed routing goes: the router records the delivery anew when it takes it.
        if record is not None:
            store.forget_delivery(delivery, entry.name)
    queue = Queue(directory)
    try:
        [name] = queue.publish([entry.path])
    finally:
        queue.close()
    entry.reason_path.unlink(missing_ok=True)
    fsync_directory(entry.path.parent)
    back = f"{entry.key} is back in queues/{entry.queue} as {name}"
    return back + (f" (delivery {delivery})" if delivery else "")


def _retry_pipeline(entry: FailedEntry, directory: Path, store: Store) -> str:
    """A new entry with the old one's content, carried out by a new queued run: the failed run stays what it
    was, and ``runner runs`` shows the retry as a run of its own, queued from now on."""
    owner = os.stat(directory).st_uid
    if os.geteuid() != owner:
        raise FailedError(
            f"queues/{entry.queue} is {_user(owner)}'s: retry as that user, so that its lane can read "
            "the entry"
        )
    data = _read(entry)
    # What the lane records when it claims the run: the same, from the same entry.
    run_entry = RunEntry.read(data)
    run_id = store.create_run(
        entry.queue,
        trigger=run_entry.trigger,
        delivery_id=run_entry.delivery,
        ref=run_entry.ref,
        commit=run_entry.commit,
    )
    queue = Queue(directory)
    try:
        name = queue.put({**data, "run_id": run_id})
    finally:
        queue.close()
    store.set_run(run_id, entry=name)
    # Only now: a crash before this leaves the entry in failed/ as well, never nowhere.
    drop(entry)
    was = f" (it was run {run_entry.run_id})" if run_entry.run_id is not None else ""
    return f"run {run_id} queued: pipeline {entry.queue}, {entry.key} again as {name}{was}"
