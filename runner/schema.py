"""The schema's revisions (Alembic): runner's migrations, and the revision this code needs.

SchemaError is a database that is not at that revision.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runner import shipped

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

MIGRATIONS_DIR = shipped.path(shipped.MIGRATIONS)


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


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
