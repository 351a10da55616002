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
- ``--baseline``: the same saturation load against a trivial Starlette + Hypercorn app (served in-process, as
  ``runner serve`` does, in a subprocess) that checks the HMAC, parses the JSON and writes nothing, so the
  ratio "durable / no write" comes from the same run on the same machine.

wrk runs on the same machine as the server, so the two share its cores: the figures are for that setting.
The exit status is 1 if a correctness check failed (a non-2xx answer, fewer entries than 2xx answers, a server
that died), 0 otherwise; whether the goal is met is printed, not turned into the exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import http.client
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
PAYLOADS = ROOT.parent / "shared" / "github-payloads"
SECRET = "bench secret, not GitHub's"
ENDPOINT = "/github-webhook"
ENTRY_NAME = re.compile(r"^[0-9]{20}\.json$")
HOOK_ID = "292430182"

GOAL_RATE = 2000.0  # durable deliveries/s at 20 connections
GOAL_P99_MS = 5.0  # at one connection

WARMUP_REQUESTS = 200
HEALTH_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


class BenchError(Exception):
    """The benchmark cannot go on; the message says why."""


# Helpers ---------------------------------------------------------------------------------------------------


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def count_entries(directory: Path) -> tuple[int, int]:
    """The published entries and the leftover temporary files in a queue directory."""
    if not directory.is_dir():
        return 0, 0
    entries = temps = 0
    with os.scandir(directory) as it:
        for e in it:
            if ENTRY_NAME.match(e.name):
                entries += 1
            elif e.name.endswith(".tmp"):
                temps += 1
    return entries, temps


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


def pick_payload() -> Path:
    push = PAYLOADS / "push"
    files = sorted(push.glob("*.json"), key=lambda p: (p.stat().st_size, p.name), reverse=True)
    if not files:
        raise BenchError(f"no push payloads in {push} (the shared/ directory sits beside the project)")
    return files[0]


def parse_duration_ms(text: str) -> float:
    """A wrk duration (``812.00us``, ``1.23ms``, ``2.00s``, ``1.00m``) in milliseconds."""
    match = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text)
    if not match:
        raise BenchError(f"cannot read wrk's duration {text!r}")
    factor = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}[match[2]]
    return float(match[1]) * factor


# Servers ---------------------------------------------------------------------------------------------------


def base_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNNER_")}
    env["RUNNER_HOME"] = str(home)
    env["RUNNER_SECRET"] = SECRET
    return env


def runner_command() -> list[str]:
    script = Path(sys.executable).parent / "runner"
    return [str(script)] if script.exists() else [sys.executable, "-m", "runner"]


