"""The ``runner`` command's entry point: what has to happen before the command's modules are imported.

``runner work`` imports asyncio without ``ssl``. asyncio imports ``ssl`` as it is imported, for its TLS
transports (OpenSSL's libraries, about 4 MB resident), and the worker never uses them: it makes no TLS
connection through asyncio. GitHub's API, the webhook notifications and the health checks' URLs go through
urllib and http.client, and e-mail through smtplib, in threads; those modules import ``ssl`` themselves when
they are first used, which still works: only asyncio's own reference to it stays empty, in this process
alone. ``runner up`` and ``runner serve`` import asyncio as usual (Hypercorn needs its TLS support).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def command(argv: Sequence[str]) -> str | None:
    """The command that ``argv`` names, read past the global options as the real parser reads them."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--home")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("command", nargs="?")
    try:
        known, _ = parser.parse_known_args(argv)
    except SystemExit:
        return None  # the real parser says what is wrong
    return known.command


def import_asyncio_without_ssl() -> None:
    """Import asyncio while ``import ssl`` fails (asyncio then leaves its TLS support out), and let later
    imports of ``ssl`` work."""
    if "ssl" in sys.modules or "asyncio" in sys.modules:
        return  # too late to matter
    # A None in sys.modules makes ``import ssl`` raise ImportError, which asyncio's modules expect.
    sys.modules["ssl"] = None  # type: ignore[assignment]
    try:
        import asyncio  # noqa: F401
    finally:
        del sys.modules["ssl"]


def main() -> int:
    if command(sys.argv[1:]) == "work":
        import_asyncio_without_ssl()
    from runner.cli import main as cli_main

    return cli_main()
