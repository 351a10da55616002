"""The router and the deployment worker, end to end.

Everything is real: a bare git repository made on disk, a ``runner serve`` process that deliveries are
posted to over HTTP with valid signatures, and ``runner work`` processes that route them and carry out the
pipelines. Each test runs on SQLite and on PostgreSQL (the ``database_url`` fixture).
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import signal
import subprocess
import textwrap
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Row
from support import (
    FINISHED,
    PAYLOADS,
    Server,
    WorkerProcess,
    alive,
    failed_names,
    git,
    run_cli,
    runner_env,
    wait_for,
)

from runner.queue import Queue
from runner.store import Store

ZERO_COMMIT = "0" * 40
# The time stamp the run log puts before each line: 2026-11-25T11:26:03.123456Z
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z"


# Waiting ---------------------------------------------------------------------------------------------------


# Processes -------------------------------------------------------------------------------------------------


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


# Git -------------------------------------------------------------------------------------------------------


class GitRepo:
    """A bare repository, the remote the pipelines deploy from, and a work clone that pushes to it."""

    def __init__(self, root: Path) -> None:
        self.bare = root / "app.git"
        self.work = root / "app-work"
        git("init", "-q", "--bare", "--initial-branch=main", self.bare)
        git("init", "-q", "--initial-branch=main", self.work)
        self.branch = "main"

    def commit(self, files: dict[str, str], message: str, branch: str = "main") -> str:
        if branch != self.branch:
            exists = branch in git("branch", "--list", branch, cwd=self.work)
            git("switch", "-q", *([] if exists else ["-c"]), branch, cwd=self.work)
            self.branch = branch
        for name, content in files.items():
            (self.work / name).parent.mkdir(parents=True, exist_ok=True)
            (self.work / name).write_text(content)
        git("add", "--all", cwd=self.work)
        git("commit", "-q", "--allow-empty", "-m", message, cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work)

    def push(self, branch: str = "main") -> None:
        git("push", "-q", self.bare, f"{branch}:refs/heads/{branch}", cwd=self.work)


# Payloads: GitHub's own, with only the fields a test needs changed ------------------------------------------


def push_payload(
    ref: str,
    before: str,
    commits: list[tuple[str, str]],
    repository: str = "acme/app",
    clone_url: str | None = None,
) -> bytes:
    """A push of ``commits`` (id, message), the last of which becomes the head of ``ref``."""
    payload = json.loads((PAYLOADS / "push" / "with-new-branch.payload.json").read_bytes())
    template = payload["commits"][0]
    after, message = commits[-1]
    payload["ref"] = ref
    payload["before"] = before
    payload["after"] = after
    payload["commits"] = [{**copy.deepcopy(template), "id": id_, "message": msg} for id_, msg in commits]
    payload["head_commit"]["id"] = after
    payload["head_commit"]["message"] = message
    payload["repository"]["full_name"] = repository
    payload["repository"]["clone_url"] = clone_url or f"https://github.com/{repository}.git"
    return json.dumps(payload).encode()


def deletion_payload(ref: str, before: str, repository: str = "acme/app") -> bytes:
    """GitHub's push of a deleted ref (``deleted: true``, ``after`` forty zeros, no head commit)."""
    payload = json.loads((PAYLOADS / "push" / "payload.json").read_bytes())
    assert payload["deleted"] is True and payload["after"] == ZERO_COMMIT and payload["head_commit"] is None
    payload["ref"] = ref
    payload["before"] = before
    payload["repository"]["full_name"] = repository
    payload["repository"]["clone_url"] = f"https://github.com/{repository}.git"
    return json.dumps(payload).encode()


def fake_commit(n: int) -> str:
    """A commit id for pipelines that never look at the repository."""
    return f"{n:040x}"


# The rig: a runner home, its database, a server, and the workers a test starts ----------------------------


