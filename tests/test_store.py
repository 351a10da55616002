"""The delivery store on a real SQLite file and a real PostgreSQL database: migrations, the schema check,
duplicate detection decided by the primary key (across threads and processes), and the ``runner db`` CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from support import ROOT, free_port, run_cli, runner_env

from runner import tables
from runner.schema import SchemaError, head_revision
from runner.store import Store

PASSWORD = "hunter2secret"


def revisions() -> list[str]:
    """Every migration's revision, oldest first."""
    from alembic.script import ScriptDirectory

    from runner.schema import alembic_config

    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return [s.revision for s in reversed(list(script.walk_revisions()))]


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    """A Store on an empty database (not migrated)."""
    s = Store(database_url)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def migrated(store: Store) -> Store:
    store.upgrade()
    return store


def table_names(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def count_deliveries(store: Store) -> int:
    with store.engine.connect() as connection:
        return connection.execute(sa.select(sa.func.count()).select_from(tables.deliveries)).scalar_one()


def with_password(url: str) -> tuple[str, str | None]:
    """The URL with a password in it, and that password (PostgreSQL's trust auth accepts any)."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "postgresql":
        return url, None
    if parsed.password:
        return url, str(parsed.password)
    return parsed.set(password=PASSWORD).render_as_string(hide_password=False), PASSWORD


def assert_no_password(result: subprocess.CompletedProcess[str], password: str | None) -> None:
    if password is not None:
        assert password not in result.stdout, result.stdout
        assert password not in result.stderr, result.stderr


# Migrations ----------------------------------------------------------------------------------------------


def test_head_revision_is_the_newest_migration() -> None:
    assert revisions(), "no migrations found"
    assert head_revision() == revisions()[-1]


def test_head_revision_read_from_the_files_is_alembics() -> None:
    """The check at every start reads the head from the files' text, without Alembic: it must agree."""
    from alembic.script import ScriptDirectory

    from runner.schema import _head_from_files, alembic_config

    alembics = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert _head_from_files() == alembics is not None


def test_upgrade_downgrade_and_upgrade_again(store: Store, database_url: str) -> None:
    assert store.current_revision() is None
    assert "deliveries" not in table_names(database_url)

    store.upgrade()
    assert store.current_revision() == head_revision()
    engine = sa.create_engine(database_url)
    try:
        inspector = sa.inspect(engine)
        assert set(tables.metadata.tables) | {"alembic_version"} == set(inspector.get_table_names())
        model = tables.deliveries
        columns = {c["name"]: c for c in inspector.get_columns("deliveries")}
        assert set(columns) == {c.name for c in model.columns}
        assert {"delivery_id", "event", "received_at", "recorded_at", "outcome"} <= set(columns)
        nullable = {name for name, c in columns.items() if c["nullable"]}
        assert nullable == {c.name for c in model.columns if c.nullable}
        assert inspector.get_pk_constraint("deliveries")["constrained_columns"] == ["server", "delivery_id"]
        indexes = {ix["name"]: ix["column_names"] for ix in inspector.get_indexes("deliveries")}
        assert indexes["ix_deliveries_received_at"] == ["received_at"]
    finally:
        engine.dispose()

    # Upgrading an up-to-date database changes nothing.
    store.upgrade()
    assert store.current_revision() == head_revision()

    store.downgrade("base")
    assert store.current_revision() is None
    assert table_names(database_url) <= {"alembic_version"}

    store.upgrade()
    assert store.current_revision() == head_revision()
    assert store.record_delivery("after-reupgrade", "push", datetime.now(UTC)) is True
    assert count_deliveries(store) == 1


def test_every_migration_steps_up_and_down(store: Store) -> None:
    """One revision at a time, so each migration's downgrade undoes exactly its upgrade."""
    chain = revisions()
    for revision in chain:
        store.upgrade(revision)
        assert store.current_revision() == revision
    for previous in [*reversed(chain[:-1]), None]:
        store.downgrade(previous or "base")
        assert store.current_revision() == previous
    store.upgrade()
    assert store.current_revision() == head_revision()


def test_upgrade_keeps_deliveries_recorded_at_the_first_revision(store: Store) -> None:
    first = revisions()[0]
    store.upgrade(first)
    received_at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    # Only the first revision's columns: a database from the first release.
    old_deliveries = sa.table(
        "deliveries",
        *(sa.column(n) for n in ("delivery_id", "event", "received_at", "recorded_at", "outcome")),
    )
    with store.engine.begin() as connection:
        connection.execute(
            sa.insert(old_deliveries),
            {
                "delivery_id": "old-1",
                "event": "push",
                "received_at": received_at,
                "recorded_at": received_at,
                "outcome": "routed",
            },
        )
    store.upgrade()
    row = store.delivery("old-1")
    assert row is not None
    assert (row.event, row.outcome) == ("push", "routed")
    assert row.duplicates == 0
    assert row.repository is None and row.ref is None
    assert store.record_delivery("old-1", "push", datetime.now(UTC)) is False


def test_tables_and_migrations_do_not_drift(migrated: Store) -> None:
    with migrated.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, tables.metadata)
    assert differences == []


