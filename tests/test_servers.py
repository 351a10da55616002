"""Several servers on one PostgreSQL database: each one's deliveries, runs and deployed commits are its own.

Two runner homes with two server names (RUNNER_SERVER_NAME), each a real ``runner up`` on its own loopback
port with its own worker, share one real PostgreSQL database; the pipelines deploy from a real git
repository. The migration that gives the rows their server is tested on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import textwrap
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Row
from support import FINISHED, Server, run_cli, runner_env, wait_for
from test_worker import ZERO_COMMIT, GitRepo, fake_commit, push_payload
from ui_site import PASSWORD, USER, basic, request, write_users

from runner import catchup_deliveries, tables
from runner import config as config_module
from runner.github_reports import Report
from runner.outbox import Outbox
from runner.queue import Queue
from runner.schema import alembic_config
from runner.store import Store

# Deploys the pushed commit from the repository and says which it is.
DEPLOY = """
    on: {repository: acme/app, events: [push], branches: [main]}
    workdir: checkout
    steps:
      - git: {remote: <REMOTE>}
      - run: echo deployed {{ commit }} on <NAME>
"""

# Waits for its gate file while it goes on; a newer entry cancels the run going on.
GATED = """
    on: {repository: acme/app, events: [push], branches: [main]}
    workdir: <WORKDIR>
    concurrency: {cancel-in-progress: true}
    steps:
      - run: echo begin; while [ ! -e <GATE> ]; do sleep 0.05; done
"""


class Host:
    """One server: its home, its name, its ``runner up`` (once started), its Store on the shared database."""

    def __init__(self, tmp: Path, name: str, database_url: str) -> None:
        self.name = name
        self.tmp = tmp / name
        self.home = self.tmp / "home"
        (self.home / "pipelines").mkdir(parents=True)
        (self.tmp / "work").mkdir()
        self.env = runner_env(self.home, database_url, RUNNER_SERVER_NAME=name)
        self.store = Store(database_url, server=name)
        self.server: Server | None = None

    def up(self) -> None:
        self.server = Server(self.home, self.env, command="up")

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
        self.store.close()

    def pipeline(self, name: str, text: str, **values: str | Path) -> None:
        text = textwrap.dedent(text).lstrip("\n")
        for key, value in values.items():
            text = text.replace(f"<{key}>", str(value))
        (self.home / "pipelines" / f"{name}.yaml").write_text(text)

    def deliver(self, body: bytes, delivery: str | None = None) -> str:
        assert self.server is not None
        answer = self.server.deliver("push", body, delivery)
        assert answer.status == 202, (answer.status, answer.body)
        return answer.json()["delivery"]

    def cli(self, *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
        done = run_cli(*args, env=self.env)
        assert done.returncode == expect, (
            f"runner {' '.join(args)}: {done.returncode}\n{done.stdout}{done.stderr}"
        )
        return done

    def details(self) -> str:
        output = self.server.output()[-4000:] if self.server is not None else "(not up)"
        runs = [
            f"run {r.id} {r.server} {r.pipeline} {r.status} {r.reason}" for r in self.store.runs(server=None)
        ]
        return f"--- {self.name}'s runner up:\n{output}\n" + "\n".join(runs)

    def runs_of(self, delivery: str) -> list[Row[Any]]:
        return [r for r in self.store.runs(limit=1000) if r.delivery_id == delivery]

    def finished(self, delivery: str) -> Row[Any]:
        """The delivery's run on this server, once it ended."""

        def check() -> Row[Any] | None:
            runs = self.runs_of(delivery)
            return runs[0] if runs and runs[0].status in FINISHED else None

        return wait_for(check, f"{self.name}'s run of delivery {delivery}", details=self.details)

    def status(self, run_id: int) -> str:
        run = self.store.run(run_id)
        assert run is not None
        return run.status


@pytest.fixture
def hosts(tmp_path: Path, postgres_url: str) -> Iterator[tuple[Host, Host]]:
    alpha, beta = Host(tmp_path, "alpha", postgres_url), Host(tmp_path, "beta", postgres_url)
    try:
        upgraded = run_cli("db", "upgrade", env=alpha.env)
        assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
        yield alpha, beta
    finally:
        alpha.close()
        beta.close()


