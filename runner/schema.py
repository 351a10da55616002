"""The schema's revisions (Alembic): runner's migrations, and the revision this code needs.

SchemaError is a database that is not at that revision.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from runner import shipped
from runner.driver import safe_url

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig
    from sqlalchemy import Engine

MIGRATIONS_DIR = shipped.path(shipped.MIGRATIONS)
# Where Alembic records the database's revision (its default name; migrations/env.py keeps it).
VERSION_TABLE = "alembic_version"


class SchemaError(Exception):
    """The database's schema is not at the revision this code expects."""


def alembic_config(url: str) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    if not (MIGRATIONS_DIR / "env.py").is_file():
        raise SchemaError(f"the migrations are missing: no {MIGRATIONS_DIR / 'env.py'}")
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolation would read a "%" in a password as a reference.
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


# A revision file's own lines, as Alembic writes them: `revision: str = "0009"`, `down_revision = None`.
_LINE = re.compile(
    r"^(revision|down_revision)\b[^=\n]*=\s*(?:\"([^\"]*)\"|'([^']*)'|(None))\s*$", re.MULTILINE
)


def _head_from_files() -> str | None:
    """The one revision no other revision comes after, read from the files' text; None when that is not
    plain (no file, a line not as above, branches or merges): Alembic decides then."""
    follows: dict[str, str | None] = {}
    for path in sorted((MIGRATIONS_DIR / "versions").glob("*.py")):
        if path.name.startswith(("__init__", ".#")):
            continue  # not revisions, to Alembic either
        found = {m.group(1): m.group(2) or m.group(3) for m in _LINE.finditer(path.read_text())}
        if set(found) != {"revision", "down_revision"} or not found["revision"]:
            return None
        follows[found["revision"]] = found["down_revision"]
    heads = set(follows) - set(follows.values())
    return heads.pop() if len(heads) == 1 else None


def head_revision() -> str | None:
    """The revision this code needs. Read from the migration files where it can be: Alembic's own reading
    imports about a hundred modules (six MB) into every process that only checks the schema at start."""
    try:
        head = _head_from_files()
    except OSError:
        head = None
    if head is not None:
        return head
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def current_revision(engine: Engine) -> str | None:
    """The database's revision (None: not initialised), read where Alembic keeps it, with SQLAlchemy Core."""
    # Here, not at the top: a server checks the schema through runner/driver.py, without SQLAlchemy.
    from sqlalchemy import column, inspect, select, table

    versions = table(VERSION_TABLE, column("version_num"))
    with engine.connect() as connection:
        if not inspect(connection).has_table(VERSION_TABLE):
            return None
        found = list(connection.execute(select(versions.c.version_num)).scalars())
    return one_revision(found, str(engine.url))


def one_revision(found: list[str] | None, url: str) -> str | None:
    """The revision of the version table's rows ``found`` (None: no such table, so not initialised)."""
    if found is not None and len(found) > 1:
        raise SchemaError(f"the database {safe_url(url)} is at several revisions: {found}")
    return found[0] if found else None


def check_revision(current: str | None, url: str) -> None:
    """Refuse a database at ``current`` (None: not initialised) unless that is the latest revision."""
    head = head_revision()
    if current != head:
        where = f"at revision {current}" if current else "not initialised"
        raise SchemaError(
            f"the database {safe_url(url)} is {where}, this runner needs revision {head}: "
            "run `runner db upgrade` (with the same RUNNER_DATABASE_URL) first"
        )


def check_schema(engine: Engine, url: str) -> None:
    """Refuse a database whose schema is not at the latest revision."""
    check_revision(current_revision(engine), url)
