"""Benchmark the webhook endpoint: how many deliveries/s become durable, and how fast one is answered.

Run it from the project's root, with the project's venv (``wrk`` must be installed: ``apt-get install wrk``;
for ``--webhook``, adnanh/webhook too: ``apt-get install webhook``)::

    .venv/bin/python bench/ingest.py [--duration S] [--rounds N] [--requests N] [--workers 1,2] [--webhook]
                                     [--baseline] [--before PATH] [--one-connection-only]

The goal: at least 2,000 durable deliveries/s with 20 concurrent connections, and a p99 under 5 ms at one
connection (GitHub sends a hook's deliveries one at a time), on a 2-core machine; in the long run, ahead of
adnanh/webhook.

Each round loads every target in turn, so that their figures come from the same minutes of the same machine:
``runner serve --workers N`` for each N of ``--workers`` (default ``1,2``), then adnanh/webhook
(``--webhook``), then the no-write app (``--baseline``). Each measurement gets a fresh temporary home (for
runner, a RUNNER_HOME after ``runner db upgrade`` on its default SQLite database) and a real server on a free
loopback port, stopped and removed afterwards, also on Ctrl-C or error. The body is the largest real push
payload in ``../shared/github-payloads/push/`` (the repository's parent directory's ``shared/``), signed with
``RUNNER_SECRET``.

- Saturation: ``wrk -t2 -c20 -d<duration>s --latency`` POSTs the payload with a valid signature and a delivery
  id that differs per request. For runner, the entries in ``<home>/queues/main/`` are then counted and
  compared with the 2xx answers wrk counted: an acknowledged delivery must be on disk. wrk stops counting at
  the end of its duration, so the requests then in flight (at most one per connection, plus any that hit a
  socket error) are stored without being counted: up to that many more entries than 2xx answers is
  consistent, fewer is a loss.
- One connection, on a fresh server of its own, after a warm-up (200 POSTs over one connection, 200 on a
  new connection each, so that every server process has served): N sequential signed POSTs over one
  keep-alive connection from Python's ``http.client``, each timed with ``time.perf_counter`` from sending the
  request to having read the answer; then N more, each on a new connection (as GitHub sends them; timed from
  connecting); then, on the same server, ``wrk -t1 -c1 -d<duration>s --latency``.
- ``--one-connection-only``: no saturation load, only the one-connection measurements (short rounds, for
  comparing one and two server processes at one connection over many rounds).
- ``--before PATH``: each ``runner serve --workers N`` is followed in every round by the same command of
  another checkout (its ``.venv/bin/runner``), so that old and new code are measured in the same minutes.
- ``--webhook``: the same loads against adnanh/webhook (``bench/webhook.py``), checking the same
  ``X-Hub-Signature-256`` HMAC and forking ``/bin/true`` per delivery, writing nothing. The medians then give
  runner's figures as ratios of its.
- ``--baseline``: the same loads against a trivial Starlette + Hypercorn app (``bench/baseline.py``, served
  in-process, as ``runner serve`` does, in a subprocess) that checks the HMAC, parses the JSON and writes
  nothing; without ``--webhook``, the ratios are of its figures.

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
    sign,
)
from targets import Target, targets_of
from webhook import webhook_binary, webhook_version
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


def post_sequentially(
    port: int, body: bytes, signature: str, count: int, label: str, fresh: bool = False
) -> list[float]:
    """``count`` signed POSTs one after another, over one keep-alive connection or (``fresh``) each on a
    new one, as GitHub sends them; their times in ms, from connecting (``fresh``) or sending to the answer."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    run = uuid.uuid4().hex[:12]
    times: list[float] = []
    try:
        for i in range(count):
            start = time.perf_counter()
            if fresh:
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
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
    entries: int | None  # None: the target writes nothing
    temps: int
    consistent: bool
    note: str


@dataclass
class Latency:
    p50: float
    p90: float
    p99: float
    max: float


