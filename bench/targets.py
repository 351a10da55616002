"""What ``bench/ingest.py`` loads, in turn: ``runner serve --workers N``, adnanh/webhook, the no-write app."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from baseline import baseline_server
from common import ServerProcess, checkout_runner, runner_server
from webhook import webhook_server


@dataclass(frozen=True)
class Target:
    """What a round loads: ``runner serve --workers N``, the no-write baseline app, or adnanh/webhook."""

    kind: str  # "runner", "baseline" or "webhook"
    workers: int = 1
    checkout: str | None = None  # another checkout's runner (--before), else this one's

    @property
    def label(self) -> str:
        if self.kind == "runner":
            return f"runner serve --workers {self.workers}" + (f" ({self.checkout})" if self.checkout else "")
        return {"baseline": "no-write Starlette app", "webhook": "adnanh/webhook"}[self.kind]

    @contextlib.contextmanager
    def serving(self, args: argparse.Namespace) -> Iterator[tuple[ServerProcess, Path | None]]:
        """The target's server on a fresh home, and the main queue it writes to (None: it writes nothing)."""
        if self.kind == "runner":
            runner = checkout_runner(self.checkout) if self.checkout else None
            with runner_server(args.tmp_dir, self.workers, runner) as (server, queue_dir):
                yield server, queue_dir
        elif self.kind == "baseline":
            with baseline_server(args.tmp_dir) as server:
                yield server, None
        else:
            with webhook_server(args.tmp_dir) as server:
                yield server, None


def targets_of(args: argparse.Namespace) -> list[Target]:
    """In the order each round loads them: runner's process counts (each before --before's), then the
    yardsticks."""
    targets = []
    for workers in args.workers:
        targets.append(Target("runner", workers))
        if args.before:
            targets.append(Target("runner", workers, args.before))
    if args.webhook:
        targets.append(Target("webhook"))
    if args.baseline:
        targets.append(Target("baseline"))
    return targets
