"""What runner reads from a GitHub event's payload, in one place, without trusting its shape."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def repository_name(payload: Mapping[str, Any]) -> str | None:
    """``owner/name`` of the repository the event is about."""
    repository = payload.get("repository")
    if isinstance(repository, Mapping) and isinstance(repository.get("full_name"), str):
        return repository["full_name"]
    return None


def ref(payload: Mapping[str, Any]) -> str | None:
    value = payload.get("ref")
    return value if isinstance(value, str) else None


def pushed_commit(payload: Mapping[str, Any]) -> str | None:
    """The commit a push moved its ref to; None for a deletion (GitHub sends forty zeros)."""
    after = payload.get("after")
    return after if isinstance(after, str) and after.strip("0") else None