class Rig:
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
        self.server = Server(self.home, self.env)

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.server.stop()
        self.store.close()

    # Set-up ------------------------------------------------------------------------------------------------

    def pipeline(self, name: str, text: str, **values: str | Path) -> Path:
        """Write ``pipelines/<name>.yaml``; ``<KEY>`` in ``text`` is replaced by ``values[KEY]``."""
        text = textwrap.dedent(text).lstrip("\n")
        for key, value in values.items():
            text = text.replace(f"<{key}>", str(value))
        assert not re.search(r"<[A-Z_]+>", text), text
        path = self.home / "pipelines" / f"{name}.yaml"
        # Written whole and renamed, as an editor saving a file does: a reload never sees half of it.
        temp = path.with_name(f".{name}.yaml.tmp")
        temp.write_text(text)
        temp.rename(path)
        return path

    def workdir(self, name: str) -> Path:
        path = self.tmp / f"work-{name}"
        path.mkdir(exist_ok=True)
        return path

    def start_worker(self, **env: str) -> WorkerProcess:
        worker = WorkerProcess(
            runner_env(self.home, self.database_url, **env), self.tmp / f"worker-{len(self.workers) + 1}.log"
        )
        self.workers.append(worker)
        worker.wait_started()
        return worker

    # Acting ------------------------------------------------------------------------------------------------

    def deliver(self, event: str, body: bytes, delivery: str | None = None) -> str:
        answer = self.server.deliver(event, body, delivery)
        assert answer.status == 202, (answer.status, answer.body)
        return answer.json()["delivery"]

    def cli(self, *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
        done = run_cli(*args, env=self.env)
        assert done.returncode == expect, (
            f"runner {' '.join(args)}: {done.returncode}\n{done.stdout}{done.stderr}"
        )
        return done

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args).stdout)

    # Looking -----------------------------------------------------------------------------------------------

    def runs(self, delivery: str | None = None, pipeline: str | None = None) -> list[Row[Any]]:
        """Runs, oldest first."""
        runs = list(reversed(self.store.runs(pipeline, limit=1000)))
        return [r for r in runs if delivery is None or r.delivery_id == delivery]

    def run(self, run_id: int) -> Row[Any]:
        run = self.store.run(run_id)
        assert run is not None, f"there is no run {run_id}"
        return run

    def steps(self, run_id: int) -> list[Row[Any]]:
        return self.store.steps(run_id)

    def routed(self, delivery: str, timeout: float = 30) -> Row[Any]:
        """The delivery's record, once the router has recorded what became of it."""

        def check() -> Row[Any] | None:
            record = self.store.delivery(delivery)
            return record if record is not None and record.outcome != "received" else None

        return wait_for(check, f"delivery {delivery} to be routed", timeout, self.details)

    def finished_run(self, run_id: int, timeout: float = 30) -> Row[Any]:
        def check() -> Row[Any] | None:
            run = self.store.run(run_id)
            return run if run is not None and run.status in FINISHED else None

        return wait_for(check, f"run {run_id} to finish", timeout, self.details)

    def runs_of(
        self, delivery: str, statuses: list[str], timeout: float = 30, pipeline: str | None = None
    ) -> list[Row[Any]]:
        """Wait until the delivery's runs (oldest first) have exactly these statuses."""

        def check() -> list[Row[Any]] | None:
            runs = self.runs(delivery, pipeline)
            found = sorted(r.status for r in runs)
            if found == sorted(statuses):
                return runs
            if len(runs) >= len(statuses) and all(status in FINISHED for status in found):
                pytest.fail(f"runs of delivery {delivery} are {found}, not {statuses}\n{self.details()}")
            return None

        return wait_for(check, f"runs of delivery {delivery} to be {statuses}", timeout, self.details)

    def step_started(self, delivery: str) -> Row[Any]:
        """The delivery's first run, once its step has printed ``begin``."""

        def check() -> Row[Any] | None:
            runs = self.runs(delivery)
            if runs and runs[0].log_path and "begin" in out_lines(self.log_of(runs[0])):
                return runs[0]
            return None

        return wait_for(check, "the step to start", details=self.details)

    def log_of(self, run: Row[Any]) -> str:
        assert run.log_path, f"run {run.id} has no log"
        path = Path(run.log_path)
        return path.read_text(errors="replace") if path.exists() else ""

    def queue(self, pipeline: str) -> Queue:
        return Queue(self.home / "queues" / pipeline)

    def details(self, run: Row[Any] | None = None) -> str:
        """What a failing assertion shows: the processes' output, the runs, and a run's log."""
        parts = [f"--- worker {w.pid} ({w.log_path}):\n{w.output()[-6000:]}" for w in self.workers]
        parts.append(f"--- runner serve:\n{self.server.output()[-2000:]}")
        for r in self.runs()[-10:]:
            parts.append(f"--- run {r.id} {r.pipeline} {r.status} {r.reason or ''} delivery {r.delivery_id}")
            for s in self.steps(r.id):
                parts.append(f"    step {s.position} {s.name}: {s.status} {s.exit_code} {s.detail or ''}")
        if run is not None and run.log_path:
            parts.append(f"--- log of run {run.id}:\n{self.log_of(run)[-4000:]}")
        return "\n".join(parts)


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


def out_lines(log: str) -> list[str]:
    """What the steps printed on standard output, without the log's time stamps."""
    return [m.group(1) for m in re.finditer(rf"^{STAMP} out +\| (.*)$", log, re.MULTILINE)]


