"""Benchmark ack → first step (a push's 202 answer → its run's first step running) and the idle footprint.

Run it from the project's root, with the project's venv::

    .venv/bin/python bench/latency.py [--deliveries N] [--interval S] [--idle S] [--no-postgres]
        [--runner PATH]

For SQLite, then PostgreSQL (a fresh database on ``--postgres-url``'s server, dropped afterwards): a fresh
temporary RUNNER_HOME with one pipeline of one step, ``runner db upgrade``, and a real ``runner up`` on a free
loopback port. After a few warm-up deliveries, ``--deliveries`` (200) signed push deliveries, each on a new
connection as GitHub sends them, at least ``--interval`` (0.15) seconds apart; the pipeline has
``concurrency: {queue: all}``, so that each one's run is carried out, none superseded. The ack time is
``time.time_ns()`` once the client has read the 202; the step is ``echo $EPOCHREALTIME >> <dir>/<delivery>``,
bash's own clock read as its process runs its script (the same wall clock, no fork of ``date``). Printed:
ack → first step p50/p90/p99/max.

Footprint (with SQLite): once the deliveries are done, beside that ``runner up``, a ``runner serve`` and a
``runner work`` on fresh homes of their own (the same pipeline); after ``--settle`` (10) seconds idle, each
one's resident memory (VmRSS, summed over the process and its children), then their wake-ups per second over
``--idle`` (60) seconds: the context switches, voluntary and not, of all their threads.

``--runner PATH`` measures another checkout's runner (``PATH/.venv/bin/runner``, or PATH itself if it is an
executable), e.g. main's for "before" figures. The exit status is 1 if a correctness check failed (a delivery
not answered 202, a step that did not run exactly once, a process that died), 0 otherwise; whether the goal
(p50 ≤ 20 ms, p99 ≤ 50 ms on SQLite) is met is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import http.client
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import common
from common import (
    ENDPOINT,
    PAYLOADS,
    BenchError,
    ServerProcess,
    base_env,
    free_port,
    load_average,
    nproc,
    percentile,
    positive_int,
    push_headers,
    run_benchmark,
    running,
    sign,
    temporary_home,
)

PIPELINE = """\
on: {repository: bench/app, events: [push], branches: [main]}
workdir: work
# Each delivery's run is carried out, none superseded by the next.
concurrency: {queue: all}
steps:
  - name: first
    run: echo $EPOCHREALTIME >> <STAMPS>/{{ delivery }}
"""
POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
WARMUP = 5
STEP_TIMEOUT = 30.0
GOAL_P50_MS, GOAL_P99_MS = 20.0, 50.0


def runner_command(path: str | None) -> list[str]:
    return common.runner_command() if path is None else common.checkout_runner(path)


# A home and its processes ----------------------------------------------------------------------------------


class Home:
    """A fresh home, migrated, with the one-step pipeline; its step stamps go to ``<home>/stamps``."""

    def __init__(self, path: Path, command: list[str], database_url: str | None) -> None:
        self.path, self.command = path, command
        self.stamps = path / "stamps"
        self.stamps.mkdir()
        (path / "pipelines").mkdir()
        (path / "work").mkdir()
        (path / "pipelines" / "app.yaml").write_text(PIPELINE.replace("<STAMPS>", str(self.stamps)))
        self.env = base_env(path)
        if database_url:
            self.env["RUNNER_DATABASE_URL"] = database_url
        done = subprocess.run(
            [*command, "db", "upgrade"], env=self.env, capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            raise BenchError(f"runner db upgrade failed ({done.returncode}):\n{done.stderr}")

    def server(self, what: str) -> ServerProcess:
        port = free_port()
        arguments = [what] if what == "work" else [what, "--port", str(port)]
        return ServerProcess(
            f"runner {what}", [*self.command, *arguments], self.env, port, self.path / f"{what}.log"
        )


@contextlib.contextmanager
def postgres_database(url: str) -> Iterator[str]:
    """A new, empty database on ``url``'s server, dropped afterwards."""
    import sqlalchemy as sa

    base = sa.engine.make_url(url)
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
    name = f"runner_bench_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        raise BenchError(f"PostgreSQL at {base.render_as_string(hide_password=True)}: {exc}") from exc
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# Deliveries ------------------------------------------------------------------------------------------------