def listed(host: Host, *args: str) -> Any:
    return json.loads(host.cli(*args, "--json").stdout)


def test_two_servers_each_deploy_their_own_pipeline_of_the_same_name_and_list_every_server(
    hosts: tuple[Host, Host], tmp_path: Path
) -> None:
    alpha, beta = hosts
    repo = GitRepo(tmp_path / "git")
    first = repo.commit({"version.txt": "one\n"}, "First version\n\nwith a body")
    second = repo.commit({"version.txt": "two\n"}, "Second version")
    repo.push()
    for host in hosts:
        host.pipeline("app", DEPLOY, REMOTE=repo.bare, NAME=host.name)
        host.up()

    on_alpha = alpha.deliver(
        push_payload(
            "refs/heads/main",
            ZERO_COMMIT,
            [(first, "First version\n\nwith a body")],
            clone_url=str(repo.bare),
        )
    )
    on_beta = beta.deliver(
        push_payload("refs/heads/main", first, [(second, "Second version")], clone_url=str(repo.bare))
    )
    ran_alpha, ran_beta = alpha.finished(on_alpha), beta.finished(on_beta)
    assert (ran_alpha.status, ran_alpha.server, ran_alpha.commit) == ("succeeded", "alpha", first), (
        alpha.details()
    )
    assert (ran_beta.status, ran_beta.server, ran_beta.commit) == ("succeeded", "beta", second), (
        beta.details()
    )
    # The commit's subject, from the push: its message's first line.
    assert (ran_alpha.subject, ran_beta.subject) == ("First version", "Second version")
    # Each server deployed into its own checkout, and each one's deployed commit is its own.
    assert (alpha.home / "checkout" / "version.txt").read_text() == "one\n"
    assert (beta.home / "checkout" / "version.txt").read_text() == "two\n"
    assert alpha.store.last_deployed_commit("app") == first
    assert beta.store.last_deployed_commit("app") == second
    assert alpha.store.last_deployed_commit("app", server="beta") == second

    # On either's status page: both runs with their server (and the filter), each server's "app" with its
    # own last deployed commit.
    for host in hosts:
        write_users(host.home / "ui-users", {USER: PASSWORD})
        assert host.server is not None
        port, auth = host.server.port, {"Authorization": basic(USER, PASSWORD)}
        runs = request(port, "/runs", auth).text
        shown = re.findall(r'<tr id="run-(\d+)">\s*<td>.*?</td>\s*<td class="server">(\w+)</td>', runs)
        assert shown == [(str(ran_beta.id), "beta"), (str(ran_alpha.id), "alpha")], runs
        assert re.findall(r'<tr id="run-(\d+)">', request(port, "/runs?server=beta", auth).text) == [
            str(ran_beta.id)
        ]
        page = request(port, "/", auth).text
        rows = dict(re.findall(r'<tr id="pipeline-(app(?:@\w+)?)"[^>]*>(.*?)</tr>', page, re.S))
        other = "beta" if host is alpha else "alpha"
        deployed = {host.name: rows["app"], other: rows[f"app@{other}"]}
        assert first[:12] in deployed["alpha"] and second[:12] not in deployed["alpha"], page
        assert second[:12] in deployed["beta"] and first[:12] not in deployed["beta"], page

    # Without --all-servers: this server's runs, and no server column.
    mine = alpha.cli("runs").stdout
    assert mine.startswith("RUN ") and re.search(rf"^{ran_alpha.id} +app +succeeded", mine, re.M), mine
    assert not re.search(rf"^{ran_beta.id} ", mine, re.M), mine
    assert [r["id"] for r in listed(alpha, "runs")] == [ran_alpha.id]
    # With it: both, with their server.
    every = alpha.cli("runs", "--all-servers").stdout
    assert every.startswith("SERVER "), every
    assert re.search(rf"^alpha +{ran_alpha.id} +app +succeeded +push +main +{first[:12]}", every, re.M), every
    assert re.search(rf"^beta +{ran_beta.id} +app +succeeded +push +main +{second[:12]}", every, re.M), every
    every_json = listed(alpha, "runs", "--all-servers")
    assert {(r["server"], r["commit"], r["subject"]) for r in every_json} == {
        ("alpha", first, "First version"),
        ("beta", second, "Second version"),
    }
    deliveries = {(d["server"], d["delivery"]) for d in listed(beta, "deliveries", "--all-servers")}
    assert deliveries == {("alpha", on_alpha), ("beta", on_beta)}
    table = beta.cli("deliveries", "--all-servers").stdout
    assert table.startswith("SERVER ") and re.search(rf"^beta +\S+ +{on_beta} +push", table, re.M), table
    assert [d["delivery"] for d in listed(beta, "deliveries")] == [on_beta]

    # Another server's run is not this server's to cancel, nor its log to print: refused, naming the server.
    refused = alpha.cli("cancel", str(ran_beta.id), expect=1)
    assert f"run {ran_beta.id} is server beta's" in refused.stderr, refused.stderr
    refused = alpha.cli("logs", str(ran_beta.id), "--no-follow", expect=1)
    assert "server beta's" in refused.stderr, refused.stderr

    # A rollback by hand takes its subject from the server's checkout, and redeploys on that server only.
    queued = beta.cli("trigger", "app", "--commit", first[:8]).stdout
    rollback = int(re.search(r"^run (\d+) queued", queued, re.M).group(1))  # type: ignore[union-attr]
    wait_for(lambda: beta.status(rollback) in FINISHED, "the rollback", details=beta.details)
    back = beta.store.run(rollback)
    assert back is not None and (back.status, back.server, back.subject) == (
        "succeeded",
        "beta",
        "First version",
    )
    assert beta.store.last_deployed_commit("app") == first
    assert alpha.store.servers() == ["alpha", "beta"]


