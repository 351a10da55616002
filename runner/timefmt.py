"""How runner shows a time: in UTC, ISO 8601 marked ``Z``, alike in tables, run logs and server logs.

One convention whatever the host's or the reader's ``TZ``: a run log written by the worker reads the same
to everyone who prints it, and one instant is the same text (to the second) in ``runner runs``, in the
run's log and in the worker's log, so that searching for it finds it everywhere. ``--json`` gives the
full value, with its offset.

Server logs are one line per event, so that a line is a record for ``grep``, ``journalctl`` and any log
shipper: ``2026-11-25T11:43:23.908134Z WARNING runner.worker: message``. A newline inside a message, and
the traceback ``logger.exception`` adds, are written as the two characters ``\\n`` (a carriage return as
``\\r``), so the whole traceback stays in its event's line and ``printf '%b\\n' "$line"`` unfolds it.
Under systemd (``JOURNAL_STREAM`` set: stderr goes to journald) a line starts with its syslog priority
instead of a time, ``<4>WARNING runner.worker: message``: journald stamps each line itself and reads the
prefix as the priority, so ``journalctl -p err`` finds the errors.
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


# syslog(3)'s priorities, which journald reads from a line's ``<N>`` prefix; NOTICE (5) has no logging level.
PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))
DEBUG_PRIORITY = 7


def priority(level: int) -> int:
    """The syslog priority of a logging level: a level between two of logging's gets the lower one's."""
    return next((prio for least, prio in PRIORITIES if level >= least), DEBUG_PRIORITY)


def one_line(text: str) -> str:
    """``text`` with its line breaks written as ``\\n`` and ``\\r``: one event is one line."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


class LogFormatter(logging.Formatter):
    """A server log's line: UTC stamp (or, for journald, the priority), level, logger, message; one line.

    Its traceback, if any, follows the message in the same line (see the module's docstring).
    """

    def __init__(self, *, journal: bool = False) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        for extra in (record.exc_text, self.formatStack(record.stack_info) if record.stack_info else None):
            if extra:
                text = f"{text}\n{extra}"
        head = (
            f"<{priority(record.levelno)}>"
            if self.journal
            else f"{stamp(datetime.fromtimestamp(record.created, UTC))} "
        )
        return f"{head}{record.levelname} {record.name}: {one_line(text)}"
