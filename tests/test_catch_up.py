"""The catch-up: pushes GitHub failed to deliver, branch heads that moved while runner missed their pushes.

Everything is real but GitHub: a ``runner serve`` that deliveries are posted to, ``runner work`` processes,
``runner catch-up`` commands, against the fake GitHub API (tests/fake_github.py), whose record of a hook's
deliveries and of the repositories' branches each test sets. Each test runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fake_github import FakeGitHub
from fake_github_hooks import Hook
from sqlalchemy import Row
from support import FINISHED, PAYLOADS, run_cli, runner_env, wait_for
from test_worker import ZERO_COMMIT, Rig, fake_commit, push_payload

from runner import catchup_branches
from runner.entry import delivery_entry, delivery_head

TOKEN = "github_pat_catch_up_0123456789"
# The hook id Server.deliver's X-GitHub-Hook-ID names.
HOOK_ID = 292430182
PIPELINE = """
    on: {repository: <REPOSITORY>, events: [push], branches: <BRANCHES>}
    workdir: <WORKDIR>
    steps:
      - name: deploy
        run: echo deployed {{ commit }}
"""


class GitHubRig:
    """The suite's rig (tests/test_worker.py), with GitHub credentials for the fake GitHub."""

    def __init__(self, rig: Rig, github: FakeGitHub, token_file: Path) -> None:
        self.rig = rig
        self.github = github
        self.settings = {"RUNNER_GITHUB_TOKEN_FILE": str(token_file), "RUNNER_GITHUB_API_URL": github.url}
        rig.env.update(self.settings)

    def pipeline(self, name: str, repository: str = "acme/app", branches: str = "[main]") -> None:
        workdir = self.rig.workdir(name)
        self.rig.pipeline(name, PIPELINE, REPOSITORY=repository, BRANCHES=branches, WORKDIR=workdir)

    def start_worker(self, interval: str = "0", **env: str) -> None:
        """A worker with the credentials; ``interval`` 0: it makes no catch-up pass of its own."""
        self.rig.start_worker(**self.settings, RUNNER_CATCH_UP_INTERVAL=interval, **env)

    def catch_up(self, *args: str, expect: int = 0, **env: str) -> subprocess.CompletedProcess[str]:
        done = run_cli("catch-up", *args, env={**self.rig.env, **env})
        assert done.returncode == expect, f"runner catch-up: {done.returncode}\n{done.stdout}{done.stderr}"
        return done

    def deployed(self, pipeline: str, commit: str) -> Row[Any]:
        """The pipeline's one run of ``commit``, once it succeeded."""

        def check() -> Row[Any] | None:
            runs = [r for r in self.rig.runs(pipeline=pipeline) if r.commit == commit]
            assert len(runs) <= 1, f"{commit} ran {len(runs)} times\n{self.rig.details()}"
            return runs[0] if runs and runs[0].status in FINISHED else None

        run = wait_for(check, f"{pipeline} to deploy {commit}", details=self.rig.details)
        assert run.status == "succeeded", self.rig.details(run)
        return run

    def trigger(self, pipeline: str, branch: str, commit: str) -> Row[Any]:
        """``runner trigger PIPELINE --ref BRANCH --commit COMMIT``'s run, once it succeeded."""
        said = self.rig.cli("trigger", pipeline, "--ref", branch, "--commit", commit).stdout
        found = re.match(r"run (\d+) queued", said)
        assert found, said
        run = self.rig.finished_run(int(found[1]))
        assert run.status == "succeeded", self.rig.details(run)
        return run


@pytest.fixture
def hub(tmp_path: Path, database_url: str, fake_github: FakeGitHub) -> Iterator[GitHubRig]:
    token_file = tmp_path / "github-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    fake_github.add_token(TOKEN)
    rig = Rig(tmp_path, database_url)
    try:
        yield GitHubRig(rig, fake_github, token_file)
    finally:
        rig.close()


