"""runner's own known_hosts (``$RUNNER_HOME/known_hosts``), the only host keys the git step's ssh accepts:
GitHub's published keys, which ``runner setup`` writes into it, and ``runner known-hosts add HOST[:PORT]``,
which fetches a host's keys, shows their fingerprints and adds them once the operator confirms.

Lines are written unhashed: the hosts are named in the pipeline files anyway, and an operator can read the
file and remove a line from it (``ssh-keygen -R``). Lines already there, hashed or not, are never dropped.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from runner.arguments import global_options

if TYPE_CHECKING:
    from runner.arguments import Commands
    from runner.config import Config

# github.com's host keys as GitHub publishes them (docs.github.com, "GitHub's SSH key fingerprints"), with
# the SHA256 fingerprints it lists for them (the RSA key is the one that replaced the old one in 2023-03):
#   SHA256:+DiY3wvvV6TuJJhbpZisF/zLDA0zPMSvHdkr4UvCOqU (Ed25519)
#   SHA256:p2QAMXNIC1TJYWeIOttrVc98/R1BUFWu3/LiyKgUfQM (ECDSA)
#   SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s (RSA)
GITHUB_FINGERPRINTS = (
    "SHA256:+DiY3wvvV6TuJJhbpZisF/zLDA0zPMSvHdkr4UvCOqU",
    "SHA256:p2QAMXNIC1TJYWeIOttrVc98/R1BUFWu3/LiyKgUfQM",
    "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s",
)
GITHUB_KEYS = (
    "github.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
    "github.com ecdsa-sha2-nistp256 "
    "AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBEmKSENjQEezOmxkZMy7opKgwFB9nkt5YRrYMjNuG5N8"
    "7uRgg6CLrbo5wAdT/y6v0mKV0U2w0WZ2YB/++Tpockg=",
    "github.com ssh-rsa "
    "AAAAB3NzaC1yc2EAAAADAQABAAABgQCj7ndNxQowgcQnjshcLrqPEiiphnt+VTTvDP6mHBL9j1aNUkY4Ue1gvwnGLVlOhGeY"
    "rnZaMgRK6+PKCUXaDbC7qtbW8gIkhL7aGCsOr/C56SJMy/BCZfxd1nWzAOxSDPgVsmerOBYfNqltV9/hWCqBywINIR+5dIg6"
    "JTJ72pcEpEjcYgXkE2YEFXV1JHnsKgbLWNlhScqb2UmyRkQyytRLtL+38TGxkxCflmO+5Z8CSSNY7GidjMIZ7Q4zMjA2n1nG"
    "rlTDkzwDCsw+wqFPGQA179cnfGWOWRVruj16z6XyvxvjJwbz0wQZ75XK5tKSb7FNyeIEs4TT4jk+S4dhPeAUC5y+bDYirYgM"
    "4GC7uEnztnZyaVWQ7B381AK4Qdrwt51ZqExKbQpTUNn+EjqoTwvqNj4kqx5QUCI0ThS/YkOxJCXmPUWZbhjpCg56i+2aB6Cm"
    "K2JGhn57K5mj0MNdBXA4/WnwH6XoPWJzK5Nyu2zB3nAZp+S5hpQs+p1vN1/wsjk=",
)
# A host name or address as ssh-keyscan takes it: never an option.
_HOST = re.compile(r"^(?!-)[A-Za-z0-9_.:-]+$")
SCAN_TIMEOUT = 10


class KnownHostsError(Exception):
    """A host's keys cannot be added; the message says why and what to do."""


def _key(line: str) -> tuple[str, ...] | None:
    """What makes a line the same entry as another (hosts, type, key), without its comment."""
    words = line.split()
    if not words or words[0].startswith("#") or len(words) < 3:
        return None
    return tuple(words[:3])


def merge(existing: str, lines: Iterable[str]) -> str | None:
    """``existing`` with the ``lines`` it lacks appended, every line of it kept; None when none lacks."""
    have = {_key(line) for line in existing.splitlines()}
    missing = [line for line in lines if _key(line) not in have]
    if not missing:
        return None
    text = existing if not existing or existing.endswith("\n") else existing + "\n"
    return text + "".join(line + "\n" for line in missing)


def parse_target(text: str) -> tuple[str, int]:
    """HOST, HOST:PORT, [HOST]:PORT (an IPv6 address with a port) or an IPv6 address alone."""
    host, port = text, 22
    bracketed = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", text)
    if bracketed:
        host, port = bracketed[1], int(bracketed[2] or 22)
    elif text.count(":") == 1:
        host, _, given = text.partition(":")
        if not given.isdigit():
            raise KnownHostsError(f"{text!r}: the port after ':' must be a number")
        port = int(given)
    if not _HOST.match(host) or not 0 < port < 65536:
        raise KnownHostsError(f"{text!r} is not HOST or HOST:PORT (e.g. github.com, git.example.com:2222)")
    return host, port


