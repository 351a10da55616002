"""Benchmark a burst of pushes: how many builds complete, and how soon after the last push the newest is live.

Run it from the project's root, with the project's venv::

    .venv/bin/python bench/burst.py [--pushes N] [--interval S] [--build S] [--rounds N]

For each of three pipelines' ``concurrency:`` (the default, ``cancel-in-progress: true``, ``queue: all``) and
each round: a fresh temporary RUNNER_HOME, a local bare repository, a pipeline that checks out the pushed
commit (git step), builds it (a step of ``--build`` seconds, 2 by default) and deploys it (a step that records
the commit), and a real ``runner up`` on a free loopback port. One warm-up push makes the checkout; then
``--pushes`` commits (10), each pushed to the bare repository and delivered as GitHub's signed push,
``--interval`` seconds apart (0.2). Measured: how many builds completed, and the time from the last push's
delivery until the newest commit is recorded as deployed. With several rounds, the medians.

The goal (issue 14): by default at most 2 builds complete and the newest commit is live within 5 s of the
last push; with ``cancel-in-progress: true`` at most 2 builds and about 3 s; ``queue: all`` shows every
build, for comparison. The exit status is 1 if a round went wrong (a delivery refused, the newest commit never
deployed, a server that died), 0 otherwise; whether the goal is met is printed.
"""

from __future__ import annotations

import argparse
import copy
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from common import (
    ENDPOINT,
    PAYLOADS,
    BenchError,
    ServerProcess,
    base_env,
    free_port,
    load_average,
    nproc,
    positive_int,
    push_headers,
    run_benchmark,
    runner_command,
    running,
    sign,
    temporary_home,
)

MODES = {
    "default": "",
    "cancel-in-progress: true": "concurrency: {cancel-in-progress: true}\n",
    "queue: all": "concurrency: {queue: all}\n",
}
PIPELINE = """\
on: {repository: bench/app, events: [push], branches: [main]}
workdir: checkout
<CONCURRENCY>steps:
  - git: {remote: <REMOTE>}
  - name: build
    run: sleep <BUILD>; echo {{ commit }} >> <BUILDS>
  - name: deploy
    run: echo {{ commit }} >> <DEPLOYED>
"""
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Bench",
    "GIT_AUTHOR_EMAIL": "bench@example.com",
    "GIT_COMMITTER_NAME": "Bench",
    "GIT_COMMITTER_EMAIL": "bench@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
}
ZERO = "0" * 40
# How long a round waits for the newest commit to be live, and then for every run to end.
DEPLOY_TIMEOUT = 120.0
GOAL = {"default": (2, 5.0), "cancel-in-progress: true": (2, 3.0)}