def when(value: str | datetime | None) -> datetime:
    assert value is not None
    return datetime.fromisoformat(value) if isinstance(value, str) else value


# 1. End to end ---------------------------------------------------------------------------------------------

APP_PIPELINE = """
    on:
      repository: acme/app
      events: [push]
      branches: [main]
    workdir: checkout
    steps:
      - git: {remote: <REMOTE>}
      - name: show
        run: echo deployed {{ commit }} && cat version.txt
"""


def test_a_push_deploys_exactly_the_pushed_commit_and_nothing_else_is_deployed(
    rig: Rig, repo: GitRepo
) -> None:
    first = repo.commit({"version.txt": "version one\n"}, "first version")
    second = repo.commit({"version.txt": "version two\n"}, "second version")
    repo.push("main")
    rig.pipeline("app", APP_PIPELINE, REMOTE=repo.bare)
    rig.start_worker()

    body = push_payload("refs/heads/main", first, [(second, "second version")], clone_url=str(repo.bare))
    delivery = rig.deliver("push", body)
    assert rig.routed(delivery).outcome == "routed", rig.details()
    [run] = rig.runs_of(delivery, ["succeeded"])
    assert (run.pipeline, run.trigger, run.ref, run.commit) == ("app", "push", "refs/heads/main", second)

    # The workdir holds exactly the pushed commit, detached from any branch.
    checkout = rig.home / "checkout"
    assert git("rev-parse", "HEAD", cwd=checkout) == second
    symbolic = subprocess.run(["git", "symbolic-ref", "-q", "HEAD"], cwd=checkout, check=False)
    assert symbolic.returncode == 1, "HEAD is on a branch, not detached"
    assert (checkout / "version.txt").read_text() == "version two\n"

    # The run's log: the run step's output, line by line, time-stamped.
    [listed] = [r for r in rig.cli_json("runs", "--json") if r["id"] == run.id]
    assert listed["status"] == "succeeded"
    assert [s["status"] for s in listed["steps"]] == ["succeeded", "succeeded"]
    log = Path(listed["log"]).read_text()
    assert re.search(rf"^{STAMP} out +\| deployed {second}$", log, re.MULTILINE), log
    assert re.search(rf"^{STAMP} out +\| version two$", log, re.MULTILINE), log

    table = rig.cli("runs").stdout
    assert re.search(rf"^{run.id} +app +succeeded +push +main +{second[:12]} ", table, re.MULTILINE), table
    logs = rig.cli("logs", str(run.id), "--no-follow")
    assert logs.stdout == log
    assert f"run {run.id}: succeeded" in logs.stderr

    # GitHub's redelivery carries the same delivery id: recorded as a duplicate, not run again.
    assert rig.deliver("push", body, delivery) == delivery
    wait_for(
        lambda: (d := rig.store.delivery(delivery)) is not None and d.duplicates == 1,
        "the redelivery to be counted",
        details=rig.details,
    )

    # A push to another branch: recorded, not run, and the record says which branch did not match.
    dev = repo.commit({"dev.txt": "work in progress\n"}, "dev work", branch="dev")
    repo.push("dev")
    dev_delivery = rig.deliver(
        "push", push_payload("refs/heads/dev", ZERO_COMMIT, [(dev, "dev work")], clone_url=str(repo.bare))
    )
    unmatched = rig.routed(dev_delivery)
    assert unmatched.outcome == "unmatched", rig.details()
    assert re.search(r"\bdev\b", unmatched.detail or ""), unmatched.detail

    # A ping: recorded as such.
    ping = rig.deliver("ping", (PAYLOADS / "ping" / "payload.json").read_bytes())
    assert rig.routed(ping).outcome == "ping"

    # A deletion of main: nothing to deploy.
    deletion = rig.deliver("push", deletion_payload("refs/heads/main", second))
    deleted = rig.routed(deletion)
    assert deleted.outcome != "routed", rig.details()
    assert "deleted" in (deleted.detail or "").lower(), deleted.detail

    assert [r.id for r in rig.runs()] == [run.id], rig.details()
    assert git("rev-parse", "HEAD", cwd=checkout) == second
    recorded = {d["delivery"]: d for d in rig.cli_json("deliveries", "--json")}
    assert (recorded[delivery]["outcome"], recorded[delivery]["duplicates"]) == ("routed", 1)
    assert (recorded[delivery]["repository"], recorded[delivery]["ref"]) == ("acme/app", "refs/heads/main")
    assert recorded[dev_delivery]["outcome"] == "unmatched"
    assert recorded[ping]["outcome"] == "ping"
    assert recorded[deletion]["outcome"] == deleted.outcome
    assert rig.queue("app").entries() == [] and failed_names(rig.queue("app")) == []
    assert rig.queue("main").entries() == []
    # Nothing went wrong, so the worker reported nothing wrong.
    said = rig.workers[0].output()
    assert " ERROR " not in said and "Traceback" not in said, said


