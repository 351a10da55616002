"""What every step uses: the run's context and log, and the one way programs run: argument lists, a
process group of their own, a time limit.

Every program a step starts runs in a session of its own, so that a step over its time limit (or a worker
that stops) takes the whole process tree with it, and its output goes, line by line and time-stamped, to
the run's log.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from runner import timefmt
from runner.config import Config
from runner.credentials import mask
from runner.masking import PROCESS, Masker
from runner.pipeline import Pipeline, StepSpec
from runner.process import Child, process_stat, spawn
from runner.release_dirs import SHARED

COMMIT = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
REF = re.compile(r"^refs/(heads|tags)/[^\x00-\x20~^:?*\[\\]+$")
# How long a process group gets between SIGTERM and SIGKILL.
KILL_GRACE = 5.0
# Variables of the worker's own environment that steps never see: they hold secrets or configure runner.
HIDDEN_ENV_PREFIXES = ("RUNNER_",)


class StepFailed(Exception):
    """A step cannot be carried out; the message says why, for the run's record."""


@dataclass
class Outcome:
    status: str  # succeeded, failed, timed_out, cancelled, skipped
    exit_code: int | None = None
    detail: str | None = None

    @property
    def ok(self) -> bool:
        return self.status in ("succeeded", "skipped")


class RunLog:
    """A run's output: one time-stamped line per line a step printed, and runner's own notes; every secret
    value its masker holds written as ``***``, as each line is written."""

    def __init__(self, path: Path, masker: Masker | None = None) -> None:
        self.path = path
        # The run's secrets, added when the run reads them, over what the whole process masks.
        self.masker = masker if masker is not None else Masker(parent=PROCESS)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: BinaryIO = path.open("ab", buffering=0)

    def write(self, stream: str, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode()
        stamp = timefmt.stamp(datetime.now(UTC)).encode()
        lines = [self.masker.mask_bytes(line) for line in data.splitlines()] or [b""]
        self._file.write(b"".join(b"%s %-6s| %s\n" % (stamp, stream.encode(), line) for line in lines))

    def note(self, text: str) -> None:
        """A line of runner's own (a command, a step's outcome): the credentials of any URL in it masked."""
        self.write("runner", mask(text))

    def close(self) -> None:
        self._file.close()


class Output(Protocol):
    """Where a program's output goes as it comes: the run's log, or a Capture in front of it."""

    def write(self, stream: str, data: bytes | str) -> None: ...


class Capture:
    """A program's output on its way to the run's log, its lines kept as text: what a wrapper said.

    With ``relabel`` (prefix, stream), an output line that starts with the prefix goes to the log without
    it, as that stream (runner-nginx's diff lines as ``diff``).
    """

    def __init__(self, log: RunLog, relabel: tuple[str, str] | None = None) -> None:
        self.log = log
        self.relabel = relabel
        self.out: list[str] = []
        self.err: list[str] = []

    def write(self, stream: str, data: bytes | str) -> None:
        text = data.decode(errors="replace") if isinstance(data, bytes) else data
        lines = text.splitlines()
        (self.out if stream == "out" else self.err).extend(lines)
        if self.relabel is None:
            self.log.write(stream, data)
            return
        # Relabelled output goes on as the text its lines were read from.
        if stream != "out":
            self.log.write(stream, text)
            return
        prefix, label = self.relabel
        for line in lines:
            if line.startswith(prefix):
                self.log.write(label, line.removeprefix(prefix))
            else:
                self.log.write(stream, line)


@dataclass
class RunContext:
    """What the steps of one run share."""

    run_id: int
    pipeline: Pipeline
    config: Config
    log: RunLog
    trigger: str  # "push", "manual" or "rollback"
    ref: str | None
    commit: str | None
    repository: str
    delivery: str | None
    event_name: str | None
    event: Mapping[str, Any]
    previous_commit: str | None
    deadline: float  # time.monotonic() by which the whole run must be done
    base_env: Mapping[str, str]
    changed_files: list[str] | None = None
    on_commit: Callable[[str], Awaitable[None]] | None = None
    # Where the running step's process group id is kept (see execute).
    group_file: Path | None = None
    variables: dict[str, Any] = field(default_factory=dict)
    # Each secret file's value, by the path the pipeline names (runner/pipeline_secrets.py), read when the
    # run starts; CREDENTIALS_DIRECTORY of the worker's environment, for $CREDENTIALS_DIRECTORY/NAME.
    secrets: dict[str, str] = field(default_factory=dict)
    credentials_directory: str | None = None
    # With ``release:``, the release directory the run builds or activates: its steps' workdir.
    release: Path | None = None

    @property
    def home(self) -> Path:
        return self.config.home

    @property
    def workdir(self) -> Path:
        return self.release or self.pipeline.workdir

    @property
    def branch(self) -> str | None:
        return (
            self.ref.removeprefix("refs/heads/") if self.ref and self.ref.startswith("refs/heads/") else None
        )

    @property
    def tag(self) -> str | None:
        return self.ref.removeprefix("refs/tags/") if self.ref and self.ref.startswith("refs/tags/") else None

    def template_context(self) -> dict[str, Any]:
        return {
            "commit": self.commit,
            "branch": self.branch,
            "tag": self.tag,
            "ref": self.ref,
            "repository": self.repository,
            "delivery": self.delivery,
            "event": self.event,
            "event_name": self.event_name,
            "run_id": self.run_id,
            "pipeline": self.pipeline.name,
            "workdir": str(self.workdir),
            "previous_commit": self.previous_commit,
            "changed_files": self.changed_files,
            "env": self.pipeline.env,
            **self.variables,
        }

    def runner_env(self) -> dict[str, str]:
        """The values a step may read from its environment instead of a template."""
        values = {
            "RUNNER_COMMIT": self.commit,
            "RUNNER_BRANCH": self.branch,
            "RUNNER_TAG": self.tag,
            "RUNNER_REF": self.ref,
            "RUNNER_REPOSITORY": self.repository,
            "RUNNER_DELIVERY": self.delivery,
            "RUNNER_EVENT": self.event_name,
            "RUNNER_RUN_ID": str(self.run_id),
            "RUNNER_PIPELINE": self.pipeline.name,
            "RUNNER_WORKDIR": str(self.workdir),
        }
        return {key: value for key, value in values.items() if value is not None}

    def step_secrets(self, spec: StepSpec) -> dict[str, str]:
        """The step's secrets, NAME: value (the run read them before its first step)."""
        return {name: self.secrets[path] for name, path in self.pipeline.step_secrets(spec).items()}

    def secret_context(self, spec: StepSpec) -> dict[str, Any]:
        """The template context of the values a secret may reach (env: values, nginx vars): none of them is
        ever written to a log."""
        # Here, not at the top: a worker that waits holds no Jinja (runner/templating.py imports it).
        from runner.templating import SECRETS

        return {**self.template_context(), SECRETS: self.step_secrets(spec)}

    def env_for(self, spec: StepSpec) -> dict[str, str]:
        from runner.templating import render

        context = self.secret_context(spec)
        env = dict(self.base_env)
        for source in (self.pipeline.env, spec.env):
            for key, value in source.items():
                env[key] = render(value, context)
        env.update(self.step_secrets(spec))
        env.update(self.runner_env())
        return env

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


def now() -> datetime:
    return datetime.now(UTC)


def step_environment(environ: Mapping[str, str], tool_path: Sequence[str] = ()) -> dict[str, str]:
    """The part of the worker's environment that steps inherit, with ``tool_path`` before PATH."""
    env = {key: value for key, value in environ.items() if not key.startswith(HIDDEN_ENV_PREFIXES)}
    if tool_path:
        env["PATH"] = ":".join([*tool_path, env.get("PATH", os.defpath)])
    return env


def _kill_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


async def _pump(stream: asyncio.StreamReader, name: str, log: Output) -> None:
    pending = b""
    while chunk := await stream.read(65536):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        if lines:
            log.write(name, b"\n".join(lines))
    if pending:
        log.write(name, pending)


async def execute(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    timeout: float,
    log: Output,
    group_file: Path | None = None,
    stdin: bytes | None = None,
) -> Outcome:
    """Run a program to its end, or until ``timeout`` seconds, or until cancelled; never through a shell.
    ``stdin``: what the program reads on its standard input (else /dev/null).

    While it runs, its process group id is kept in ``group_file``: if the worker dies, the next worker
    finds there what to stop before it runs the entry again.
    """
    try:
        process = await spawn(argv, cwd=cwd, env=env, start_new_session=True, stdin=stdin)
    except OSError as exc:
        return Outcome("failed", None, f"cannot start {argv[0]}: {exc.strerror}")
    assert process.stdout is not None and process.stderr is not None
    pumps = [
        asyncio.ensure_future(_pump(process.stdout, "out", log)),
        asyncio.ensure_future(_pump(process.stderr, "err", log)),
    ]
    pgid = process.pid  # start_new_session: the process leads its own group
    if group_file is not None:
        group_file.write_text(str(pgid))
    status = "succeeded"
    try:
        try:
            await asyncio.wait_for(process.wait(), timeout=max(timeout, 0))
        except TimeoutError:
            status = "timed_out"
            await _stop_group(process, pgid)
    except asyncio.CancelledError:
        await asyncio.shield(_stop_group(process, pgid))
        raise
    finally:
        # Children left in the background would keep the pipes open: they end with the step.
        _, still_reading = await asyncio.wait(pumps, timeout=1.0)
        if still_reading:
            _kill_group(pgid, signal.SIGKILL)
            await asyncio.wait(still_reading, timeout=1.0)
            for pump in still_reading:
                pump.cancel()
        _kill_group(pgid, signal.SIGKILL)
        if group_file is not None:
            with contextlib.suppress(FileNotFoundError):
                group_file.unlink()
    code = process.returncode
    if status == "timed_out":
        return Outcome("timed_out", code, f"killed after {timeout:.0f} s, with its process group")
    if code != 0:
        return Outcome("failed", code, f"exited with status {code}")
    return Outcome("succeeded", code)


def _group_members(pgid: int, run_id: int) -> list[int]:
    """Processes of group ``pgid`` that belong to run ``run_id`` (a reused group id is left alone)."""
    marker = f"RUNNER_RUN_ID={run_id}".encode()
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = process_stat(int(entry.name))
            if stat.group != pgid or stat.state == "Z":
                continue
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                members.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return members


def stop_leftovers(group_file: Path, run_id: int) -> list[int]:
    """Stop what a step of run ``run_id`` left running when its worker died; returns the pids stopped."""
    try:
        pgid = int(group_file.read_text())
    except (OSError, ValueError):
        return []
    members = _group_members(pgid, run_id)
    for signum in (signal.SIGTERM, signal.SIGKILL):
        for pid in members:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)
        deadline = time.monotonic() + KILL_GRACE
        while _group_members(pgid, run_id) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not _group_members(pgid, run_id):
            break
    with contextlib.suppress(FileNotFoundError):
        group_file.unlink()
    return members


async def _stop_group(process: Child, pgid: int) -> None:
    _kill_group(pgid, signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), timeout=KILL_GRACE)
    except TimeoutError:
        _kill_group(pgid, signal.SIGKILL)
        await process.wait()


def step_timeout(spec: StepSpec, ctx: RunContext) -> float:
    remaining = ctx.remaining()
    return min(spec.timeout, remaining) if spec.timeout is not None else remaining


def step_cwd(spec: StepSpec, ctx: RunContext) -> Path:
    cwd = (ctx.workdir / spec.cwd).resolve() if spec.cwd else ctx.workdir
    inside = [ctx.workdir.resolve()]
    if ctx.release is not None:
        # A release's shared paths are symlinks to <workdir>/shared/...: a cwd through one stays in it.
        inside.append((ctx.pipeline.workdir / SHARED).resolve())
    if cwd != ctx.workdir and not any(cwd.is_relative_to(root) for root in inside):
        raise StepFailed(f"cwd {spec.cwd!r} is outside the workdir")
    if not cwd.is_dir():
        raise StepFailed(f"the working directory {cwd} does not exist")
    return cwd