def push_body(template: dict[str, Any], before: str, after: str) -> bytes:
    """GitHub's push payload, of ``after`` on main of bench/app."""
    payload = copy.deepcopy(template)
    payload.update(ref="refs/heads/main", before=before, after=after, created=False, deleted=False)
    payload["commits"] = [{**payload["commits"][0], "id": after}]
    payload["head_commit"] = {**payload["head_commit"], "id": after}
    payload["repository"]["full_name"] = "bench/app"
    return json.dumps(payload).encode()


def deliver(port: int, delivery: str, body: bytes) -> int:
    """POST one delivery on a new connection; the wall-clock ns when its 202 had been read."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", ENDPOINT, body=body, headers=push_headers(delivery, sign(body)))
        response = connection.getresponse()
        answer = response.read()
        acked = time.time_ns()
    finally:
        connection.close()
    if response.status != 202:
        raise BenchError(f"delivery {delivery} was answered {response.status}: {answer[:300]!r}")
    return acked


def stamp_of(home: Home, delivery: str, server: ServerProcess) -> int:
    """The ns at which the delivery's step ran; a BenchError if it did not run exactly once."""
    path = home.stamps / delivery
    deadline = time.monotonic() + STEP_TIMEOUT
    # Created by the shell's ``>>`` before its echo has written the line.
    while not (path.exists() and path.read_text().endswith("\n")):
        server.check_alive()
        if time.monotonic() > deadline:
            raise BenchError(
                f"the step of delivery {delivery} did not run within {STEP_TIMEOUT:g} s:\n{server.output()}"
            )
        time.sleep(0.01)
    lines = path.read_text().split()
    if len(lines) != 1:
        raise BenchError(f"the step of delivery {delivery} ran {len(lines)} times: {lines}")
    seconds, _, micros = lines[0].replace(",", ".").partition(".")
    return int(seconds) * 1_000_000_000 + int(micros.ljust(6, "0")[:6]) * 1000


def send_all(home: Home, server: ServerProcess, count: int, interval: float) -> list[float]:
    """``count`` deliveries, ``interval`` s apart; each one's ack → first step, in ms."""
    template = json.loads((PAYLOADS / "push" / "with-new-branch.payload.json").read_bytes())
    before = "0" * 40
    acks: dict[str, int] = {}
    sent = time.monotonic() - interval
    for _ in range(count):
        # At least ``interval`` apart, as pushes come: a slow answer does not bunch the next ones up.
        time.sleep(max(0.0, sent + interval - time.monotonic()))
        sent = time.monotonic()
        delivery, after = str(uuid.uuid4()), uuid.uuid4().hex + uuid.uuid4().hex[:8]
        acks[delivery] = deliver(server.port, delivery, push_body(template, before, after))
        before = after
    server.check_alive()
    return [(stamp_of(home, d, server) - ack) / 1e6 for d, ack in acks.items()]


