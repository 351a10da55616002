"""Supersede and cancel: a burst of entries deploys the newest, once; `runner cancel` calls a run off.

Real processes as in test_worker (``runner serve``, ``runner work``, ``runner trigger``, ``runner cancel``),
each test on SQLite and on PostgreSQL. A step waits for a gate file the test makes, so that "while a run goes
on" is a state the test holds, not a race it hopes to win.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Row
from support import FINISHED, alive, wait_for
from test_worker import ZERO_COMMIT, Rig, fake_commit, push_payload, read_pid

from runner import claims, concurrency
from runner.entry import RunEntry
from runner.loading import load_pipeline
from runner.pipeline import Concurrency
from runner.store import Store

# A step that says it began, then waits for its gate file; then it records its run as built.
GATED = """
    on: {repository: acme/app, events: [push], branches: ["**"], tags: ["**"]}
    workdir: <WORKDIR>
    <CONCURRENCY>
    steps:
      - name: build
        run: echo begin; while [ ! -e <GATE> ]; do sleep 0.05; done; echo {{ run_id }} >> <BUILT>
      - name: deploy
        run: echo {{ run_id }} {{ commit }} >> <DEPLOYED>
"""


# A step that ignores SIGTERM (and so does what it runs): only a SIGKILL ends it.
STUBBORN = """
    on: {repository: acme/app, events: [push], branches: [main]}
    workdir: <WORKDIR>
    steps:
      - run: trap '' TERM; echo $$ > <PID>; echo begin; sleep 300
