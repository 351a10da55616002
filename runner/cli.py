"""The ``runner`` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from runner import config as config_module
from runner.config import Config, ConfigError

logger = logging.getLogger("runner")


class CommandError(Exception):
    """Ends the command with this message and exit status 1."""


def _run_async(main: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
    """Run ``main`` on uvloop when it is there; SIGTERM and SIGINT ask it to stop."""

    async def wrapper() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await main(stop)

    try:
        import uvloop
    except ImportError:
        asyncio.run(wrapper())
    else:
        uvloop.run(wrapper())


def _open_store(config: Config, migrate_default: bool) -> Any:
    from runner.store import SchemaError, Store

    store = Store(config.database_url)
    try:
        if migrate_default and config.uses_default_database:
            store.upgrade()
        store.check_schema()
    except SchemaError as exc:
        store.close()
        raise CommandError(str(exc)) from None
    except Exception as exc:
        from runner.store import safe_url

        store.close()
        raise CommandError(f"cannot use the database {safe_url(config.database_url)}: {exc}") from None
    return store


def _serve(config: Config, migrate_default: bool) -> None:
    from runner.queue import Queue
    from runner.web import serve

    secret = config.require_secret()
    store = _open_store(config, migrate_default)
    queue = Queue(config.main_queue_dir)
    logger.info(
        "webhook endpoint: http://%s:%d/github-webhook, queue: %s", config.host, config.port, queue.directory
    )
    try:
        _run_async(lambda stop: serve(config.host, config.port, secret, queue, store, stop))
    finally:
        queue.close()
        store.close()


def cmd_serve(config: Config, _args: argparse.Namespace) -> None:
    _serve(config, migrate_default=False)


def cmd_up(config: Config, _args: argparse.Namespace) -> None:
    _serve(config, migrate_default=True)


def cmd_db(config: Config, args: argparse.Namespace) -> None:
    from runner.store import Store, head_revision, safe_url

    store = Store(config.database_url)
    try:
        if args.db_command == "upgrade":
            store.upgrade(args.revision)
            print(f"{safe_url(config.database_url)}: at revision {store.current_revision()}")
        elif args.db_command == "downgrade":
            store.downgrade(args.revision)
            print(f"{safe_url(config.database_url)}: at revision {store.current_revision()}")
        else:
            current, head = store.current_revision(), head_revision()
            state = "up to date" if current == head else f"needs `runner db upgrade` to {head}"
            print(f"{safe_url(config.database_url)}: at revision {current} ({state})")
    finally:
        store.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runner", description="A declarative deployment runner driven by GitHub webhooks."
    )
    parser.add_argument("--home", type=Path, help="the runner's directory (default: $RUNNER_HOME or .)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debugging detail")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, handler: Callable[[Config, argparse.Namespace], None], help: str
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(handler=handler)
        return sub

    for name, handler, help in (
        ("serve", cmd_serve, "serve the webhook endpoint"),
        ("up", cmd_up, "migrate the default SQLite database if needed, then serve"),
    ):
        sub = add(name, handler, help)
        sub.add_argument("--host", help="address to listen on (default: $RUNNER_HOST or 127.0.0.1)")
        sub.add_argument("--port", type=int, help="port to listen on (default: $RUNNER_PORT or 3400)")

    db = add("db", cmd_db, "manage the database schema")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="DB_COMMAND")
    upgrade = db_commands.add_parser("upgrade", help="migrate the schema to a revision (default: the latest)")
    upgrade.add_argument("revision", nargs="?", default="head")
    downgrade = db_commands.add_parser("downgrade", help="migrate the schema back to a revision")
    downgrade.add_argument("revision", help="target revision, or 'base' for an empty database")
    db_commands.add_parser("current", help="show the schema's revision")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Alembic narrates every connection at INFO; the commands say what changed themselves.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        config = config_module.load(home=args.home)
        config = config.with_overrides(host=getattr(args, "host", None), port=getattr(args, "port", None))
        args.handler(config, args)
    except (ConfigError, CommandError) as exc:
        print(f"runner: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
