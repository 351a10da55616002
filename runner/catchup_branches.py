"""Moved branch heads: a watched branch whose head its pipeline has not deployed, queued as a run.

For outages longer than GitHub keeps deliveries: each valid pipeline with a ``branches:`` filter watches
the branches of its ``on.repository`` that the filter matches. A branch whose head differs from the last
commit the pipeline deployed from it gets a run, queued as ``runner trigger PIPELINE --ref B --commit
HEAD`` queues one, unless its pipeline has a run queued or running, or a delivery for that branch waits to
be routed (its run is the router's to make). A branch the pipeline never deployed is left alone: a first
deployment is a deliberate act. So is a head the pipeline deployed before and moved away from (a
rollback by hand): it is not deployed again.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator
from typing import Any
from urllib.parse import quote

from sqlalchemy import select

from runner import tables
from runner.catchup_finding import Finding
from runner.config import Config
from runner.github import GitHub, GitHubError
from runner.pipeline import Pipeline
from runner.steps import COMMIT, REF
from runner.store import Store
from runner.trigger import RunRequest, TriggerError

REASON = "catch-up: the branch head moved while runner missed its pushes"
PER_PAGE = 100
# What makes a filter's pattern more than one branch's name (see runner/filters.py).
GLOB = re.compile(r"[*?+\[\]\\]")


def heads(github: GitHub, pipeline: Pipeline) -> Iterator[tuple[str, str | None]]:
    """The branches of the pipeline's repository its filter matches, with their heads; None for a branch
    the filter names that does not exist. Raises GitHubError.

    A filter of branch names has each looked up; one with a pattern (or an exclusion) has every branch
    listed and matched.
    """
    branches, repository = pipeline.trigger.branches, pipeline.trigger.repository
    assert branches is not None
    if any(GLOB.search(pattern) or pattern.startswith("!") for pattern in branches.patterns):
        listing = github.paginate(
            f"/repos/{repository}/branches", repository=repository, params={"per_page": PER_PAGE}
        )
        for item in listing:
            name, head = _branch(item)
            if name is not None and branches.matches(name):
                yield name, head
        return
    for name in dict.fromkeys(branches.patterns):
        try:
            found = github.request(
                "GET", f"/repos/{repository}/branches/{quote(name)}", repository=repository
            )
        except GitHubError as exc:
            if exc.status != 404:
                raise
            yield name, None
            continue
        yield name, _branch(found.data)[1]


def _branch(item: Any) -> tuple[str | None, str | None]:
    """A branch's name and head commit, as GitHub's branch (or listing's item) gives them."""
    commit = item.get("commit") if isinstance(item, dict) else None
    name, sha = (
        item.get("name") if isinstance(item, dict) else None,
        commit.get("sha") if isinstance(commit, dict) else None,
    )
    return (name if isinstance(name, str) else None), (sha if isinstance(sha, str) else None)


def _deployed(store: Store, pipeline: str, ref: str) -> list[str]:
    """The commits the pipeline deployed from ``ref`` on this server (its succeeded runs'), the last one
    first."""
    runs = tables.runs
    query = (
        select(runs.c.commit)
        .where(
            runs.c.server == store.server,
            runs.c.pipeline == pipeline,
            runs.c.ref == ref,
            runs.c.status == "succeeded",
            runs.c.commit.is_not(None),
        )
        .order_by(runs.c.finished_at.desc(), runs.c.id.desc())
    )
    with store.engine.connect() as connection:
        return [commit for commit in connection.scalars(query) if commit is not None]


class Comparison:
    """A branch's head against what its pipeline deployed: a line, and a run queued when it is due."""

    def __init__(self, config: Config, store: Store, waiting: Collection[tuple[str, str]]) -> None:
        self.config = config
        self.store = store
        # (repository in lower case, ref) of the deliveries waiting in runner's queues, or just recovered.
        self.waiting = waiting

    def look_at(self, pipeline: Pipeline, branch: str, head: str | None) -> Finding:
        repository = pipeline.trigger.repository
        subject = f"{repository} {branch}, pipeline {pipeline.name}"
        data: dict[str, Any] = {
            "repository": repository,
            "branch": branch,
            "pipeline": pipeline.name,
            "head": head,
        }
        if head is None:
            return Finding("branch", subject, "missing", "does not exist: skipped", data)
        ref = f"refs/heads/{branch}"
        deployed = _deployed(self.store, pipeline.name, ref)
        last = deployed[0] if deployed else None
        data["deployed"] = last
        if head == last:
            return Finding("branch", subject, "deployed", f"at {head[:7]}, deployed", data)
        if last is None:
            detail = (
                f"head {head[:7]}, never deployed by pipeline {pipeline.name}: not deployed (a first "
                f"deployment is deliberate: runner trigger {pipeline.name} --ref {branch})"
            )
            return Finding("branch", subject, "never-deployed", detail, data)
        moved = f"head {head[:7]}, last deployed {last[:7]}"
        if head in deployed:
            detail = f"{moved}: the head was deployed before and then rolled back by hand: not deployed again"
            return Finding("branch", subject, "rolled-back", detail, data)
        return self._queue(pipeline, ref, head, subject, moved, data)

    def _queue(
        self, pipeline: Pipeline, ref: str, head: str, subject: str, moved: str, data: dict[str, Any]
    ) -> Finding:
        if (pipeline.trigger.repository.lower(), ref) in self.waiting:
            detail = f"{moved}: a delivery for it waits to be routed: not queued"
            return Finding("branch", subject, "waiting", detail, data)
        unfinished = next(
            (run for run in self.store.unfinished_runs() if run.pipeline == pipeline.name), None
        )
        if unfinished is not None:
            detail = (
                f"{moved}: run {unfinished.id} of pipeline {pipeline.name} is {unfinished.status}: not queued"
            )
            return Finding("branch", subject, "waiting", detail, data)
        if not COMMIT.match(head) or not REF.match(ref):
            return Finding(
                "branch", subject, "error", f"{moved}: not a commit or branch runner can deploy", data
            )
        try:
            entry = RunRequest(pipeline.name, ref, head).queue(self.config, self.store, reason=REASON)
        except TriggerError as exc:
            return Finding("branch", subject, "error", f"{moved}: cannot queue a run: {exc}", data)
        data["run"] = entry.run_id
        return Finding("branch", subject, "queued", f"{moved}: queued run {entry.run_id}", data)
