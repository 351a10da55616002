"""The ``runner`` command's entry point: what has to happen before the command's modules are imported.

``runner work`` imports asyncio and hashlib without OpenSSL. asyncio imports ``ssl`` as it is imported, for
its TLS transports, and hashlib imports ``_hashlib``, OpenSSL's hashes (SQLAlchemy imports hashlib): either
maps OpenSSL's libraries, about 4 MB resident, and the worker uses neither. It makes no TLS connection
through asyncio, and what it hashes (SQLAlchemy's md5 of a long name, smtplib's CRAM-MD5, urllib's digest
authentication) hashlib's own implementations do; where a Python has too few of its own, it takes OpenSSL's.
GitHub's API, the webhook notifications and the health checks' URLs go through urllib and http.client, and
e-mail through smtplib, in threads; those modules import ``ssl`` themselves when they are first used, which
still works: only asyncio's reference to ``ssl`` stays empty, and hashlib keeps its own implementations, in
this process alone. ``runner up`` and ``runner serve`` import both as usual (Hypercorn needs TLS; the
server's HMAC of every delivery is OpenSSL's, faster).
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
    if any(name in sys.modules for name in ("ssl", "asyncio", "_hashlib", "hashlib", "hmac")):
        return  # too late to matter
    blocked = ("ssl", "_hashlib") if has_own_hashes() else ("ssl",)
    # A None in sys.modules makes an import raise ImportError, which asyncio and hashlib expect.
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        import asyncio  # noqa: F401
        import hashlib  # noqa: F401

        # hmac would import _hashlib itself.
        import hmac  # noqa: F401
    finally:
        for name in blocked:
            del sys.modules[name]


def has_own_hashes() -> bool:
    """Whether this Python has md5, sha1 and sha256 of its own, not only OpenSSL's (a build may leave them
    out): what the worker hashes needs them."""
    from importlib.util import find_spec

    def found(name: str) -> bool:
        return find_spec(name) is not None

    return found("_md5") and found("_sha1") and (found("_sha256") or found("_sha2"))


def main() -> int:
    if command(sys.argv[1:]) == "work":
        import_without_openssl()
    from runner.cli import main as cli_main

    return cli_main()
