"""One attempt at sending a notification: a webhook's POST (its URL from the pipeline, or read from its file
now), or an e-mail through the SMTP server; each within a timeout, and failing with a SendError whose
message never holds the URL (a chat webhook's URL is a credential).

The timeout bounds the whole attempt, not each read: a socket's own timeout is per read, so a receiver
that trickles a byte a second would hold an attempt (and a thread of the notifier) for ever. An attempt's
sockets are shut down at its deadline instead, which ends any read or TLS handshake under way.
"""

from __future__ import annotations

import contextlib
import json
import smtplib
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from email.message import EmailMessage
from http.client import HTTPConnection, HTTPException, HTTPSConnection
from pathlib import Path
from types import TracebackType
from typing import Any

from runner import __version__, masking
from runner.config_values import SmtpServer
from runner.notify_checks import webhook_url_problem
from runner.notify_messages import plain
from runner.pipeline import NotifyTarget

TIMEOUT = 10.0
ANSWER_LIMIT = 64 * 1024


class SendError(Exception):
    """An attempt failed, in words that name no URL."""


class Deadline:
    """An attempt's end: at it, the sockets it watches are shut down (a read under way returns at once).

    Each socket is watched through a duplicate of its descriptor: TLS wraps, and detaches, the socket it is
    given, and the connection the duplicate refers to is the same (a shutdown is of the connection)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._end = time.monotonic() + seconds

    def __enter__(self) -> Deadline:
        self._timer.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._timer.cancel()
        with self._lock:
            for watched in self._sockets:
                watched.close()
            self._sockets.clear()

    def left(self) -> float:
        """Seconds until the deadline: a socket's own timeout (its connect's) is no longer than this."""
        return max(0.001, self._end - time.monotonic())

    def watch(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            copy = sock.dup()
            self._sockets.append(copy)
            if self.expired:
                _shut(copy)
        return sock

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for watched in self._sockets:
                _shut(watched)


def _shut(sock: socket.socket) -> None:
    # Not connected (any more): nothing to end.
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A webhook that answers with a redirect failed: its URL's secret must not be carried elsewhere."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _watched_opener(deadline: Deadline) -> urllib.request.OpenerDirector:
    """An opener whose connections' sockets ``deadline`` watches, and which follows no redirect."""

    class Watched(HTTPConnection):
        def connect(self) -> None:
            self.timeout = deadline.left()
            super().connect()
            deadline.watch(self.sock)

    # HTTPSConnection.connect wraps the socket Watched.connect made, and watches, in TLS.
    class WatchedTls(HTTPSConnection, Watched):
        pass

    class Http(urllib.request.HTTPHandler):
        def http_open(self, req: urllib.request.Request) -> Any:
            return self.do_open(Watched, req)

    class Https(urllib.request.HTTPSHandler):
        def https_open(self, req: urllib.request.Request) -> Any:
            return self.do_open(WatchedTls, req, context=ssl.create_default_context())

    return urllib.request.build_opener(_NoRedirect(), Http(), Https())


