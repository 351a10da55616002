"""Benchmark the webhook endpoint under hostile load: memory stays bounded, valid deliveries are answered.

Run it from the project's root, with the project's venv::

    .venv/bin/python bench/hostile.py [--attackers N] [--size MiB] [--duration S] [--rounds N] [--chunked]

The goal: with 200 concurrent 24 MiB uploads carrying wrong signatures, ``runner serve`` stays under 150 MB
resident and keeps answering valid deliveries, with a p99 under 1 s.

Each round gets a fresh temporary RUNNER_HOME and a real ``runner serve`` on a free loopback port (see
``bench/common.py``, which both benchmarks use), stopped and removed afterwards, also on Ctrl-C or error.

- The attack runs in a process of its own (this script with ``--attack``): ``--attackers`` connections, each
  sending, again and again for ``--duration`` seconds, a body of ``--size`` MiB (a JSON object, declared with
  Content-Length, or chunked with ``--chunked``) whose signature is made up. It counts the answers by status,
  and the attempts cut off before an answer (the server may answer early and close the connection).
- Meanwhile one connection at a time sends GitHub's 8.8 KB push payload, validly signed, one delivery after
  another; each is timed from sending the request to reading the answer, and must be answered 202.
- The server's resident memory is sampled every 20 ms (``VmRSS`` of it and its children); its peak (``VmHWM``)
  is read before it stops.
- Afterwards every valid delivery answered 202 must be in the queue, and no temporary file may be left.

The figures printed are per round, then the medians of the rounds. The exit status is 1 if a correctness
check failed (a valid delivery not answered 202 or not in the queue, a temporary file left, a server that
died), 0 otherwise; whether the goal is met is printed, not turned into the exit status.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from common import (
    ENDPOINT,
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

GOAL_RSS_MB = 150.0
GOAL_P99_MS = 1000.0
CHUNK = 64 * 1024
# The attack starts this long before the valid deliveries are timed, so that they meet it at its height.
RAMP_UP = 1.0


# The attack, in a process of its own ----------------------------------------------------------------------


async def attacker(port: int, body_size: int, chunked: bool, until: float, counts: Counter[str]) -> None:
    """Upload bodies with a made-up signature, one after another, until ``until`` (monotonic)."""
    chunk = memoryview(b" " * CHUNK)
    while time.monotonic() < until:
        head = (
            f"POST {ENDPOINT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"X-GitHub-Event: push\r\nX-GitHub-Delivery: attack-{uuid.uuid4()}\r\n"
            f"X-Hub-Signature-256: sha256={'0' * 64}\r\n"
        )
        head += "Transfer-Encoding: chunked\r\n\r\n" if chunked else f"Content-Length: {body_size}\r\n\r\n"
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            counts["connect error"] += 1
            await asyncio.sleep(0.01)
            continue
        answer = asyncio.ensure_future(reader.readline())
        try:
            writer.write(head.encode())
            # A JSON object, as a real one would be: {"a":"   ...   "}
            pieces = [
                b'{"a":"',
                *([chunk] * ((body_size - 8) // CHUNK)),
                b" " * ((body_size - 8) % CHUNK),
                b'"}',
            ]
            for piece in pieces:
                if answer.done():
                    break
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                await asyncio.wait_for(writer.drain(), 30)
            if chunked and not answer.done():
                writer.write(b"0\r\n\r\n")
                await asyncio.wait_for(writer.drain(), 30)
            status = await asyncio.wait_for(answer, 30)
            parts = status.split()
            counts[parts[1].decode() if len(parts) > 1 else "no answer"] += 1
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            if answer.done() and not answer.cancelled() and answer.exception() is None:
                parts = answer.result().split()
                counts[parts[1].decode() if len(parts) > 1 else "cut off"] += 1
            else:
                counts["cut off"] += 1
        finally:
            answer.cancel()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def attack(port: int, attackers: int, body_size: int, chunked: bool, duration: float) -> None:
    """The ``--attack`` process: prints one JSON line with the answers counted."""

    async def main() -> Counter[str]:
        counts: Counter[str] = Counter()
        until = time.monotonic() + duration
        await asyncio.gather(*(attacker(port, body_size, chunked, until, counts) for _ in range(attackers)))
        return counts

    print(json.dumps(dict(asyncio.run(main()))), flush=True)


# Measuring -------------------------------------------------------------------------------------------------


def tree_pids(pid: int) -> list[int]:
    """``pid`` and its children (the server processes of ``--workers N``)."""
    pids = [pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    pids.append(int(entry.name))
    return pids


def status_kb(pid: int, field: str) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class MemorySampler(threading.Thread):
    """Samples the resident memory of a process tree until stopped; keeps the largest sum seen."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pids = tree_pids(pid)
        self.peak_kb = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(0.02):
            self.peak_kb = max(self.peak_kb, sum(status_kb(pid, "VmRSS") for pid in self.pids))

    def stop(self) -> int:
        """Stop sampling; the peak, counting each process's own high-water mark too."""
        self._stop_event.set()
        self.join()
        return max(self.peak_kb, sum(status_kb(pid, "VmHWM") for pid in self.pids))


