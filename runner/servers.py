"""Whose rows a query selects, in a database several servers share: this server's, another's, or all."""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # Only a type: `runner serve` imports THIS_SERVER (through runner/cli.py) and no SQLAlchemy.
    from sqlalchemy import ColumnElement


class Scope(Enum):
    THIS_SERVER = "this server"


# The default of the read methods that take a server: the reader's own. None is every server's.
THIS_SERVER = Scope.THIS_SERVER
Servers = str | Scope | None


def where_server(column: Any, own: str, server: Servers = THIS_SERVER) -> list[ColumnElement[bool]]:
    """The conditions that select ``server``'s rows by ``column`` (``own`` for THIS_SERVER): none for all."""
    if server is None:
        return []
    return [column == (own if server is THIS_SERVER else server)]