def webhook_url(target: NotifyTarget) -> str:
    """The target's URL: the pipeline's, or its file's first line, read now (a rotated URL is used); masked
    in every run's log from now on, as a chat webhook's URL is its credential."""
    if target.file is None:
        masking.PROCESS.add(target.url or "")
        return target.url or ""
    try:
        url = target.file.read_text().strip()
    except OSError as exc:
        raise SendError(f"cannot read the webhook file {target.file}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise SendError(f"the webhook file {target.file} is not UTF-8 text") from None
    problem = webhook_url_problem(url)
    if problem:
        raise SendError(f"the URL in {target.file} {problem}")
    masking.PROCESS.add(url)
    return url


def post_webhook(url: str, body: Mapping[str, Any], timeout: float = TIMEOUT) -> None:
    """POST ``body`` as JSON; any answer but 2xx, no answer within ``timeout``, is a SendError."""
    problem = webhook_url_problem(url)
    if problem:
        raise SendError(f"the webhook's URL {problem}")
    # Checked just above: https, or http on a loopback address; no other scheme.
    request = urllib.request.Request(  # noqa: S310
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": f"runner/{__version__}"},
    )
    # `from None` throughout: the exceptions and their tracebacks hold the URL.
    late = SendError(f"no answer from the webhook within {timeout:.0f} s")
    with Deadline(timeout) as deadline:
        try:
            # Opened: a 2xx, the message was taken. Its body is read (the receiver is not cut off
            # mid-answer), but not past the deadline, and how it ends does not undo the 2xx: a retry would
            # be a second message.
            opened = _watched_opener(deadline).open(request, timeout=timeout)
            with opened as answer, contextlib.suppress(OSError, HTTPException):
                answer.read(ANSWER_LIMIT)
        except urllib.error.HTTPError as exc:
            exc.close()  # its answer's connection
            raise SendError(f"the webhook answered HTTP {exc.code} {plain(str(exc.reason))[:100]}") from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if deadline.expired or isinstance(reason, TimeoutError | socket.timeout):
                raise late from None
            said = reason.strerror if isinstance(reason, OSError) and reason.strerror else str(reason)
            raise SendError(f"cannot reach the webhook: {plain(str(said))}") from None
        except TimeoutError:
            raise late from None
        except (OSError, HTTPException, ValueError) as exc:
            if deadline.expired:
                raise late from None
            raise SendError(f"the webhook's answer failed: {type(exc).__name__}") from None


def send_email(
    server: SmtpServer,
    password_file: Path | None,
    sender: str,
    addresses: Sequence[str],
    message: Mapping[str, Any],
    timeout: float = TIMEOUT,
) -> None:
    """Send a plain-text e-mail (``message``: its subject and text). EmailMessage refuses a header with a
    line break in it, so no value can add a header."""
    mail = EmailMessage()
    mail["From"] = sender
    mail["To"] = ", ".join(addresses)
    mail["Subject"] = plain(str(message.get("subject", "")))
    mail.set_content(str(message.get("text", "")))
    if server.username and password_file is None:
        raise SendError(f"RUNNER_SMTP_URL names the user {server.username}: set RUNNER_SMTP_PASSWORD_FILE")
    try:
        password = password_file.read_text().strip() if password_file and server.username else None
    except OSError as exc:
        raise SendError(f"cannot read RUNNER_SMTP_PASSWORD_FILE {password_file}: {exc.strerror}") from None
    late = SendError(f"no answer from {server.host}:{server.port} within {timeout:.0f} s")
    with Deadline(timeout) as deadline:
        try:
            _deliver(server, password, mail, deadline)
        except TimeoutError:
            raise late from None
        except smtplib.SMTPException as exc:
            if deadline.expired:
                raise late from None
            raise SendError(f"SMTP {server.host}:{server.port}: {plain(str(exc))[:300]}") from None
        except OSError as exc:
            if deadline.expired:
                raise late from None
            said = exc.strerror or type(exc).__name__
            raise SendError(f"SMTP {server.host}:{server.port}: {said}") from None


def _smtp_classes(deadline: Deadline) -> tuple[type[smtplib.SMTP], type[smtplib.SMTP_SSL]]:
    """SMTP clients whose sockets ``deadline`` watches: SMTP_SSL wraps the socket the watched class made."""

    class Watched(smtplib.SMTP):
        def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
            return deadline.watch(super()._get_socket(host, port, min(timeout, deadline.left())))

    class WatchedTls(smtplib.SMTP_SSL, Watched):
        pass

    return Watched, WatchedTls


def _deliver(server: SmtpServer, password: str | None, mail: EmailMessage, deadline: Deadline) -> None:
    """Connect, STARTTLS where required (a server that does not offer it is refused before any login), log
    in, send."""
    context = ssl.create_default_context()
    plain_class, tls_class = _smtp_classes(deadline)
    if server.scheme == "smtps":
        client: smtplib.SMTP = tls_class(server.host, server.port, timeout=deadline.seconds, context=context)
    else:
        client = plain_class(server.host, server.port, timeout=deadline.seconds)
    with client:
        if server.starttls:
            client.ehlo()
            if not client.has_extn("starttls"):
                raise SendError(
                    f"SMTP {server.host}:{server.port} does not offer STARTTLS, which smtp:// requires"
                    + (" before the password is sent" if server.username else "")
                    + ": nothing was sent"
                )
            client.starttls(context=context)
        if server.username and password is not None:
            client.login(server.username, password)
        client.send_message(mail)
