"""The worker keeps going: one bad entry, step or pipeline never stops the rest.

Real processes throughout (``runner serve``, ``runner work``, ``runner up``, ``runner trigger``), real git
repositories, and real database errors (a trigger in the database that refuses inserts). Each test that
involves the database runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from support import FINISHED, Server, alive, failed_names, require, run_cli, runner_env, wait_for
from test_worker import ZERO_COMMIT, GitRepo, Rig, fake_commit, git, out_lines, push_payload

from runner.queue import Queue
from runner.store import Store

ECHO_PIPELINE = """
    on: {repository: <REPOSITORY>, events: [push], branches: [main]}
    workdir: <WORKDIR>
    steps:
      - name: record
        run: echo {{ run_id }} >> <RECORD>; echo done
"""


@pytest.fixture
def rig(tmp_path: Path, database_url: str) -> Iterator[Rig]:
    rig = Rig(tmp_path, database_url)
    try:
        yield rig
    finally:
        rig.close()


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    return GitRepo(tmp_path / "git")


def echo_pipeline(rig: Rig, name: str, repository: str) -> Path:
    """A pipeline that appends its run's id to a file (returned): what ran, and how often."""
    record = rig.tmp / f"{name}.runs"
    rig.pipeline(name, ECHO_PIPELINE, REPOSITORY=repository, WORKDIR=rig.workdir(name), RECORD=record)
    return record


def push(repository: str, n: int) -> bytes:
    return push_payload("refs/heads/main", ZERO_COMMIT, [(fake_commit(n), f"change {n}")], repository)