def push(commit: int, before: int = 0, repository: str = "acme/app", branch: str = "main") -> dict[str, Any]:
    """GitHub's push payload of commit ``fake_commit(commit)`` to ``branch``."""
    previous = fake_commit(before) if before else ZERO_COMMIT
    body = push_payload(
        f"refs/heads/{branch}", previous, [(fake_commit(commit), f"commit {commit}")], repository
    )
    return json.loads(body)


def ping(repository: str = "acme/app") -> bytes:
    """GitHub's ping of a new hook of ``repository``: runner learns the hook from it."""
    payload = json.loads((PAYLOADS / "ping" / "payload.json").read_bytes())
    payload["repository"]["full_name"] = repository
    return json.dumps(payload).encode()


def failed(github: FakeGitHub, hook: Hook, payload: dict[str, Any], **record: Any) -> str:
    """A push GitHub could not deliver (the endpoint was down: 502 from the proxy in front); its GUID."""
    return github.add_delivery(hook, "push", payload, status_code=502, **record)["guid"]


def lines(done: subprocess.CompletedProcess[str], kind: str = "delivery") -> list[str]:
    """The lines ``runner catch-up`` printed about deliveries (or hooks, or branches)."""
    return [line for line in done.stdout.splitlines() if line.startswith(f"{kind} ")]


# Missed deliveries -----------------------------------------------------------------------------------------


def test_a_push_github_failed_to_deliver_is_deployed_once_after_runner_catch_up(hub: GitHubRig) -> None:
    rig, github = hub.rig, hub.github
    hub.pipeline("app")
    hub.start_worker()
    hook = github.add_hook("acme/app", HOOK_ID)
    # Delivered to runner: runner learns the hook from it.
    delivered = rig.deliver("push", json.dumps(push(1)).encode())
    github.add_delivery(hook, "push", push(1), guid=delivered, status_code=202)
    hub.deployed("app", fake_commit(1))
    # Failed, then redelivered by hand, to runner: delivered once.
    redelivered = failed(github, hook, push(2, 1))
    github.add_delivery(hook, "push", push(2, 1), guid=redelivered, status_code=202, redelivery=True)
    assert rig.deliver("push", json.dumps(push(2, 1)).encode(), redelivered) == redelivered
    hub.deployed("app", fake_commit(2))
    # Sent while runner was down.
    missed = failed(github, hook, push(3, 2), status="failed to connect")

    done = hub.catch_up()
    assert lines(done) == [
        f"delivery {missed} push acme/app: recovered (GitHub recorded 502 failed to connect)"
    ]
    assert "1 hook(s), 3 delivery(ies) listed, 1 recovered" in done.stderr, done.stderr
    run = hub.deployed("app", fake_commit(3))
    assert (run.delivery_id, run.trigger, run.ref) == (missed, "push", "refs/heads/main")
    record = rig.routed(missed)
    assert (record.outcome, record.recovered, record.hook_id) == ("routed", True, str(HOOK_ID))
    assert record.received_at.timestamp() == pytest.approx(time.time(), abs=60)
    assert not rig.store.delivery(delivered).recovered and not rig.store.delivery(redelivered).recovered

    # A second pass finds it recorded; and GitHub's own redelivery, reaching runner at last, is a duplicate.
    assert lines(hub.catch_up()) == []
    assert rig.deliver("push", json.dumps(push(3, 2)).encode(), missed) == missed
    wait_for(lambda: rig.store.delivery(missed).duplicates == 1, "the redelivery to be counted")
    assert len(rig.runs(delivery=missed)) == 1
    assert [r.commit for r in rig.runs()] == [fake_commit(n) for n in (1, 2, 3)], rig.details()

    listed = {d["delivery"]: d for d in rig.cli_json("deliveries", "--json")}
    assert (listed[missed]["recovered"], listed[delivered]["recovered"]) == (True, False)
    [row] = [line for line in rig.cli("deliveries").stdout.splitlines() if missed in line]
    assert re.search(r" routed \(recovered\) \(\+1 dup\) ", row), row