@dataclass
class OneConnection:
    """The clients one delivery at a time: Python's sequential one over one connection, then on a new
    connection each, then ``wrk -t1 -c1 --latency``."""

    sequential: Latency
    fresh: Latency
    wrk: WrkResult


def judge(result: WrkResult, entries: int, in_flight: int) -> tuple[bool, str]:
    """Whether ``entries`` new queue entries agree with the 2xx answers wrk counted, and why."""
    surplus = entries - result.ok
    if result.non_2xx:
        return False, f"MISMATCH: {result.non_2xx} answers were not 2xx"
    if surplus == 0:
        return True, "equal"
    if 0 < surplus <= in_flight:
        return True, f"ok: {surplus} more, answered after wrk stopped counting (at most {in_flight})"
    if surplus < 0:
        return False, f"MISMATCH: {-surplus} acknowledged deliveries are not in the queue"
    return False, f"MISMATCH: {surplus} more entries than requests wrk can have sent"


def measure_saturation(target: Target, body: bytes, lua: Path, args: argparse.Namespace) -> Saturation:
    signature = sign(body)
    with target.serving(args) as (server, queue_dir):
        post_sequentially(server.port, body, signature, WARMUP_REQUESTS, "warmup")
        before = settled_count(queue_dir)[0] if queue_dir else 0
        result = run_wrk(server.port, lua, args.threads, args.connections, args.duration)
        server.check_alive()
        after, temps = settled_count(queue_dir) if queue_dir else (0, 0)
    if queue_dir is None:
        consistent = result.non_2xx == 0
        note = "writes nothing" if consistent else f"MISMATCH: {result.non_2xx} answers were not 2xx"
        return Saturation(result, None, 0, consistent, note)
    # Requests in flight when wrk stopped counting: one per connection, plus those cut by a socket error.
    consistent, note = judge(result, after - before, args.connections + result.socket_errors)
    return Saturation(result, after - before, temps, consistent, note)


def measure_one_connection(target: Target, body: bytes, lua: Path, args: argparse.Namespace) -> OneConnection:
    signature = sign(body)
    with target.serving(args) as (server, _queue_dir):
        post_sequentially(server.port, body, signature, WARMUP_REQUESTS, "warmup")
        # And on new connections: with several server processes each has then served (one keep-alive
        # connection reaches one of them), as on a server that has been up for a while.
        post_sequentially(server.port, body, signature, WARMUP_REQUESTS, "warmup", fresh=True)
        times = sorted(post_sequentially(server.port, body, signature, args.requests, "latency"))
        fresh = sorted(post_sequentially(server.port, body, signature, args.requests, "fresh", fresh=True))
        result = run_wrk(server.port, lua, 1, 1, args.duration)
        server.check_alive()
    return OneConnection(latency_of(times), latency_of(fresh), result)


def latency_of(times: list[float]) -> Latency:
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
    entries = "" if s.entries is None else f"queue entries {s.entries}, 2xx answers {w.ok}: "
    print(f"    {entries}{s.note}{temps}")


def print_one_connection(one: OneConnection) -> None:
    lat, fresh, w = one.sequential, one.fresh, one.wrk
    print(
        f"    one connection, sequential client: p50 {fmt_ms(lat.p50)}, p90 {fmt_ms(lat.p90)}, "
        f"p99 {fmt_ms(lat.p99)}, max {fmt_ms(lat.max)}"
    )
    print(
        f"    a new connection each, sequential client: p50 {fmt_ms(fresh.p50)}, p90 {fmt_ms(fresh.p90)}, "
        f"p99 {fmt_ms(fresh.p99)}, max {fmt_ms(fresh.max)}"
    )
    wrk_lat = ", ".join(f"p{p} {fmt_ms(v)}" for p, v in w.latency_ms.items())
    print(f"    one connection, wrk -t1 -c1: {w.rate:,.0f} requests/s, {wrk_lat}, {w.non_2xx} non-2xx")


