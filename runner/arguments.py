"""The ``runner`` command's parser: the options every command takes, and a parser for each command."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runner.config import Config

    Handler = Callable[[Config, argparse.Namespace], None]

LIMIT_HELP = "how many to list, newest first: a positive number (default: 20)"
ALL_SERVERS_HELP = "every server's that shares the database, with a server column (default: this server's)"


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return int(text)


def global_options(parser: argparse.ArgumentParser, top: bool = False) -> None:
    """--home and -v, on the top-level parser and again on each command's: accepted before or after the
    command. A command's own have no default, so that they override the top-level ones only when given."""
    home, verbose = (None, False) if top else (argparse.SUPPRESS, argparse.SUPPRESS)
    parser.add_argument(
        "--home", type=Path, default=home, help="the runner's directory (default: $RUNNER_HOME or .)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", default=verbose, help="log debugging detail")


class _Version(argparse.Action):
    """``--version``: the version read when asked for, not each time the parser is built (see shipped)."""

    def __init__(
        self, option_strings: list[str], dest: str, version: Callable[[], str], **kwargs: Any
    ) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)
        self.version = version

    def __call__(self, parser: argparse.ArgumentParser, *_args: Any) -> None:
        # On stdout, as argparse's own version action prints it.
        print(self.version())
        parser.exit()


def top_parser(version: Callable[[], str]) -> tuple[argparse.ArgumentParser, Commands]:
    """The ``runner`` parser, with the global options and ``--version``; and what its commands go into."""
    parser = argparse.ArgumentParser(
        prog="runner", description="A declarative deployment runner driven by GitHub webhooks."
    )
    global_options(parser, top=True)
    parser.add_argument(
        "--version", action=_Version, version=version, help="show program's version number and exit"
    )
    return parser, Commands(parser)


class Commands:
    """The commands' parsers, each with its handler, its help (also its description), the global options."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(self, name: str, handler: Handler, help: str) -> argparse.ArgumentParser:
        sub = self.subparsers.add_parser(name, help=help, description=help)
        sub.set_defaults(handler=handler)
        global_options(sub)
        return sub