def test_a_delivery_github_says_was_answered_is_not_queued_and_one_runner_has_is_not_run_again(
    hub: GitHubRig,
) -> None:
    rig, github = hub.rig, hub.github
    hub.pipeline("app")
    hub.start_worker()
    hook = github.add_hook("acme/app", HOOK_ID)
    # Received by runner, though GitHub gave up waiting for the answer: delivered.
    slow = rig.deliver("push", json.dumps(push(1)).encode())
    hub.deployed("app", fake_commit(1))
    github.add_delivery(hook, "push", push(1), guid=slow, status_code=0, status="timed out")
    # Answered 200 by someone, but never recorded by runner.
    elsewhere = github.add_delivery(hook, "push", push(2, 1), status_code=200)["guid"]

    done = hub.catch_up("--json")
    found = {item["delivery"]: item for item in json.loads(done.stdout) if item["kind"] == "delivery"}
    assert found[slow]["outcome"] == "delivered-before", found
    assert found[slow]["line"] == (
        f"delivery {slow} push acme/app: delivered to runner before (GitHub recorded 0 timed out): "
        "not queued again"
    )
    assert found[elsewhere]["outcome"] == "answered-elsewhere", found
    assert "runner has no record of it: not queued" in found[elsewhere]["line"]
    assert set(found) == {slow, elsewhere}
    assert "0 recovered" in done.stderr
    time.sleep(1)
    assert [r.commit for r in rig.runs()] == [fake_commit(1)], rig.details()
    assert rig.store.delivery(elsewhere) is None


def test_the_workers_own_pass_recovers_a_missed_push_at_start_and_at_each_interval(hub: GitHubRig) -> None:
    rig, github = hub.rig, hub.github
    hub.pipeline("app")
    hook = github.add_hook("acme/app", 77)
    before = failed(github, hook, push(1))
    worker_env = {"RUNNER_GITHUB_HOOKS": "acme/app:77"}
    hub.start_worker(interval="1", **worker_env)
    run = hub.deployed("app", fake_commit(1))
    assert run.delivery_id == before
    worker = rig.workers[0]
    worker.wait_for_line(rf"INFO runner\.catchup: delivery {before} push acme/app: recovered")
    worker.wait_for_line(
        r"INFO runner\.catchup: catch-up since .*: 1 hook\(s\), 1 delivery\(ies\) listed, 1 recov"
    )

    later = failed(github, hook, push(2, 1))
    assert hub.deployed("app", fake_commit(2)).delivery_id == later
    # Every pass looks again, and queues neither again.
    wait_for(lambda: len(github.calls("GET", "/repos/acme/app/hooks/77/deliveries")) >= 4, "two more passes")
    assert [r.delivery_id for r in rig.runs()] == [before, later], rig.details()
    assert " ERROR " not in worker.output() and "Traceback" not in worker.output(), worker.output()


