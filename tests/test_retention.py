"""Retention (``runner prune`` and the worker's daily pass) and ``runner failed`` list, retry and drop.

Real processes throughout: the CLI, a real ``runner work`` for the worker's pass and for the runs a retry
leads to, on SQLite and PostgreSQL. Old history is made by writing past timestamps through the Store (and
past modification times on failed entries), never by waiting.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import textwrap
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Row, func, select, text
from support import PAYLOADS, WorkerProcess, alive, failed_names, run_cli, runner_env, wait_for

from runner import config as config_module
from runner import tables
from runner.config import ConfigError
from runner.queue import Queue
from runner.store import Store

NOW = datetime.now(UTC)


def ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


class Home:
    """A runner home with a migrated database, and the workers a test starts (stopped at the end)."""

    def __init__(self, tmp: Path, database_url: str) -> None:
        self.tmp = tmp
        self.home = tmp / "home"
        (self.home / "pipelines").mkdir(parents=True)
        self.database_url = database_url
        self.env = runner_env(self.home, database_url)
        upgraded = run_cli("db", "upgrade", env=self.env)
        assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
        self.store = Store(database_url)
        self.workers: list[WorkerProcess] = []

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.store.close()

    def cli(self, *args: str, expect: int = 0, **env: str) -> subprocess.CompletedProcess[str]:
        done = run_cli(*args, env={**self.env, **env})
        assert done.returncode == expect, (
            f"runner {' '.join(args)}: {done.returncode}\n{done.stdout}{done.stderr}"
        )
        return done

    def start_worker(self, **env: str) -> WorkerProcess:
        worker = WorkerProcess({**self.env, **env}, self.tmp / f"worker-{len(self.workers) + 1}.log")
        self.workers.append(worker)
        worker.wait_for_line("worker started")
        return worker

    def pipeline(self, name: str, body: str) -> None:
        (self.home / "pipelines" / f"{name}.yaml").write_text(textwrap.dedent(body).lstrip())

    def old_run(
        self,
        pipeline: str,
        status: str,
        days: float,
        *,
        commit: str | None = "c" * 40,
        delivery: str | None = None,
    ) -> int:
        """A run that ended ``days`` ago (queued then, if still queued), with a step and a log file."""
        run_id = self.store.create_run(
            pipeline, trigger="push", delivery_id=delivery, ref="refs/heads/main", commit=commit
        )
        when = ago(days)
        log = self.home / "logs" / pipeline / f"{run_id}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"log of run {run_id}\n")
        fields: dict[str, Any] = {"status": status, "queued_at": when, "log_path": str(log)}
        if status not in ("queued", "running"):
            fields.update(started_at=when, finished_at=when)
            self.store.record_step(
                run_id, 1, "step", status, exit_code=0, detail=None, started_at=when, finished_at=when
            )
        self.store.set_run(run_id, **fields)
        return run_id

    def failed_entry(self, queue: str, data: dict[str, Any], reason: str, days: float = 0) -> str:
        """An entry failed by the queue's own code, ``days`` ago, then moved into ``queue``'s failed/ (a
        queue of its own, so that no running worker takes it first)."""
        scratch = Queue(self.tmp / "scratch" / queue)
        name = scratch.put(data)
        scratch.fail(name, reason)
        scratch.close()
        self.failed_path(queue, name).parent.mkdir(parents=True, exist_ok=True)
        for file in (name, name + ".reason"):
            (scratch.directory / "failed" / file).rename(self.failed_path(queue, file))
            if days:
                when = ago(days).timestamp()
                os.utime(self.failed_path(queue, file), (when, when))
        return name

    def failed_path(self, queue: str, name: str) -> Path:
        return self.home / "queues" / queue / "failed" / name

    def run_ids(self) -> set[int]:
        return {run.id for run in self.store.runs(limit=1000)}

    def step_run_ids(self) -> set[int]:
        with self.store.engine.connect() as connection:
            return set(connection.scalars(select(tables.steps.c.run_id)))

    def delivery_ids(self) -> set[str]:
        with self.store.engine.connect() as connection:
            return set(connection.scalars(select(tables.deliveries.c.delivery_id)))


@pytest.fixture
def home(tmp_path: Path, database_url: str) -> Iterator[Home]:
    home = Home(tmp_path, database_url)
    try:
        yield home
    finally:
        home.close()


def listed(output: str, kind: str) -> set[str]:
    """The items of ``kind`` (run, delivery, failed entry) that ``runner prune`` printed."""
    return set(re.findall(rf"^{kind} (\S+?)(?: of \S+)?:", output, re.MULTILINE))


def push_entry(delivery: str, repository: str = "acme/app") -> dict[str, Any]:
    """A main-queue entry as the webhook endpoint writes it, with GitHub's own push payload."""
    payload = json.loads((PAYLOADS / "push" / "with-new-branch.payload.json").read_bytes())
    payload["ref"] = "refs/heads/main"
    payload["after"] = "a" * 40
    payload["repository"]["full_name"] = repository
    return {
        "event": "push",
        "delivery": delivery,
        "hook_id": "292430182",
        "received_at": NOW.isoformat(),
        "payload": payload,
    }


