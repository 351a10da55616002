"""What the benchmarks share: a real ``runner serve`` on a fresh home, a signed push, the queue, the machine.

Each benchmark (``bench/ingest.py``, ``bench/hostile.py``) is a script run from the project's root with the
project's venv; this module sits beside them and is imported as ``common``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import http.client
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
PAYLOADS = ROOT.parent / "shared" / "github-payloads"
SECRET = "bench secret, not GitHub's"
ENDPOINT = "/github-webhook"
ENTRY_NAME = re.compile(r"^[0-9]{20}\.json$")
HOOK_ID = "292430182"

HEALTH_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


class BenchError(Exception):
    """The benchmark cannot go on; the message says why."""


# Helpers ---------------------------------------------------------------------------------------------------


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def push_headers(delivery: str, signature: str) -> dict[str, str]:
    """The headers of a push delivery as GitHub sends it, with this id and signature."""
    return {
        "Content-Type": "application/json",
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": delivery,
        "X-GitHub-Hook-ID": HOOK_ID,
        "X-Hub-Signature-256": signature,
        "User-Agent": "GitHub-Hookshot/bench",
    }


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


def pick_payload() -> Path:
    push = PAYLOADS / "push"
    files = sorted(push.glob("*.json"), key=lambda p: (p.stat().st_size, p.name), reverse=True)
    if not files:
        raise BenchError(f"no push payloads in {push} (the shared/ directory sits beside the project)")
    return files[0]


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


# Servers ---------------------------------------------------------------------------------------------------


def base_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNNER_")}
    env["RUNNER_HOME"] = str(home)
    env["RUNNER_SECRET"] = SECRET
    return env


def runner_command() -> list[str]:
    script = Path(sys.executable).parent / "runner"
    return [str(script)] if script.exists() else [sys.executable, "-m", "runner"]


def checkout_runner(path: str) -> list[str]:
    """Another checkout's runner (its ``.venv/bin/runner``), or a runner executable: for "before" figures."""
    given = Path(path).resolve()
    executable = given / ".venv" / "bin" / "runner" if given.is_dir() else given
    if not os.access(executable, os.X_OK):
        raise BenchError(f"--runner {path}: no runner executable at {executable}")
    return [str(executable)]


class ServerProcess:
    """A server process on a loopback port; :meth:`stop` sends SIGTERM, then kills."""

    def __init__(
        self,
        label: str,
        command: list[str],
        env: dict[str, str],
        port: int,
        log_path: Path,
        health_path: str = "/healthz",
    ) -> None:
        self.label = label
        self.port = port
        self.log_path = log_path
        self.health_path = health_path
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
                    connection.request("GET", self.health_path)
                    if connection.getresponse().status == 200:
                        return
                finally:
                    connection.close()
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{self.label} did not answer GET {self.health_path} with 200:\n{self.output()}"
                )
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
def runner_server(
    parent: str | None, workers: int, runner: list[str] | None = None
) -> Iterator[tuple[ServerProcess, Path]]:
    """A fresh RUNNER_HOME, migrated, and ``runner serve`` on it; yields the server and the main queue.

    ``runner`` is the command to run (default: this checkout's)."""
    runner = runner or runner_command()
    with temporary_home(parent) as home:
        env = base_env(home)
        upgrade = subprocess.run(
            [*runner, "db", "upgrade"], env=env, capture_output=True, text=True, timeout=120
        )
        if upgrade.returncode != 0:
            raise BenchError(f"runner db upgrade failed ({upgrade.returncode}):\n{upgrade.stderr}")
        port = free_port()
        command = [*runner, "serve", "--port", str(port), "--workers", str(workers)]
        server = ServerProcess("runner serve", command, env, port, home / "serve.log")
        with running(server):
            yield server, home / "queues" / "main"


# The machine -----------------------------------------------------------------------------------------------


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


# Running a benchmark ---------------------------------------------------------------------------------------


def _terminate(signum: int, _frame: FrameType | None) -> None:
    # Turn SIGTERM into an exception, so the finally blocks stop the servers and remove the directories.
    raise SystemExit(128 + signum)


def run_benchmark(name: str, benchmark: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """``benchmark(args)``'s exit status; stopped by SIGTERM or Ctrl-C, it still stops its servers and removes
    its directories, and a BenchError is printed as the ``name`` benchmark's."""
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return benchmark(args)
    except BenchError as exc:
        print(f"{name} benchmark: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; servers stopped, temporary directories removed", file=sys.stderr)
        return 130