def test_the_listing_is_followed_page_by_page_and_since_stops_it(hub: GitHubRig) -> None:
    rig, github = hub.rig, hub.github
    hub.pipeline("app")
    hub.start_worker()
    hook = github.add_hook("acme/app", HOOK_ID)
    now = time.time()

    def recorded(count: int, at: float) -> None:
        """Deliveries GitHub made and runner recorded, ``at`` (seconds since the epoch)."""
        for n in range(count):
            guid = github.add_delivery(
                hook, "ping", {"zen": "Keep it logically awesome."}, delivered_at=at + n
            )["guid"]
            when = datetime.fromtimestamp(at + n, UTC)
            rig.store.record_delivery(
                guid, "ping", when, hook_id=str(HOOK_ID), repository="acme/app", outcome="ping"
            )

    # Listed newest first: 150 recent ones, the missed one two days ago, 120 older still.
    recorded(120, now - 3 * 86400 + 600)
    missed = failed(github, hook, push(1), delivered_at=now - 2 * 86400)
    recorded(150, now - 3600)
    listing = "/repos/acme/app/hooks/292430182/deliveries"

    done = hub.catch_up("--since", "1d")
    assert lines(done) == []
    assert "1 hook(s), 150 delivery(ies) listed, 0 recovered" in done.stderr, done.stderr
    pages = github.calls("GET", listing)
    assert len(pages) == 2, [p.query for p in pages]
    assert "cursor" not in pages[0].query and pages[1].query["cursor"], [p.query for p in pages]
    assert rig.runs() == []

    github.requests.clear()
    done = hub.catch_up()
    assert lines(done) == [
        f"delivery {missed} push acme/app: recovered (GitHub recorded 502 Invalid HTTP Response: 502)"
    ]
    assert "271 delivery(ies) listed, 1 recovered" in done.stderr, done.stderr
    pages = github.calls("GET", listing)
    assert len(pages) == 3 and len({p.query["cursor"][0] for p in pages[1:]}) == 2, [p.query for p in pages]
    assert all(p.query["per_page"] == ["100"] for p in pages)
    assert hub.deployed("app", fake_commit(1)).delivery_id == missed


def test_an_organisations_hook_named_in_the_settings_is_listed_at_the_organisations_endpoint(
    hub: GitHubRig,
) -> None:
    rig, github = hub.rig, hub.github
    hub.pipeline("app")
    hub.start_worker()
    hook = github.add_hook("acme", 4242)
    missed = failed(github, hook, push(1))
    settings = {"RUNNER_GITHUB_HOOKS": "org:acme:4242"}

    done = hub.catch_up(**settings)
    assert lines(done) == [
        f"delivery {missed} push acme/app: recovered (GitHub recorded 502 Invalid HTTP Response: 502)"
    ]
    hub.deployed("app", fake_commit(1))
    assert rig.store.delivery(missed).hook_id == "4242"
    # The recovered delivery names the hook and its repository: it is still the organisation's hook.
    assert lines(hub.catch_up(**settings)) == []
    assert len(github.calls("GET", "/orgs/acme/hooks/4242/deliveries")) == 2
    assert github.calls("GET", "/repos/acme/app/hooks/4242/deliveries") == []


def test_an_entry_in_the_recovered_queue_that_another_user_wrote_is_refused(hub: GitHubRig) -> None:
    rig = hub.rig
    hub.pipeline("app")
    hub.start_worker()
    guid = str(uuid.uuid4())
    head = delivery_head("push", guid, str(HOOK_ID), datetime.now(UTC), recovered=True)
    queue = rig.home / "queues" / "recovered"
    wait_for(queue.is_dir, "the router to make the recovered queue", details=rig.details)
    temp = queue / ".forged.tmp"
    temp.write_bytes(delivery_entry(head, json.dumps(push(1)).encode()))
    os.chown(temp, 65534, 65534)  # nobody's, not the worker's user's
    name = f"{time.time_ns():020d}.json"
    temp.rename(queue / name)

    reason = queue / "failed" / f"{name}.reason"
    wait_for(reason.is_file, "the router to refuse the entry", details=rig.details)
    assert "not written by runner's catch-up: the entry is owned by user id 65534" in reason.read_text()
    assert rig.store.delivery(guid) is None
    assert rig.runs() == []
    listed = rig.cli_json("failed", "--json")
    assert [item["entry"] for item in listed] == [f"recovered/{name}"]
    refused = rig.cli("failed", "retry", f"recovered/{name}", expect=1)
    assert f"recovered/{name} was not written by the catch-up (root) but by nobody" in refused.stderr


def test_a_pipeline_cannot_be_named_after_the_recovered_queue(tmp_path: Path) -> None:
    (tmp_path / "pipelines").mkdir()
    path = tmp_path / "pipelines" / "recovered.yaml"
    path.write_text("on:\n  repository: acme/app\nworkdir: app\nsteps:\n  - run: echo hi\n")
    done = run_cli("validate", env=runner_env(tmp_path))
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        f"{path}:1:1: 'recovered' cannot be a pipeline's name: queues/recovered/ is the queue of the "
        "deliveries the catch-up recovers; rename the file"
    ]


