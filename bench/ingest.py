"""Benchmark the webhook endpoint: how many deliveries/s become durable, and how fast one is answered.

Run it from the project's root, with the project's venv (``wrk`` must be installed: ``apt-get install wrk``)::

    .venv/bin/python bench/ingest.py [--duration S] [--rounds N] [--requests N] [--workers N] [--baseline]

The goal: at least 2,000 durable deliveries/s with 20 concurrent connections, and a p99 under 5 ms at one
connection (GitHub sends a hook's deliveries one at a time), on a 2-core machine.

Each measurement gets a fresh temporary RUNNER_HOME (``runner db upgrade`` on its default SQLite database)
and a real ``runner serve --workers N`` (``--workers``, default 1: N server processes sharing the port) on a
free loopback port, stopped and removed afterwards, also on Ctrl-C or error. The body is the largest real push
payload in ``../shared/github-payloads/push/`` (the repository's parent directory's ``shared/``), signed with
``RUNNER_SECRET``.

- Saturation: ``wrk -t2 -c20 -d<duration>s --latency`` POSTs the payload with a valid signature and a delivery
  id that differs per request. Afterwards the entries in ``<home>/queues/main/`` are counted and compared with
  the 2xx answers wrk counted: an acknowledged delivery must be on disk. wrk stops counting at the end of its
  duration, so the requests then in flight (at most one per connection, plus any that hit a socket error) are
  stored without being counted: up to that many more entries than 2xx answers is consistent, fewer is a loss.
- Latency at one connection: after a warm-up, N sequential signed POSTs over one keep-alive connection, each
  timed with ``time.perf_counter`` from sending the request to having read the answer.
- ``--baseline``: the same saturation load against a trivial Starlette + Hypercorn app (``bench/baseline.py``,
  served in-process, as ``runner serve`` does, in a subprocess) that checks the HMAC, parses the JSON and
  writes nothing, so the ratio "durable / no write" comes from the same run on the same machine.

wrk runs on the same machine as the server, so the two share its cores: the figures are for that setting.
The exit status is 1 if a correctness check failed (a non-2xx answer, fewer entries than 2xx answers, a server
that died), 0 otherwise; whether the goal is met is printed, not turned into the exit status.
"""

from __future__ import annotations

import argparse
import http.client
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from baseline import baseline_server
from common import (
    ENDPOINT,
    PAYLOADS,
    BenchError,
    count_entries,
    filesystem_of,
    load_average,
    nproc,
    percentile,
    pick_payload,
    positive_int,
    push_headers,
    run_benchmark,
    runner_server,
    sign,
)
from wrk import WrkResult, run_wrk, write_lua, wrk_version

GOAL_RATE = 2000.0  # durable deliveries/s at 20 connections
GOAL_P99_MS = 5.0  # at one connection

WARMUP_REQUESTS = 200


# Helpers ---------------------------------------------------------------------------------------------------


def settled_count(directory: Path, timeout: float = 10.0) -> tuple[int, int]:
    """Count once the directory stops changing (requests still in flight have been answered)."""
    deadline = time.monotonic() + timeout
    last = count_entries(directory)
    stable = 0
    while stable < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
        now = count_entries(directory)
        stable = stable + 1 if now == last else 0
        last = now
    return last


# Load ------------------------------------------------------------------------------------------------------


