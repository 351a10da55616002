"""What runner says of an error it cannot mend itself: whether trying again can, and the error in one line."""

from __future__ import annotations

from sqlalchemy.exc import DataError


def lasting(exc: BaseException) -> bool:
    """Whether trying again cannot mend ``exc``: a value the database refuses, a queue path that is a file."""
    return isinstance(exc, DataError | NotADirectoryError | FileExistsError | IsADirectoryError)


def describe(exc: BaseException) -> str:
    """``exc`` in one line: the database's own message rather than SQLAlchemy's statement and parameters."""
    cause = getattr(exc, "orig", None) or exc
    text = " ".join(str(cause).split()) or repr(cause)
    return f"{type(cause).__name__}: {text[:500]}"