# 2. Ordering -----------------------------------------------------------------------------------------------


def test_runs_of_a_pipeline_are_serial_in_delivery_order_and_pipelines_run_side_by_side(rig: Rig) -> None:
    order = rig.tmp / "order.txt"
    rig.pipeline(
        "serial",
        """
        on: {repository: acme/serial, events: [push], branches: [main]}
        workdir: <WORKDIR>
        steps:
          - name: record
            run: >-
              echo start {{ event.head_commit.message }} >> <ORDER>;
              sleep 1;
              echo end {{ event.head_commit.message }} >> <ORDER>
        """,
        WORKDIR=rig.workdir("serial"),
        ORDER=order,
    )
    for name in ("left", "right"):
        rig.pipeline(
            name,
            """
            on: {repository: acme/both, events: [push], branches: [main]}
            workdir: <WORKDIR>
            steps:
              - run: sleep 2
            """,
            WORKDIR=rig.workdir(name),
        )
    rig.start_worker()

    first = rig.deliver(
        "push", push_payload("refs/heads/main", ZERO_COMMIT, [(fake_commit(1), "1")], "acme/serial")
    )
    second = rig.deliver(
        "push", push_payload("refs/heads/main", fake_commit(1), [(fake_commit(2), "2")], "acme/serial")
    )
    both = rig.deliver(
        "push", push_payload("refs/heads/main", ZERO_COMMIT, [(fake_commit(3), "3")], "acme/both")
    )

    [run1] = rig.runs_of(first, ["succeeded"])
    [run2] = rig.runs_of(second, ["succeeded"])
    assert order.read_text().splitlines() == ["start 1", "end 1", "start 2", "end 2"], rig.details()
    assert run1.id < run2.id
    assert when(run2.started_at) >= when(run1.finished_at), rig.details()

    runs = rig.runs_of(both, ["succeeded", "succeeded"])
    assert {r.pipeline for r in runs} == {"left", "right"}
    left, right = runs
    assert when(left.started_at) < when(right.finished_at), rig.details()
    assert when(right.started_at) < when(left.finished_at), rig.details()


# 3. Failure ------------------------------------------------------------------------------------------------


def test_a_failed_step_fails_the_run_keeps_its_entry_aside_and_the_worker_goes_on(
    rig: Rig, repo: GitRepo
) -> None:
    deployed = rig.tmp / "deployed.txt"
    rig.pipeline(
        "app",
        """
        on: {repository: acme/app, events: [push], branches: [main]}
        workdir: checkout
        steps:
          - git: {remote: <REMOTE>}
          - name: check
            run: test -f ok || exit 3
          - name: deploy
            run: echo {{ commit }} >> <DEPLOYED>
        """,
        REMOTE=repo.bare,
        DEPLOYED=deployed,
    )
    bad = repo.commit({"version.txt": "broken\n"}, "broken")
    repo.push()
    rig.start_worker()

    delivery = rig.deliver("push", push_payload("refs/heads/main", ZERO_COMMIT, [(bad, "broken")]))
    [run] = rig.runs_of(delivery, ["failed"])
    [listed] = [r for r in rig.cli_json("runs", "--json") if r["id"] == run.id]
    steps = [(s["position"], s["name"], s["status"], s["exit_code"]) for s in listed["steps"]]
    assert steps == [(1, steps[0][1], "succeeded", 0), (2, "check", "failed", 3)], rig.details(run)
    assert "check" in (listed["reason"] or ""), listed["reason"]
    assert not deployed.exists(), "a step after the failed one ran"

    queue = rig.queue("app")
    assert queue.entries() == []
    assert failed_names(queue) == [run.entry]
    reason = (queue.directory / "failed" / f"{run.entry}.reason").read_text()
    assert "check" in reason and "step 2" in reason, reason
    assert json.loads((queue.directory / "failed" / str(run.entry)).read_bytes())["delivery"] == delivery

    good = repo.commit({"ok": ""}, "fixed")
    repo.push()
    later = rig.deliver("push", push_payload("refs/heads/main", bad, [(good, "fixed")]))
    [run2] = rig.runs_of(later, ["succeeded"])
    assert deployed.read_text() == f"{good}\n"
    assert git("rev-parse", "HEAD", cwd=rig.home / "checkout") == good
    assert queue.entries() == [] and failed_names(queue) == [run.entry]
    assert [s.status for s in rig.steps(run2.id)] == ["succeeded"] * 3