def records(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def unfinished(rig: Rig) -> list[str]:
    return [f"run {r.id} {r.pipeline} {r.status}" for r in rig.runs() if r.status not in FINISHED]


def inject_insert_error(store: Store, table: str) -> None:
    """Make every insert into ``table`` fail with a database error, as a full disk or a bad value would."""
    with store.engine.begin() as connection:
        if connection.dialect.name == "sqlite":
            connection.execute(
                sa.text(
                    f"CREATE TRIGGER inject_{table} BEFORE INSERT ON {table} "
                    "BEGIN SELECT RAISE(ABORT, 'injected by the test'); END"
                )
            )
        else:
            connection.execute(
                sa.text(
                    "CREATE FUNCTION inject() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN RAISE EXCEPTION 'injected by the test'; END $$"
                )
            )
            connection.execute(
                sa.text(f"CREATE TRIGGER inject_{table} BEFORE INSERT ON {table} EXECUTE FUNCTION inject()")
            )


def remove_insert_error(store: Store, table: str) -> None:
    with store.engine.begin() as connection:
        if connection.dialect.name == "sqlite":
            connection.execute(sa.text(f"DROP TRIGGER inject_{table}"))
        else:
            connection.execute(sa.text(f"DROP TRIGGER inject_{table} ON {table}"))
            connection.execute(sa.text("DROP FUNCTION inject()"))


# 1. A step that raises -------------------------------------------------------------------------------------


def test_an_oserror_in_a_step_fails_its_run_and_runner_up_goes_on_serving_and_deploying(
    tmp_path: Path, database_url: str, repo: GitRepo
) -> None:
    home = tmp_path / "home"
    (home / "pipelines").mkdir(parents=True)
    env = runner_env(home, database_url)
    upgraded = run_cli("db", "upgrade", env=env)
    assert upgraded.returncode == 0, upgraded.stderr
    # The workdir's parent is a file: the git step's mkdir raises FileExistsError, which no step expects.
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the workdir's parent should be\n")
    (home / "pipelines" / "broken.yaml").write_text(
        "on: {repository: acme/app, events: [push], branches: [main]}\n"
        f"workdir: {blocker / 'checkout'}\n"
        f"steps:\n  - git: {{remote: {repo.bare}}}\n"
    )
    (home / "pipelines" / "good.yaml").write_text(
        "on: {repository: acme/app, events: [push], branches: [main]}\n"
        "workdir: checkout\n"
        f"steps:\n  - git: {{remote: {repo.bare}}}\n  - run: cat version.txt\n"
    )
    first = repo.commit({"version.txt": "one\n"}, "one")
    repo.push()
    store = Store(database_url)
    server = Server(home, env, command="up")
    try:

        def details() -> str:
            runs = [(r.id, r.pipeline, r.status, r.reason) for r in reversed(store.runs(limit=50))]
            return f"{server.output()[-6000:]}\nruns: {runs}"

        def finished(pipeline: str, count: int) -> list:
            def check() -> list | None:
                runs = [r for r in reversed(store.runs(pipeline, limit=50)) if r.status in FINISHED]
                return runs if len(runs) >= count else None

            return wait_for(check, f"{count} finished run(s) of {pipeline}", details=details)

        assert (
            server.deliver("push", push_payload("refs/heads/main", ZERO_COMMIT, [(first, "one")])).status
            == 202
        )
        [broken] = finished("broken", 1)
        [good] = finished("good", 1)
        assert broken.status == "failed", details()
        assert "FileExistsError" in (broken.reason or ""), broken.reason
        assert str(blocker) in (broken.reason or ""), broken.reason
        log = Path(broken.log_path or "").read_text()
        assert "Traceback (most recent call last)" in log and "mkdir" in log, log
        [step] = store.steps(broken.id)
        assert (step.status, step.position) == ("failed", 1)
        assert good.status == "succeeded", details()
        assert good.commit == first
        # The process, its endpoint and the broken pipeline's lane are all still there.
        assert server.process.poll() is None, details()
        assert server.get("/healthz").status == 200
        assert failed_names(Queue(home / "queues" / "broken")) == [broken.entry]

        second = repo.commit({"version.txt": "two\n"}, "two")
        repo.push()
        assert server.deliver("push", push_payload("refs/heads/main", first, [(second, "two")])).status == 202
        _, broken_again = finished("broken", 2)
        _, good_again = finished("good", 2)
        assert broken_again.status == "failed" and "FileExistsError" in (broken_again.reason or "")
        assert (good_again.status, good_again.commit) == ("succeeded", second), details()
        assert git("rev-parse", "HEAD", cwd=home / "checkout") == second
        assert server.process.poll() is None, details()
    finally:
        server.stop()
        store.close()


# 2. Routing never blocks the main queue --------------------------------------------------------------------


def test_an_entry_that_cannot_be_routed_moves_to_failed_and_the_next_delivery_deploys_at_once(
    rig: Rig,
) -> None:
    echo_pipeline(rig, "blocked", "acme/blocked")
    app = echo_pipeline(rig, "app", "acme/app")
    # The blocked pipeline's queue path is taken by a file: forwarding to it cannot succeed, ever.
    (rig.home / "queues").mkdir(exist_ok=True)
    (rig.home / "queues" / "blocked").write_text("not a queue\n")
    worker = rig.start_worker()

    stuck = rig.deliver("push", push("acme/blocked", 1))
    sent = time.monotonic()
    later = rig.deliver("push", push("acme/app", 2))
    [run] = rig.runs_of(later, ["succeeded"])
    assert time.monotonic() - sent < 10, "the delivery behind the unroutable one waited"
    assert records(app) == [run.id]

    record = rig.routed(stuck)
    assert record.outcome == "failed", rig.details()
    assert "FileExistsError" in (record.detail or "") and "blocked" in (record.detail or ""), record.detail
    main = rig.queue("main")
    assert main.entries() == []
    [failed] = failed_names(main)
    assert failed == record.entry
    reason = (main.directory / "failed" / f"{failed}.reason").read_text()
    assert "FileExistsError" in reason, reason
    assert json.loads((main.directory / "failed" / failed).read_bytes())["delivery"] == stuck
    # At most one run was made for it, and it says why it never ran; none stays queued.
    [never] = rig.runs(stuck)
    assert (never.pipeline, never.status) == ("blocked", "failed"), rig.details()
    assert unfinished(rig) == [], rig.details()
    assert worker.process.poll() is None, rig.details()
    # One move to failed/, not a retry every few seconds.
    assert worker.output().count(f"main queue entry {failed} moved to failed/") == 1, worker.output()


def test_a_pipeline_queue_removed_by_hand_is_made_again(rig: Rig) -> None:
    app = echo_pipeline(rig, "app", "acme/app")
    worker = rig.start_worker()
    first = rig.deliver("push", push("acme/app", 1))
    [run1] = rig.runs_of(first, ["succeeded"])
    subprocess.run(["rm", "-rf", str(rig.home / "queues" / "app")], check=True)

    second = rig.deliver("push", push("acme/app", 2))
    assert rig.routed(second).outcome == "routed", rig.details()
    [run2] = rig.runs_of(second, ["succeeded"], timeout=20)
    assert records(app) == [run1.id, run2.id]
    assert worker.process.poll() is None


def test_a_database_error_in_routing_keeps_the_entry_until_it_is_routed_once(rig: Rig) -> None:
    app = echo_pipeline(rig, "app", "acme/app")
    first_worker = rig.start_worker()

    # An error once: the entry stays in the main queue, and the next try routes it.
    inject_insert_error(rig.store, "runs")
    once = rig.deliver("push", push("acme/app", 1))
    wait_for(lambda: "failed (try 1 of 3)" in first_worker.output(), "routing to fail", details=rig.details)
    assert rig.queue("main").entries() != [], "the entry left the main queue before it was routed"
    remove_insert_error(rig.store, "runs")
    [run] = rig.runs_of(once, ["succeeded"])
    assert rig.routed(once).outcome == "routed"
    assert records(app) == [run.id]

    # An error, then the worker is killed before it tries again: the next worker routes the entry.
    inject_insert_error(rig.store, "runs")
    seen = len(first_worker.output())
    killed = rig.deliver("push", push("acme/app", 2))
    wait_for(
        lambda: "failed (try 1 of 3)" in first_worker.output()[seen:], "routing to fail", details=rig.details
    )
    first_worker.process.kill()
    first_worker.process.wait(timeout=10)
    [entry] = rig.queue("main").entries()
    assert json.loads((rig.queue("main").directory / entry).read_bytes())["delivery"] == killed
    # Recorded with its runs in one transaction, which failed: not recorded, or (SQLite, whose trigger's error
    # is a constraint's, as a redelivery's is) recorded alone as received. Never as routed.
    record = rig.store.delivery(killed)
    assert record is None or record.outcome == "received", "recorded as routed, yet nothing was run"
    remove_insert_error(rig.store, "runs")

    rig.start_worker()
    [again] = rig.runs_of(killed, ["succeeded"])
    assert rig.routed(killed).outcome == "routed"
    assert records(app) == [run.id, again.id]
    assert rig.queue("main").entries() == [] and failed_names(rig.queue("main")) == []


# 3. One worker per home ------------------------------------------------------------------------------------


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_second_worker_on_the_same_home_is_refused_and_names_the_first(rig: Rig) -> None:
    first = rig.start_worker()
    lock = rig.home / "queues" / ".worker.lock"
    assert lock.read_text().strip() == str(first.pid)
    for command in (["work"], ["up", "--port", "0"]):
        started = time.monotonic()
        refused = subprocess.run(
            [sys.executable, "-m", "runner", *command],
            env=rig.env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        took = time.monotonic() - started
        assert refused.returncode == 1, (command, refused.stdout, refused.stderr)
        assert f"another worker (pid {first.pid})" in refused.stderr, refused.stderr
        # Python's start and imports take most of this; the refusal itself waits at most half a second.
        assert took < 5, took
    assert first.process.poll() is None
    assert lock.read_text().strip() == str(first.pid)

    # A worker killed outright leaves its lock file, but not its lock.
    first.process.kill()
    first.process.wait(timeout=10)
    second = rig.start_worker()
    assert lock.read_text().strip() == str(second.pid)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_commands_refuse_to_write_queues_that_another_user_owns(rig: Rig) -> None:
    require(os.geteuid() == 0, "needs root, to own a directory as another user")
    echo_pipeline(rig, "app", "acme/app")
    queues = rig.home / "queues"
    queues.mkdir(exist_ok=True)
    os.chown(queues, 65534, 65534)
    try:
        before = list(queues.iterdir())
        for command in (["trigger", "app", "--ref", "main"], ["work"]):
            refused = run_cli(*command, env=rig.env, timeout=30)
            assert refused.returncode == 1, (command, refused.stdout, refused.stderr)
            assert f"runner {command[0]} runs as root, but {queues} belongs to " in refused.stderr, (
                refused.stderr
            )
            assert "sudo -u " in refused.stderr, refused.stderr
        assert list(queues.iterdir()) == before, "a refused command wrote into the queues"
        assert rig.runs() == []
    finally:
        os.chown(queues, 0, 0)


# 4. Forwarding is idempotent -------------------------------------------------------------------------------


def test_a_crash_between_forwarding_and_recording_makes_no_second_run(rig: Rig) -> None:
    """The states a kill leaves inside routing, made on disk and in the database as the router makes them
    (no test hook can stop the router at that instant), then a new worker."""
    app = echo_pipeline(rig, "app", "acme/app")
    router_store = Store(rig.database_url)
    try:
        deliveries = [rig.deliver("push", push("acme/app", n)) for n in (1, 2)]
        main = rig.queue("main")
        names = main.entries()
        assert len(names) == 2
        for name, delivery in zip(names, deliveries, strict=True):
            entry = main.read(name)
            assert (
                router_store.begin_routing(
                    delivery,
                    "push",
                    datetime.now(UTC),
                    hook_id=None,
                    entry=name,
                    repository="acme/app",
                    ref="refs/heads/main",
                )
                == "new"
            )
            run, created = router_store.forward_run(
                "app", trigger="push", delivery_id=delivery, ref="refs/heads/main", commit=None
            )
            assert created
            if delivery == deliveries[0]:
                # Killed after the entry was put into the pipeline's queue, before its name was recorded.
                rig.queue("app").put({**entry, "main_entry": name, "run_id": run.id})
            # The second: killed after its run was made, before its entry was put.
    finally:
        router_store.close()

    rig.start_worker()
    runs = [rig.runs_of(delivery, ["succeeded"])[0] for delivery in deliveries]
    assert sorted(records(app)) == sorted(r.id for r in runs), rig.details()
    assert len(rig.runs()) == 2, rig.details()
    for delivery in deliveries:
        assert rig.routed(delivery).outcome == "routed"
    assert rig.queue("app").entries() == [] and rig.queue("main").entries() == []


# 5. Every run ends -----------------------------------------------------------------------------------------


def test_every_run_is_settled_after_a_kill(rig: Rig) -> None:
    slow = rig.tmp / "slow.runs"
    # The step waits (30 s at most) while this file is there: the killed run's step, left running, must be
    # stopped by the next worker before it writes its record, however slow the machine.
    hold = rig.tmp / "hold"
    hold.touch()
    rig.pipeline(
        "slow",
        """
        on: {repository: acme/slow, events: [push], branches: [main]}
        workdir: <WORKDIR>
        # Every entry waits its turn: none is superseded by the one behind it.
        concurrency: {queue: all}
        steps:
          - run: >-
              echo begin; for i in $(seq 300); do test -e <HOLD> || break; sleep 0.1; done;
              echo {{ run_id }} >> <RECORD>
        """,
        WORKDIR=rig.workdir("slow"),
        RECORD=slow,
        HOLD=hold,
    )
    other = echo_pipeline(rig, "other", "acme/other")
    worker = rig.start_worker()
    cut = rig.deliver("push", push("acme/slow", 1))
    running = rig.step_started(cut)
    # Queued behind it: one whose entry an operator removes, one whose entry is garbled.
    removed = rig.deliver("push", push("acme/slow", 2))
    garbled = rig.deliver("push", push("acme/slow", 3))
    wait_for(
        lambda: len(rig.queue("slow").entries()) == 3, "three entries in the slow queue", 10, rig.details
    )
    worker.process.kill()
    worker.process.wait(timeout=10)
    [removed_run] = rig.runs(removed)
    [garbled_run] = rig.runs(garbled)
    assert removed_run.entry and garbled_run.entry
    (rig.home / "queues" / "slow" / removed_run.entry).unlink()
    (rig.home / "queues" / "slow" / garbled_run.entry).write_text("{not json")
    # And a run queued by hand whose entry another kill kept from being written long ago.
    lost = rig.store.create_run("other", trigger="manual", ref="refs/heads/main")
    with rig.store.engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE runs SET queued_at = :t WHERE id = :id"),
            {"t": datetime(2026, 1, 1, tzinfo=UTC), "id": lost},
        )
    assert len(unfinished(rig)) == 4, rig.details()

    rig.start_worker()
    wait_for(lambda: rig.run(running.id).status == "interrupted", "the cut run settled", 20, rig.details)
    hold.unlink()
    statuses = rig.runs_of(cut, ["interrupted", "succeeded"])
    assert statuses[0].id == running.id
    wait_for(lambda: unfinished(rig) == [], "every run to end", 20, rig.details)
    assert rig.run(removed_run.id).status == "failed"
    assert "gone" in (rig.run(removed_run.id).reason or ""), rig.run(removed_run.id).reason
    assert rig.run(garbled_run.id).status == "failed"
    assert "unreadable" in (rig.run(garbled_run.id).reason or ""), rig.run(garbled_run.id).reason
    assert failed_names(rig.queue("slow")) == [garbled_run.entry]
    assert rig.run(lost).status == "failed" and "never reached" in (rig.run(lost).reason or "")
    assert records(slow) == [statuses[1].id]
    assert records(other) == []


def test_runner_logs_stops_following_when_no_worker_is_alive(rig: Rig) -> None:
    rig.pipeline(
        "slow",
        """
        on: {repository: acme/slow, events: [push], branches: [main]}
        workdir: <WORKDIR>
        steps:
          - run: echo begin; sleep 30
        """,
        WORKDIR=rig.workdir("slow"),
    )
    # No worker at all: a queued run's log is not followed forever.
    queued = rig.cli("trigger", "slow", "--ref", "main").stdout.split()[1]
    started = time.monotonic()
    done = run_cli("logs", queued, env=rig.env, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "no worker is running" in done.stderr, done.stderr
    assert time.monotonic() - started < 10

    # A worker that dies during the run: the follower ends too.
    worker = rig.start_worker()
    run = wait_for(
        lambda: (r := rig.run(int(queued))).log_path and "begin" in out_lines(rig.log_of(r)) and r,
        "the step to start",
        details=rig.details,
    )
    follower = subprocess.Popen(
        [sys.executable, "-m", "runner", "logs", str(run.id)],
        env=rig.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1)
        assert follower.poll() is None, "runner logs stopped while the run went on"
        worker.process.send_signal(signal.SIGKILL)
        worker.process.wait(timeout=10)
        out, err = follower.communicate(timeout=10)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    assert "begin" in out, out
    assert "no worker is running" in err, err
    assert alive(os.getpid())


# 6. A deleted or renamed pipeline --------------------------------------------------------------------------


def test_a_deleted_pipelines_waiting_entries_fail_with_the_reason(rig: Rig) -> None:
    old = echo_pipeline(rig, "old", "acme/app")
    # Queued while no worker runs, then the pipeline is renamed: a delete, and a new pipeline.
    waiting = int(rig.cli("trigger", "old", "--ref", "main").stdout.split()[1])
    assert rig.queue("old").entries() != []
    (rig.home / "pipelines" / "old.yaml").rename(rig.home / "pipelines" / "new.yaml")
    worker = rig.start_worker()

    run = rig.finished_run(waiting)
    assert run.status == "failed", rig.details()
    assert run.reason is not None and "pipeline old no longer exists" in run.reason, run.reason
    queue = rig.queue("old")
    assert queue.entries() == [] and failed_names(queue) == [run.entry]
    reason = (queue.directory / "failed" / f"{run.entry}.reason").read_text()
    assert "pipeline old no longer exists" in reason, reason
    assert records(old) == []

    delivery = rig.deliver("push", push("acme/app", 1))
    [deployed] = rig.runs_of(delivery, ["succeeded"])
    assert deployed.pipeline == "new"
    assert records(old) == [deployed.id]  # the renamed file still writes where it did
    time.sleep(2 * 1.0 + 0.5)
    # Said once, not every few seconds.
    assert worker.output().count("moved to failed/: pipeline old no longer exists") == 1, worker.output()


def test_a_ref_longer_than_255_characters_is_recorded_and_the_next_delivery_deploys(rig: Rig) -> None:
    record = rig.tmp / "any.runs"
    rig.pipeline(
        "any",
        """
        on: {repository: acme/app, events: [push], branches: ["**"]}
        workdir: <WORKDIR>
        steps:
          - run: echo {{ run_id }} >> <RECORD>
        """,
        WORKDIR=rig.workdir("any"),
        RECORD=record,
    )
    rig.start_worker()
    # GitHub and git allow branch names far longer than the 255 characters the columns once had.
    branch = "feature/" + "x" * 300
    long = rig.deliver(
        "push", push_payload(f"refs/heads/{branch}", ZERO_COMMIT, [(fake_commit(1), "long")], "acme/app")
    )
    [run] = rig.runs_of(long, ["succeeded"])
    assert run.ref == f"refs/heads/{branch}"
    delivered = rig.store.delivery(long)
    assert delivered is not None and delivered.ref == f"refs/heads/{branch}"
    after = rig.deliver("push", push("acme/app", 2))
    [next_run] = rig.runs_of(after, ["succeeded"])
    assert records(record) == [run.id, next_run.id]
