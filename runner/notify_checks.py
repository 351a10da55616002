"""A pipeline's ``notify:`` targets: what the schema cannot say of them, the targets as the model holds them,
and what ``runner validate`` warns of (a webhook file missing or readable by others, e-mail with no SMTP)."""

from __future__ import annotations

import ipaddress
import os
import stat
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from runner.pipeline import DEFAULT_NOTIFY_ON, NotifyTarget, Pipeline
from runner.validation import Checked, Document

KINDS = ("webhook", "webhook-file", "email")


def _loopback(host: str | None) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def webhook_url_problem(url: str) -> str | None:
    """Why ``url`` may not receive messages, or None. The problem never repeats the URL: it may be a
    credential (read from a webhook file)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        return "is not a URL"
    if parts.scheme not in ("https", "http") or not parts.hostname or any(c.isspace() for c in url):
        return "must be an https:// URL (http:// only on a loopback address)"
    if parts.scheme == "http" and not _loopback(parts.hostname):
        return "must be https://: http:// only on a loopback address (the URL is a credential)"
    return None


def check_notify(doc: Document) -> None:
    """Each target has exactly one of webhook, webhook-file or email; format only with a webhook; a
    webhook's URL is https (http on loopback only)."""
    targets = doc.data.get("notify")
    if not isinstance(targets, list):
        return
    for index, target in enumerate(targets):
        if not isinstance(target, dict):
            continue
        where = ("notify", index)
        kinds = [kind for kind in KINDS if kind in target]
        if not kinds:
            doc.check(where, "a target needs one of webhook, webhook-file or email")
        elif len(kinds) > 1:
            doc.check(
                (*where, kinds[1]),
                f"a target has one of webhook, webhook-file or email, not {' and '.join(kinds)}",
            )
        elif kinds == ["email"] and "format" in target:
            doc.check((*where, "format"), "format is a webhook's: an e-mail is plain text")
        url = target.get("webhook")
        if isinstance(url, str) and (*where, "webhook") not in doc.flagged:
            doc.check((*where, "webhook"), webhook_url_problem(url))


def notify_targets(doc: Document | Checked, home: Path) -> tuple[NotifyTarget, ...]:
    """The model's targets of a checked document; a relative webhook file is under RUNNER_HOME."""
    targets = []
    for index, target in enumerate(doc.data.get("notify") or []):
        on = tuple(target.get("on", DEFAULT_NOTIFY_ON))
        line = doc.position(("notify", index))[0]
        email: Any = target.get("email")
        if email is not None:
            addresses = (email,) if isinstance(email, str) else tuple(email)
            targets.append(NotifyTarget("email", on, addresses=addresses, line=line))
            continue
        file = target.get("webhook-file")
        targets.append(
            NotifyTarget(
                "webhook" if file is None else "webhook-file",
                on,
                url=target.get("webhook"),
                file=None if file is None else Path(os.path.abspath(home / file)),
                format=target.get("format", "json"),
                line=line,
            )
        )
    return tuple(targets)


def notify_warnings(pipeline: Pipeline, smtp_configured: bool) -> list[str]:
    """What may keep a valid pipeline's messages from going out, each as ``path:line: warning: ...``."""
    warnings = []
    for target in pipeline.notify:
        said = None
        if target.kind == "email" and not smtp_configured:
            said = (
                "notify: e-mail needs RUNNER_SMTP_URL (the SMTP server): none is set, nothing would be sent"
            )
        elif target.kind == "webhook-file" and target.file is not None:
            said = _file_warning(target.file)
        if said:
            warnings.append(f"{pipeline.path}:{target.line}: warning: {said}")
    return warnings


def _file_warning(path: Path) -> str | None:
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        return f"notify: webhook-file {path}: {exc.strerror}: nothing would be sent"
    if mode & stat.S_IROTH:
        return f"notify: webhook-file {path} is readable by others: the URL is a credential; chmod o-r {path}"
    return None
