"""The ``runner`` command's entry point: what has to happen before the command's modules are imported.

``runner work`` imports asyncio and hashlib without OpenSSL. asyncio imports ``ssl`` as it is imported, for
its TLS transports, and hashlib imports ``_hashlib``, OpenSSL's hashes (SQLAlchemy imports hashlib): either
maps OpenSSL's libraries, about 4 MB resident, and the worker uses neither. It makes no TLS connection
through asyncio, and hashes nothing but what SQLAlchemy hashes now and then (a long constraint name's md5),
which hashlib's own implementations do. GitHub's API, the webhook notifications and the health checks' URLs
go through urllib and http.client, and e-mail through smtplib, in threads; those modules import ``ssl``
themselves when they are first used, which still works: only asyncio's reference to ``ssl`` stays empty,
and hashlib keeps its own implementations, in this process alone. ``runner up`` and ``runner serve`` import
both as usual (Hypercorn needs TLS; the server's HMAC of every delivery is OpenSSL's, faster).
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


def import_without_openssl() -> None:
    """Import asyncio while ``import ssl`` fails (asyncio then leaves its TLS support out), and hashlib and
    hmac while ``import _hashlib`` does (they then keep their own implementations); let later imports of
    either work."""
    if any(name in sys.modules for name in ("ssl", "asyncio", "_hashlib", "hashlib")):
        return  # too late to matter
    # A None in sys.modules makes an import raise ImportError, which asyncio and hashlib expect.
    sys.modules["ssl"] = sys.modules["_hashlib"] = None  # type: ignore[assignment]
    try:
        import asyncio  # noqa: F401
        import hashlib  # noqa: F401
        import hmac  # noqa: F401  (it would import _hashlib itself)
    finally:
        del sys.modules["ssl"], sys.modules["_hashlib"]


def main() -> int:
    if command(sys.argv[1:]) == "work":
        import_without_openssl()
    from runner.cli import main as cli_main

    return cli_main()
