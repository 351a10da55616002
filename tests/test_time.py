"""Times: stored as UTC instants on SQLite and PostgreSQL, shown one way (UTC, marked Z) in every table, run
log and server log whatever the reader's or the worker's ``TZ``, and ISO 8601 with an offset in ``--json``.

Real processes throughout: ``runner serve`` and ``runner work`` under ``TZ=America/New_York`` with a real
delivery, the CLI under that zone and under UTC (and, on PostgreSQL, a session in that zone too, through
libpq's ``PGTZ``), and migration 0004 run on a database written as revision 0003's code wrote it.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from support import FINISHED, PAYLOADS, Server, WorkerProcess, run_cli, runner_env, wait_for

from runner.store import Store

NEW_YORK = "America/New_York"
# Summer: New York is at -04:00, so a local rendering is four hours off and a date can change.
INSTANT = datetime(2026, 7, 4, 23, 5, 9, 123456, tzinfo=UTC)
# How a table shows a time, and how a log line starts.
SHOWN = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z"


def env_in(home: Path, database_url: str, tz: str) -> dict[str, str]:
    # PGTZ sets the PostgreSQL session's zone: timestamptz values then come back at that offset.
    return runner_env(home, database_url, TZ=tz, PGTZ=tz)


def cli(*args: str, env: dict[str, str]) -> str:
    done = run_cli(*args, env=env)
    assert done.returncode == 0, f"runner {' '.join(args)}: {done.returncode}\n{done.stdout}{done.stderr}"
    return done.stdout


def aware(text: str) -> datetime:
    """An ISO 8601 value that must carry its offset."""
    value = datetime.fromisoformat(text)
    assert value.tzinfo is not None and value.utcoffset() is not None, f"{text!r} has no offset"
    return value


def table(text: str) -> list[dict[str, str]]:
    """A CLI table as rows of {header: cell}, cut at the headers' columns."""
    lines = text.rstrip("\n").splitlines()
    starts = [m.start() for m in re.finditer(r"\S+", lines[0])]
    bounds = list(zip(starts, [*starts[1:], None], strict=True))
    headers = [lines[0][a:b].strip() for a, b in bounds]
    return [{h: line[a:b].strip() for h, (a, b) in zip(headers, bounds, strict=True)} for line in lines[1:]]


