"""The fake GitHub's webhooks and their deliveries: a repository's or an organisation's, listed newest
first with cursor pagination, each fetched with its request's headers and payload, redelivered on demand."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

from fake_github_base import NOT_FOUND, Base, Call, Reply, iso

# What a listing gives of each delivery (GET .../deliveries/{id} adds url, request and response).
SUMMARY = (
    "id",
    "guid",
    "delivered_at",
    "redelivery",
    "duration",
    "status",
    "status_code",
    "event",
    "action",
    "installation_id",
    "repository_id",
    "throttled_at",
)


@dataclass
class Hook:
    kind: str  # "repository" or "organization"
    name: str  # owner/name, or the organisation's login
    id: int
    # Where a redelivery is POSTed, signed with ``secret``; None: redeliveries fail to connect.
    url: str | None = None
    secret: str | None = None
    # Full records (as GET .../deliveries/{id} gives them), oldest first.
    deliveries: list[dict[str, Any]] = field(default_factory=list)


def delivery_headers(
    hook: Hook, event: str, guid: str, payload: dict[str, Any], body: bytes
) -> dict[str, str]:
    """The headers GitHub sends with a delivery of ``body``."""
    target = payload.get("repository" if hook.kind == "repository" else "organization") or {}
    headers = {
        "Accept": "*/*",
        "content-type": "application/json",
        "User-Agent": "GitHub-Hookshot/b8c71d8",
        "X-GitHub-Delivery": guid,
        "X-GitHub-Event": event,
        "X-GitHub-Hook-ID": str(hook.id),
        "X-GitHub-Hook-Installation-Target-ID": str(target.get("id", "")),
        "X-GitHub-Hook-Installation-Target-Type": hook.kind,
    }
    if hook.secret:
        key = hook.secret.encode()
        headers["X-Hub-Signature"] = "sha1=" + hmac.new(key, body, hashlib.sha1).hexdigest()
        headers["X-Hub-Signature-256"] = "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()
    return headers


class Hooks(Base):
    def __init__(self, **clock: Any) -> None:
        super().__init__(**clock)
        # (repository or organisation in lower case, hook id) -> the hook.
        self.hooks: dict[tuple[str, int], Hook] = {}
        self._redeliveries: list[threading.Thread] = []

    def add_hook(self, name: str, hook_id: int, *, url: str | None = None, secret: str | None = None) -> Hook:
        """A repository's hook (``name`` is owner/name) or an organisation's (``name`` is its login)."""
        with self.lock:
            hook = Hook("repository" if "/" in name else "organization", name, hook_id, url, secret)
            self.hooks[(name.lower(), hook_id)] = hook
            return hook

    def add_delivery(
        self,
        hook: Hook,
        event: str,
        payload: dict[str, Any],
        *,
        status_code: int = 200,
        status: str | None = None,
        guid: str | None = None,
        delivered_at: float | None = None,
        redelivery: bool = False,
    ) -> dict[str, Any]:
        """A delivery GitHub made of ``payload`` (with the body ``json.dumps(payload)``), and how the
        receiver answered it: ``status_code``, and GitHub's ``status`` text (e.g. "failed to connect")."""
        guid = guid or str(uuid.uuid4())
        headers = delivery_headers(hook, event, guid, payload, json.dumps(payload).encode())
        with self.lock:
            record = {
                "id": self.next_id(),
                "guid": guid,
                "delivered_at": iso(self.now() if delivered_at is None else delivered_at),
                "redelivery": redelivery,
                "duration": 0.27,
                "status": status
                or ("OK" if 200 <= status_code < 300 else f"Invalid HTTP Response: {status_code}"),
                "status_code": status_code,
                "event": event,
                "action": payload.get("action"),
                "installation_id": (payload.get("installation") or {}).get("id"),
                "repository_id": (payload.get("repository") or {}).get("id"),
                "throttled_at": None,
                "url": hook.url or "https://example.com/webhook",
                "request": {"headers": headers, "payload": payload},
                "response": {"headers": {"Content-Type": "text/plain"}, "payload": ""},
            }
            hook.deliveries.append(record)
            return record

    def settle(self) -> None:
        """Wait for the redeliveries under way."""
        for thread in list(self._redeliveries):
            thread.join()

    def _hook(self, call: Call) -> Hook | None:
        return self.hooks.get(((call.match["repo"] or call.match["org"]).lower(), int(call.match["hook"])))

    def _delivery(self, call: Call) -> tuple[Hook | None, dict[str, Any] | None]:
        hook = self._hook(call)
        wanted = int(call.match["delivery"])
        return hook, next((d for d in (hook.deliveries if hook else []) if d["id"] == wanted), None)

    def list_deliveries(self, call: Call) -> Reply:
        """Newest first; ``cursor`` is the id of the first delivery of the page (from the Link header)."""
        hook = self._hook(call)
        if hook is None:
            return NOT_FOUND
        per_page = min(int(call.query.get("per_page", ["30"])[0]), 100)
        items = hook.deliveries[::-1]
        if "redelivery" in call.query:
            items = [d for d in items if d["redelivery"] == (call.query["redelivery"][0] == "true")]
        cursor = call.query.get("cursor", [None])[0]
        start = next((i for i, d in enumerate(items) if str(d["id"]) == cursor), 0) if cursor else 0
        chunk, rest = items[start : start + per_page], items[start + per_page :]
        headers = {}
        if rest:
            params = {**{key: values[0] for key, values in call.query.items()}, "cursor": str(rest[0]["id"])}
            headers["Link"] = f'<{self.url}{call.match.string}?{urlencode(params)}>; rel="next"'
        return Reply(200, [{key: d[key] for key in SUMMARY} for d in chunk], headers)

    def get_delivery(self, call: Call) -> Reply:
        _, delivery = self._delivery(call)
        return NOT_FOUND if delivery is None else Reply(200, delivery)

    def redeliver(self, call: Call) -> Reply:
        """202 at once; the delivery is made again (same GUID) in the background, as GitHub does."""
        hook, delivery = self._delivery(call)
        if hook is None or delivery is None:
            return NOT_FOUND
        thread = threading.Thread(target=self._redeliver, args=(hook, delivery), daemon=True)
        self._redeliveries.append(thread)
        thread.start()
        return Reply(202, {})

    def _redeliver(self, hook: Hook, delivery: dict[str, Any]) -> None:
        payload, event = delivery["request"]["payload"], delivery["event"]
        body = json.dumps(payload).encode()
        started = time.monotonic()
        try:
            if hook.url is None:
                raise ConnectionRefusedError
            target = urlsplit(hook.url)
            connection = http.client.HTTPConnection(target.hostname or "", target.port, timeout=10)
            headers = delivery_headers(hook, event, delivery["guid"], payload, body)
            connection.request("POST", target.path or "/", body=body, headers=headers)
            status_code, status = connection.getresponse().status, None
            connection.close()
        except OSError:
            status_code, status = 502, "failed to connect"
        record = self.add_delivery(
            hook,
            event,
            payload,
            status_code=status_code,
            status=status,
            guid=delivery["guid"],
            redelivery=True,
        )
        record["duration"] = round(time.monotonic() - started, 2)
