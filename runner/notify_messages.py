"""What a notification says: the facts of a run's end, and the message built from them per format (Slack,
Discord, JSON, e-mail). Pure: no file, network or database.

Every value from an event or a log is made inert for where it goes: Slack's control characters (&, <, >)
escaped as Slack documents, Discord's mentions turned off (``allowed_mentions``), control characters gone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

SHORT_COMMIT = 7
# Discord refuses a longer content.
DISCORD_LIMIT = 2000
SUBJECT_LIMIT = 200
# How a message says what happened, by event.
HEADLINES = {"failure": "failed", "recovery": "recovered", "success": "succeeded"}

# ANSI escape sequences (colours, cursor moves) first, then any other control character but the tab.
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b.")
_CONTROLS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


def plain(text: str) -> str:
    """``text`` on one line with no control characters (nor escape sequences)."""
    return _CONTROLS.sub("", _ESCAPES.sub("", text)).strip()


def subject_of(event: Mapping[str, Any] | None) -> str | None:
    """The head commit's subject (its message's first line), from a push event's payload."""
    head = event.get("head_commit") if isinstance(event, Mapping) else None
    message = head.get("message") if isinstance(head, Mapping) else None
    if not isinstance(message, str) or not message.strip():
        return None
    return plain(message.strip().splitlines()[0])[:SUBJECT_LIMIT] or None


@dataclass(frozen=True)
class Facts:
    """What a message names: this is also the JSON format's object (see the README)."""

    pipeline: str
    server: str
    run: int
    # failed, succeeded
    status: str
    # failure, recovery, success
    event: str
    commit: str | None
    subject: str | None
    ref: str | None
    # The step that failed ("2 (deploy)"), and the run's last log lines.
    step: str | None
    log_tail: list[str]
    url: str | None


def _headline(facts: Facts) -> str:
    return f"{facts.pipeline} {HEADLINES.get(facts.event, facts.event)} on {facts.server}"


def _lines(facts: Facts) -> list[str]:
    """The message's lines, before any format's escaping."""
    lines = [f"run {facts.run}: {_headline(facts)}"]
    commit = facts.commit[:SHORT_COMMIT] if facts.commit else None
    if commit or facts.subject:
        lines.append("commit: " + " ".join(part for part in (commit, facts.subject) if part))
    if facts.ref:
        lines.append(f"ref: {facts.ref}")
    if facts.step:
        lines.append(f"failed step: {facts.step}")
    return lines


def text_body(facts: Facts) -> str:
    """The e-mail's plain text."""
    lines = _lines(facts)
    if facts.log_tail:
        lines += ["", "last log lines:", *(f"  {line}" for line in facts.log_tail)]
    if facts.url:
        lines += ["", facts.url]
    return "\n".join(lines) + "\n"


def email_subject(facts: Facts) -> str:
    """``[runner] PIPELINE failed: SUBJECT``: one line, whatever the commit's message held."""
    said = f"[runner] {facts.pipeline} {HEADLINES.get(facts.event, facts.event)}"
    return plain(f"{said}: {facts.subject}" if facts.subject else said)


def _slack_escaped(text: str) -> str:
    # Slack's documented escaping: these three only, & first.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _fenced(lines: list[str]) -> str:
    # A ``` in a line would end the block early: made inert with a zero-width space.
    return "```\n" + "\n".join(line.replace("```", "`\u200b``") for line in lines) + "\n```"


def slack(facts: Facts) -> dict[str, Any]:
    """A Slack incoming webhook's body: ``{"text": ...}`` in mrkdwn."""
    lines = [_slack_escaped(line) for line in _lines(facts)]
    lines[0] = f"*{lines[0]}*"
    if facts.log_tail:
        lines.append(_fenced([_slack_escaped(line) for line in facts.log_tail]))
    if facts.url:
        # The URL is runner's own (RUNNER_PUBLIC_URL); escaped all the same, as Slack asks of link text.
        lines.append(f"<{_slack_escaped(facts.url)}|run {facts.run}>")
    return {"text": "\n".join(lines)}


# Discord's markdown takes a backslash before any punctuation as the character itself.
_DISCORD_MARKUP = re.compile(r"([\\*_~`|\[\]()<>#@:])")


def discord(facts: Facts) -> dict[str, Any]:
    """A Discord webhook's body: ``{"content": ...}`` within Discord's 2000 characters, with every mention
    off, so that a commit message's @everyone pings nobody, and its markdown (a masked link) escaped."""
    head = [_DISCORD_MARKUP.sub(r"\\\1", line) for line in _lines(facts)]
    head[0] = f"**{head[0]}**"
    link = [f"<{facts.url}>"] if facts.url else []
    tail = list(facts.log_tail)
    while True:
        content = "\n".join(head + ([_fenced(tail)] if tail else []) + link)
        if len(content) <= DISCORD_LIMIT or not tail:
            break
        tail.pop(0)  # the oldest line first: the last lines say why it failed
    if len(content) > DISCORD_LIMIT:
        content = content[: DISCORD_LIMIT - 1] + "…"
    return {"content": content, "allowed_mentions": {"parse": []}}


def json_object(facts: Facts) -> dict[str, Any]:
    """The json format: the facts as an object (keys in the README)."""
    return asdict(facts)


def webhook_body(format: str, facts: Facts) -> dict[str, Any]:
    if format == "slack":
        return slack(facts)
    if format == "discord":
        return discord(facts)
    return json_object(facts)


def email_message(facts: Facts) -> dict[str, Any]:
    """What an e-mail holds, as a row keeps it: subject and text (the addresses are the target's)."""
    return {"subject": email_subject(facts), "text": text_body(facts)}