def entry(host: str, port: int) -> str:
    """How known_hosts names a host: ``host``, or ``[host]:port`` for a port other than 22."""
    return host if port == 22 else f"[{host}]:{port}"


def scan(host: str, port: int) -> list[str]:
    """The host's keys, as known_hosts lines, from ssh-keyscan."""
    try:
        done = subprocess.run(
            ["ssh-keyscan", "-T", str(SCAN_TIMEOUT), "-p", str(port), "--", host],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=SCAN_TIMEOUT * 3,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KnownHostsError(f"ssh-keyscan could not run: {exc}") from None
    lines = [line for line in done.stdout.splitlines() if _key(line)]
    if not lines:
        said = "; ".join(line for line in done.stderr.splitlines() if not line.startswith("#"))
        raise KnownHostsError(f"no host key from {entry(host, port)}: {said or 'nothing answered'}")
    return sorted(lines)


def fingerprints(lines: Sequence[str]) -> list[str]:
    """``ssh-keygen -l``'s line for each key: bits, SHA256 fingerprint, host, type."""
    done = subprocess.run(
        ["ssh-keygen", "-l", "-f", "-"],
        input="".join(line + "\n" for line in lines),
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise KnownHostsError(f"ssh-keygen cannot read the keys: {done.stderr.strip()}")
    return done.stdout.splitlines()


def known_keys(path: Path, host: str, port: int) -> set[tuple[str, str]]:
    """The (type, key) pairs the file holds for the host, hashed lines included (``ssh-keygen -F``)."""
    if not path.is_file():
        return set()
    done = subprocess.run(
        ["ssh-keygen", "-F", entry(host, port), "-f", str(path)], capture_output=True, text=True
    )
    pairs = set()
    for line in done.stdout.splitlines():
        words = line.split()
        if len(words) >= 3 and not words[0].startswith("#"):
            pairs.add((words[1], words[2]))
    return pairs


def write(path: Path, text: str) -> None:
    """Replace the file with ``text`` at once (a git step reading it sees the old or the new one)."""
    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o644
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.write(fd, text.encode())
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)


def _confirm(yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise KnownHostsError(
            "not added: there is no terminal to confirm on; compare the fingerprints above with the ones "
            "the host's operator publishes, then run again with --yes"
        )
    answer = input("Do these fingerprints match the ones the host's operator publishes? [y/N] ")
    if answer.strip().lower() not in ("y", "yes"):
        raise KnownHostsError("not added")


def add(config: Config, target: str, yes: bool) -> str:
    host, port = parse_target(target)
    path = config.known_hosts
    lines = scan(host, port)
    for line in fingerprints(lines):
        print(line)
    scanned = {(line.split()[1], line.split()[2]) for line in lines}
    other = known_keys(path, host, port) - scanned
    if other:
        raise KnownHostsError(
            f"{path} already holds other keys for {entry(host, port)}: the host's key changed, or someone is "
            f"in between. If the host's operator confirms the new key, `ssh-keygen -R '{entry(host, port)}' "
            f"-f {path}` and add it again"
        )
    existing = path.read_text() if path.is_file() else ""
    merged = merge(existing, lines)
    if merged is None:
        return f"{path} already holds these keys of {entry(host, port)}"
    _confirm(yes)
    path.parent.mkdir(parents=True, exist_ok=True)
    write(path, merged)
    added = len(merged.splitlines()) - len(existing.splitlines())
    return f"added {added} key(s) of {entry(host, port)} to {path}"


def listing(config: Config) -> list[str]:
    path = config.known_hosts
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if _key(line)]
    return fingerprints(lines) if lines else []


def cmd_known_hosts(config: Config, args: argparse.Namespace) -> None:
    try:
        if args.known_hosts_command == "add":
            print(add(config, args.host, args.yes))
        else:
            found = listing(config)
            for line in found:
                print(line)
            if not found:
                print(f"{config.known_hosts} holds no host keys", file=sys.stderr)
    except KnownHostsError as exc:
        print(f"runner: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


def add_commands(commands: Commands) -> None:
    """``runner known-hosts add|list``."""
    known = commands.add("known-hosts", cmd_known_hosts, "the ssh host keys git may connect to (known_hosts)")
    actions = known.add_subparsers(dest="known_hosts_command", required=True, metavar="ACTION")
    adding = actions.add_parser(
        "add", help="fetch a host's keys, show their fingerprints, add them once confirmed"
    )
    adding.add_argument("host", help="HOST or HOST:PORT, e.g. git.example.com:2222")
    adding.add_argument("--yes", action="store_true", help="add without asking (fingerprints checked)")
    listed = actions.add_parser("list", help="the keys known_hosts holds, with their fingerprints")
    for sub in (adding, listed):
        global_options(sub)