# The schema check ----------------------------------------------------------------------------------------


def test_check_schema_refuses_an_empty_database(store: Store) -> None:
    with pytest.raises(SchemaError, match="runner db upgrade") as caught:
        store.check_schema()
    assert "not initialised" in str(caught.value)
    assert str(head_revision()) in str(caught.value)


def test_check_schema_passes_after_upgrade_and_refuses_after_downgrade(store: Store) -> None:
    store.upgrade()
    store.check_schema()
    store.downgrade("base")
    with pytest.raises(SchemaError, match="runner db upgrade"):
        store.check_schema()


def test_schema_error_hides_the_password(database_url: str) -> None:
    url, password = with_password(database_url)
    s = Store(url)
    try:
        with pytest.raises(SchemaError) as caught:
            s.check_schema()
        if password is not None:
            assert password not in str(caught.value)
            assert password not in repr(s)
    finally:
        s.close()


# Recording deliveries --------------------------------------------------------------------------------


def test_record_delivery_detects_a_redelivery(migrated: Store) -> None:
    first_at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert migrated.record_delivery("d-1", "push", first_at, hook_id="292430182", entry="e-1") is True
    assert migrated.record_delivery("d-1", "ping", datetime.now(UTC), hook_id="other", entry="e-2") is False

    row = migrated.delivery("d-1")
    assert row is not None
    assert row.event == "push"
    assert row.hook_id == "292430182"
    assert row.entry == "e-1"
    assert row.outcome == "received"
    assert row.duplicates == 0
    assert row.received_at.replace(tzinfo=row.received_at.tzinfo or UTC) == first_at
    assert count_deliveries(migrated) == 1


def test_record_delivery_keeps_different_ids(migrated: Store) -> None:
    now = datetime.now(UTC)
    assert migrated.record_delivery("d-1", "push", now) is True
    assert migrated.record_delivery("d-2", "pull_request", now) is True
    one, two = migrated.delivery("d-1"), migrated.delivery("d-2")
    assert one is not None and one.event == "push"
    assert two is not None and two.event == "pull_request"
    assert migrated.delivery("d-3") is None
    assert count_deliveries(migrated) == 2


def forwarding(
    store: Store, delivery: str, entry: str, pipelines: list[str], outcome: str = "received"
) -> tuple[str, dict[str, int] | None]:
    """``begin_forwarding`` of a push to ``pipelines``, as the router calls it."""
    row = store.delivery_row(
        delivery,
        "push",
        datetime.now(UTC),
        hook_id=None,
        entry=entry,
        outcome=outcome,
        detail=None if outcome == "received" else "no pipeline",
        repository="acme/app",
        ref="refs/heads/main",
        recovered=False,
    )
    return store.begin_forwarding(
        row, pipelines, trigger="push", ref="refs/heads/main", commit="c1", subject="s"
    )


def test_begin_forwarding_records_a_delivery_with_its_runs_or_says_what_it_was(migrated: Store) -> None:
    state, runs = forwarding(migrated, "d-1", "e-1", ["app", "docs"])
    assert state == "new" and runs is not None and sorted(runs) == ["app", "docs"]
    for pipeline, run_id in runs.items():
        run = migrated.run(run_id)
        assert run is not None
        assert (run.pipeline, run.delivery_id, run.attempt, run.status) == (pipeline, "d-1", 1, "queued")
        assert (run.commit, run.subject, run.entry) == ("c1", "s", None)
    record = migrated.delivery("d-1")
    assert record is not None and (record.entry, record.outcome) == ("e-1", "received")

    # The same entry again (a routing resumed after a crash), then another entry (GitHub's redelivery):
    # nothing more is recorded, and the caller forwards one pipeline at a time (forward_run finds the runs).
    assert forwarding(migrated, "d-1", "e-1", ["app", "docs"]) == ("resume", None)
    assert forwarding(migrated, "d-1", "e-2", ["app", "docs"]) == ("duplicate", None)
    assert len(migrated.runs()) == 2
    migrated.finish_forwarding("d-1", "routed", "forwarded to app, docs", {runs["app"]: "x-1"})
    record = migrated.delivery("d-1")
    assert record is not None and (record.outcome, record.duplicates) == ("routed", 1)
    assert forwarding(migrated, "d-1", "e-1", ["app"]) == ("routed", None)
    app = migrated.run(runs["app"])
    assert app is not None and app.entry == "x-1"

    # Forwarded nowhere: recorded with its outcome at once.
    assert forwarding(migrated, "d-2", "e-3", [], outcome="unmatched") == ("new", {})
    unmatched = migrated.delivery("d-2")
    assert unmatched is not None and unmatched.outcome == "unmatched"