# Footprint -------------------------------------------------------------------------------------------------


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int(entry.joinpath("stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        found.append(current := todo.pop())
        todo.extend(children.get(current, []))
    return found


def status_field(path: Path, field: str) -> int:
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def resident_kib(pid: int) -> tuple[int, int]:
    """The VmRSS of ``pid``'s tree in KiB, and how many processes it has."""
    pids = tree(pid)
    return sum(status_field(Path(f"/proc/{p}/status"), "VmRSS") for p in pids), len(pids)


def switches(pid: int) -> int:
    """The context switches so far of every thread of ``pid``'s tree."""
    total = 0
    for p in tree(pid):
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{p}/task").iterdir():
                status = task / "status"
                total += status_field(status, "voluntary_ctxt_switches")
                total += status_field(status, "nonvoluntary_ctxt_switches")
    return total


@dataclass
class Footprint:
    label: str
    kib: int
    processes: int
    wakeups: float


def footprints(servers: list[ServerProcess], settle: float, idle: float) -> list[Footprint]:
    time.sleep(settle)
    memory = [resident_kib(s.process.pid) for s in servers]
    before = [switches(s.process.pid) for s in servers]
    time.sleep(idle)
    after = [switches(s.process.pid) for s in servers]
    for s in servers:
        s.check_alive()
    return [
        Footprint(s.label, kib, count, (a - b) / idle)
        for s, (kib, count), b, a in zip(servers, memory, before, after, strict=True)
    ]


# Measurements ----------------------------------------------------------------------------------------------


@dataclass
class Latency:
    database: str
    p50: float
    p90: float
    p99: float
    max: float
    min: float


def measure(database: str, url: str | None, args: argparse.Namespace) -> tuple[Latency, list[Footprint]]:
    command = runner_command(args.runner)
    with temporary_home(args.tmp_dir) as path:
        home = Home(path, command, url)
        up = home.server("up")
        with running(up):
            send_all(home, up, WARMUP, args.interval)
            times = sorted(send_all(home, up, args.deliveries, args.interval))
            latency = Latency(database, *(percentile(times, p) for p in (50, 90, 99)), times[-1], times[0])
            print_latency(latency, args.deliveries)
            if database != "SQLite" or args.idle <= 0:
                return latency, []
            return latency, idle_footprints(up, command, args)


def idle_footprints(up: ServerProcess, command: list[str], args: argparse.Namespace) -> list[Footprint]:
    with temporary_home(args.tmp_dir) as serve_path, temporary_home(args.tmp_dir) as work_path:
        serve = Home(serve_path, command, None).server("serve")
        work = Home(work_path, command, None).server("work")
        with running(serve), contextlib.ExitStack() as stack:
            stack.callback(work.stop)
            time.sleep(1.0)  # `runner work` answers no /healthz; it has a second to start or die
            work.check_alive()
            print(f"  idle footprint: {args.settle:g} s to settle, then {args.idle:g} s counting wake-ups")
            sys.stdout.flush()
            return footprints([up, serve, work], args.settle, args.idle)


# Report ----------------------------------------------------------------------------------------------------


def print_latency(lat: Latency, count: int) -> None:
    print(
        f"  {lat.database}: ack → first step over {count} deliveries: p50 {lat.p50:.1f} ms, "
        f"p90 {lat.p90:.1f} ms, p99 {lat.p99:.1f} ms (min {lat.min:.1f}, max {lat.max:.1f})"
    )
    sys.stdout.flush()


def print_setting(args: argparse.Namespace) -> None:
    print(f"runner latency benchmark, {datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"machine: nproc {nproc()}, load average {load_average()} (other work skews the figures)")
    print(f"runner: {' '.join(runner_command(args.runner))}")
    print(
        f"{args.deliveries} deliveries (after {WARMUP} warm-up), {args.interval:g} s apart, each on a new "
        "connection, to runner up on a fresh home; a one-step pipeline"
    )
    sys.stdout.flush()


def benchmark(args: argparse.Namespace) -> int:
    print_setting(args)
    latency, prints = measure("SQLite", None, args)
    latencies = [latency]
    if not args.no_postgres:
        with postgres_database(args.postgres_url) as url:
            latencies.append(measure("PostgreSQL", url, args)[0])
    for f in prints:
        print(
            f"  {f.label}: {f.kib / 1024:.1f} MB resident ({f.processes} process"
            f"{'es' if f.processes > 1 else ''}), {f.wakeups:.2f} wake-ups/s idle"
        )
    sqlite = latencies[0]
    met = sqlite.p50 <= GOAL_P50_MS and sqlite.p99 <= GOAL_P99_MS
    print(
        f"goal: SQLite p50 ≤ {GOAL_P50_MS:g} ms and p99 ≤ {GOAL_P99_MS:g} ms: {'met' if met else 'NOT met'} "
        f"(load average now {load_average()})"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Benchmark ack → first step latency and the idle footprint.")
    parser.add_argument("--deliveries", type=positive_int, default=200, help="deliveries measured (200)")
    parser.add_argument("--interval", type=float, default=0.15, help="seconds between deliveries (0.15)")
    parser.add_argument(
        "--idle", type=float, default=60.0, help="seconds counting idle wake-ups (60; 0 skips)"
    )
    parser.add_argument("--settle", type=float, default=10.0, help="seconds idle before measuring (10)")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    parser.add_argument("--postgres-url", default=POSTGRES_URL, help=f"a PostgreSQL server ({POSTGRES_URL})")
    parser.add_argument("--runner", help="another checkout (its .venv/bin/runner) or runner executable")
    parser.add_argument("--tmp-dir", help="where the temporary RUNNER_HOMEs go (default: the system's)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_benchmark("latency", benchmark, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