def test_github_unreachable_fails_runner_catch_up_and_the_worker_carries_on(hub: GitHubRig) -> None:
    rig, github = hub.rig, hub.github
    hub.pipeline("app")
    hook = github.add_hook("acme/app", HOOK_ID)
    pinged = rig.deliver("ping", ping())
    github.outage(refuse=True)
    hub.start_worker(interval="1")
    rig.routed(pinged)
    worker = rig.workers[0]
    worker.wait_for_line(
        rf"WARNING runner\.catchup: GitHub's API at {re.escape(github.url)} does not answer: "
    )

    done = hub.catch_up(expect=1)
    assert re.fullmatch(
        rf"runner: GitHub's API at {re.escape(github.url)} does not answer: GitHub: GET "
        rf"/repos/acme/app/hooks/{HOOK_ID}/deliveries\?per_page=100: cannot connect: Connection refused\n",
        done.stderr.splitlines(keepends=True)[-1],
    ), done.stderr

    done = hub.catch_up("--since", "3x", expect=1)
    assert done.stderr == (
        "runner: --since='3x' is not a duration: write e.g. 90d, 12h, 1d12h, 30m, or a whole number of "
        "seconds\n"
    )
    no_credentials = {key: "" for key in hub.settings}
    done = hub.catch_up(expect=1, **no_credentials)
    assert done.stderr.startswith(
        "runner: no GitHub credentials are configured: set RUNNER_GITHUB_TOKEN_FILE"
    )

    # The worker went on routing, and its next pass, GitHub being back, recovers what it missed.
    github.end_outage()
    missed = failed(github, hook, push(1))
    assert hub.deployed("app", fake_commit(1)).delivery_id == missed
    assert "Traceback" not in worker.output(), worker.output()


def test_a_pass_under_way_is_waited_for_by_runner_catch_up(hub: GitHubRig) -> None:
    hub.pipeline("app")
    lock = hub.rig.home / "queues" / ".catch-up.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        command = subprocess.Popen(
            [sys.executable, "-m", "runner", "catch-up"],
            env=hub.rig.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert command.stderr is not None
        waiting = f"another catch-up pass is running (lock: {lock}): waiting for it to end"
        said = [command.stderr.readline()]
        while waiting not in said[-1] and said[-1] and len(said) < 10:
            said.append(command.stderr.readline())
        assert waiting in said[-1], said
        time.sleep(0.5)
        assert command.poll() is None, "it did not wait"
    finally:
        os.close(fd)
    out, err = command.communicate(timeout=60)
    assert command.returncode == 0, out + err
    assert "0 hook(s) (none known: runner learns them from its deliveries)" in err, err


# Moved branch heads ----------------------------------------------------------------------------------------