def test_begin_forwarding_with_a_run_recorded_before_records_the_delivery_alone(migrated: Store) -> None:
    """A delivery forgotten (``runner failed retry``) whose run is still there: recorded as received, its runs
    left to forward_run, which finds that run."""
    _, runs = forwarding(migrated, "d-1", "e-1", ["app"])
    assert runs is not None
    assert migrated.forget_delivery("d-1", "e-1")
    assert forwarding(migrated, "d-1", "e-1", ["app"]) == ("new", None)
    record = migrated.delivery("d-1")
    assert record is not None and record.outcome == "received"
    run, created = migrated.forward_run("app", trigger="push", delivery_id="d-1", ref=None, commit=None)
    assert (run.id, created) == (runs["app"], False)


def test_a_commit_without_waiting_is_that_transaction_s_alone(migrated: Store) -> None:
    """Relaxed for one transaction; the connection, back in the pool, waits for the disk again."""
    from runner.database import commit_without_waiting

    sqlite = migrated.engine.dialect.name == "sqlite"
    setting = "PRAGMA synchronous" if sqlite else "SHOW synchronous_commit"
    relaxed, durable = (1, 2) if sqlite else ("off", "on")
    for _ in range(3):
        with migrated.engine.begin() as connection:
            commit_without_waiting(connection)
            assert connection.exec_driver_sql(setting).scalar() == relaxed
            assert migrated.record_delivery("d-inside", "push", datetime.now(UTC)) in (True, False)
        with migrated.engine.connect() as connection:
            assert connection.exec_driver_sql(setting).scalar() == durable


# Concurrency: the primary key decides ------------------------------------------------------------------


