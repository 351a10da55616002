"""A run queued by hand (``runner trigger``): a redeploy, or a ref or commit of a pipeline, with its entry; or
a rollback to a kept release (``runner rollback``)."""

from __future__ import annotations

import getpass
import re
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from runner.config import Config
from runner.entry import Manual, put_entry
from runner.events import SUBJECT_LENGTH
from runner.lock import NotTheOwner, require_owner
from runner.pipeline import Pipeline
from runner.pipelines import PipelineSet
from runner.release_dirs import REPO
from runner.steps import COMMIT, REF
from runner.store import Store


class TriggerError(Exception):
    """The run cannot be queued; the message says why."""


def _ref(value: str) -> str:
    return value if value.startswith("refs/") else f"refs/heads/{value}"


def _commit(workdir: Path, given: str) -> str:
    """The full id of a commit given in full, or abbreviated (4 or more hex digits) as `runner runs` shows it:
    resolved in the pipeline's checkout, where it must name exactly one commit."""
    value = given.lower()
    if COMMIT.match(value):
        return value
    if not re.fullmatch(r"[0-9a-f]{4,63}", value):
        raise TriggerError(f"--commit {given!r} is not a commit id (4 to 40 hex digits)")
    if not (workdir / ".git").exists():
        raise TriggerError(
            f"--commit {given!r} is abbreviated and there is no checkout in {workdir} yet to find it in: "
            "give the full 40-character commit id"
        )
    try:
        found = subprocess.run(
            ["git", "rev-parse", "--verify", f"{value}^{{commit}}"],
            cwd=workdir,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TriggerError(f"cannot ask git about --commit {given!r} in {workdir}: {exc}") from None
    full = found.stdout.strip()
    if found.returncode == 0 and COMMIT.match(full):
        return full
    if "ambiguous" in found.stderr:
        raise TriggerError(
            f"--commit {given!r} is ambiguous in {workdir}: more than one commit starts with it; "
            "give more digits"
        )
    if "Needed a single revision" not in found.stderr:  # git could not look (dubious ownership, ...)
        said = (found.stderr.strip().splitlines() or ["no message"])[0]
        raise TriggerError(f"git cannot look up --commit {given!r} in {workdir}: {said}")
    raise TriggerError(
        f"--commit {given!r} names no commit in {workdir}'s checkout (a commit pushed since the last run "
        "may not be fetched yet: give its full id)"
    )


def _subject(workdir: Path, commit: str) -> str | None:
    """The commit's subject, from the pipeline's checkout when it has the commit; None otherwise (the run
    goes on without it)."""
    if not (workdir / ".git").exists():
        return None
    try:
        found = subprocess.run(
            ["git", "log", "-1", "--format=%s", commit, "--"],
            cwd=workdir,
            capture_output=True,
            text=True,
            errors="replace",
            stdin=subprocess.DEVNULL,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    subject = found.stdout.strip()
    return subject[:SUBJECT_LENGTH] if found.returncode == 0 and subject else None


def find_pipeline(config: Config, name: str, command: str | None) -> Pipeline:
    """The valid pipeline ``name``; with ``command`` (which writes in its queue), one whose queue this
    process may write in. Raises TriggerError."""
    pipelines = PipelineSet(config.pipelines_dir, config.home)
    problems = pipelines.reload()
    found = pipelines.get(name)
    if found is None:
        known = ", ".join(p.name for p in pipelines.all()) or "none"
        detail = "".join(f"\n{p}" for p in problems if p.path.stem == name)
        raise TriggerError(f"no valid pipeline {name!r} (pipelines: {known}){detail}")
    try:
        if command is not None:
            require_owner(config.queues_dir / found.name, command)
    except NotTheOwner as exc:
        raise TriggerError(str(exc)) from None
    return found


@dataclass(frozen=True)
class RunRequest:
    """A run asked for: a pipeline, and a ref, a commit or both; neither redeploys the last run's ref."""

    pipeline: str
    ref: str | None
    commit: str | None
    # The commit's subject, when its checkout tells it.
    subject: str | None = None
    # A rollback's kept release (``runner rollback``): switched to, its activate steps alone run.
    release: str | None = None

    @classmethod
    def checked(cls, config: Config, pipeline: str, ref: str | None, commit: str | None) -> RunRequest:
        """What ``runner trigger`` was given, checked and resolved before any database work. Raises
        TriggerError."""
        found = find_pipeline(config, pipeline, "trigger")
        # A release pipeline's commits are in the clone its releases share.
        checkout = found.workdir / REPO if found.release is not None else found.workdir
        full_commit = _commit(checkout, commit) if commit is not None else None
        full_ref = _ref(ref) if ref else None
        if full_ref is not None and not REF.match(full_ref):
            raise TriggerError(f"--ref {ref!r} is not a branch or a refs/tags/ ref")
        subject = _subject(checkout, full_commit) if full_commit is not None else None
        return cls(found.name, full_ref, full_commit, subject)

    def queue(self, config: Config, store: Store, reason: str | None = None, by: str | None = None) -> Manual:
        """Queue the run with its entry; returns the entry. ``reason``: why the run was queued, recorded on
        it (the catch-up says so); ``by``: who asked (default: this process's user). Raises TriggerError."""
        ref = self.ref
        if ref is None and self.commit is None:
            # A redeploy: the ref of the pipeline's last run.
            last = store.runs(self.pipeline, limit=1)
            if not last or not last[0].ref:
                raise TriggerError(
                    f"pipeline {self.pipeline} has no run yet to redeploy: give --ref or --commit"
                )
            ref = last[0].ref
        trigger = "manual" if self.release is None else "rollback"
        run_id = store.create_run(
            self.pipeline, trigger=trigger, ref=ref, commit=self.commit, subject=self.subject, reason=reason
        )
        by = by or getpass.getuser()
        entry = Manual(run_id, self.pipeline, ref, self.commit, datetime.now(UTC), by, self.release)
        directory = config.queues_dir / self.pipeline
        try:
            name = put_entry(directory, entry.written())
        except OSError as exc:
            # A run is queued only together with its entry.
            store.finish_run(run_id, "failed", f"its entry could not be written to {directory}: {exc}")
            raise TriggerError(
                f"run {run_id} failed: its entry could not be written to {directory}: {exc}"
            ) from None
        store.set_run(run_id, entry=name)
        return entry