# 4. Timeout ------------------------------------------------------------------------------------------------


def test_a_step_over_its_time_limit_is_killed_with_its_children(rig: Rig) -> None:
    shell_pid, child_pid = rig.tmp / "shell.pid", rig.tmp / "child.pid"
    never = rig.tmp / "never"
    rig.pipeline(
        "hang",
        """
        on: {repository: acme/app, events: [push], branches: [main]}
        workdir: <WORKDIR>
        steps:
          - name: hang
            run: sh -c 'echo $$ > <SHELL_PID>; sleep 300 & echo $! > <CHILD_PID>; sleep 300'
            timeout: 2s
          - name: never
            run: touch <NEVER>
        """,
        WORKDIR=rig.workdir("hang"),
        SHELL_PID=shell_pid,
        CHILD_PID=child_pid,
        NEVER=never,
    )
    rig.start_worker()
    started = time.monotonic()
    delivery = rig.deliver("push", push_payload("refs/heads/main", ZERO_COMMIT, [(fake_commit(1), "hang")]))
    [run] = rig.runs_of(delivery, ["failed"], timeout=30)
    took = time.monotonic() - started
    [step] = rig.steps(run.id)
    assert (step.name, step.status) == ("hang", "timed_out"), rig.details(run)
    assert 1.5 <= step.duration < 10, step.duration
    assert took < 15, took
    assert not never.exists()

    pids = [read_pid(shell_pid), read_pid(child_pid)]
    assert None not in pids, pids
    wait_for(
        lambda: not any(alive(pid) for pid in pids if pid is not None),
        f"the step's shell and its background child {pids} to be gone",
        timeout=5,
        details=rig.details,
    )


# 5. Crash --------------------------------------------------------------------------------------------------


def test_a_run_cut_short_by_a_crash_is_run_again_by_the_next_worker(rig: Rig) -> None:
    order = rig.tmp / "order.txt"
    rig.pipeline(
        "slow",
        """
        on: {repository: acme/app, events: [push], branches: [main]}
        workdir: <WORKDIR>
        steps:
          - name: slow
            run: >-
              echo start {{ run_id }} >> <ORDER>; echo begin; sleep 3;
              echo end {{ run_id }} >> <ORDER>; echo end
        """,
        WORKDIR=rig.workdir("slow"),
        ORDER=order,
    )
    first_worker = rig.start_worker()
    delivery = rig.deliver("push", push_payload("refs/heads/main", ZERO_COMMIT, [(fake_commit(1), "slow")]))
    first = rig.step_started(delivery)
    first_worker.process.kill()
    first_worker.process.wait(timeout=10)
    assert rig.run(first.id).status == "running"
    assert rig.queue("slow").entries() == [first.entry]

    rig.start_worker()
    runs = rig.runs_of(delivery, ["interrupted", "succeeded"], timeout=30)
    assert [r.status for r in runs] == ["interrupted", "succeeded"], rig.details()
    interrupted, succeeded = runs
    assert interrupted.id == first.id and interrupted.finished_at is not None
    assert succeeded.entry == first.entry
    assert out_lines(rig.log_of(succeeded)) == ["begin", "end"], rig.details(succeeded)
    assert rig.queue("slow").entries() == [] and failed_names(rig.queue("slow")) == []
    assert rig.routed(delivery).outcome == "routed"
    # Two runs of a pipeline never overlap, not even an interrupted one and the run that does it again: what
    # the interrupted run started is gone (or done) before the new run starts.
    a, b = interrupted.id, succeeded.id
    assert order.read_text().splitlines() in (
        [f"start {a}", f"start {b}", f"end {b}"],
        [f"start {a}", f"end {a}", f"start {b}", f"end {b}"],
    ), f"the interrupted run's step went on beside the new run:\n{order.read_text()}"


# 6. Script injection ---------------------------------------------------------------------------------------


