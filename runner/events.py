"""What runner reads from a GitHub event's payload, in one place, without trusting its shape."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# A subject is a line a person wrote; a longer one is cut, as a page would.
SUBJECT_LENGTH = 500


def repository_name(payload: Mapping[str, Any]) -> str | None:
    """``owner/name`` of the repository the event is about."""
    repository = payload.get("repository")
    if isinstance(repository, Mapping) and isinstance(repository.get("full_name"), str):
        return repository["full_name"]
    return None


def ref(payload: Mapping[str, Any]) -> str | None:
    value = payload.get("ref")
    return value if isinstance(value, str) else None


def pushed_subject(payload: Mapping[str, Any]) -> str | None:
    """The subject (first line of the message) of the commit a push moved its ref to, when GitHub sent it:
    ``head_commit``, none for a deletion."""
    head = payload.get("head_commit")
    message = head.get("message") if isinstance(head, Mapping) else None
    if not isinstance(message, str) or head.get("id") != pushed_commit(payload):
        return None
    lines = message.strip().splitlines()
    return lines[0].strip()[:SUBJECT_LENGTH] if lines else None


def pushed_commit(payload: Mapping[str, Any]) -> str | None:
    """The commit a push moved its ref to; None for a deletion (GitHub sends forty zeros)."""
    after = payload.get("after")
    return after if isinstance(after, str) and after.strip("0") else None