# Pruning -------------------------------------------------------------------------------------------------


def test_prune_removes_old_history_but_keeps_the_last_runs_and_the_last_success(home: Home) -> None:
    env = {"RUNNER_KEEP_RUNS": "3"}
    deployed = "d" * 40
    a1 = home.old_run("app", "failed", 200, delivery="d-a1")
    a2 = home.old_run("app", "succeeded", 190, commit=deployed)  # the last success with a commit
    a3 = home.old_run("app", "failed", 180)
    a4 = home.old_run("app", "succeeded", 150, commit=None)  # the last success
    a5 = home.old_run("app", "failed", 120, delivery="d-a5")
    a6 = home.old_run("app", "cancelled", 100)
    a7 = home.old_run("app", "queued", 200)  # never pruned: it has not run yet
    o1 = home.old_run("other", "failed", 100)
    o2 = home.old_run("other", "failed", 30)  # younger than 90 days
    others = [
        home.old_run("other", status, days)
        for status, days in (("failed", 3), ("failed", 2), ("succeeded", 1))
    ]
    (home.home / "logs" / "app" / f"{a1}.pgid").write_text("12345\n")
    home.store.record_delivery("d-a1", "push", ago(200), outcome="routed")
    home.store.record_delivery("d-a5", "push", ago(120), outcome="routed")
    home.store.record_delivery("d-unmatched", "push", ago(100), outcome="unmatched", detail="no pipeline")
    home.store.record_delivery("d-unrouted", "push", ago(100))  # still "received": its entry waits
    home.store.record_delivery("d-young", "push", ago(10), outcome="routed")
    old_main = home.failed_entry("main", {"event": "push"}, "the entry has no 'delivery'", days=100)
    old_app = home.failed_entry("app", {"kind": "manual", "run_id": a1}, f"run {a1} failed", days=95)
    young_app = home.failed_entry("app", {"kind": "manual", "run_id": a5}, f"run {a5} failed", days=1)
    orphan = home.failed_path("app", "00000000000000000001.json.reason")
    orphan.write_text("its entry was removed by hand\n")
    os.utime(orphan, (ago(100).timestamp(), ago(100).timestamp()))
    everything = home.run_ids()
    logs = {run.id: Path(str(run.log_path)) for run in home.store.runs(limit=1000)}

    pruned_runs = {a1, a3, o1}
    pruned_deliveries = {"d-a1", "d-unmatched"}
    pruned_failed = {f"main/{old_main}", f"app/{old_app}"}

    dry = home.cli("prune", "--dry-run", **env)
    assert listed(dry.stdout, "run") == {str(r) for r in pruned_runs}, dry.stdout
    assert listed(dry.stdout, "delivery") == pruned_deliveries, dry.stdout
    assert listed(dry.stdout, "failed entry") == pruned_failed, dry.stdout
    assert str(logs[a1]) in dry.stdout and str(orphan) in dry.stdout, dry.stdout
    assert "would remove 3 run(s)" in dry.stderr, dry.stderr
    # A dry run changes nothing.
    assert home.run_ids() == everything
    assert all(path.exists() for path in logs.values())
    assert {"d-a1", "d-unmatched"} <= home.delivery_ids()
    assert home.failed_path("main", old_main).exists() and home.failed_path("app", old_app).exists()
    assert orphan.exists()

    # The age is a setting: at 20 days the 30-day-old run goes too.
    shorter = home.cli("prune", "--dry-run", RUNNER_RETENTION="20d", **env)
    assert listed(shorter.stdout, "run") == {str(r) for r in pruned_runs | {o2}}, shorter.stdout

    done = home.cli("prune", **env)
    assert listed(done.stdout, "run") == {str(r) for r in pruned_runs}, done.stdout
    assert listed(done.stdout, "delivery") == pruned_deliveries, done.stdout
    assert listed(done.stdout, "failed entry") == pruned_failed, done.stdout
    assert home.run_ids() == everything - pruned_runs
    assert home.run_ids() == {a2, a4, a5, a6, a7, o2, *others}
    assert home.step_run_ids() == everything - pruned_runs - {a7}
    for run_id, path in logs.items():
        assert path.exists() == (run_id not in pruned_runs), (run_id, path)
    assert not (home.home / "logs" / "app" / f"{a1}.pgid").exists()
    assert home.delivery_ids() == {"d-a5", "d-unrouted", "d-young"}
    assert not home.failed_path("main", old_main).exists()
    assert not home.failed_path("main", old_main + ".reason").exists()
    assert not home.failed_path("app", old_app).exists()
    assert not home.failed_path("app", old_app + ".reason").exists()
    assert home.failed_path("app", young_app).exists()
    assert not orphan.exists()
    # What `when: changed` compares against is still there.
    assert home.store.last_deployed_commit("app") == deployed

    again = home.cli("prune", **env)
    assert again.stdout == "", again.stdout
    assert "removed 0 run(s)" in again.stderr, again.stderr