class ServerProcess:
    """A server process on a loopback port; :meth:`stop` sends SIGTERM, then kills."""

    def __init__(
        self, label: str, command: list[str], env: dict[str, str], port: int, log_path: Path
    ) -> None:
        self.label = label
        self.port = port
        self.log_path = log_path
        self._log = log_path.open("wb")
        # A session of its own: a Ctrl-C at the terminal reaches the benchmark, which then stops it in order.
        self.process = subprocess.Popen(
            command, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def output(self, last: int = 3000) -> str:
        self._log.flush()
        try:
            return self.log_path.read_text(errors="replace")[-last:]
        except OSError:
            return ""

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise BenchError(f"{self.label} exited with status {self.process.returncode}:\n{self.output()}")

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + HEALTH_TIMEOUT
        while True:
            self.check_alive()
            with contextlib.suppress(OSError, http.client.HTTPException):
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                try:
                    connection.request("GET", "/healthz")
                    if connection.getresponse().status == 200:
                        return
                finally:
                    connection.close()
            if time.monotonic() > deadline:
                raise BenchError(f"{self.label} did not answer GET /healthz with 200:\n{self.output()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


@contextlib.contextmanager
def temporary_home(parent: str | None) -> Iterator[Path]:
    home = Path(tempfile.mkdtemp(prefix="runner-bench-", dir=parent))
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


@contextlib.contextmanager
def running(server: ServerProcess) -> Iterator[ServerProcess]:
    try:
        server.wait_healthy()
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def runner_server(parent: str | None, workers: int) -> Iterator[tuple[ServerProcess, Path]]:
    """A fresh RUNNER_HOME, migrated, and ``runner serve`` on it; yields the server and the main queue."""
    with temporary_home(parent) as home:
        env = base_env(home)
        upgrade = subprocess.run(
            [*runner_command(), "db", "upgrade"], env=env, capture_output=True, text=True, timeout=120
        )
        if upgrade.returncode != 0:
            raise BenchError(f"runner db upgrade failed ({upgrade.returncode}):\n{upgrade.stderr}")
        port = free_port()
        command = [*runner_command(), "serve", "--port", str(port), "--workers", str(workers)]
        server = ServerProcess("runner serve", command, env, port, home / "serve.log")
        with running(server):
            yield server, home / "queues" / "main"


@contextlib.contextmanager
def baseline_server(parent: str | None) -> Iterator[ServerProcess]:
    with temporary_home(parent) as home:
        port = free_port()
        command = [sys.executable, str(Path(__file__).resolve()), "--serve-baseline", str(port)]
        server = ServerProcess("the no-write baseline", command, base_env(home), port, home / "baseline.log")
        with running(server):
            yield server


def serve_baseline(port: int) -> None:
    """The no-write baseline: Starlette on Hypercorn, served in-process on uvloop like ``runner serve``."""
    import asyncio
    import json

    import uvloop
    from hypercorn.asyncio import serve
    from hypercorn.config import Config
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    secret = os.environ["RUNNER_SECRET"].encode()

    async def webhook(request: Request) -> Response:
        body = await request.body()
        header = request.headers.get("x-hub-signature-256", "")
        expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected.encode(), header.encode("utf-8", "replace")):
            return JSONResponse({"error": "signature"}, status_code=403)
        try:
            payload = json.loads(body)
        except ValueError:
            return JSONResponse({"error": "body"}, status_code=400)
        if not isinstance(payload, dict):
            return JSONResponse({"error": "body"}, status_code=400)
        return JSONResponse({"delivery": request.headers.get("x-github-delivery")}, status_code=202)

    async def healthz(_request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    app = Starlette(
        routes=[Route(ENDPOINT, webhook, methods=["POST"]), Route("/healthz", healthz, methods=["GET"])]
    )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        config = Config()
        config.bind = [f"127.0.0.1:{port}"]
        config.accesslog = None
        await serve(app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]

    uvloop.run(main())


# Load ------------------------------------------------------------------------------------------------------


LUA_TEMPLATE = """\
-- Generated by bench/ingest.py: POST one signed push payload, a distinct X-GitHub-Delivery per request.
local file = assert(io.open({body_path}, "rb"))
local body = file:read("*a")
file:close()

local PLACEHOLDER = "@DELIVERY@"
local before, after
local counter = 0
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("thread_number", threads)
end

function init(args)
  local headers = {{
    ["Content-Type"] = "application/json",
    ["X-GitHub-Event"] = "push",
    ["X-GitHub-Hook-ID"] = "{hook_id}",
    ["X-Hub-Signature-256"] = "{signature}",
    ["X-GitHub-Delivery"] = PLACEHOLDER,
    ["User-Agent"] = "GitHub-Hookshot/bench",
  }}
  -- Format the request once; each request then only has its delivery id spliced in.
  local template = wrk.format("POST", nil, headers, body)
  local at = string.find(template, PLACEHOLDER, 1, true)
  before = string.sub(template, 1, at - 1)
  after = string.sub(template, at + #PLACEHOLDER)
end

function request()
  counter = counter + 1
  return before .. string.format("{run}-%d-%d", thread_number or 0, counter) .. after
end
"""


def lua_string(value: str) -> str:
    """A Lua string literal for ``value``."""
    safe = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._- "
    escaped = "".join(chr(b) if b in safe else f"\\{b:03d}" for b in value.encode())
    return f'"{escaped}"'


def write_lua(path: Path, body_path: Path, signature: str) -> None:
    run = uuid.uuid4().hex[:12]
    path.write_text(
        LUA_TEMPLATE.format(
            body_path=lua_string(str(body_path)), hook_id=HOOK_ID, signature=signature, run=f"bench-{run}"
        )
    )


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rate: float
    non_2xx: int
    socket_errors: int
    latency_ms: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> int:
        return self.requests - self.non_2xx


def parse_wrk(output: str) -> WrkResult:
    total = re.search(r"^\s*(\d+) requests in ([0-9.]+)(us|ms|s|m|h)", output, re.M)
    rate = re.search(r"^Requests/sec:\s*([0-9.]+)", output, re.M)
    if not total or not rate:
        raise BenchError(f"cannot read wrk's output:\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    latency = {
        pct: parse_duration_ms(value)
        for pct, value in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)\s*$", output, re.M)
    }
    return WrkResult(
        requests=int(total[1]),
        seconds=parse_duration_ms(total[2] + total[3]) / 1000,
        rate=float(rate[1]),
        non_2xx=int(non_2xx[1]) if non_2xx else 0,
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
        latency_ms=latency,
    )


def run_wrk(port: int, lua: Path, args: argparse.Namespace) -> WrkResult:
    command = [
        "wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s", "--latency",
        "-s", str(lua), f"http://127.0.0.1:{port}{ENDPOINT}",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.duration + 60)
    if done.returncode != 0:
        raise BenchError(f"wrk exited with status {done.returncode}:\n{done.stdout}{done.stderr}")
    return parse_wrk(done.stdout)


def post_sequentially(port: int, body: bytes, signature: str, count: int, label: str) -> list[float]:
    """``count`` signed POSTs one after another over one keep-alive connection; their times in ms."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    run = uuid.uuid4().hex[:12]
    times: list[float] = []
    try:
        for i in range(count):
            headers = {
                "Content-Type": "application/json",
                "X-GitHub-Event": "push",
                "X-GitHub-Delivery": f"{label}-{run}-{i}",
                "X-GitHub-Hook-ID": HOOK_ID,
                "X-Hub-Signature-256": signature,
                "User-Agent": "GitHub-Hookshot/bench",
            }
            start = time.perf_counter()
            connection.request("POST", ENDPOINT, body=body, headers=headers)
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


def nproc() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 0


def filesystem_of(path: Path) -> str:
    """The mount point and type of the file system holding ``path``, from /proc/mounts (Linux only)."""
    best = ("?", "?")
    with contextlib.suppress(OSError):
        resolved = str(path.resolve())
        for line in Path("/proc/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) < 3:
                continue
            mount = fields[1]
            inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
            if inside and (best[0] == "?" or len(mount) >= len(best[0])):
                best = (mount, fields[2])
    return f"{best[0]} ({best[1]})"


def load_average() -> str:
    """The 1-minute load average: other work on the machine skews every figure here."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "?"


def wrk_version() -> str:
    done = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
    first = (done.stdout or done.stderr).splitlines()
    return first[0].split(" Copyright")[0] if first else "wrk"


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


def benchmark(args: argparse.Namespace) -> int:
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2
    payload = pick_payload()
    args.payload = str(payload)
    body = payload.read_bytes()
    signature = sign(body)
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

    saturations: list[Saturation] = []
    latencies: list[Latency] = []
    baselines: list[WrkResult] = []
    lua_dir = Path(tempfile.mkdtemp(prefix="runner-bench-lua-"))
    try:
        lua = lua_dir / "post.lua"
        write_lua(lua, payload, signature)
        for round_number in range(1, args.rounds + 1):
            print(f"\nround {round_number}/{args.rounds}")
            saturation = measure_saturation(body, signature, lua, args)
            saturations.append(saturation)
            print_saturation(f"durable (runner serve --workers {args.workers})", saturation)
            sys.stdout.flush()
            if args.baseline:
                baseline = measure_baseline(lua, args)
                baselines.append(baseline)
                print(
                    f"  no write (baseline app): {baseline.rate:,.0f} requests/s "
                    f"({baseline.non_2xx} non-2xx, {baseline.socket_errors} socket errors); "
                    f"durable / no write {saturation.wrk.rate / baseline.rate:.2f}"
                )
            latency = measure_latency(body, signature, args)
            latencies.append(latency)
            print_latency("one connection", latency)
            sys.stdout.flush()
    finally:
        shutil.rmtree(lua_dir, ignore_errors=True)

    rate = statistics.median(s.wrk.rate for s in saturations)
    median = Latency(
        statistics.median(x.p50 for x in latencies),
        statistics.median(x.p90 for x in latencies),
        statistics.median(x.p99 for x in latencies),
        statistics.median(x.max for x in latencies),
    )
    print(f"\nmedians over {args.rounds} round(s) (load average now {load_average()})")
    print(f"  durable: {rate:,.0f} requests/s at {args.connections} connections")
    if baselines:
        base_rate = statistics.median(b.rate for b in baselines)
        print(f"  no write: {base_rate:,.0f} requests/s; durable / no write {rate / base_rate:.2f}")
    print_latency("one connection", median)
    consistent = all(s.consistent for s in saturations)
    print(f"  every acknowledged delivery in the queue: {'yes' if consistent else 'NO'}")
    rate_met = rate >= GOAL_RATE
    p99_met = median.p99 < GOAL_P99_MS
    print(
        f"goal: >= {GOAL_RATE:,.0f} durable deliveries/s at 20 connections: "
        f"{'met' if rate_met else 'NOT met'}; "
        f"p99 < {GOAL_P99_MS:g} ms at one connection: {'met' if p99_met else 'NOT met'} "
        f"(goal stated for a 2-core machine; this one has {nproc()})"
    )
    return 0 if consistent else 1


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


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
    parser.add_argument("--serve-baseline", type=int, metavar="PORT", help=argparse.SUPPRESS)
    return parser


def _terminate(signum: int, _frame: FrameType | None) -> None:
    # Turn SIGTERM into an exception, so the finally blocks stop the servers and remove the directories.
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.serve_baseline is not None:
        serve_baseline(args.serve_baseline)
        return 0
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return benchmark(args)
    except BenchError as exc:
        print(f"ingest benchmark: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; servers stopped, temporary directories removed", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