def test_one_delivery_id_routes_on_each_server_and_a_redelivery_is_a_duplicate_only_where_it_came_again(
    hosts: tuple[Host, Host], tmp_path: Path
) -> None:
    alpha, beta = hosts
    for host in hosts:
        gate = tmp_path / f"{host.name}.gate"
        gate.touch()
        host.pipeline("app", GATED, WORKDIR=host.tmp / "work", GATE=gate)
        host.up()
    # A relay fanning one hook out: the same delivery id reaches both servers.
    delivery = str(uuid.uuid4())
    body = push_payload("refs/heads/main", ZERO_COMMIT, [(fake_commit(1), "one")])
    for host in hosts:
        assert host.deliver(body, delivery) == delivery
    runs = [host.finished(delivery) for host in hosts]
    assert [(r.server, r.status, r.attempt) for r in runs] == [
        ("alpha", "succeeded", 1),
        ("beta", "succeeded", 1),
    ], alpha.details() + beta.details()

    # Delivered again to alpha: a duplicate there, not routed again; beta's record is untouched.
    alpha.deliver(body, delivery)
    wait_for(
        lambda: (d := alpha.store.delivery(delivery)) is not None and d.duplicates == 1,
        "alpha to count the redelivery",
        details=alpha.details,
    )
    record = beta.store.delivery(delivery)
    assert record is not None and (record.server, record.outcome, record.duplicates) == ("beta", "routed", 0)
    assert [r.id for r in alpha.runs_of(delivery)] == [runs[0].id]
    assert [r.id for r in beta.runs_of(delivery)] == [runs[1].id]


def test_a_run_on_one_server_never_supersedes_nor_cancels_the_other_s_run(
    hosts: tuple[Host, Host], tmp_path: Path
) -> None:
    alpha, beta = hosts
    gates = {host.name: tmp_path / f"{host.name}.gate" for host in hosts}
    for host in hosts:
        host.pipeline("app", GATED, WORKDIR=host.tmp / "work", GATE=gates[host.name])
    beta.up()
    going_on = beta.deliver(push_payload("refs/heads/main", ZERO_COMMIT, [(fake_commit(1), "one")]))
    wait_for(
        lambda: (runs := beta.runs_of(going_on)) and runs[0].status == "running",
        "beta's run to go on",
        details=beta.details,
    )
    [beta_run] = beta.runs_of(going_on)
    assert beta_run.entry is not None

    # Entry names are a queue's own: alpha's queue of its pipeline of the same name may hold one that beta's
    # run names. Made so here (queued while alpha's worker is down, then given that name).
    queued = alpha.cli("trigger", "app", "--commit", fake_commit(2)).stdout
    alpha_run = int(re.search(r"^run (\d+) queued", queued, re.M).group(1))  # type: ignore[union-attr]
    directory = alpha.home / "queues" / "app"
    [written] = Queue(directory).entries()
    os.rename(directory / written, directory / beta_run.entry)
    alpha.store.set_run(alpha_run, entry=beta_run.entry)
    gates["alpha"].touch()
    alpha.up()
    wait_for(lambda: alpha.status(alpha_run) in FINISHED, "alpha's run", details=alpha.details)
    assert alpha.status(alpha_run) == "succeeded", alpha.details()
    # A newer push to alpha (cancel-in-progress) ends alpha's runs only.
    newer = alpha.deliver(push_payload("refs/heads/main", ZERO_COMMIT, [(fake_commit(3), "three")]))
    assert alpha.finished(newer).status == "succeeded", alpha.details()
    assert beta.status(beta_run.id) == "running", beta.details()

    gates["beta"].touch()
    done = beta.finished(going_on)
    assert (done.id, done.status, done.reason) == (beta_run.id, "succeeded", None), beta.details()