def test_values_from_the_event_never_change_the_shape_of_a_command(rig: Rig) -> None:
    markers = [rig.tmp / f"MARKER{i}" for i in range(1, 5)]
    rig.pipeline(
        "echo",
        """
        on: {repository: acme/app, events: [push], branches: ["**"]}
        workdir: <WORKDIR>
        steps:
          - name: shell
            run: echo {{ branch }} {{ event.head_commit.message }}
          - name: argv
            run: [echo, "{{ branch }}", "{{ event.head_commit.message }}"]
          - name: quoted
            run: echo "{{ branch }}" '{{ event.head_commit.message }}'
        """,
        WORKDIR=rig.workdir("echo"),
    )
    rig.start_worker()
    branch = f"main;touch {markers[0]}"
    # Each of these would run if the value reached the shell unquoted: the quotes in it are balanced.
    message = f"fix $(touch {markers[1]}) and `touch {markers[2]}`, 'single' \"double\"\ntouch {markers[3]}"
    # And a value with lone quotes, which would break the command line if it were not quoted.
    lone = "it's a \" and a ' and a \\"
    deliveries = [
        rig.deliver("push", push_payload(f"refs/heads/{branch}", ZERO_COMMIT, [(fake_commit(1), message)])),
        rig.deliver("push", push_payload("refs/heads/main", ZERO_COMMIT, [(fake_commit(2), lone)])),
    ]
    runs = [rig.runs_of(delivery, ["succeeded"])[0] for delivery in deliveries]
    for marker in markers:
        assert not marker.exists(), f"{marker} was created: a value from the event ran as a command"
    for run, (ref, text) in zip(runs, [(branch, message), ("main", lone)], strict=True):
        printed = f"{ref} {text}".splitlines()
        assert out_lines(rig.log_of(run)) == printed * 3, rig.details(run)
        # The script the log shows holds references, the values follow it, shell-quoted.
        assert '$ echo "${RUNNER_EXPR_1}" "${RUNNER_EXPR_2}"' in rig.log_of(run), rig.details(run)
        assert f"RUNNER_EXPR_1={shlex.quote(ref)}" in rig.log_of(run), rig.details(run)

    # An expression where the shell would read its value again as code is refused before anything runs.
    bad = rig.tmp / "quoted.yaml"
    bad.write_text(
        textwrap.dedent(
            """\
            on: {repository: acme/app, events: [push], branches: [main]}
            workdir: /tmp
            steps:
              - run: echo $(( {{ branch }} ))
            """
        )
    )
    refused = rig.cli("validate", str(bad), expect=1)
    output = refused.stdout + refused.stderr
    where = re.search(rf"{re.escape(str(bad))}:(\d+):(\d+)", output)
    assert where is not None, output
    assert int(where.group(1)) == 4 and int(where.group(2)) >= 1, output
    assert "arithmetic" in output, output


PIPELINE_HEAD = """\
on: {repository: acme/app, events: [push], branches: [main]}
workdir: /tmp
steps:
"""
# Where a shell reads a variable's value again as code, or would not expand it; each step starts on line 4.
QUOTING_HOLES = {
    # bash evaluates array subscripts in arithmetic: a value a[$(cmd)] runs cmd, even from a variable.
    "arithmetic": "  - run: echo $(( {{ event.head_commit.message }} ))\n",
    "test-arithmetic": "  - run: |\n      # don't\n      [[ {{ event.head_commit.message }} -gt 0 ]]\n",
    "assigned-then-arithmetic": "  - run: N={{ event.head_commit.message }}; echo $((N + 1))\n",
    "eval": "  - run: eval echo {{ event.head_commit.message }}\n",
    "shell-c": "  - run: bash -c 'echo {{ event.head_commit.message }}'\n",
    "argv-shell-c": "  - run: [sh, -c, 'echo {{ event.head_commit.message }}']\n",
    # A quoted here-document or a backslash: the shell would not expand the variable at all.
    "quoted-heredoc": "  - run: |\n      cat <<'EOF'\n      {{ event.head_commit.message }}\n      EOF\n",
    "backslash": "  - run: echo \\{{ event.head_commit.message }}\n",
}


def test_validation_refuses_an_expression_where_the_shell_reads_its_value_again(
    tmp_path: Path, database_url: str
) -> None:
    paths = []
    for name, step in QUOTING_HOLES.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(PIPELINE_HEAD + step)
        paths.append(path)
    refused = run_cli("validate", *map(str, paths), env=runner_env(tmp_path, database_url))
    output = refused.stdout + refused.stderr
    assert refused.returncode == 1, output
    for path in paths:
        assert re.search(rf"{re.escape(str(path))}:[4-6]:\d+", output), (
            f"{path.name} was not refused:\n{output}"
        )


# 7. Manual trigger -----------------------------------------------------------------------------------------


