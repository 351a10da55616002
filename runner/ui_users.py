"""The status page's users file and ``runner ui-user add|remove|list``, which manage it.

One ``NAME:BCRYPT_HASH`` line per user (runner/ui_auth.py reads it). Each change rewrites the whole file
atomically (a new file, fsynced, renamed over the old one) under a lock of its directory, so that the web
never reads half a file and two commands at once lose neither's change. It holds hashes only: mode 0640.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import getpass
import os
import sys
import unicodedata
from collections.abc import Iterator
from pathlib import Path

from runner.arguments import Commands, global_options
from runner.config import Config

BCRYPT_COST = 12
# bcrypt reads no further: a longer password would be cut without a word.
MAX_PASSWORD_BYTES = 72
MAX_NAME_LENGTH = 64
FILE_MODE = 0o640


class UsersError(Exception):
    """A ui-user command cannot do what it was asked; the message says why."""


def check_name(name: str) -> str:
    """``name`` if it can be a user's name: what HTTP Basic and the file's lines can carry unchanged."""
    if not name or len(name) > MAX_NAME_LENGTH:
        raise UsersError(f"a user name is 1 to {MAX_NAME_LENGTH} characters, not {len(name)}")
    bad = [c for c in name if c == ":" or c.isspace() or unicodedata.category(c).startswith("C")]
    if bad:
        raise UsersError(
            f"the user name {name!r} holds {bad[0]!r}: no ':', white space or control characters"
        )
    return name


def check_password(password: str) -> bytes:
    encoded = password.encode()
    if not encoded:
        raise UsersError("the password is empty")
    if len(encoded) > MAX_PASSWORD_BYTES:
        raise UsersError(f"the password is {len(encoded)} bytes: bcrypt takes {MAX_PASSWORD_BYTES} at most")
    return encoded


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """The users file's directory, locked against another ui-user command (a lock of its own file would
    be lost with the file each rename replaces)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise UsersError(f"cannot read {path}: {exc.strerror}") from None


def _write(path: Path, lines: list[str]) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = "".join(line + "\n" for line in lines).encode()
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)  # whatever the umask says
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
        directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise UsersError(f"cannot write {path}: {exc.strerror}") from None


def _name_of(line: str) -> str | None:
    name, colon, _ = line.partition(":")
    return name if colon and not line.lstrip().startswith("#") else None


def add_user(path: Path, name: str, password: str, cost: int = BCRYPT_COST) -> bool:
    """Add user ``name``, or give it a new password; True if it was there before."""
    check_name(name)
    import bcrypt  # here: every command builds the parser that names this module

    hashed = bcrypt.hashpw(check_password(password), bcrypt.gensalt(cost)).decode()
    if not path.parent.is_dir():
        raise UsersError(f"cannot write {path}: {path.parent} is not a directory")
    with _locked(path.parent):
        lines = read_lines(path)
        kept = [line for line in lines if _name_of(line) != name]
        _write(path, [*kept, f"{name}:{hashed}"])
    return len(kept) != len(lines)


def remove_user(path: Path, name: str) -> None:
    with _locked(path.parent) if path.parent.is_dir() else contextlib.nullcontext():
        lines = read_lines(path)
        kept = [line for line in lines if _name_of(line) != name]
        if len(kept) == len(lines):
            raise UsersError(f"there is no user {name!r} in {path}")
        _write(path, kept)


def list_users(path: Path) -> list[str]:
    # Here, not at the top: every command's parser imports this module, and the worker has no use for
    # ui_auth's hashing and rate limits (hashlib links OpenSSL's libcrypto).
    from runner.ui_auth import parse_users

    return list(parse_users("\n".join(read_lines(path))))


def read_password(from_stdin: bool) -> str:
    """The new password: stdin's first line with ``--password-stdin``, else asked for twice."""
    if from_stdin:
        return sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    try:
        first = getpass.getpass("Password: ")
        second = getpass.getpass("Password again: ")
    except EOFError:
        raise UsersError("no password given (use --password-stdin to pipe one in)") from None
    if first != second:
        raise UsersError("the two passwords differ: nothing changed")
    return first


def cmd_ui_user(config: Config, args: argparse.Namespace) -> None:
    path = config.ui_users
    if args.ui_user_command == "add":
        name = check_name(args.name)
        replaced = add_user(path, name, read_password(args.password_stdin))
        print(f"{'changed the password of' if replaced else 'added'} {name} in {path}")
    elif args.ui_user_command == "remove":
        remove_user(path, args.name)
        print(f"removed {args.name} from {path}")
    else:
        for name in list_users(path):
            print(name)


def add_commands(commands: Commands) -> None:
    """``runner ui-user add|remove|list``."""
    ui_user = commands.add("ui-user", cmd_ui_user, "manage the status page's users ($RUNNER_UI_USERS_FILE)")
    actions = ui_user.add_subparsers(dest="ui_user_command", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="add a user, or change a user's password (asked for twice)")
    add.add_argument("name")
    add.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin's first line"
    )
    remove = actions.add_parser("remove", help="remove a user")
    remove.add_argument("name")
    listing = actions.add_parser("list", help="list the users' names")
    for sub in (add, remove, listing):
        global_options(sub)