def test_the_worker_prunes_when_it_starts(home: Home) -> None:
    old = [home.old_run("app", "failed", days) for days in (300, 200, 100)]
    home.store.record_delivery("d-old", "push", ago(100), outcome="unmatched")
    entry = home.failed_entry("main", {"event": "push"}, "the entry has no 'delivery'", days=100)
    worker = home.start_worker(RUNNER_KEEP_RUNS="1")
    worker.wait_for_line(r"retention: removed 2 run\(s\), 1 delivery\(ies\), 1 failed entry")
    assert home.run_ids() == {old[-1]}
    assert not (home.home / "logs" / "app" / f"{old[0]}.log").exists()
    assert (home.home / "logs" / "app" / f"{old[-1]}.log").exists()
    assert "d-old" not in home.delivery_ids()
    assert not home.failed_path("main", entry).exists()
    assert worker.process.poll() is None
    assert worker.stop() == 0, worker.output()


def test_a_failing_pass_is_logged_and_the_worker_goes_on(home: Home) -> None:
    home.old_run("app", "failed", 200)
    home.old_run("app", "failed", 100)
    # A database the pass cannot delete from: it fails, the worker does not.
    with home.store.engine.begin() as connection:
        connection.execute(text("DROP TABLE steps"))
    worker = home.start_worker(RUNNER_KEEP_RUNS="0")
    worker.wait_for_line(r"retention: the pass failed; it is done again in 86400 s")
    ping = json.loads((PAYLOADS / "ping" / "payload.json").read_bytes())
    delivery = str(uuid.uuid4())
    Queue(home.home / "queues" / "main").put(
        {
            "event": "ping",
            "delivery": delivery,
            "hook_id": "1",
            "received_at": NOW.isoformat(),
            "payload": ping,
        }
    )

    def routed() -> bool:
        record = home.store.delivery(delivery)
        return record is not None and record.outcome == "ping"

    wait_for(routed, "the router to record the ping after the failed pass", details=worker.output)
    assert alive(worker.process.pid)
    assert worker.stop() == 0, worker.output()


def test_retention_settings_are_read_as_durations_and_counts(tmp_path: Path) -> None:
    read = config_module.load
    assert read({"RUNNER_HOME": str(tmp_path)}).retention == 90 * 86400
    assert read({"RUNNER_HOME": str(tmp_path)}).keep_runs == 20
    for raw, seconds in (("90d", 90 * 86400), ("12h", 12 * 3600), ("1d12h", 36 * 3600), ("3600", 3600)):
        assert read({"RUNNER_HOME": str(tmp_path), "RUNNER_RETENTION": raw}).retention == seconds
    assert read({"RUNNER_HOME": str(tmp_path), "RUNNER_KEEP_RUNS": "0"}).keep_runs == 0
    for raw in ("0", "ninety", "12h1d", "-1d", "1 d"):
        with pytest.raises(ConfigError, match="RUNNER_RETENTION"):
            read({"RUNNER_HOME": str(tmp_path), "RUNNER_RETENTION": raw})
    with pytest.raises(ConfigError, match="RUNNER_KEEP_RUNS"):
        read({"RUNNER_HOME": str(tmp_path), "RUNNER_KEEP_RUNS": "-3"})
    done = run_cli("prune", env=runner_env(tmp_path, RUNNER_RETENTION="ninety days"))
    assert done.returncode == 1 and "RUNNER_RETENTION='ninety days' is not a duration" in done.stderr, done