def test_a_run_triggered_by_hand_deploys_a_ref_or_rolls_back_to_a_commit(rig: Rig, repo: GitRepo) -> None:
    first = repo.commit({"version.txt": "version one\n"}, "first version")
    second = repo.commit({"version.txt": "version two\n"}, "second version")
    repo.push("main")
    rig.pipeline("app", APP_PIPELINE, REMOTE=repo.bare)
    rig.start_worker()
    checkout = rig.home / "checkout"

    queued = rig.cli("trigger", "app", "--ref", "main").stdout
    match = re.search(r"^run (\d+) queued", queued, re.MULTILINE)
    assert match is not None, queued
    run = rig.finished_run(int(match.group(1)))
    assert run.status == "succeeded", rig.details(run)
    assert (run.trigger, run.ref, run.commit) == ("manual", "refs/heads/main", second)
    assert git("rev-parse", "HEAD", cwd=checkout) == second
    assert f"deployed {second}" in out_lines(rig.log_of(run))

    queued = rig.cli("trigger", "app", "--commit", first).stdout
    match = re.search(r"^run (\d+) queued", queued, re.MULTILINE)
    assert match is not None, queued
    rollback = rig.finished_run(int(match.group(1)))
    assert rollback.status == "succeeded", rig.details(rollback)
    assert (rollback.trigger, rollback.commit) == ("manual", first)
    assert git("rev-parse", "HEAD", cwd=checkout) == first
    assert (checkout / "version.txt").read_text() == "version one\n"
    assert out_lines(rig.log_of(rollback)) == [f"deployed {first}", "version one"]
    assert rig.queue("app").entries() == []


WHEN_PIPELINE = """
    on:
      repository: acme/app
      events: [push]
      branches: [main]
    workdir: checkout
    steps:
      - git: {remote: <REMOTE>}
      - name: docs
        run: echo docs changed
        when: {changed: ["docs/**"]}
      - name: server
        run: echo server changed
        when: {changed: ["server/**"]}
      - name: only on main
        run: echo on main
        when: {if: "branch == 'main'"}
      - name: never
        run: echo never
        when: {if: "branch == 'release'"}
"""


def test_when_skips_steps_by_changed_files_and_by_condition_and_says_why(rig: Rig, repo: GitRepo) -> None:
    repo.commit({"docs/index.md": "one\n", "server/app.py": "one\n"}, "first version")
    repo.push("main")
    rig.pipeline("app", WHEN_PIPELINE, REMOTE=repo.bare)
    rig.start_worker()

    def deploy() -> tuple[Row[Any], dict[str, Row[Any]]]:
        queued = rig.cli("trigger", "app", "--ref", "main").stdout
        match = re.search(r"^run (\d+) queued", queued, re.MULTILINE)
        assert match is not None, queued
        run = rig.finished_run(int(match.group(1)))
        assert run.status == "succeeded", rig.details(run)
        return run, {step.name: step for step in rig.steps(run.id)}

    # Nothing deployed before: every file counts as changed.
    first, steps = deploy()
    assert [steps[name].status for name in ("docs", "server", "only on main", "never")] == [
        "succeeded",
        "succeeded",
        "succeeded",
        "skipped",
    ]
    assert steps["never"].detail == "the condition \"branch == 'release'\" is false"

    second_commit = repo.commit({"server/app.py": "two\n"}, "server only")
    repo.push("main")
    second, steps = deploy()
    assert second.commit == second_commit
    assert steps["docs"].status == "skipped"
    assert steps["docs"].detail == f"no file changed since {first.commit} matches [docs/**]"
    assert steps["server"].status == "succeeded"
    assert "docs changed" not in out_lines(rig.log_of(second))
    assert "server changed" in out_lines(rig.log_of(second))


# 8. Reload -------------------------------------------------------------------------------------------------


def test_pipeline_files_are_reloaded_and_an_invalid_one_keeps_its_last_valid_version(rig: Rig) -> None:
    echo = """
        on: {repository: <REPOSITORY>, events: [push], branches: [main]}
        workdir: <WORKDIR>
        steps:
          - run: echo <WORDS>
    """
    rig.pipeline("first", echo, REPOSITORY="acme/first", WORKDIR=rig.workdir("first"), WORDS="first version")
    worker = rig.start_worker()

    rig.pipeline("second", echo, REPOSITORY="acme/second", WORKDIR=rig.workdir("second"), WORDS="second one")
    # A worker that has taken a pipeline in gives it a queue.
    wait_for(
        lambda: (rig.home / "queues" / "second").is_dir(), "the new pipeline to be loaded", 10, rig.details
    )
    added = rig.deliver(
        "push", push_payload("refs/heads/main", ZERO_COMMIT, [(fake_commit(1), "x")], "acme/second")
    )
    assert rig.routed(added).detail == "forwarded to second", rig.details()
    [run] = rig.runs_of(added, ["succeeded"])
    assert out_lines(rig.log_of(run)) == ["second one"]

    seen = len(worker.output())
    broken = rig.home / "pipelines" / "first.yaml"
    broken.write_text("on: {repository: acme/first, events: [push]\nsteps: [\n")

    def refusal() -> str | None:
        said = worker.output()[seen:]
        return said if "first.yaml" in said else None

    # The worker says why it refused the file; if it does not, the delivery below is still checked, after
    # more than two reload intervals.
    deadline = time.monotonic() + 5
    while refusal() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    kept = rig.deliver(
        "push", push_payload("refs/heads/main", ZERO_COMMIT, [(fake_commit(2), "y")], "acme/first")
    )
    assert rig.routed(kept).outcome == "routed", rig.details()
    [run] = rig.runs_of(kept, ["succeeded"])
    assert out_lines(rig.log_of(run)) == ["first version"], rig.details(run)
    said = refusal()
    assert said is not None, f"the worker did not say why it refused first.yaml:\n{worker.output()}"
    assert worker.process.poll() is None, rig.details()


