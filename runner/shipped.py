"""The files runner ships beside its code: schema, migrations, nginx templates, packaging.

In the checkout they are the top-level ``schema/``, ``migrations/``, ``templates/nginx/`` and ``packaging/``;
a wheel carries them as ``runner/_shipped/...`` (pyproject.toml maps them at build time). Both are read
through importlib.resources, so an editable install, a checkout and an installed wheel find the same files.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

import runner

SCHEMA = "schema/pipeline.schema.json"
MIGRATIONS = "migrations"
NGINX_TEMPLATES = "templates/nginx"
PACKAGING = "packaging"
DISTRIBUTION = "runner"


@functools.cache
def root() -> Path:
    """The directory that holds schema/, migrations/, templates/ and packaging/."""
    package = resources.files(runner)
    # Alembic reads a directory and setup copies files: runner must not be imported from a zip.
    if not isinstance(package, Path):
        raise RuntimeError(f"runner must be installed as files, not inside an archive ({package})")
    installed = package / "_shipped"
    if installed.is_dir():
        return installed
    # A checkout or an editable install: the package sits beside the top-level directories.
    return package.parent


def path(name: str) -> Path:
    """One shipped file or directory, by its path relative to the checkout's root (e.g. ``schema/...``)."""
    return root() / name


def version() -> str:
    """The installed distribution's version, else the package's own (a checkout run without installing)."""
    # Here, not at the top: it reads the distribution's METADATA with the email package, for --version only.
    from importlib import metadata

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return runner.__version__