def valid_deliveries(port: int, body: bytes, until: float, label: str) -> tuple[list[float], Counter[str]]:
    """Signed deliveries one after another until ``until``; their times in ms and their answers."""
    signature = sign(body)
    times: list[float] = []
    answers: Counter[str] = Counter()
    connection: http.client.HTTPConnection | None = None
    i = 0
    while time.monotonic() < until:
        i += 1
        headers = push_headers(f"{label}-{i}", signature)
        start = time.perf_counter()
        try:
            # As GitHub does: a connection per delivery, so that each one also waits to be accepted.
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            connection.request("POST", ENDPOINT, body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            answers[str(response.status)] += 1
        except (OSError, http.client.HTTPException) as exc:
            answers[type(exc).__name__] += 1
        finally:
            if connection is not None:
                connection.close()
        times.append((time.perf_counter() - start) * 1000)
    return times, answers


@dataclass
class Round:
    peak_rss_mb: float
    idle_rss_mb: float
    p50: float
    p99: float
    max: float
    valid: Counter[str]
    attack: Counter[str]
    entries: int
    temps: int
    busy_lines: int

    @property
    def consistent(self) -> bool:
        accepted = self.valid.get("202", 0)
        return set(self.valid) == {"202"} and self.entries == accepted and self.temps == 0


def measure(args: argparse.Namespace, body: bytes) -> Round:
    with runner_server(args.tmp_dir, args.workers) as (server, queue_dir):
        sampler = MemorySampler(server.process.pid)
        idle_kb = sum(status_kb(pid, "VmRSS") for pid in sampler.pids)
        sampler.start()
        command = [
            sys.executable, str(Path(__file__).resolve()), "--attack", str(server.port),
            "--attackers", str(args.attackers), "--size", str(args.size), "--duration", str(args.duration),
            *(["--chunked"] if args.chunked else []),
        ]  # fmt: skip
        attack_process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, start_new_session=True)
        try:
            time.sleep(RAMP_UP)
            until = time.monotonic() + args.duration - 2 * RAMP_UP
            times, valid = valid_deliveries(server.port, body, until, f"valid-{uuid.uuid4().hex[:8]}")
            out, _ = attack_process.communicate(timeout=args.duration + 120)
        finally:
            if attack_process.poll() is None:
                attack_process.kill()
                attack_process.wait()
        peak_kb = sampler.stop()
        server.check_alive()
        if attack_process.returncode != 0:
            raise BenchError(f"the attack process exited with status {attack_process.returncode}")
        attack_counts: Counter[str] = Counter(json.loads(out.strip().splitlines()[-1]))
        entries, temps = count_entries(queue_dir)
        busy_lines = server.output(last=10**9).count("deliveries (503)")
    times.sort()
    return Round(
        peak_rss_mb=peak_kb / 1024,
        idle_rss_mb=idle_kb / 1024,
        p50=percentile(times, 50),
        p99=percentile(times, 99),
        max=times[-1],
        valid=valid,
        attack=attack_counts,
        entries=entries,
        temps=temps,
        busy_lines=busy_lines,
    )


