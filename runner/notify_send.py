"""One attempt at sending a notification: a webhook's POST (its URL from the pipeline, or read from its file
now), or an e-mail through the SMTP server; each within a timeout, and failing with a SendError whose
message never holds the URL (a chat webhook's URL is a credential)."""

from __future__ import annotations

import json
import smtplib
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from email.message import EmailMessage
from http.client import HTTPException
from pathlib import Path
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


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A webhook that answers with a redirect failed: its URL's secret must not be carried elsewhere."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect())


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
    try:
        with _OPENER.open(request, timeout=timeout) as answer:
            answer.read(ANSWER_LIMIT)
    except urllib.error.HTTPError as exc:
        raise SendError(f"the webhook answered HTTP {exc.code} {plain(str(exc.reason))[:100]}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TimeoutError | socket.timeout):
            raise SendError(f"no answer from the webhook within {timeout:.0f} s") from None
        said = reason.strerror if isinstance(reason, OSError) and reason.strerror else str(reason)
        raise SendError(f"cannot reach the webhook: {plain(str(said))}") from None
    except TimeoutError:
        raise SendError(f"no answer from the webhook within {timeout:.0f} s") from None
    except (OSError, HTTPException, ValueError) as exc:
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
    try:
        password = password_file.read_text().strip() if password_file and server.username else None
    except OSError as exc:
        raise SendError(f"cannot read RUNNER_SMTP_PASSWORD_FILE {password_file}: {exc.strerror}") from None
    context = ssl.create_default_context()
    try:
        if server.scheme == "smtps":
            client: smtplib.SMTP = smtplib.SMTP_SSL(
                server.host, server.port, timeout=timeout, context=context
            )
        else:
            client = smtplib.SMTP(server.host, server.port, timeout=timeout)
        with client:
            if server.starttls:
                client.starttls(context=context)
            if server.username and password is not None:
                client.login(server.username, password)
            client.send_message(mail)
    except TimeoutError:
        raise SendError(f"no answer from {server.host}:{server.port} within {timeout:.0f} s") from None
    except smtplib.SMTPException as exc:
        raise SendError(f"SMTP {server.host}:{server.port}: {plain(str(exc))[:300]}") from None
    except OSError as exc:
        raise SendError(f"SMTP {server.host}:{server.port}: {exc.strerror or type(exc).__name__}") from None
