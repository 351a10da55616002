"""The catch-up: a pass over GitHub's record of the hooks' deliveries and over the watched branches' heads.

What a pass looks at and does is runner/catchup_deliveries.py's (missed deliveries, fetched and queued as
recovered) and runner/catchup_branches.py's (moved branch heads, queued as runs), the deliveries first, so
that a branch whose push was just recovered is left to that delivery's run. ``runner catch-up`` makes a
pass; the worker makes one when it starts and every RUNNER_CATCH_UP_INTERVAL, in a thread. One pass at a
time, under a ``flock`` on queues/.catch-up.lock: two at once would queue the same branch twice. The
worker skips its pass while another holds the lock; ``runner catch-up`` waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from runner.catchup_branches import Comparison, heads
from runner.catchup_deliveries import Recovery, hooks
from runner.catchup_finding import Finding
from runner.config import Config
from runner.entry import Delivery
from runner.events import ref as event_ref
from runner.events import repository_name
from runner.github import GitHub, GitHubError, GitHubUnavailable
from runner.github_auth import github_client
from runner.lock import NotTheOwner, require_owner
from runner.pipelines import PipelineSet
from runner.queue import Queue, is_entry_name
from runner.store import Store
from runner.timefmt import shown

logger = logging.getLogger(__name__)

# How long GitHub keeps a hook's deliveries: how far back a pass looks by default.
GITHUB_KEEPS = 3 * 86400.0
LOCK_FILE = ".catch-up.lock"
# The queue of queues/ that the recovered deliveries go to, beside the main queue; the router takes both.
RECOVERED_QUEUE = "recovered"


class CatchUpError(Exception):
    """No pass can be made: no credentials, or GitHub does not answer at all; the message says why."""


@dataclass
class Pass:
    """What a pass looked at, and what it found."""

    since: datetime
    hooks: int = 0
    deliveries: int = 0
    branches: int = 0
    findings: list[Finding] = field(default_factory=list)

    def count(self, kind: str, outcome: str) -> int:
        return sum(1 for f in self.findings if (f.kind, f.outcome) == (kind, outcome))

    def summary(self) -> str:
        errors = sum(1 for f in self.findings if f.outcome == "error")
        unknown = "" if self.hooks else " (none known: runner learns them from its deliveries)"
        return (
            f"catch-up since {shown(self.since)}: {self.hooks} hook(s){unknown}, {self.deliveries} "
            f"delivery(ies) listed, {self.count('delivery', 'recovered')} recovered; {self.branches} "
            f"branch(es), {self.count('branch', 'queued')} run(s) queued; {errors} error(s)"
        )


def backlog(config: Config) -> tuple[set[str], set[tuple[str, str]]]:
    """The delivery ids, and the (repository in lower case, ref) pairs, of the entries waiting in the main
    and the recovered queue: the router's to record and route."""
    ids: set[str] = set()
    refs: set[tuple[str, str]] = set()
    for directory in (config.main_queue_dir, config.queues_dir / RECOVERED_QUEUE):
        try:
            names = sorted(name for name in os.listdir(directory) if is_entry_name(name))
        except OSError:
            continue
        for name in names:
            try:
                with open(directory / name, "rb") as file:
                    delivery = Delivery.read(json.load(file))
            except (OSError, ValueError):
                continue  # gone since it was listed, or the router's to refuse
            ids.add(delivery.delivery)
            repository, ref = repository_name(delivery.payload), event_ref(delivery.payload)
            if repository is not None and ref is not None:
                refs.add((repository.lower(), ref))
    return ids, refs