# 9. SIGTERM ------------------------------------------------------------------------------------------------


def test_a_stopped_worker_lets_the_step_finish_and_leaves_the_rest_for_the_next_one(rig: Rig) -> None:
    after = rig.tmp / "after"
    rig.pipeline(
        "graceful",
        """
        on: {repository: acme/app, events: [push], branches: [main]}
        workdir: <WORKDIR>
        steps:
          - name: slow
            run: echo begin; sleep 2; echo end
          - name: after
            run: echo {{ run_id }} >> <AFTER>
        """,
        WORKDIR=rig.workdir("graceful"),
        AFTER=after,
    )
    worker = rig.start_worker(RUNNER_STOP_GRACE="30")
    delivery = rig.deliver("push", push_payload("refs/heads/main", ZERO_COMMIT, [(fake_commit(1), "slow")]))
    first = rig.step_started(delivery)
    asked = time.monotonic()
    worker.process.send_signal(signal.SIGTERM)
    try:
        code = worker.process.wait(timeout=2 + 8)
    except subprocess.TimeoutExpired:
        pytest.fail(f"runner work did not exit after SIGTERM\n{rig.details(first)}")
    took = time.monotonic() - asked
    assert code == 0, rig.details(first)
    assert took < 2 + 5, took
    first = rig.run(first.id)
    assert first.status == "cancelled", rig.details(first)
    assert [(s.name, s.status) for s in rig.steps(first.id)] == [("slow", "succeeded")], rig.details(first)
    assert out_lines(rig.log_of(first)) == ["begin", "end"]
    assert not after.exists(), "a step started after the worker was asked to stop"
    assert rig.queue("graceful").entries() == [first.entry]

    rig.start_worker()
    runs = rig.runs_of(delivery, ["cancelled", "succeeded"])
    assert runs[0].id == first.id and runs[1].entry == first.entry
    assert after.read_text() == f"{runs[1].id}\n"
    wait_for(lambda: rig.queue("graceful").entries() == [], "the entry to be removed", 10, rig.details)


def test_a_step_that_outlasts_the_stop_grace_is_killed(rig: Rig) -> None:
    pid_file, after = rig.tmp / "step.pid", rig.tmp / "after"
    rig.pipeline(
        "long",
        """
        on: {repository: acme/app, events: [push], branches: [main]}
        workdir: <WORKDIR>
        steps:
          - name: long
            run: echo $$ > <PID_FILE>; echo begin; sleep 60
          - name: after
            run: touch <AFTER>
        """,
        WORKDIR=rig.workdir("long"),
        PID_FILE=pid_file,
        AFTER=after,
    )
    worker = rig.start_worker(RUNNER_STOP_GRACE="1")
    delivery = rig.deliver("push", push_payload("refs/heads/main", ZERO_COMMIT, [(fake_commit(1), "long")]))
    run = rig.step_started(delivery)
    step_pid = read_pid(pid_file)
    assert step_pid is not None and alive(step_pid)
    asked = time.monotonic()
    worker.process.send_signal(signal.SIGTERM)
    try:
        code = worker.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail(f"runner work did not exit after SIGTERM\n{rig.details(run)}")
    took = time.monotonic() - asked
    assert code == 0, rig.details(run)
    assert 0.9 <= took < 6, took
    assert not alive(step_pid), "the step's process outlived the worker"
    run = rig.run(run.id)
    assert run.status == "cancelled", rig.details(run)
    [step] = rig.steps(run.id)
    assert (step.name, step.status) == ("long", "cancelled"), rig.details(run)
    assert step.duration < 6, step.duration
    assert not after.exists()
    assert rig.queue("long").entries() == [run.entry]
