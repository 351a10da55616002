"""How runner shows a time: in UTC, ISO 8601 marked ``Z``, alike in tables, run logs and server logs.

One convention whatever the host's or the reader's ``TZ``: a run log written by the worker reads the same
to everyone who prints it, and one instant is the same text (to the second) in ``runner runs``, in the
run's log and in the worker's log, so that searching for it finds it everywhere. ``--json`` gives the
full value, with its offset.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime


def utc(value: datetime) -> datetime:
    """``value`` in UTC. A naive value is refused: it could be any time zone's."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"a time without a time zone ({value.isoformat()}): give it one, e.g. UTC")
    return value.astimezone(UTC)


def shown(value: datetime | None) -> str:
    """For a table: to the second, ``2026-11-25T11:43:23Z``; ``-`` for none."""
    if value is None:
        return "-"
    return utc(value).strftime("%Y-%m-%dT%H:%M:%SZ")


def stamp(value: datetime) -> str:
    """For a log line: to the microsecond, ``2026-11-25T11:43:23.908134Z``."""
    return utc(value).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def iso(value: datetime | None) -> str | None:
    """For JSON: ISO 8601 with its offset, ``2026-11-25T11:43:23.908134+00:00``; None for none."""
    return utc(value).isoformat() if value is not None else None


class LogFormatter(logging.Formatter):
    """logging's formatter with ``%(asctime)s`` in the same form as a run log's stamps."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return stamp(datetime.fromtimestamp(record.created, UTC))
