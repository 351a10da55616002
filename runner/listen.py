"""The webhook endpoint's listening socket: the one systemd passes (socket activation), or runner's own."""

from __future__ import annotations

import logging
import os
import socket
import stat
from collections.abc import MutableMapping

logger = logging.getLogger("runner")

# sd_listen_fds(3): the passed descriptors start here.
LISTEN_FDS_START = 3
LISTEN_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
FAMILIES = {socket.AF_INET: "TCP", socket.AF_INET6: "TCP", socket.AF_UNIX: "Unix"}


class ListenError(Exception):
    """The socket cannot be used; the message says why."""


def listen(
    host: str, port: int, backlog: int, environ: MutableMapping[str, str] | None = None
) -> socket.socket:
    """The socket systemd passed to this process if there is one, else a new one on ``host``:``port``."""
    passed = passed_socket(os.environ if environ is None else environ)
    if passed is not None:
        return passed
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family, backlog=backlog)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ListenError(f"cannot listen on {host}:{port}: {reason}") from None
    _no_delay(sock)
    return sock


def passed_socket(environ: MutableMapping[str, str]) -> socket.socket | None:
    """The one listening stream socket systemd passed on descriptor 3, or None when none was passed.

    The variables are removed whatever they say, as sd_listen_fds(1) does: a step this process starts
    must not see them and take descriptor 3 of its own for a socket passed to it.
    """
    pid, count, names = (environ.pop(name, None) for name in LISTEN_VARIABLES)
    if count is None:
        return None
    if pid is None or not pid.isdigit() or int(pid) != os.getpid():
        # Meant for another process (a parent that did not unset them): as sd_listen_fds does, not ours.
        logger.warning("LISTEN_FDS is set for process %s, not this one (%d): ignoring it", pid, os.getpid())
        return None
    if count != "1":
        raise ListenError(
            f"systemd passed LISTEN_FDS={count!r} sockets (names: {names or 'none'}); the endpoint takes "
            "exactly one: give its .socket unit one ListenStream="
        )
    fd = LISTEN_FDS_START
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        raise ListenError(
            f"LISTEN_FDS=1, but descriptor {fd} is not open: {os.strerror(exc.errno)}"
        ) from None
    if not stat.S_ISSOCK(mode):
        raise ListenError(f"LISTEN_FDS=1, but descriptor {fd} is not a socket")
    sock = socket.socket(fileno=fd)
    kind = FAMILIES.get(sock.family)
    try:
        if kind is None or sock.type != socket.SOCK_STREAM:
            raise ListenError(
                f"descriptor {fd} from systemd is not a TCP or Unix stream socket ({sock.family.name}, "
                f"{sock.type.name}): use ListenStream= in the .socket unit"
            )
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            # What Accept=yes passes: one connection per service instance, not the endpoint's socket.
            raise ListenError(
                f"descriptor {fd} from systemd is a socket that does not listen: the .socket unit must "
                "have Accept=no"
            )
    except BaseException:
        # Not ours to close: detach, so that the descriptor stays as it came.
        sock.detach()
        raise
    # systemd passes it inheritable; runner's children (steps) must never get it. Its own server
    # processes get it by fork(), which needs no inheritable flag.
    sock.set_inheritable(False)
    if kind == "TCP":
        _no_delay(sock)
    return sock


def describe(sock: socket.socket) -> str:
    """Where ``sock`` listens, for the log: ``http://host:port`` or ``unix:path``."""
    address = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix:{address or '(unnamed)'}"
    host = f"[{address[0]}]" if sock.family == socket.AF_INET6 else address[0]
    return f"http://{host}:{address[1]}"


def _no_delay(sock: socket.socket) -> None:
    # Accepted connections inherit it: an answer goes out at once, not after Nagle's delay.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