def test_retention_and_the_reporter_of_one_server_leave_the_other_s_rows(hosts: tuple[Host, Host]) -> None:
    alpha, beta = hosts
    long_ago = datetime.now(UTC) - timedelta(days=100)
    shared = [str(uuid.uuid4()) for _ in range(3)]
    made: dict[str, list[int]] = {}
    for host in hosts:
        made[host.name] = []
        for n, delivery in enumerate(shared):
            host.store.record_delivery(delivery, "push", long_ago, outcome="routed")
            run, _ = host.store.forward_run(
                "app", trigger="push", delivery_id=delivery, ref="refs/heads/main", commit=fake_commit(n)
            )
            host.store.set_run(
                run.id,
                status="succeeded" if n == 0 else "failed",
                queued_at=long_ago,
                started_at=long_ago,
                finished_at=long_ago + timedelta(seconds=n),
            )
            made[host.name].append(run.id)
        Outbox(host.store).add(
            made[host.name][0], "acme/app", fake_commit(0), [Report("status", {"state": "x"})]
        )

    # Each server's reporter takes its own runs' rows only.
    for host in hosts:
        due = Outbox(host.store).due(datetime.now(UTC))
        assert [row.run_id for row in due] == [made[host.name][0]]

    pruned = run_cli("prune", env={**alpha.env, "RUNNER_RETENTION": "30d", "RUNNER_KEEP_RUNS": "0"})
    assert pruned.returncode == 0, pruned.stdout + pruned.stderr
    # Alpha keeps its last successful run (its deployed commit) and the delivery that run names.
    assert [r.id for r in alpha.store.runs()] == [made["alpha"][0]]
    assert [d.delivery_id for d in alpha.store.deliveries()] == [shared[0]]
    # Beta's rows, of the same pipeline name and the same delivery ids, are all there.
    assert sorted(r.id for r in beta.store.runs()) == made["beta"]
    assert sorted(d.delivery_id for d in beta.store.deliveries()) == sorted(shared)


def test_the_catch_up_of_one_server_looks_at_its_own_hooks_and_deliveries(hosts: tuple[Host, Host]) -> None:
    alpha, beta = hosts
    now = datetime.now(UTC)
    shared = str(uuid.uuid4())
    beta.store.record_delivery(shared, "push", now, hook_id="111", repository="acme/app", outcome="routed")
    alpha.store.record_delivery(str(uuid.uuid4()), "push", now, hook_id="222", repository="acme/app")
    # Alpha learned its hook from its own deliveries only: beta's webhook is beta's to catch up on.
    config = config_module.load(alpha.env)
    assert [hook.id for hook in catchup_deliveries.hooks(config, alpha.store)] == [222]
    # A delivery beta recorded is one alpha missed, if alpha's hook made it too: not taken for alpha's.
    assert catchup_deliveries._recorded(alpha.store, [shared]) == {}
    assert catchup_deliveries._recorded(beta.store, [shared]) == {shared: False}


# The migration ---------------------------------------------------------------------------------------------