def git(*args: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run(
        ["git", *map(str, args)], cwd=cwd, env={**os.environ, **GIT_ENV}, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise BenchError(f"git {' '.join(map(str, args))}: {done.stderr.strip()}")
    return done.stdout.strip()


class Repository:
    """A bare repository, and a work clone whose commits, made beforehand, are pushed to it one at a time."""

    def __init__(self, root: Path, commits: int) -> None:
        self.bare, self.work = root / "app.git", root / "app-work"
        git("init", "-q", "--bare", "--initial-branch=main", self.bare)
        git("init", "-q", "--initial-branch=main", self.work)
        self.commits = [ZERO]
        for number in range(commits):
            (self.work / "version.txt").write_text(f"version {number}\n")
            git("add", "version.txt", cwd=self.work)
            git("commit", "-q", "-m", f"version {number}", cwd=self.work)
            self.commits.append(git("rev-parse", "HEAD", cwd=self.work))

    def push(self, number: int) -> tuple[str, str]:
        """Push commit ``number`` (from 0) to main; the commit before it and it."""
        before, after = self.commits[number], self.commits[number + 1]
        git("push", "-q", self.bare, f"{after}:refs/heads/main", cwd=self.work)
        return before, after


def push_body(template: dict[str, Any], before: str, after: str, number: int) -> bytes:
    """GitHub's push payload, of ``after`` on main, in bench/app."""
    payload = copy.deepcopy(template)
    payload.update(ref="refs/heads/main", before=before, after=after, created=before == ZERO, deleted=False)
    commit = {**payload["commits"][0], "id": after, "message": f"version {number}"}
    payload["commits"], payload["head_commit"] = [commit], {**payload["head_commit"], "id": after}
    payload["repository"]["full_name"] = "bench/app"
    return json.dumps(payload).encode()


@dataclass
class Round:
    builds: int
    live_after: float
    # From the first push of the burst to its last: (pushes - 1) intervals, unless a push took longer.
    burst: float
    statuses: Counter[str]


class Home:
    """A fresh home with the pipeline of one mode and ``runner up`` on it."""

    def __init__(self, home: Path, mode: str, build: float, pushes: int) -> None:
        self.home = home
        self.repository = Repository(home, pushes + 1)
        self.builds, self.deployed = home / "builds.txt", home / "deployed.txt"
        (home / "pipelines").mkdir()
        text = PIPELINE.replace("<CONCURRENCY>", MODES[mode]).replace("<REMOTE>", str(self.repository.bare))
        text = text.replace("<BUILD>", f"{build:g}").replace("<BUILDS>", str(self.builds))
        (home / "pipelines" / "app.yaml").write_text(text.replace("<DEPLOYED>", str(self.deployed)))
        self.env = base_env(home)
        self.port = free_port()
        command = [*runner_command(), "up", "--port", str(self.port)]
        self.server = ServerProcess("runner up", command, self.env, self.port, home / "up.log")
        self.template = json.loads((PAYLOADS / "push" / "with-new-branch.payload.json").read_bytes())

    def deliver(self, number: int) -> str:
        """Push commit ``number`` and deliver its push; returns the commit."""
        before, after = self.repository.push(number)
        body = push_body(self.template, before, after, number)
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request(
                "POST", ENDPOINT, body=body, headers=push_headers(str(uuid.uuid4()), sign(body))
            )
            response = connection.getresponse()
            answer = response.read()
        finally:
            connection.close()
        if response.status != 202:
            raise BenchError(f"push {number} was answered {response.status}: {answer[:300]!r}")
        return after

    def lines(self, path: Path) -> list[str]:
        return path.read_text().split() if path.exists() else []

    def wait(self, what: str, done: Callable[[], bool]) -> None:
        """Until ``done()``; a BenchError saying ``what`` went wrong after DEPLOY_TIMEOUT."""
        deadline = time.monotonic() + DEPLOY_TIMEOUT
        while not done():
            self.server.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"{what} within {DEPLOY_TIMEOUT:.0f} s:\n{self.server.output()}")
            time.sleep(0.01)

    def runs(self) -> list[dict[str, Any]]:
        listed = subprocess.run(
            [*runner_command(), "runs", "--json", "--limit", "100"],
            env=self.env,
            capture_output=True,
            text=True,
        )
        if listed.returncode != 0:
            raise BenchError(f"runner runs failed: {listed.stderr}")
        return json.loads(listed.stdout)


def measure(mode: str, args: argparse.Namespace, parent: str | None) -> Round:
    with temporary_home(parent) as path:
        home = Home(path, mode, args.build, args.pushes)
        with running(home.server):
            warm = home.deliver(0)
            home.wait("the warm-up push was not deployed", lambda: warm in home.lines(home.deployed))
            warm_builds = len(home.lines(home.builds))
            first_push = time.monotonic()
            for number in range(1, args.pushes + 1):
                # On a schedule: a slow push does not push the ones after it back.
                time.sleep(max(0.0, first_push + (number - 1) * args.interval - time.monotonic()))
                newest = home.deliver(number)
                last_push = time.monotonic()
            home.wait("the newest commit was not deployed", lambda: newest in home.lines(home.deployed))
            live_after = time.monotonic() - last_push
            home.wait(
                "some runs did not end",
                lambda: all(r["status"] not in ("queued", "running") for r in home.runs()),
            )
            statuses = Counter(r["status"] for r in home.runs()[: args.pushes])
            builds = len(home.lines(home.builds)) - warm_builds
            return Round(builds, live_after, last_push - first_push, statuses)


def said(statuses: Counter[str]) -> str:
    return ", ".join(f"{status} {count}" for status, count in sorted(statuses.items()))


def benchmark(args: argparse.Namespace) -> int:
    parent = args.tmp_dir or tempfile.gettempdir()
    print(f"runner burst benchmark, {datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"machine: nproc {nproc()}, load average {load_average()} (other work skews the figures)")
    print(
        f"burst: {args.pushes} pushes of distinct commits, {args.interval:g} s apart, to a local bare "
        f"repository; build step {args.build:g} s; runner up on a fresh home (SQLite); {args.rounds} round(s)"
    )
    medians: dict[str, tuple[float, float]] = {}
    for mode in MODES:
        rounds = [measure(mode, args, parent) for _ in range(args.rounds)]
        builds = statistics.median(r.builds for r in rounds)
        live = statistics.median(r.live_after for r in rounds)
        medians[mode] = (builds, live)
        each = "; ".join(
            f"{r.builds} builds, live {r.live_after:.1f} s, burst {r.burst:.1f} s ({said(r.statuses)})"
            for r in rounds
        )
        print(f"  {mode:<26} builds {builds:g}, newest live {live:.1f} s after the last push   [{each}]")
        sys.stdout.flush()
    for mode, (most, within) in GOAL.items():
        builds, live = medians[mode]
        met = builds <= most and live <= within
        print(f"goal, {mode}: at most {most} builds, live within {within:g} s: {'met' if met else 'NOT met'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Benchmark a burst of pushes: builds completed, and how soon the newest commit is live."
    )
    parser.add_argument("--pushes", type=positive_int, default=10, help="pushes in the burst (10)")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between pushes (0.2)")
    parser.add_argument("--build", type=float, default=2.0, help="seconds the build step takes (2)")
    parser.add_argument("--rounds", type=positive_int, default=1, help="rounds to take medians of (1)")
    parser.add_argument("--tmp-dir", help="where the temporary RUNNER_HOMEs go (default: the system's)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_benchmark("burst", benchmark, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