class CatchUp:
    """One pass: what it finds is told to ``say`` as it is found; ``stop`` ends it after the call at hand."""

    def __init__(
        self,
        config: Config,
        store: Store,
        github: GitHub,
        pipelines: PipelineSet,
        say: Callable[[Finding], None],
        stop: threading.Event | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.github = github
        self.pipelines = pipelines
        self.say = say
        self.stop = stop or threading.Event()
        self._answered = False

    def run(self, since: float) -> Pass:
        """A pass over the last ``since`` seconds (no further back than runner keeps its deliveries: an older
        one it no longer has would pass for missed). Raises CatchUpError when GitHub answers no call."""
        done = Pass(datetime.now(UTC) - timedelta(seconds=min(since, self.config.retention)))
        self._deliveries(done)
        self._branches(done)
        return done

    def _tell(self, done: Pass, finding: Finding) -> None:
        done.findings.append(finding)
        self.say(finding)

    def _failed(self, done: Pass, finding: Finding, exc: GitHubError) -> None:
        if isinstance(exc, GitHubUnavailable) and not self._answered:
            raise CatchUpError(f"GitHub's API at {self.github.api_url} does not answer: {exc}")
        self._answered = True
        self._tell(done, finding)

    def _deliveries(self, done: Pass) -> None:
        waiting = backlog(self.config)[0]
        queue = Queue(self.config.queues_dir / RECOVERED_QUEUE)
        try:
            for hook in hooks(self.config, self.store):
                if self.stop.is_set():
                    return
                done.hooks += 1
                recovery = Recovery(self.github, self.store, queue, hook)
                try:
                    done.deliveries += recovery.run(
                        done.since, waiting, lambda f: self._tell(done, f), self.stop
                    )
                except GitHubError as exc:
                    hint = ""
                    if exc.status == 404 and hook.kind == "repository":
                        hint = f" (an organisation's hook? name it in RUNNER_GITHUB_HOOKS: org:ORG:{hook.id})"
                    what = f"cannot list its deliveries: {exc}{hint}"
                    self._failed(done, Finding("hook", f"{hook.name} {hook.id}", "error", what), exc)
                else:
                    self._answered = True
        finally:
            queue.close()

    def _branches(self, done: Pass) -> None:
        recovered = {
            (str(f.data["repository"]).lower(), str(f.data["ref"]))
            for f in done.findings
            if f.outcome == "recovered" and f.data.get("repository") and f.data.get("ref")
        }
        # Read after the deliveries were queued: a run for those is the router's to make.
        comparison = Comparison(self.config, self.store, backlog(self.config)[1] | recovered)
        for pipeline in self.pipelines.all():
            if pipeline.trigger.branches is None:
                continue
            try:
                for branch, head in heads(self.github, pipeline):
                    self._answered = True
                    if self.stop.is_set():
                        return
                    done.branches += 1
                    self._tell(done, comparison.look_at(pipeline, branch, head))
            except GitHubError as exc:
                subject = f"{pipeline.trigger.repository}, pipeline {pipeline.name}"
                what = f"cannot look up its branches: {exc}"
                self._failed(done, Finding("branch", subject, "error", what), exc)


def _take_lock(path: Path, wait: bool) -> int | None:
    """The pass lock's descriptor, held. When another pass holds it: None, or with ``wait``, once that
    pass has ended."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_CLOEXEC: a step started meanwhile must not hold the lock after the pass.
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                os.close(fd)
                return None
            logger.info("another catch-up pass is running (lock: %s): waiting for it to end", path)
            fcntl.flock(fd, fcntl.LOCK_EX)
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise
    return fd


def locked_pass(catch_up: CatchUp, since: float, *, wait: bool) -> Pass | None:
    """A pass under the lock; None when another pass holds it, unless ``wait``."""
    fd = _take_lock(catch_up.config.queues_dir / LOCK_FILE, wait)
    if fd is None:
        return None
    try:
        return catch_up.run(since)
    finally:
        os.close(fd)


def command_pass(config: Config, store: Store, since: float, say: Callable[[Finding], None]) -> Pass:
    """``runner catch-up``'s pass, as the queues' owner, after the pass under way if there is one. Raises
    CatchUpError."""
    github = github_client(config)
    if github is None:
        raise CatchUpError(
            "no GitHub credentials are configured: set RUNNER_GITHUB_TOKEN_FILE, or RUNNER_GITHUB_APP_ID and "
            "RUNNER_GITHUB_APP_KEY_FILE (see the README's GitHub access)"
        )
    try:
        require_owner(config.queues_dir, "catch-up")
    except NotTheOwner as exc:
        raise CatchUpError(str(exc)) from None
    pipelines = PipelineSet(config.pipelines_dir, config.home)
    pipelines.reload()
    done = locked_pass(CatchUp(config, store, github, pipelines, say), since, wait=True)
    assert done is not None, "a pass that waits for the lock always runs"
    return done


# What a pass did is logged at INFO, what is wrong as a warning; what it only saw, as every pass sees it
# again, at DEBUG (``runner catch-up`` prints every line).
DID = frozenset({"recovered", "queued"})


def _log(finding: Finding) -> None:
    level = logging.WARNING if finding.wrong else logging.INFO if finding.outcome in DID else logging.DEBUG
    logger.log(level, "%s", finding.line())


def _worker_pass(catch_up: CatchUp, interval: float) -> None:
    try:
        done = locked_pass(catch_up, GITHUB_KEEPS, wait=False)
    except CatchUpError as exc:
        logger.warning("%s; the next pass is in %.0f s", exc, interval)
        return
    if done is None:
        logger.info("another catch-up pass is running: this one is skipped")
    else:
        logger.info("%s", done.summary())


async def every(
    config: Config, store: Store, github: GitHub | None, pipelines: PipelineSet, stop: asyncio.Event
) -> None:
    """The worker's passes: when it starts, then every ``config.catch_up_interval`` seconds until ``stop``;
    none without a GitHub client (no credentials), or with an interval of 0.

    In a thread of its own: the router and the lanes never wait for it. A pass that fails is logged and made
    again at the next one; a stop ends the pass at hand after its current call.
    """
    interval = config.catch_up_interval
    if github is None or interval <= 0:
        return
    halt = threading.Event()
    while not stop.is_set():
        catch_up = CatchUp(config, store, github, pipelines, _log, halt)
        work = asyncio.ensure_future(asyncio.to_thread(_worker_pass, catch_up, interval))
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait([work, stopping], return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if stop.is_set():
            halt.set()
        try:
            await work
        except Exception:
            logger.exception("the catch-up pass failed; the next one is in %.0f s", interval)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