def shown(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
def migrated(tmp_path: Path, database_url: str) -> Iterator[Store]:
    home = tmp_path / "home"
    (home / "pipelines").mkdir(parents=True)
    cli("db", "upgrade", env=runner_env(home, database_url))
    store = Store(database_url)
    try:
        yield store
    finally:
        store.close()


# Stored instants, read back and shown ---------------------------------------------------------------------


@pytest.mark.parametrize("tz", [NEW_YORK, "UTC"])
def test_one_instant_reads_the_same_in_every_table_and_in_json_whatever_the_tz(
    migrated: Store, database_url: str, tmp_path: Path, tz: str
) -> None:
    migrated.record_delivery("d-1", "push", INSTANT, repository="acme/app", ref="refs/heads/main")
    run_id = migrated.create_run("app", trigger="manual", ref="refs/heads/main")
    # Given at another offset: the same instant, stored as UTC.
    started = INSTANT.astimezone(ZoneInfo(NEW_YORK))
    migrated.set_run(
        run_id, status="succeeded", started_at=started, finished_at=INSTANT + timedelta(seconds=2.5)
    )
    env = env_in(tmp_path / "home", database_url, tz)

    [delivery] = table(cli("deliveries", env=env))
    assert delivery["RECEIVED"] == "2026-07-04T23:05:09Z", delivery
    [run] = table(cli("runs", env=env))
    assert (run["STARTED"], run["TOOK"]) == ("2026-07-04T23:05:09Z", "2.5s"), run

    [delivery_json] = json.loads(cli("deliveries", "--json", env=env))
    assert aware(delivery_json["received_at"]) == INSTANT
    assert delivery_json["received_at"] == "2026-07-04T23:05:09.123456+00:00"
    [run_json] = json.loads(cli("runs", "--json", env=env))
    assert aware(run_json["started_at"]) == INSTANT
    assert aware(run_json["finished_at"]) == INSTANT + timedelta(seconds=2.5)
    assert aware(run_json["queued_at"]).utcoffset() == timedelta(0)

    # Read back in this process too: aware, in UTC, whatever the session's zone.
    stored = migrated.run(run_id)
    assert stored is not None and stored.started_at == INSTANT and stored.started_at.tzinfo is UTC


def test_the_store_refuses_a_time_without_a_zone_and_records_nothing(migrated: Store) -> None:
    with pytest.raises(sa.exc.StatementError, match="without a time zone"):
        migrated.record_delivery("d-naive", "push", datetime(2026, 7, 4, 23, 5, 9))
    assert migrated.delivery("d-naive") is None
    assert migrated.record_delivery("d-naive", "push", INSTANT) is True


def test_sqlite_keeps_each_time_as_utc_text_with_its_offset(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'runner.db'}")
    try:
        store.upgrade()
        store.record_delivery("d-1", "push", INSTANT.astimezone(ZoneInfo(NEW_YORK)))
        with store.engine.connect() as connection:
            text = connection.execute(sa.text("SELECT received_at FROM deliveries")).scalar_one()
    finally:
        store.close()
    assert text == "2026-07-04 23:05:09.123456+00:00"


# A real delivery, run by real processes in New York --------------------------------------------------------

PIPELINE = """
    on:
      repository: acme/app
      events: [push]
      branches: [main]
    workdir: checkout
    steps:
      - name: hello
        run: echo hello
"""


def push_payload() -> bytes:
    payload = json.loads((PAYLOADS / "push" / "with-new-branch.payload.json").read_bytes())
    payload["ref"] = "refs/heads/main"
    payload["repository"]["full_name"] = "acme/app"
    return json.dumps(payload).encode()


def stamp_of(line: str) -> datetime:
    match = re.match(rf"({STAMP}) ", line)
    assert match is not None, f"the line does not start with a UTC stamp: {line!r}"
    return aware(match.group(1).replace("Z", "+00:00"))


def line_with(text: str, pattern: str) -> str:
    found = [line for line in text.splitlines() if re.search(pattern, line)]
    assert found, f"no line matching {pattern!r} in:\n{text}"
    return found[0]


def test_a_delivery_run_in_new_york_shows_its_times_alike_in_tables_json_run_log_and_server_logs(
    tmp_path: Path, database_url: str
) -> None:
    home = tmp_path / "home"
    (home / "pipelines").mkdir(parents=True)
    (home / "checkout").mkdir()
    (home / "pipelines" / "app.yaml").write_text(textwrap.dedent(PIPELINE).lstrip())
    env = env_in(home, database_url, NEW_YORK)
    cli("db", "upgrade", env=env)
    server = Server(home, env)
    worker = WorkerProcess(env, tmp_path / "work.log")
    store = Store(database_url)
    try:
        wait_for(lambda: "worker started" in worker.output(), "runner work to start", details=worker.output)
        answer = server.deliver("push", push_payload())
        assert answer.status == 202, (answer.status, answer.body)
        delivery = answer.json()["delivery"]

        def finished() -> Any:
            runs = [r for r in store.runs("app") if r.delivery_id == delivery]
            return runs[0] if runs and runs[0].status in FINISHED else None

        run = wait_for(finished, "the run to finish", details=worker.output)
        assert run.status == "succeeded", worker.output()
        wait_for(lambda: f"run {run.id} of app: succeeded" in worker.output(), "the worker's log line")
        record = store.delivery(delivery)
        assert record is not None and run.started_at is not None and run.finished_at is not None
    finally:
        worker.stop()
        server.stop()
        store.close()
    close = timedelta(seconds=2)
    # The instant as stored is the instant it happened: a local time taken for UTC is hours off.
    assert abs(record.received_at - datetime.now(UTC)) < timedelta(minutes=5)

    for tz in (NEW_YORK, "UTC"):
        reader = env_in(home, database_url, tz)
        [delivery_row] = table(cli("deliveries", env=reader))
        [delivery_json] = json.loads(cli("deliveries", "--json", env=reader))
        assert aware(delivery_json["received_at"]) == record.received_at
        assert delivery_row["RECEIVED"] == shown(record.received_at), delivery_row
        [run_row] = table(cli("runs", env=reader))
        [run_json] = json.loads(cli("runs", "--json", env=reader))
        assert aware(run_json["started_at"]) == run.started_at
        assert aware(run_json["finished_at"]) == run.finished_at
        assert run_row["STARTED"] == shown(run.started_at), run_row

        # The run's log, as `runner logs` prints it: the same stamps for every reader.
        log = cli("logs", str(run.id), "--no-follow", env=reader)
        first = line_with(log, rf"runner\| run {run.id} of pipeline app")
        last = line_with(log, r"runner\| run finished")
        assert abs(stamp_of(first) - run.started_at) < close, (first, run.started_at)
        assert abs(stamp_of(last) - run.finished_at) < close, (last, run.finished_at)
        assert first.startswith(shown(stamp_of(first))[:-1]), first

    # The server logs of both processes, written in New York, use the run log's stamps.
    routed = line_with(worker.output(), rf"delivery {delivery} \(push\): routed")
    assert re.match(rf"{STAMP} INFO runner\.router: ", routed), routed
    assert abs(stamp_of(routed) - record.received_at) < close, (routed, record.received_at)
    done = line_with(worker.output(), rf"run {run.id} of app: succeeded")
    assert abs(stamp_of(done) - run.finished_at) < close, (done, run.finished_at)
    endpoint = line_with(server.output(), r"webhook endpoint: ")
    assert re.match(rf"{STAMP} INFO runner: ", endpoint), endpoint
    assert abs(stamp_of(endpoint) - record.received_at) < timedelta(minutes=5), endpoint


# Migration 0004 --------------------------------------------------------------------------------------------


def old_rows(connection: sa.Connection, text: dict[str, str]) -> None:
    """A delivery, a run and a step as revision 0003's code left them, written by SQL."""
    connection.execute(
        sa.text(
            "INSERT INTO deliveries (delivery_id, event, received_at, recorded_at, outcome, duplicates)"
            " VALUES ('old-1', 'push', :received, :recorded, 'routed', 0)"
        ),
        {"received": text["received"], "recorded": text["recorded"]},
    )
    connection.execute(
        sa.text(
            'INSERT INTO runs (id, pipeline, "trigger", status, queued_at, started_at, finished_at, attempt)'
            " VALUES (7, 'app', 'manual', 'succeeded', :queued, :started, :finished, 1)"
        ),
        {"queued": text["queued"], "started": text["started"], "finished": text["finished"]},
    )
    connection.execute(
        sa.text(
            "INSERT INTO steps (run_id, position, name, status, started_at, finished_at, duration)"
            " VALUES (7, 1, 'hello', 'succeeded', :started, :finished, 1.5)"
        ),
        {"started": text["started"], "finished": text["finished"]},
    )


# What SQLAlchemy wrote on SQLite before 0004: UTC, no offset. And the form Python's sqlite3 wrote for an
# aware value given to an untyped column (the tests' own old rows), which 0004 reads as well.
OLD_SQLITE_TEXT = {
    "received": "2026-07-04 23:05:09.123456",
    "recorded": "2026-07-04 23:05:09",
    "queued": "2026-07-04 23:05:08.000001",
    "started": "2026-07-04T19:05:10.5-04:00",
    "finished": "2026-07-04 23:05:12+00:00",
}


def assert_old_rows_read_back_aware(store: Store, tmp_path: Path, database_url: str) -> None:
    delivery = store.delivery("old-1")
    run = store.run(7)
    [step] = store.steps(7)
    assert delivery is not None and run is not None
    assert delivery.received_at == INSTANT and delivery.received_at.tzinfo is UTC
    assert delivery.recorded_at == INSTANT.replace(microsecond=0)
    assert run.queued_at == datetime(2026, 7, 4, 23, 5, 8, 1, tzinfo=UTC)
    assert run.started_at == step.started_at == datetime(2026, 7, 4, 23, 5, 10, 500000, tzinfo=UTC)
    assert run.finished_at == step.finished_at == datetime(2026, 7, 4, 23, 5, 12, tzinfo=UTC)
    [run_json] = json.loads(cli("runs", "--json", env=env_in(tmp_path / "home", database_url, NEW_YORK)))
    assert aware(run_json["started_at"]) == run.started_at


def test_migration_0004_converts_a_sqlite_database_written_by_revision_0003(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'runner.db'}"
    (tmp_path / "home").mkdir()
    store = Store(url)
    try:
        store.upgrade("0003")
        with store.engine.begin() as connection:
            old_rows(connection, OLD_SQLITE_TEXT)
        store.upgrade()
        with store.engine.connect() as connection:
            stored = connection.execute(sa.text("SELECT started_at, finished_at FROM steps")).one()
        assert tuple(stored) == ("2026-07-04 23:05:10.500000+00:00", "2026-07-04 23:05:12.000000+00:00")
        assert_old_rows_read_back_aware(store, tmp_path, url)

        # Down again: the text revision 0003's code reads as UTC, the same instants.
        store.downgrade("0003")
        with store.engine.connect() as connection:
            stored = connection.execute(sa.text("SELECT received_at, started_at FROM runs, deliveries")).one()
        assert tuple(stored) == ("2026-07-04 23:05:09.123456", "2026-07-04 23:05:10.500000")
        store.upgrade()
        assert_old_rows_read_back_aware(store, tmp_path, url)
    finally:
        store.close()


def test_migration_0004_stops_at_a_value_that_is_not_a_time_and_names_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'runner.db'}"
    home = tmp_path / "home"
    home.mkdir()
    store = Store(url)
    try:
        store.upgrade("0003")
        with store.engine.begin() as connection:
            old_rows(connection, {**OLD_SQLITE_TEXT, "queued": "yesterday"})
        done = run_cli("db", "upgrade", env=runner_env(home, url))
        assert done.returncode == 1, done.stdout + done.stderr
        assert "runs.queued_at of the row with rowid 7 is 'yesterday', not a time" in done.stderr
        assert "Traceback" not in done.stderr, done.stderr
        # Nothing changed: still at 0003, the other values as they were.
        assert store.current_revision() == "0003"
        with store.engine.connect() as connection:
            received = connection.execute(sa.text("SELECT received_at FROM deliveries")).scalar_one()
        assert received == OLD_SQLITE_TEXT["received"]
    finally:
        store.close()