@dataclass
class Rounds:
    """Every round's measurements, per target."""

    saturations: dict[Target, list[Saturation]] = field(default_factory=dict)
    connections: dict[Target, list[OneConnection]] = field(default_factory=dict)

    @property
    def consistent(self) -> bool:
        ones = (one.wrk.non_2xx == 0 for ones in self.connections.values() for one in ones)
        return all(s.consistent for ss in self.saturations.values() for s in ss) and all(ones)


def print_setting(args: argparse.Namespace, payload: Path, body: bytes) -> None:
    tmp_parent = Path(args.tmp_dir or tempfile.gettempdir())
    print(f"runner ingest benchmark, {datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(
        f"machine: nproc {nproc()}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, {wrk_version()}, "
        f"{webhook_version() if args.webhook else 'no webhook round'}; load average {load_average()} "
        "(other work on the machine skews the figures)"
    )
    print(f"payload: {payload.relative_to(PAYLOADS)}, {len(body)} bytes")
    print(
        (
            "saturation: none (--one-connection-only); "
            if args.one_connection_only
            else f"saturation: wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency; "
        )
        + f"one at a time: {args.requests} sequential POSTs after {WARMUP_REQUESTS} warm-up over one "
        f"connection and {WARMUP_REQUESTS} on new ones, {args.requests} on a new connection each, "
        f"then wrk -t1 -c1 -d{args.duration}s --latency on the same server"
    )
    print(f"targets, in each round's order: {', '.join(t.label for t in targets_of(args))}")
    print(f"temporary homes under {tmp_parent}, on {filesystem_of(tmp_parent)}")
    sys.stdout.flush()


def measure_rounds(args: argparse.Namespace, payload: Path, body: bytes) -> Rounds:
    """``--rounds`` rounds, each loading every target in turn, each printed as it is measured."""
    rounds = Rounds()
    lua_dir = Path(tempfile.mkdtemp(prefix="runner-bench-lua-"))
    try:
        lua = lua_dir / "post.lua"
        write_lua(lua, payload, sign(body))
        for round_number in range(1, args.rounds + 1):
            print(f"\nround {round_number}/{args.rounds} (load average {load_average()})")
            for target in targets_of(args):
                if args.one_connection_only:
                    print(f"  {target.label}:")
                else:
                    saturation = measure_saturation(target, body, lua, args)
                    rounds.saturations.setdefault(target, []).append(saturation)
                    print_saturation(target.label, saturation)
                sys.stdout.flush()
                one = measure_one_connection(target, body, lua, args)
                rounds.connections.setdefault(target, []).append(one)
                print_one_connection(one)
                sys.stdout.flush()
    finally:
        shutil.rmtree(lua_dir, ignore_errors=True)
    return rounds


@dataclass
class Medians:
    rate: float
    sequential: Latency
    fresh: Latency
    wrk_p50: float
    wrk_p99: float


def medians_of(rounds: Rounds, target: Target) -> Medians:
    ones = rounds.connections[target]
    return Medians(
        statistics.median(s.wrk.rate for s in rounds.saturations[target]) if rounds.saturations else 0.0,
        median_latency([one.sequential for one in ones]),
        median_latency([one.fresh for one in ones]),
        statistics.median(one.wrk.latency_ms.get("50", float("nan")) for one in ones),
        statistics.median(one.wrk.latency_ms.get("99", float("nan")) for one in ones),
    )


def median_latency(latencies: list[Latency]) -> Latency:
    fields = ("p50", "p90", "p99", "max")
    return Latency(*(statistics.median(getattr(x, f) for x in latencies) for f in fields))


