"""What a catch-up pass found about one hook, delivery or branch, and did: its line, and its JSON.

``runner catch-up`` prints the line, the worker logs it (logger ``runner.catchup``), ``--json`` gives the
JSON: the outcome in one word for a script, the line for a person, and what the line is about.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

# Outcomes that tell of something wrong: the worker logs their lines as warnings.
WRONG = frozenset({"error", "answered-elsewhere"})


@dataclass(frozen=True)
class Finding:
    kind: Literal["hook", "delivery", "branch"]
    # What it is about: "HOOK_OWNER HOOK_ID", "GUID EVENT REPOSITORY", "REPOSITORY BRANCH, pipeline NAME".
    subject: str
    # In one word: recovered, delivered-before, answered-elsewhere, deployed, queued, error, ...
    outcome: str
    # The rest of the line.
    detail: str
    # What --json gives besides: the delivery id, the repository, the branch, the commits, the run.
    data: Mapping[str, Any] = field(default_factory=dict)

    @property
    def wrong(self) -> bool:
        return self.outcome in WRONG

    def line(self) -> str:
        return f"{self.kind} {self.subject}: {self.detail}"

    def json(self) -> dict[str, Any]:
        return {"kind": self.kind, "outcome": self.outcome, **self.data, "line": self.line()}