def test_migration_0004_keeps_postgresql_instants_and_converts_a_column_without_a_zone(
    postgres_url: str, tmp_path: Path
) -> None:
    (tmp_path / "home").mkdir()
    store = Store(postgres_url)
    try:
        store.upgrade("0003")
        with store.engine.begin() as connection:
            # A column someone made without a time zone, holding UTC wall-clock times.
            connection.execute(sa.text("ALTER TABLE runs ALTER COLUMN queued_at TYPE timestamp"))
            # Written in a session in New York, as revision 0003's code could: timestamptz keeps the instant.
            connection.execute(sa.text(f"SET LOCAL TIME ZONE '{NEW_YORK}'"))
            old_rows(
                connection,
                {
                    "received": "2026-07-04 19:05:09.123456-04:00",
                    "recorded": "2026-07-04 23:05:09+00:00",
                    "queued": "2026-07-04 23:05:08.000001",
                    "started": "2026-07-04 23:05:10.5+00:00",
                    "finished": "2026-07-05 01:05:12+02:00",
                },
            )
        store.upgrade()
        with store.engine.connect() as connection:
            kind = connection.execute(
                sa.text(
                    "SELECT data_type FROM information_schema.columns"
                    " WHERE table_name = 'runs' AND column_name = 'queued_at'"
                )
            ).scalar_one()
        assert kind == "timestamp with time zone"
        assert_old_rows_read_back_aware(store, tmp_path, postgres_url)
    finally:
        store.close()