def test_threads_racing_on_the_same_ids(migrated: Store, database_url: str) -> None:
    threads_count, ids = 16, [f"thread-race-{n}" for n in range(20)]
    barrier = threading.Barrier(threads_count)
    won: dict[int, list[str]] = {}
    errors: list[BaseException] = []

    def race(index: int) -> None:
        s = Store(database_url)
        try:
            s.ping()  # connected before the start, so the race is over the inserts
            barrier.wait(timeout=30)
            won[index] = [i for i in ids if s.record_delivery(i, f"event-{index}", datetime.now(UTC))]
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()
        finally:
            s.close()

    threads = [threading.Thread(target=race, args=(n,)) for n in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert len(won) == threads_count

    wins = Counter(i for ids_won in won.values() for i in ids_won)
    assert wins == Counter(ids)  # every id won exactly once
    assert count_deliveries(migrated) == len(ids)
    for index, ids_won in won.items():
        for delivery_id in ids_won:
            row = migrated.delivery(delivery_id)
            assert row is not None and row.event == f"event-{index}"


RACER = textwrap.dedent(
    """
    import json, sys, time
    from datetime import UTC, datetime
    from pathlib import Path

    from runner.store import Store

    url, name, directory = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    ids = json.loads(sys.argv[4])
    store = Store(url)
    store.ping()
    (directory / f"ready-{name}").touch()
    deadline = time.monotonic() + 30
    while not (directory / "go").exists():
        if time.monotonic() > deadline:
            sys.exit("no start signal")
        time.sleep(0.001)
    won = [i for i in ids if store.record_delivery(i, name, datetime.now(UTC))]
    store.close()
    print(json.dumps(won))
    """
)


def test_processes_racing_on_the_same_ids(migrated: Store, database_url: str, tmp_path: Path) -> None:
    ids = [f"process-race-{n}" for n in range(50)]
    sync = tmp_path / "sync"
    sync.mkdir()
    names = [f"p{n}" for n in range(4)]
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, database_url, name, str(sync), json.dumps(ids)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in names
    ]
    try:
        deadline = time.monotonic() + 30
        while not all((sync / f"ready-{name}").exists() for name in names):
            died = [p for p in processes if p.poll() is not None]
            assert not died, [p.communicate() for p in died]
            assert time.monotonic() < deadline, "the racing processes did not get ready"
            time.sleep(0.01)
        (sync / "go").touch()
        outputs = [p.communicate(timeout=60) for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()

    won: dict[str, list[str]] = {}
    for name, p, (stdout, stderr) in zip(names, processes, outputs, strict=True):
        assert p.returncode == 0, stderr
        won[name] = json.loads(stdout)
    wins = Counter(i for ids_won in won.values() for i in ids_won)
    assert wins == Counter(ids)  # every id won exactly once, over all processes
    assert count_deliveries(migrated) == len(ids)
    for name, ids_won in won.items():
        for delivery_id in ids_won:
            row = migrated.delivery(delivery_id)
            assert row is not None and row.event == name


# The CLI -----------------------------------------------------------------------------------------------


def test_cli_upgrade_current_and_downgrade(database_url: str, tmp_path: Path) -> None:
    url, password = with_password(database_url)
    env = runner_env(tmp_path / "home", url)
    head = str(head_revision())

    before = run_cli("db", "current", env=env)
    assert before.returncode == 1, before.stderr  # not at head: a script can tell
    assert "at revision None" in before.stdout
    assert f"needs `runner db upgrade` to {head}" in before.stdout
    assert_no_password(before, password)

    upgraded = run_cli("db", "upgrade", env=env)
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"at revision {head}" in upgraded.stdout
    assert_no_password(upgraded, password)

    current = run_cli("db", "current", env=env)
    assert current.returncode == 0, current.stderr
    assert f"at revision {head} (up to date)" in current.stdout
    assert_no_password(current, password)
    assert "deliveries" in table_names(database_url)

    downgraded = run_cli("db", "downgrade", "base", env=env)
    assert downgraded.returncode == 0, downgraded.stderr
    assert "at revision None" in downgraded.stdout
    assert_no_password(downgraded, password)
    assert table_names(database_url) <= {"alembic_version"}
    s = Store(database_url)
    try:
        assert s.current_revision() is None
    finally:
        s.close()


def test_cli_serve_refuses_an_unmigrated_database(database_url: str, tmp_path: Path) -> None:
    url, password = with_password(database_url)
    env = runner_env(tmp_path / "home", url)
    started = time.monotonic()
    result = run_cli("serve", "--port", str(free_port()), env=env, timeout=30)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "runner db upgrade" in result.stderr
    assert "webhook endpoint" not in result.stdout + result.stderr
    assert time.monotonic() - started < 30
    assert_no_password(result, password)
    # serve never migrates a database it was pointed at.
    assert "deliveries" not in table_names(database_url)


@pytest.mark.parametrize(
    "command", [("db", "current"), ("db", "upgrade"), ("serve",)], ids=["db-current", "db-upgrade", "serve"]
)
def test_cli_hides_the_password_of_an_unreachable_database(command: tuple[str, ...], tmp_path: Path) -> None:
    url = f"postgresql+psycopg2://postgres:{PASSWORD}@127.0.0.1:1/nope"
    result = run_cli(*command, env=runner_env(tmp_path / "home", url), timeout=30)
    assert result.returncode != 0
    assert PASSWORD not in result.stdout
    assert PASSWORD not in result.stderr
    assert "127.0.0.1" in result.stdout + result.stderr  # it does say which database failed


def test_a_recovered_delivery_given_up_is_recorded_as_recovered(migrated: Store, tmp_path: Path) -> None:
    """The router gives up an entry of the recovered queue (the catch-up's): the delivery's record says both
    that its routing failed and that it was recovered, as it would had it been routed."""
    from runner.entry import delivery_entry, delivery_head
    from runner.pipelines import PipelineSet
    from runner.queue import Queue
    from runner.router import Router

    (tmp_path / "pipelines").mkdir()
    main, recovered = Queue(tmp_path / "queues" / "main"), Queue(tmp_path / "queues" / "recovered")
    router = Router(
        main,
        tmp_path / "queues",
        PipelineSet(tmp_path / "pipelines", tmp_path),
        migrated,
        recovered=recovered,
    )
    at, reason = datetime.now(UTC), "routing failed after 5 tries: DataError: refused"
    for queue, delivery in ((recovered, "given-up-recovered"), (main, "given-up-received")):
        head = delivery_head("push", delivery, "4242", at, recovered=queue is recovered)
        name = queue.put(delivery_entry(head, b"{}"))
        router.give_up(queue, name, reason)
        record = migrated.delivery(delivery)
        assert record is not None
        assert (record.outcome, record.detail) == (
            "failed",
            "routing failed after 5 tries: DataError: refused",
        )
        assert record.recovered is (queue is recovered)
        assert (queue.directory / "failed" / name).is_file()