def _rows_at_0006(store: Store, delivery: str) -> None:
    now = datetime.now(UTC)
    with store.engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO deliveries (delivery_id, event, received_at, recorded_at, outcome, duplicates,"
                " recovered) VALUES (:d, 'push', :t, :t, 'routed', 0, false)"
            ),
            {"d": delivery, "t": now},
        )
        for attempt in (1, 2):
            connection.execute(
                sa.text(
                    "INSERT INTO runs (pipeline, delivery_id, attempt, trigger, status, queued_at)"
                    " VALUES ('app', :d, :a, 'push', 'failed', :t)"
                ),
                {"d": delivery, "a": attempt, "t": now},
            )
        run_id = connection.execute(sa.text("SELECT MIN(id) FROM runs")).scalar_one()
        connection.execute(
            sa.text(
                "INSERT INTO steps (run_id, position, name, status, started_at, finished_at, duration)"
                " VALUES (:r, 0, 'build', 'failed', :t, :t, 0)"
            ),
            {"r": run_id, "t": now},
        )


def test_the_migration_gives_existing_rows_the_upgrading_server_and_goes_back(database_url: str) -> None:
    store = Store(database_url, server="old-host")
    other = Store(database_url, server="new-host")
    try:
        store.upgrade("0006")
        delivery = str(uuid.uuid4())
        _rows_at_0006(store, delivery)
        store.upgrade()
        record = store.delivery(delivery)
        assert record is not None and record.server == "old-host"
        runs = store.runs()
        assert [(r.server, r.attempt, r.subject) for r in runs] == [
            ("old-host", 2, None),
            ("old-host", 1, None),
        ]
        # The steps survive the re-created runs table (SQLite's batch mode), still their run's.
        assert [s.name for s in store.steps(runs[-1].id)] == ["build"]
        assert other.delivery(delivery) is None and other.runs() == []

        # Another server records the same delivery id and its own attempt 1: a new delivery, a new run there.
        assert other.record_delivery(delivery, "push", datetime.now(UTC), outcome="unmatched")
        assert not other.record_delivery(delivery, "push", datetime.now(UTC))
        theirs, created = other.forward_run(
            "app", trigger="push", delivery_id=delivery, ref=None, commit=None
        )
        assert created and (theirs.server, theirs.attempt) == ("new-host", 1)

        # Down to 0006: one record of the delivery stays, the downgrading server's; runs are numbered again.
        store.downgrade("0006")
        with store.engine.connect() as connection:
            kept = connection.execute(sa.text("SELECT delivery_id, outcome FROM deliveries")).all()
            assert [tuple(row) for row in kept] == [(delivery, "routed")]
            attempts = connection.execute(sa.text("SELECT id, attempt FROM runs ORDER BY id")).all()
            assert [attempt for _, attempt in attempts] == [1, 2, 3]
            assert connection.execute(sa.text("SELECT COUNT(*) FROM steps")).scalar_one() == 1
            columns = {c["name"] for c in sa.inspect(connection).get_columns("runs")}
            assert "server" not in columns and "subject" not in columns
    finally:
        store.close()
        other.close()


def test_the_migration_run_by_alembic_on_its_own_gives_the_rows_the_host_name(tmp_path: Path) -> None:
    from alembic import command

    url = f"sqlite:///{tmp_path / 'runner.db'}"
    store = Store(url, server="unused")
    try:
        store.upgrade("0006")
        delivery = str(uuid.uuid4())
        _rows_at_0006(store, delivery)
        command.upgrade(alembic_config(url), "head")
        with store.engine.connect() as connection:
            servers = (
                connection.execute(
                    sa.select(tables.deliveries.c.server).union(sa.select(tables.runs.c.server))
                )
                .scalars()
                .all()
            )
            assert connection.execute(sa.text("SELECT COUNT(*) FROM steps")).scalar_one() == 1
        assert servers == [socket.gethostname()[:64]]
    finally:
        store.close()


def test_a_host_name_longer_than_a_server_name_is_cut_as_the_store_cuts_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    long_name = "build-" + "x" * 70 + ".example.com"
    assert config_module.read_server_name({}) == socket.gethostname()[:64]
    monkeypatch.setattr(socket, "gethostname", lambda: long_name)
    # Refused before: the default of a setting stopped runner on a host whose name is long.
    assert config_module.read_server_name({}) == long_name[:64]
    assert config_module.read_server_name({"RUNNER_SERVER_NAME": "alpha"}) == "alpha"