def post_sequentially(port: int, body: bytes, signature: str, count: int, label: str) -> list[float]:
    """``count`` signed POSTs one after another over one keep-alive connection; their times in ms."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    run = uuid.uuid4().hex[:12]
    times: list[float] = []
    try:
        for i in range(count):
            start = time.perf_counter()
            connection.request(
                "POST", ENDPOINT, body=body, headers=push_headers(f"{label}-{run}-{i}", signature)
            )
            response = connection.getresponse()
            answer = response.read()
            elapsed = time.perf_counter() - start
            if response.status // 100 != 2:
                raise BenchError(f"POST #{i} was answered {response.status}: {answer[:300]!r}")
            times.append(elapsed * 1000)
    finally:
        connection.close()
    return times


# Measurements ----------------------------------------------------------------------------------------------


@dataclass
class Saturation:
    wrk: WrkResult
    entries: int
    temps: int
    consistent: bool
    note: str


@dataclass
class Latency:
    p50: float
    p90: float
    p99: float
    max: float


def measure_saturation(body: bytes, signature: str, lua: Path, args: argparse.Namespace) -> Saturation:
    with runner_server(args.tmp_dir, args.workers) as (server, queue_dir):
        post_sequentially(server.port, body, signature, WARMUP_REQUESTS, "warmup")
        before, _ = settled_count(queue_dir)
        result = run_wrk(server.port, lua, args)
        server.check_alive()
        after, temps = settled_count(queue_dir)
    entries = after - before
    # Requests in flight when wrk stopped counting: one per connection, plus those cut by a socket error.
    in_flight = args.connections + result.socket_errors
    surplus = entries - result.ok
    if result.non_2xx:
        consistent, note = False, f"MISMATCH: {result.non_2xx} answers were not 2xx"
    elif surplus == 0:
        consistent, note = True, "equal"
    elif 0 < surplus <= in_flight:
        consistent = True
        note = f"ok: {surplus} more, answered after wrk stopped counting (at most {in_flight})"
    elif surplus < 0:
        consistent, note = False, f"MISMATCH: {-surplus} acknowledged deliveries are not in the queue"
    else:
        consistent, note = False, f"MISMATCH: {surplus} more entries than requests wrk can have sent"
    return Saturation(result, entries, temps, consistent, note)


def measure_baseline(lua: Path, args: argparse.Namespace) -> WrkResult:
    with baseline_server(args.tmp_dir) as server:
        body = Path(args.payload).read_bytes()
        post_sequentially(server.port, body, sign(body), WARMUP_REQUESTS, "warmup")
        result = run_wrk(server.port, lua, args)
        server.check_alive()
    return result


def measure_latency(body: bytes, signature: str, args: argparse.Namespace) -> Latency:
    with runner_server(args.tmp_dir, args.workers) as (server, _queue_dir):
        post_sequentially(server.port, body, signature, WARMUP_REQUESTS, "warmup")
        times = sorted(post_sequentially(server.port, body, signature, args.requests, "latency"))
        server.check_alive()
    return Latency(percentile(times, 50), percentile(times, 90), percentile(times, 99), times[-1])


# Report ----------------------------------------------------------------------------------------------------


def fmt_ms(value: float) -> str:
    return f"{value:.2f} ms"


def print_saturation(label: str, s: Saturation) -> None:
    w = s.wrk
    lat = ", ".join(f"p{p} {fmt_ms(v)}" for p, v in w.latency_ms.items())
    print(
        f"  {label}: {w.rate:,.0f} requests/s ({w.requests} requests in {w.seconds:.2f} s, "
        f"{w.non_2xx} non-2xx, {w.socket_errors} socket errors; wrk latency {lat})"
    )
    temps = f"; {s.temps} .tmp files left" if s.temps else ""
    print(f"    queue entries {s.entries}, 2xx answers {w.ok}: {s.note}{temps}")


def print_latency(label: str, lat: Latency) -> None:
    print(
        f"  {label}: p50 {fmt_ms(lat.p50)}, p90 {fmt_ms(lat.p90)}, p99 {fmt_ms(lat.p99)}, "
        f"max {fmt_ms(lat.max)}"
    )


@dataclass
class Rounds:
    """The measurements of every round."""

    saturations: list[Saturation] = field(default_factory=list)
    latencies: list[Latency] = field(default_factory=list)
    baselines: list[WrkResult] = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        return all(s.consistent for s in self.saturations)


def print_setting(args: argparse.Namespace, payload: Path, body: bytes) -> None:
    tmp_parent = Path(args.tmp_dir or tempfile.gettempdir())
    print(f"runner ingest benchmark, {datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(
        f"machine: nproc {nproc()}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, {wrk_version()}; load average {load_average()} "
        "(other work on the machine skews the figures)"
    )
    print(f"payload: {payload.relative_to(PAYLOADS)}, {len(body)} bytes")
    print(
        f"saturation: wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency; "
        f"one connection: {args.requests} sequential POSTs after {WARMUP_REQUESTS} warm-up; "
        f"runner serve --workers {args.workers}"
    )
    print(f"temporary homes under {tmp_parent}, on {filesystem_of(tmp_parent)}")
    sys.stdout.flush()


def measure_rounds(args: argparse.Namespace, payload: Path, body: bytes, signature: str) -> Rounds:
    """``--rounds`` rounds, each printed as it is measured."""
    rounds = Rounds()
    lua_dir = Path(tempfile.mkdtemp(prefix="runner-bench-lua-"))
    try:
        lua = lua_dir / "post.lua"
        write_lua(lua, payload, signature)
        for round_number in range(1, args.rounds + 1):
            print(f"\nround {round_number}/{args.rounds}")
            saturation = measure_saturation(body, signature, lua, args)
            rounds.saturations.append(saturation)
            print_saturation(f"durable (runner serve --workers {args.workers})", saturation)
            sys.stdout.flush()
            if args.baseline:
                baseline = measure_baseline(lua, args)
                rounds.baselines.append(baseline)
                print(
                    f"  no write (baseline app): {baseline.rate:,.0f} requests/s "
                    f"({baseline.non_2xx} non-2xx, {baseline.socket_errors} socket errors); "
                    f"durable / no write {saturation.wrk.rate / baseline.rate:.2f}"
                )
            latency = measure_latency(body, signature, args)
            rounds.latencies.append(latency)
            print_latency("one connection", latency)
            sys.stdout.flush()
    finally:
        shutil.rmtree(lua_dir, ignore_errors=True)
    return rounds


def print_medians(args: argparse.Namespace, rounds: Rounds) -> None:
    rate = statistics.median(s.wrk.rate for s in rounds.saturations)
    median = Latency(
        statistics.median(x.p50 for x in rounds.latencies),
        statistics.median(x.p90 for x in rounds.latencies),
        statistics.median(x.p99 for x in rounds.latencies),
        statistics.median(x.max for x in rounds.latencies),
    )
    print(f"\nmedians over {args.rounds} round(s) (load average now {load_average()})")
    print(f"  durable: {rate:,.0f} requests/s at {args.connections} connections")
    if rounds.baselines:
        base_rate = statistics.median(b.rate for b in rounds.baselines)
        print(f"  no write: {base_rate:,.0f} requests/s; durable / no write {rate / base_rate:.2f}")
    print_latency("one connection", median)
    print(f"  every acknowledged delivery in the queue: {'yes' if rounds.consistent else 'NO'}")
    rate_met = rate >= GOAL_RATE
    p99_met = median.p99 < GOAL_P99_MS
    print(
        f"goal: >= {GOAL_RATE:,.0f} durable deliveries/s at 20 connections: "
        f"{'met' if rate_met else 'NOT met'}; "
        f"p99 < {GOAL_P99_MS:g} ms at one connection: {'met' if p99_met else 'NOT met'} "
        f"(goal stated for a 2-core machine; this one has {nproc()})"
    )


def benchmark(args: argparse.Namespace) -> int:
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2
    payload = pick_payload()
    args.payload = str(payload)
    body = payload.read_bytes()
    signature = sign(body)
    print_setting(args, payload, body)
    rounds = measure_rounds(args, payload, body, signature)
    print_medians(args, rounds)
    return 0 if rounds.consistent else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Benchmark runner's webhook endpoint: durable deliveries/s under wrk, latency at one "
        "connection."
    )
    parser.add_argument("--duration", type=positive_int, default=10, help="seconds of wrk load (default 10)")
    parser.add_argument("--rounds", type=positive_int, default=3, help="rounds to take medians of (3)")
    parser.add_argument(
        "--requests", type=positive_int, default=2000, help="sequential POSTs timed at one connection (2000)"
    )
    parser.add_argument("--connections", type=positive_int, default=20, help="wrk connections (default 20)")
    parser.add_argument("--threads", type=positive_int, default=2, help="wrk threads (default 2)")
    parser.add_argument(
        "--workers", type=positive_int, default=1, help="server processes of runner serve (default 1)"
    )
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="also load a no-write Starlette+Hypercorn app (one process), for the ratio",
    )
    parser.add_argument(
        "--tmp-dir", help="where the temporary RUNNER_HOMEs go (default: the system's temporary directory)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_benchmark("ingest", benchmark, args)


if __name__ == "__main__":
    sys.exit(main())