def print_medians(args: argparse.Namespace, rounds: Rounds) -> None:
    print(f"\nmedians over {args.rounds} round(s) (load average now {load_average()})")
    medians = {target: medians_of(rounds, target) for target in targets_of(args)}
    yardstick = medians.get(Target("webhook")) or medians.get(Target("baseline"))
    for target, m in medians.items():
        print_target_medians(args, target, m, yardstick)
    if yardstick is not None:
        print(f"  (yardstick: {'adnanh/webhook' if Target('webhook') in medians else 'the no-write app'})")
    print(f"  every acknowledged delivery in the queue: {'yes' if rounds.consistent else 'NO'}")
    best_rate = max(m.rate for t, m in medians.items() if t.kind == "runner")
    best_p99 = min(m.sequential.p99 for t, m in medians.items() if t.kind == "runner")
    rate_goal = (
        "not measured (--one-connection-only)"
        if args.one_connection_only
        else ("met" if best_rate >= GOAL_RATE else "NOT met")
    )
    print(
        f"goal: >= {GOAL_RATE:,.0f} durable deliveries/s at 20 connections: {rate_goal}; "
        f"p99 < {GOAL_P99_MS:g} ms at one connection (sequential client): "
        f"{'met' if best_p99 < GOAL_P99_MS else 'NOT met'} "
        f"(goal stated for a 2-core machine; this one has {nproc()})"
    )


def print_target_medians(
    args: argparse.Namespace, target: Target, m: Medians, yardstick: Medians | None
) -> None:
    parts = []
    if not args.one_connection_only:
        durable = "durable " if target.kind == "runner" else ""
        parts.append(f"{m.rate:,.0f} {durable}requests/s at {args.connections} connections")
    if yardstick is not None and target.kind == "runner":
        rate = "" if args.one_connection_only else f"{m.rate / yardstick.rate:.2f} of the yardstick's rate; "
        parts.append(
            f"({rate}p99 at one connection {m.sequential.p99 / yardstick.sequential.p99:.2f}x sequential, "
            f"{m.wrk_p99 / yardstick.wrk_p99:.2f}x wrk)"
        )
    print(f"  {target.label}:" + "".join(" " + part for part in parts))
    print(
        f"    one connection: sequential p50 {fmt_ms(m.sequential.p50)} / "
        f"p99 {fmt_ms(m.sequential.p99)}; a new connection each p50 {fmt_ms(m.fresh.p50)} / "
        f"p99 {fmt_ms(m.fresh.p99)}; wrk p50 {fmt_ms(m.wrk_p50)} / p99 {fmt_ms(m.wrk_p99)}"
    )


def benchmark(args: argparse.Namespace) -> int:
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2
    if args.webhook and webhook_binary() is None:
        print("adnanh/webhook is not installed: apt-get install webhook", file=sys.stderr)
        return 2
    payload = pick_payload()
    body = payload.read_bytes()
    print_setting(args, payload, body)
    rounds = measure_rounds(args, payload, body)
    print_medians(args, rounds)
    return 0 if rounds.consistent else 1


def workers_list(text: str) -> list[int]:
    return [positive_int(part) for part in text.split(",")]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Benchmark runner's webhook endpoint: durable deliveries/s under wrk, latency at one "
        "connection, beside adnanh/webhook."
    )
    parser.add_argument("--duration", type=positive_int, default=10, help="seconds of wrk load (default 10)")
    parser.add_argument("--rounds", type=positive_int, default=3, help="rounds to take medians of (3)")
    parser.add_argument(
        "--requests", type=positive_int, default=2000, help="sequential POSTs timed at one connection (2000)"
    )
    parser.add_argument("--connections", type=positive_int, default=20, help="wrk connections (default 20)")
    parser.add_argument("--threads", type=positive_int, default=2, help="wrk threads (default 2)")
    parser.add_argument(
        "--workers",
        type=workers_list,
        default=[1, 2],
        help="server process counts of runner serve to load, comma-separated (default 1,2)",
    )
    parser.add_argument(
        "--webhook", action="store_true", help="also load adnanh/webhook (bench/webhook.py), for the ratios"
    )
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="also load a no-write Starlette+Hypercorn app (one process), for the ratio",
    )
    parser.add_argument(
        "--before",
        metavar="PATH",
        help="also load another checkout's runner serve (its .venv/bin/runner), right after this one's",
    )
    parser.add_argument(
        "--one-connection-only",
        action="store_true",
        help="skip the saturation load: only the one-connection measurements, so that rounds are short",
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