def test_branch_heads_that_moved_during_a_week_long_outage_are_deployed_once(hub: GitHubRig) -> None:
    rig, github = hub.rig, hub.github
    hub.pipeline("app")
    hub.pipeline("same", repository="acme/same")
    hub.pipeline("releases", repository="acme/rel", branches="['release/*', '!release/old']")
    hub.pipeline("ghost", repository="acme/ghost", branches="[gone]")
    hub.pipeline("fresh", repository="acme/fresh")
    hub.start_worker()
    for pipeline, branch, commit in (
        ("app", "main", 1),
        ("same", "main", 2),
        ("releases", "release/1", 3),
        ("releases", "release/old", 4),
    ):
        hub.trigger(pipeline, branch, fake_commit(commit))
    # A week later: no delivery in GitHub's record, and these heads.
    for repository, branch, commit in (
        ("acme/app", "main", 11),
        ("acme/same", "main", 2),
        ("acme/rel", "release/1", 13),
        ("acme/rel", "release/2", 14),
        ("acme/rel", "release/old", 15),
        ("acme/rel", "feature", 16),
        ("acme/fresh", "main", 17),
    ):
        github.set_branch(repository, branch, fake_commit(commit))

    done = hub.catch_up()
    runs = {run.commit: run for run in rig.runs()}
    app, release = runs[fake_commit(11)], runs[fake_commit(13)]
    short = {n: fake_commit(n)[:7] for n in (1, 2, 3, 11, 13, 14, 17)}
    assert lines(done, "branch") == [
        f"branch acme/app main, pipeline app: head {short[11]}, last deployed {short[1]}: "
        f"queued run {app.id}",
        "branch acme/fresh main, pipeline fresh: head "
        f"{short[17]}, never deployed by pipeline fresh: not deployed (a first deployment is deliberate: "
        "runner trigger fresh --ref main)",
        "branch acme/ghost gone, pipeline ghost: does not exist: skipped",
        f"branch acme/rel release/1, pipeline releases: head {short[13]}, last deployed {short[3]}: "
        f"queued run {release.id}",
        f"branch acme/rel release/2, pipeline releases: head {short[14]}, never deployed by pipeline "
        "releases: not deployed (a first deployment is deliberate: runner trigger releases --ref release/2)",
        f"branch acme/same main, pipeline same: at {short[2]}, deployed",
    ]
    assert "6 branch(es), 2 run(s) queued; 0 error(s)" in done.stderr, done.stderr
    for pipeline, commit, branch in (("app", 11, "main"), ("releases", 13, "release/1")):
        run = hub.deployed(pipeline, fake_commit(commit))
        # Why it was run stays on the run once it has succeeded.
        assert (run.trigger, run.ref, run.reason) == (
            "manual",
            f"refs/heads/{branch}",
            catchup_branches.REASON,
        )
    # The glob's branches were listed, the names looked up one by one.
    assert github.calls("GET", "/repos/acme/rel/branches")
    assert github.calls("GET", "/repos/acme/ghost/branches/gone")

    again = hub.catch_up("--json")
    outcomes = {(item["pipeline"], item["branch"]): item["outcome"] for item in json.loads(again.stdout)}
    assert outcomes[("app", "main")] == outcomes[("releases", "release/1")] == "deployed"
    assert len(rig.runs()) == 6, rig.details()

    # Rolled back by hand: the head is not deployed again behind the operator's back.
    hub.trigger("app", "main", fake_commit(1))
    [line] = [line for line in lines(hub.catch_up(), "branch") if "pipeline app" in line]
    assert line.endswith("the head was deployed before and then rolled back by hand: not deployed again"), (
        line
    )
    assert len(rig.runs()) == 7, rig.details()


def test_a_branch_whose_push_was_just_recovered_is_left_to_that_delivery(hub: GitHubRig) -> None:
    rig, github = hub.rig, hub.github
    hub.pipeline("app")
    hub.start_worker()
    hub.trigger("app", "main", fake_commit(1))
    hook = github.add_hook("acme/app", HOOK_ID)
    rig.routed(rig.deliver("ping", ping()))
    missed = failed(github, hook, push(2, 1))
    github.set_branch("acme/app", "main", fake_commit(2))

    done = hub.catch_up()
    [recovered] = lines(done)
    [branch] = lines(done, "branch")
    assert recovered.startswith(f"delivery {missed} push acme/app: recovered"), done.stdout
    # Unless its run was quicker than the look at the branch.
    assert branch in (
        f"branch acme/app main, pipeline app: head {fake_commit(2)[:7]}, last deployed {fake_commit(1)[:7]}: "
        "a delivery for it waits to be routed: not queued",
        f"branch acme/app main, pipeline app: at {fake_commit(2)[:7]}, deployed",
    ), done.stdout
    assert hub.deployed("app", fake_commit(2)).delivery_id == missed
    assert len(rig.runs()) == 2, rig.details()