# runner failed -------------------------------------------------------------------------------------------


APP = """
    on: {repository: acme/app, events: [push], branches: [main]}
    workdir: WORKDIR
    steps:
      - name: check
        run: test -f FLAG
      - name: deploy
        run: echo deployed >> DEPLOYED
"""


def test_failed_entries_are_listed_retried_into_real_runs_and_dropped(home: Home) -> None:
    flag, deployed = home.tmp / "flag", home.tmp / "deployed"
    workdir = home.tmp / "work"
    workdir.mkdir()
    home.pipeline(
        "app",
        APP.replace("WORKDIR", str(workdir)).replace("FLAG", str(flag)).replace("DEPLOYED", str(deployed)),
    )
    # A delivery whose routing was given up (recorded so), waiting in main/failed/ before the worker starts.
    delivery = str(uuid.uuid4())
    main_name = home.failed_entry("main", push_entry(delivery), "routing given up: the database refused it")
    home.store.record_delivery(
        delivery,
        "push",
        NOW,
        entry=main_name,
        outcome="failed",
        detail="routing given up: the database refused it",
    )
    home.start_worker()

    queued = home.cli("trigger", "app", "--ref", "main").stdout
    first = int(re.search(r"^run (\d+) queued", queued, re.MULTILINE).group(1))  # type: ignore[union-attr]
    wait_for(
        lambda: (r := home.store.run(first)) is not None and r.status == "failed", f"run {first} to fail"
    )
    [app_name] = failed_names(Queue(home.home / "queues" / "app"))

    table = home.cli("failed").stdout
    assert re.search(rf"^main/{main_name} +\S+ +routing given up: the database refused it$", table, re.M), (
        table
    )
    assert re.search(rf"^app/{app_name} +\S+ +run {first} failed: step 1 \(check\) failed", table, re.M), (
        table
    )
    as_json = {e["entry"]: e for e in json.loads(home.cli("failed", "--json").stdout)}
    assert set(as_json) == {f"main/{main_name}", f"app/{app_name}"}
    assert as_json[f"app/{app_name}"]["reason"].startswith(f"run {first} failed")
    assert "\nlog: " in as_json[f"app/{app_name}"]["reason"]
    assert datetime.fromisoformat(as_json[f"app/{app_name}"]["failed_at"]).utcoffset() == timedelta(0)

    # Retried, the pipeline's entry is carried out by a new run; the failed one stays as it was.
    flag.write_text("")
    retried = home.cli("failed", "retry", f"app/{app_name}").stdout
    match = re.search(
        rf"^run (\d+) queued: pipeline app, app/{app_name} again as (\d{{20}}\.json) \(it was run {first}\)$",
        retried,
        re.M,
    )
    assert match is not None, retried
    second = int(match.group(1))
    assert second != first
    wait_for(
        lambda: (r := home.store.run(second)) is not None and r.status == "succeeded",
        f"run {second} to succeed",
        details=lambda: home.workers[0].output(),
    )
    run = home.store.run(second)
    assert run is not None and (run.trigger, run.ref, run.entry) == (
        "manual",
        "refs/heads/main",
        match.group(2),
    )
    assert home.store.run(first).status == "failed"  # type: ignore[union-attr]
    assert deployed.read_text() == "deployed\n"
    assert not home.failed_path("app", app_name).exists()
    assert not home.failed_path("app", app_name + ".reason").exists()

    # The main queue's entry, by its bare name: routed as a new delivery, to a run that succeeds.
    back = home.cli("failed", "retry", main_name).stdout
    assert re.search(
        rf"^main/{main_name} is back in queues/main as \d{{20}}\.json \(delivery {delivery}\)$", back, re.M
    )

    def routed_run() -> Row[Any] | None:
        runs = [r for r in home.store.runs("app", limit=100) if r.delivery_id == delivery]
        return runs[0] if runs and runs[0].status == "succeeded" else None

    wait_for(routed_run, "the retried delivery's run to succeed", details=lambda: home.workers[0].output())
    record = home.store.delivery(delivery)
    assert record is not None and record.outcome == "routed", record
    assert deployed.read_text() == "deployed\n" * 2
    assert not home.failed_path("main", main_name).exists()
    assert not home.failed_path("main", main_name + ".reason").exists()

    # Put back again, the same delivery would only be counted as a duplicate: refused.
    again = home.failed_entry("main", push_entry(delivery), "copied by hand")
    refused = home.cli("failed", "retry", f"main/{again}", expect=1)
    assert f"delivery {delivery} was routed already" in refused.stderr, refused.stderr
    # One the webhook endpoint did not write would be refused by the router again: refused here.
    foreign = home.failed_entry("main", push_entry(str(uuid.uuid4())), "not written by the webhook endpoint")
    os.chown(home.failed_path("main", foreign), 65534, 65534)
    refused = home.cli("failed", "retry", f"main/{foreign}", expect=1)
    assert "was not written by the webhook endpoint" in refused.stderr, refused.stderr
    assert home.failed_path("main", foreign).exists()

    # Dropped: the entry and its reason are gone, nothing is run.
    for name in (again, foreign):
        assert home.cli("failed", "drop", name).stdout == f"dropped main/{name}\n"
        assert not home.failed_path("main", name).exists()
        assert not home.failed_path("main", name + ".reason").exists()
    listing = home.cli("failed")
    assert listing.stdout == "" and "no failed entries" in listing.stderr
    assert home.cli("failed", "--json").stdout.strip() == "[]"
    queued = select(func.count()).select_from(tables.runs).where(tables.runs.c.status == "queued")
    with home.store.engine.connect() as connection:
        assert connection.scalar(queued) == 0