def counts(counter: Counter[str]) -> str:
    return ", ".join(f"{key}: {value}" for key, value in sorted(counter.items())) or "none"


def benchmark(args: argparse.Namespace) -> int:
    payload = pick_payload()
    body = payload.read_bytes()
    tmp_parent = Path(args.tmp_dir or tempfile.gettempdir())
    kind = "chunked" if args.chunked else "with Content-Length"
    print(f"runner hostile-load benchmark, {datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(
        f"machine: nproc {nproc()}, load average {load_average()} "
        "(other work on the machine skews the figures)"
    )
    print(
        f"attack: {args.attackers} connections uploading {args.size} MiB bodies ({kind}) with a made-up "
        f"signature, again and again for {args.duration} s; runner serve --workers {args.workers}"
    )
    print(f"valid: {payload.relative_to(payload.parents[1])} ({len(body)} bytes), one delivery at a time")
    print(f"temporary homes under {tmp_parent}, on {filesystem_of(tmp_parent)}")
    rounds: list[Round] = []
    for number in range(1, args.rounds + 1):
        result = measure(args, body)
        rounds.append(result)
        print(f"\nround {number}/{args.rounds}")
        print(
            f"  server resident memory: peak {result.peak_rss_mb:.1f} MB (idle {result.idle_rss_mb:.1f} MB)"
        )
        print(
            f"  valid deliveries: {sum(result.valid.values())} ({counts(result.valid)}); "
            f"p50 {result.p50:.1f} ms, p99 {result.p99:.1f} ms, max {result.max:.1f} ms"
        )
        print(f"  attack answers: {counts(result.attack)}; server log lines on refusals: {result.busy_lines}")
        print(f"  queue: {result.entries} entries, {result.temps} temporary files left")
        sys.stdout.flush()
    peak = statistics.median(r.peak_rss_mb for r in rounds)
    p50 = statistics.median(r.p50 for r in rounds)
    p99 = statistics.median(r.p99 for r in rounds)
    print(f"\nmedians over {args.rounds} round(s) (load average now {load_average()})")
    print(f"  peak resident memory of runner serve: {peak:.1f} MB")
    print(f"  valid deliveries during the attack: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    consistent = all(r.consistent for r in rounds)
    print(
        "  every valid delivery answered 202 and in the queue, no temporary file left: "
        + ("yes" if consistent else "NO")
    )
    print(
        f"goal: peak < {GOAL_RSS_MB:g} MB: {'met' if peak < GOAL_RSS_MB else 'NOT met'}; "
        f"p99 < {GOAL_P99_MS:g} ms: {'met' if p99 < GOAL_P99_MS else 'NOT met'}"
    )
    return 0 if consistent else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Benchmark runner's webhook endpoint under hostile load: its peak memory, and the "
        "latency of valid deliveries meanwhile."
    )
    parser.add_argument("--attackers", type=positive_int, default=200, help="attacking connections (200)")
    parser.add_argument("--size", type=positive_int, default=24, help="MiB per attacking body (24)")
    parser.add_argument("--duration", type=positive_int, default=20, help="seconds of attack per round (20)")
    parser.add_argument("--rounds", type=positive_int, default=3, help="rounds to take medians of (3)")
    parser.add_argument(
        "--chunked", action="store_true", help="attack with chunked bodies (no Content-Length)"
    )
    parser.add_argument(
        "--workers", type=positive_int, default=1, help="server processes of runner serve (1)"
    )
    parser.add_argument("--tmp-dir", help="where the temporary RUNNER_HOMEs go (default: the system's)")
    parser.add_argument("--attack", type=int, metavar="PORT", help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.attack is not None:
        attack(args.attack, args.attackers, args.size * 1024 * 1024, args.chunked, args.duration)
        return 0
    return run_benchmark("hostile-load", benchmark, args)


if __name__ == "__main__":
    sys.exit(main())