"""


@pytest.fixture
def rig(tmp_path: Path, database_url: str) -> Iterator[Rig]:
    rig = Rig(tmp_path, database_url)
    try:
        yield rig
    finally:
        rig.close()


def push(n: int, ref: str = "refs/heads/main") -> bytes:
    return push_payload(ref, ZERO_COMMIT, [(fake_commit(n), f"change {n}")])


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def unfinished(rig: Rig) -> list[str]:
    return [f"run {r.id} {r.status}" for r in rig.runs() if r.status not in FINISHED]


def run_of(rig: Rig, delivery: str) -> Row[Any]:
    """The run of a delivery to one pipeline, once the router has made it and put its entry."""

    def check() -> Row[Any] | None:
        runs = rig.runs(delivery)
        return runs[0] if runs and runs[0].entry else None

    return wait_for(check, f"the run of delivery {delivery}", details=rig.details)


def reached(rig: Rig, run_id: int, status: str, timeout: float = 30) -> Row[Any]:
    """Run ``run_id``, once it has this status (failing at once on another that ends it)."""

    def check() -> Row[Any] | None:
        run = rig.run(run_id)
        if run.status == status:
            return run
        if run.status in FINISHED:
            pytest.fail(f"run {run_id} is {run.status} ({run.reason}), not {status}\n{rig.details()}")
        return None

    return wait_for(check, f"run {run_id} to be {status}", timeout, rig.details)


class Gated:
    """A pipeline whose first step waits for a gate; what was built and deployed, and by which run."""

    def __init__(self, rig: Rig, concurrency: str = "", name: str = "app") -> None:
        self.rig = rig
        self.name = name
        self.gate = rig.tmp / f"{name}.gate"
        self.built = rig.tmp / f"{name}.built"
        self.deployed = rig.tmp / f"{name}.deployed"
        rig.pipeline(
            name,
            GATED,
            WORKDIR=rig.workdir(name),
            CONCURRENCY=concurrency or "env: {}",
            GATE=self.gate,
            BUILT=self.built,
            DEPLOYED=self.deployed,
        )

    def open(self) -> None:
        self.gate.touch()

    def builds(self) -> list[int]:
        return [int(line) for line in lines(self.built)]

    def deploys(self) -> list[tuple[int, str]]:
        return [
            (int(run), commit) for run, _, commit in (line.partition(" ") for line in lines(self.deployed))
        ]

    def entries(self) -> list[str]:
        return self.rig.queue(self.name).entries()


# 1. Superseding --------------------------------------------------------------------------------------------


def test_a_newer_entry_supersedes_the_waiting_one_at_once_and_the_newest_is_deployed(rig: Rig) -> None:
    app = Gated(rig)
    rig.start_worker()
    first = rig.deliver("push", push(1))
    running = rig.step_started(first)
    second = run_of(rig, rig.deliver("push", push(2)))
    third = run_of(rig, rig.deliver("push", push(3)))

    # While the first run goes on: the middle one is superseded by the newest, its entry gone from the queue.
    superseded = reached(rig, second.id, "superseded")
    assert superseded.reason == f"superseded by run {third.id}", superseded.reason
    assert rig.run(running.id).status == "running"
    assert rig.run(third.id).status == "queued"
    assert app.entries() == [running.entry, third.entry]
    table = rig.cli("runs").stdout
    row = re.search(
        rf"^{second.id} +app +superseded +push +main .*superseded by run {third.id}$", table, re.M
    )
    assert row is not None, table
    [listed] = [r for r in rig.cli_json("runs", "--json") if r["id"] == second.id]
    assert (listed["status"], listed["reason"], listed["steps"]) == (
        "superseded",
        f"superseded by run {third.id}",
        [],
    )

    app.open()
    reached(rig, third.id, "succeeded")
    assert rig.run(running.id).status == "succeeded"
    assert app.builds() == [running.id, third.id]
    assert app.deploys() == [(running.id, fake_commit(1)), (third.id, fake_commit(3))]
    # The superseded run never reached a step, nor its log.
    assert rig.steps(second.id) == [] and rig.run(second.id).log_path is None
    assert rig.run(second.id).finished_at is not None
    wait_for(lambda: app.entries() == [], "the queue to empty", 10, rig.details)
    assert unfinished(rig) == []


def test_only_entries_of_the_same_ref_supersede_each_other_unless_the_group_is_the_pipeline(rig: Rig) -> None:
    # Two pipelines of the same repository: every delivery goes to both.
    refs = Gated(rig, name="refs")
    whole = Gated(rig, "concurrency: {group: pipeline}", name="whole")
    rig.start_worker()
    first = rig.deliver("push", push(1))
    wait_for(
        lambda: sorted(r.status for r in rig.runs(first)) == ["running", "running"],
        "both runs of the first push to go on",
        details=rig.details,
    )
    main = rig.deliver("push", push(2))
    tag = rig.deliver("push", push(3, "refs/tags/v1.0"))
    wait_for(
        lambda: len([r for r in rig.runs(tag) if r.entry]) == 2,
        "both runs of the tag push",
        details=rig.details,
    )
    run = {(r.pipeline, r.delivery_id): r for r in rig.runs()}

    # group: pipeline: the tag's entry supersedes main's; group: ref (the default): both wait.
    superseded = reached(rig, run["whole", main].id, "superseded")
    assert superseded.reason == f"superseded by run {run['whole', tag].id}"
    assert rig.run(run["refs", main].id).status == "queued"
    assert rig.run(run["refs", tag].id).status == "queued"
    assert refs.entries() == [run["refs", d].entry for d in (first, main, tag)]

    refs.open()
    whole.open()
    for key in (("refs", first), ("refs", main), ("refs", tag), ("whole", first), ("whole", tag)):
        reached(rig, run[key].id, "succeeded")
    assert refs.builds() == [run["refs", d].id for d in (first, main, tag)]
    assert whole.builds() == [run["whole", d].id for d in (first, tag)]


def test_queue_all_carries_out_every_entry_in_order(rig: Rig) -> None:
    app = Gated(rig, "concurrency: {queue: all}")
    rig.start_worker()
    deliveries = [rig.deliver("push", push(1))]
    rig.step_started(deliveries[0])
    deliveries += [rig.deliver("push", push(n)) for n in (2, 3, 4)]
    runs = [run_of(rig, delivery) for delivery in deliveries]
    wait_for(lambda: len(app.entries()) == 4, "four entries in the queue", 10, rig.details)
    assert [rig.run(run.id).status for run in runs] == ["running", "queued", "queued", "queued"]
    app.open()
    for run in runs:
        reached(rig, run.id, "succeeded")
    assert app.builds() == [run.id for run in runs]
    assert [commit for _, commit in app.deploys()] == [fake_commit(n) for n in (1, 2, 3, 4)]


def test_a_manual_entry_supersedes_and_is_superseded_and_a_rollback_says_so(rig: Rig) -> None:
    app = Gated(rig)
    rig.start_worker()
    running = rig.step_started(rig.deliver("push", push(1)))
    waiting = run_of(rig, rig.deliver("push", push(2)))
    queued = rig.cli("trigger", "app", "--commit", fake_commit(9)).stdout
    rollback = int(re.search(r"^run (\d+) queued", queued, re.M).group(1))  # type: ignore[union-attr]

    superseded = reached(rig, waiting.id, "superseded")
    assert superseded.reason == f"superseded by run {rollback} (rollback to {fake_commit(9)[:7]})"
    # A push after the rollback supersedes it in turn: a rollback named by its commit alone is of every ref.
    later = run_of(rig, rig.deliver("push", push(3)))
    assert reached(rig, rollback, "superseded").reason == f"superseded by run {later.id}"
    app.open()
    reached(rig, later.id, "succeeded")
    assert app.builds() == [running.id, later.id]


# 2. Cancel in progress -------------------------------------------------------------------------------------


def left_running(rig: Rig, run: Row[Any]) -> list[int]:
    """Processes still alive whose environment says they belong to ``run``'s steps (in this test's home)."""
    markers = {f"RUNNER_RUN_ID={run.id}".encode(), f"RUNNER_WORKDIR={rig.workdir(run.pipeline)}".encode()}
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if markers <= set((entry / "environ").read_bytes().split(b"\0")) and alive(int(entry.name)):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_cancel_in_progress_stops_the_whole_process_group_at_once_and_records_why(rig: Rig) -> None:
    shell_pid, child_pid, first_done = rig.tmp / "shell.pid", rig.tmp / "child.pid", rig.tmp / "first"
    built = rig.tmp / "built"
    rig.pipeline(
        "app",
        """
        on: {repository: acme/app, events: [push], branches: [main]}
        workdir: <WORKDIR>
        concurrency: {cancel-in-progress: true}
        steps:
          - name: build
            run: >-
              if [ ! -e <FIRST> ]; then touch <FIRST>; echo $$ > <SHELL_PID>;
              sleep 300 & echo $! > <CHILD_PID>; echo begin; sleep 300; fi;
              echo {{ run_id }} >> <BUILT>
        """,
        WORKDIR=rig.workdir("app"),
        FIRST=first_done,
        SHELL_PID=shell_pid,
        CHILD_PID=child_pid,
        BUILT=built,
    )
    # A long grace: the step ends because of the SIGTERM, not because its grace ran out.
    rig.start_worker(RUNNER_STOP_GRACE="60")
    running = rig.step_started(rig.deliver("push", push(1)))
    pids = [read_pid(shell_pid), read_pid(child_pid)]
    assert None not in pids and all(alive(pid) for pid in pids if pid), pids
    asked = time.monotonic()
    newer = rig.deliver("push", push(2))

    cancelled = reached(rig, running.id, "cancelled")
    newest = run_of(rig, newer)
    assert time.monotonic() - asked < 10
    assert cancelled.reason == f"superseded by run {newest.id}", cancelled.reason
    [step] = rig.steps(running.id)
    assert (step.name, step.status) == ("build", "cancelled"), rig.details(running)
    assert f"superseded by run {newest.id}" in (step.detail or ""), step.detail
    assert not any(alive(pid) for pid in pids if pid), "a process of the cancelled step is left"
    assert left_running(rig, running) == []
    reached(rig, newest.id, "succeeded")
    assert lines(built) == [str(newest.id)]
    assert rig.queue("app").entries() == [] and not (rig.queue("app").directory / "failed").exists()


def test_a_step_with_cancel_false_is_waited_for_and_the_run_stops_after_it(rig: Rig) -> None:
    gate, migrated, after = rig.tmp / "gate", rig.tmp / "migrated", rig.tmp / "after"
    rig.pipeline(
        "app",
        """
        on: {repository: acme/app, events: [push], branches: [main]}
        workdir: <WORKDIR>
        concurrency: {cancel-in-progress: true}
        steps:
          - name: migrate
            cancel: false
            run: echo begin; while [ ! -e <GATE> ]; do sleep 0.05; done; echo {{ run_id }} >> <MIGRATED>
          - name: after
            run: echo {{ run_id }} >> <AFTER>
        """,
        WORKDIR=rig.workdir("app"),
        GATE=gate,
        MIGRATED=migrated,
        AFTER=after,
    )
    worker = rig.start_worker()
    running = rig.step_started(rig.deliver("push", push(1)))
    newer = rig.deliver("push", push(2))
    worker.wait_for_line(rf"run {running.id} of app: cancelled: superseded by run \d+")
    time.sleep(0.5)
    assert rig.run(running.id).status == "running", "the step that may not be cut was cut"
    gate.touch()

    newest = run_of(rig, newer)
    cancelled = reached(rig, running.id, "cancelled")
    assert cancelled.reason == f"superseded by run {newest.id}"
    assert [(s.name, s.status) for s in rig.steps(running.id)] == [("migrate", "succeeded")]
    reached(rig, newest.id, "succeeded")
    assert lines(migrated) == [str(running.id), str(newest.id)]
    assert lines(after) == [str(newest.id)]


# 3. runner cancel ------------------------------------------------------------------------------------------


def test_runner_cancel_calls_off_a_waiting_run_and_stops_a_running_one(rig: Rig) -> None:
    app = Gated(rig)
    rig.start_worker()
    running = rig.step_started(rig.deliver("push", push(1)))
    waiting = run_of(rig, rig.deliver("push", push(2)))
    wait_for(lambda: len(app.entries()) == 2, "two entries in the queue", 10, rig.details)

    done = rig.cli("cancel", str(waiting.id))
    assert done.stdout == f"run {waiting.id} cancelled: it was waiting; its entry left the queue\n"
    cancelled = rig.run(waiting.id)
    assert (cancelled.status, cancelled.reason) == ("cancelled", "cancelled by hand")
    assert app.entries() == [running.entry]
    assert rig.steps(waiting.id) == []

    done = rig.cli("cancel", str(running.id))
    assert done.stdout == f"run {running.id} cancelled: it was running; it has stopped\n"
    stopped = rig.run(running.id)
    assert (stopped.status, stopped.reason) == ("cancelled", "cancelled by hand")
    [step] = rig.steps(running.id)
    assert (step.name, step.status) == ("build", "cancelled")
    assert left_running(rig, running) == []
    assert app.entries() == [] and app.builds() == []

    again = rig.cli("cancel", str(running.id), expect=1)
    assert again.stderr == f"runner: run {running.id} has ended already: cancelled (cancelled by hand)\n"
    missing = rig.cli("cancel", "9999", expect=1)
    assert missing.stderr == "runner: there is no run 9999: `runner runs` lists them\n"

    # The lane goes on with what comes next.
    app.open()
    later = run_of(rig, rig.deliver("push", push(3)))
    reached(rig, later.id, "succeeded")
    assert app.builds() == [later.id]


def test_runner_cancel_without_a_worker_and_a_step_that_ignores_sigterm(rig: Rig) -> None:
    stubborn = rig.tmp / "stubborn.pid"
    rig.pipeline("app", STUBBORN, WORKDIR=rig.workdir("app"), PID=stubborn)
    # Queued while no worker runs: cancelled at once, its entry removed, unrun, when a worker starts.
    queued = int(rig.cli("trigger", "app", "--ref", "main").stdout.split()[1])
    done = rig.cli("cancel", str(queued))
    assert done.stdout.startswith(f"run {queued} cancelled; no worker is running"), done.stdout
    assert rig.run(queued).status == "cancelled"
    rig.start_worker(RUNNER_STOP_GRACE="1")
    wait_for(lambda: rig.queue("app").entries() == [], "the entry to be removed", 10, rig.details)
    assert rig.run(queued).log_path is None and [r.id for r in rig.runs()] == [queued]

    # A step that ignores SIGTERM is killed once the stop grace is over.
    delivery = rig.deliver("push", push(1))
    running = rig.step_started(delivery)
    pid = read_pid(stubborn)
    assert pid is not None and alive(pid)
    asked = time.monotonic()
    rig.cli("cancel", str(running.id))
    took = time.monotonic() - asked
    assert not alive(pid)
    assert 0.9 <= took < 8, took
    [step] = rig.steps(running.id)
    assert step.status == "cancelled" and "killed after 1 s" in (step.detail or ""), step.detail


# 4. Crashes ------------------------------------------------------------------------------------------------


def test_a_worker_killed_while_an_entry_is_superseded_deploys_the_newest_once(rig: Rig) -> None:
    app = Gated(rig)
    worker = rig.start_worker()
    running = rig.step_started(rig.deliver("push", push(1)))
    worker.process.kill()
    worker.process.wait(timeout=10)
    # Queued behind the cut run; the kill came after the middle one was recorded as superseded, before its
    # entry left the queue (the state a kill between the two leaves, made as the lane makes it).
    queued = [int(rig.cli("trigger", "app", "--ref", "main").stdout.split()[1]) for _ in range(2)]
    middle, newest = (rig.run(run_id) for run_id in queued)
    assert middle.entry is not None
    reason = f"superseded by run {newest.id}"
    claims.call_off(rig.store, "app", middle.entry, middle.id, "superseded", reason)
    assert app.entries() == [running.entry, middle.entry, newest.entry]

    rig.start_worker()
    reached(rig, newest.id, "running")
    assert (rig.run(middle.id).status, rig.run(middle.id).reason) == ("superseded", reason)
    # The run the kill cut is superseded too: it had started, so it is recorded as cancelled, and what its
    # step left running is stopped before the newest runs.
    assert (rig.run(running.id).status, rig.run(running.id).reason) == ("cancelled", reason)
    assert left_running(rig, running) == []
    app.open()
    reached(rig, newest.id, "succeeded")
    assert app.builds() == [newest.id] and [run for run, _ in app.deploys()] == [newest.id]
    wait_for(lambda: app.entries() == [], "the queue to empty", 10, rig.details)
    assert unfinished(rig) == []


def test_a_worker_killed_during_a_cancel_leaves_no_run_open_and_deploys_the_newest_once(rig: Rig) -> None:
    stubborn = rig.tmp / "stubborn.pid"
    deployed = rig.tmp / "deployed"
    rig.pipeline(
        "app",
        """
        on: {repository: acme/app, events: [push], branches: [main]}
        workdir: <WORKDIR>
        concurrency: {cancel-in-progress: true}
        steps:
          - name: build
            run: >-
              if [ "$RUNNER_COMMIT" = <FIRST> ]; then trap '' TERM; echo $$ > <PID>; echo begin; sleep 300; fi
          - name: deploy
            run: echo {{ run_id }} >> <DEPLOYED>
        """,
        WORKDIR=rig.workdir("app"),
        FIRST=fake_commit(1),
        PID=stubborn,
        DEPLOYED=deployed,
    )
    # The first run ignores the SIGTERM of the cancel: the kill comes during its grace.
    worker = rig.start_worker(RUNNER_STOP_GRACE="60")
    running = rig.step_started(rig.deliver("push", push(1)))
    newer = rig.deliver("push", push(2))
    worker.wait_for_line(rf"run {running.id} of app: cancelled: superseded by run \d+")
    worker.process.kill()
    worker.process.wait(timeout=10)
    pid = read_pid(stubborn)
    assert pid is not None and alive(pid), "the step ended before the kill"

    rig.start_worker(RUNNER_STOP_GRACE="1")
    newest = run_of(rig, newer)
    reached(rig, newest.id, "succeeded")
    cut = rig.run(running.id)
    assert (cut.status, cut.reason) == ("cancelled", f"superseded by run {newest.id}")
    assert not alive(pid)
    assert lines(deployed) == [str(newest.id)]
    assert unfinished(rig) == [] and rig.queue("app").entries() == []


def test_a_worker_killed_during_runner_cancel_never_runs_the_cancelled_entry_again(rig: Rig) -> None:
    stubborn = rig.tmp / "stubborn.pid"
    rig.pipeline("app", STUBBORN, WORKDIR=rig.workdir("app"), PID=stubborn)
    worker = rig.start_worker(RUNNER_STOP_GRACE="60")
    running = rig.step_started(rig.deliver("push", push(1)))
    canceller = subprocess.Popen(
        [sys.executable, "-m", "runner", "cancel", str(running.id)],
        env=rig.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        worker.wait_for_line(rf"run {running.id} of app: cancelled by hand")
        worker.process.send_signal(signal.SIGKILL)
        worker.process.wait(timeout=10)
        out, err = canceller.communicate(timeout=20)
    finally:
        if canceller.poll() is None:
            canceller.kill()
            canceller.wait()
    assert canceller.returncode == 0, err
    assert "no worker is running" in out, out
    pid = read_pid(stubborn)
    assert pid is not None and alive(pid)

    rig.start_worker()
    wait_for(lambda: rig.queue("app").entries() == [], "the cancelled entry to be removed", 20, rig.details)
    wait_for(lambda: not alive(pid), "the cut step's process to be stopped", 10, rig.details)
    assert [(r.id, r.status, r.reason) for r in rig.runs()] == [
        (running.id, "cancelled", "cancelled by hand")
    ]
    assert unfinished(rig) == []
    assert os.path.exists(running.log_path or "")


# 5. The rules and the database's decisions, without a worker -----------------------------------------------


def entry(ref: str | None, run_id: int, trigger: str = "push", commit: str | None = None) -> RunEntry:
    return RunEntry(run_id, trigger, ref, commit, None, None, {})


MAIN, DEV = "refs/heads/main", "refs/heads/dev"


@pytest.mark.parametrize(
    ("policy", "superseded_by"),
    [
        (Concurrency(), {"1": 3, "2": 4}),
        (Concurrency(group="pipeline"), {"1": 5, "2": 5, "3": 5, "4": 5}),
        (Concurrency(queue="all"), {}),
    ],
)
def test_the_newest_entry_of_a_group_supersedes_the_older_waiting_ones(
    policy: Concurrency, superseded_by: dict[str, int]
) -> None:
    waiting = [("1", entry(MAIN, 1)), ("2", entry(DEV, 2)), ("3", entry(MAIN, 3)), ("4", entry(DEV, 4))]
    waiting.append(("5", entry("refs/tags/v1", 5)))
    found = concurrency.superseded(policy, waiting)
    assert {name: by.run_id for name, by in found} == superseded_by


def test_an_entry_without_a_ref_is_of_every_group_and_a_rollback_says_so() -> None:
    rollback = entry(None, 7, "manual", "ab" * 20)
    found = concurrency.superseded(Concurrency(), [("1", entry(MAIN, 1)), ("2", rollback)])
    assert [(name, by.run_id) for name, by in found] == [("1", 7)]
    assert concurrency.superseded_reason(rollback) == "superseded by run 7 (rollback to abababa)"
    later = concurrency.superseded(Concurrency(), [("2", rollback), ("3", entry(DEV, 8))])
    assert [(name, by.run_id) for name, by in later] == [("2", 8)]
    assert concurrency.superseded_reason(entry(DEV, 8)) == "superseded by run 8"


def test_only_cancel_in_progress_stops_the_run_going_on_for_a_newer_entry_of_its_group() -> None:
    waiting = [("2", entry(DEV, 2)), ("3", entry(MAIN, 3)), ("4", entry(MAIN, 4))]
    assert concurrency.canceller(Concurrency(), entry(MAIN, 1), waiting) is None
    newer = concurrency.canceller(Concurrency(cancel_in_progress=True), entry(MAIN, 1), waiting)
    assert newer is not None and newer.run_id == 4
    assert (
        concurrency.canceller(Concurrency(cancel_in_progress=True), entry("refs/tags/v1", 1), waiting) is None
    )


def test_concurrency_and_cancel_are_read_into_the_pipeline(tmp_path: Path) -> None:
    path = tmp_path / "app.yaml"
    path.write_text(
        "on: {repository: acme/app}\nworkdir: app\n"
        "concurrency: {cancel-in-progress: true, queue: all, group: pipeline}\n"
        "steps:\n  - run: make migrate\n    cancel: false\n  - run: make\n"
    )
    pipeline = load_pipeline(path, tmp_path)
    assert pipeline.concurrency == Concurrency(cancel_in_progress=True, queue="all", group="pipeline")
    assert [step.cancel for step in pipeline.steps] == [False, True]
    path.write_text("on: {repository: acme/app}\nworkdir: app\nsteps:\n  - run: make\n")
    assert load_pipeline(path, tmp_path).concurrency == Concurrency(False, "latest", "ref")


@pytest.fixture
def store(database_url: str, tmp_path: Path) -> Iterator[Store]:
    store = Store(database_url)
    store.upgrade()
    try:
        yield store
    finally:
        store.close()


def race(store: Store, entry_name: str, run_id: int) -> tuple[int | None, str | None]:
    """A lane's claim of the run and a `runner cancel` of it, at once: what each got."""
    start = threading.Barrier(2)
    got: dict[str, object] = {}

    def claim() -> None:
        start.wait()
        got["claim"] = claims.claim_run(store, "app", entry_name, run_id, trigger="manual", ref=MAIN)[0]

    def cancel() -> None:
        start.wait()
        got["cancel"] = claims.cancel_run(store, run_id)

    threads = [threading.Thread(target=claim), threading.Thread(target=cancel)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return got["claim"], got["cancel"]  # type: ignore[return-value]


def test_a_claim_and_a_cancel_that_race_are_decided_once_by_the_database(store: Store) -> None:
    for attempt in range(20):
        run_id = store.create_run("app", trigger="manual", ref=MAIN)
        entry_name = f"{attempt:020d}.json"
        store.set_run(run_id, entry=entry_name)
        claimed, had = race(store, entry_name, run_id)
        # Either the cancel came first, and there is no claim, or the claim did, and the run is cancelled
        # running: never a second run for the entry, and the run ends cancelled.
        assert (claimed, had) in ((None, "queued"), (run_id, "running")), (claimed, had)
        run = store.run(run_id)
        assert run is not None and (run.status, run.reason) == ("cancelled", "cancelled by hand")
        assert [r.id for r in store.runs("app", limit=1000) if r.entry == entry_name] == [run_id]
        # However often the entry is taken again, its run was called off: it is never carried out.
        assert claims.claim_run(store, "app", entry_name, run_id, trigger="manual")[0] is None
        assert claims.cancel_run(store, run_id) is None


def test_a_worker_stop_s_cancel_is_no_call_off_but_a_superseded_entry_is(store: Store) -> None:
    run_id = store.create_run("app", trigger="manual", ref=MAIN)
    assert claims.claim_run(store, "app", "e1", run_id, trigger="manual")[0] == run_id
    assert claims.finish_claimed(store, run_id, "cancelled", "the worker stopped during step 1 (build)")
    again, _ = claims.claim_run(store, "app", "e1", run_id, trigger="manual", ref=MAIN)
    assert again is not None and again != run_id

    waiting = store.create_run("app", trigger="manual", ref=MAIN)
    ended = claims.call_off(store, "app", "e2", waiting, "superseded", "superseded by run 99")
    assert ended == {waiting: "queued"}
    assert claims.claim_run(store, "app", "e2", waiting, trigger="manual")[0] is None
    # A run cancelled by hand while it ran keeps that outcome, whatever its lane then says.
    running = store.create_run("app", trigger="manual", ref=MAIN)
    assert claims.claim_run(store, "app", "e3", running, trigger="manual")[0] == running
    assert claims.cancel_run(store, running) == "running"
    assert not claims.finish_claimed(store, running, "succeeded", None)
    run = store.run(running)
    assert run is not None and (run.status, run.reason) == ("cancelled", "cancelled by hand")