def test_an_entry_name_never_leads_out_of_the_failed_directories(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = runner_env(home)
    assert run_cli("db", "upgrade", env=env).returncode == 0
    name = "00000000000000000042.json"
    outside = tmp_path / "outside"
    (outside / "failed").mkdir(parents=True)
    targets = [outside / name, outside / "failed" / name, outside / "failed" / f"{name}.reason"]
    for target in targets:
        target.write_text("{}")
    (home / "queues" / "main" / "failed").mkdir(parents=True)
    (home / "queues" / "evil").symlink_to(outside)
    (home / "queues" / "main" / "failed" / "00000000000000000043.json").symlink_to(outside / name)
    specs = [
        f"../outside/{name}",
        f"../outside/failed/{name}",
        f"main/../../outside/{name}",
        f"main/failed/../../../outside/failed/{name}",
        f"evil/{name}",
        f"evil/failed/{name}",
        str(outside / "failed" / name),
        "main/00000000000000000043.json",
        "00000000000000000043.json",
        f"main/x/{name}",
        "..",
        "",
    ]
    for action in ("drop", "retry"):
        for spec in specs:
            done = run_cli("failed", action, spec, env=env)
            assert done.returncode == 1, (action, spec, done.stdout, done.stderr)
            assert re.search(r"does not name a failed entry|there is no failed entry", done.stderr), (
                done.stderr
            )
    assert all(target.exists() for target in targets)
    assert (home / "queues" / "main" / "failed" / "00000000000000000043.json").is_symlink()
    # The symlinked queue is not listed either.
    assert json.loads(run_cli("failed", "--json", env=env).stdout) == []

    # A bare name in two queues names neither.
    for queue in ("main", "app"):
        (home / "queues" / queue / "failed").mkdir(parents=True, exist_ok=True)
        (home / "queues" / queue / "failed" / name).write_text("{}")
    done = run_cli("failed", "drop", name, env=env)
    assert done.returncode == 1 and f"main/{name}, app/{name}" in done.stderr, done.stderr
    assert run_cli("failed", "drop", f"app/{name}", env=env).returncode == 0
    assert run_cli("failed", "drop", name, env=env).returncode == 0
    assert not (home / "queues" / "main" / "failed" / name).exists()
