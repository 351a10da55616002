"""``runner releases`` and ``runner rollback``: a release pipeline's kept releases, and a run that switches
back to one of them and runs its activate steps alone."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import TYPE_CHECKING

from runner.arguments import Commands
from runner.config import Config

if TYPE_CHECKING:
    from runner.pipeline import Pipeline
    from runner.release_dirs import ReleaseInfo


def _fail(message: str) -> SystemExit:
    print(f"runner: {message}", file=sys.stderr)
    return SystemExit(1)


def _release_pipeline(config: Config, name: str, command: str | None) -> Pipeline:
    # The commands' modules are imported when one runs: the CLI's start (and `runner serve`'s) stays small.
    from runner.trigger import TriggerError, find_pipeline

    try:
        pipeline = find_pipeline(config, name, command)
    except TriggerError as exc:
        raise _fail(str(exc)) from None
    if pipeline.release is None:
        raise _fail(
            f"pipeline {name} has no `release:`: it builds in {pipeline.workdir}, which keeps no releases"
        )
    return pipeline


def _states(config: Config, releases: list[ReleaseInfo]) -> dict[str, str]:
    """Each release's state: ``succeeded`` from its record; one without is its run's (``building`` while
    the run is queued or running; ``interrupted``, ``failed``, ... for what a killed worker or a failed
    clean-up left), or ``unknown`` when the database has no such run or cannot be read (said on stderr)."""
    from sqlalchemy.exc import SQLAlchemyError

    from runner.schema import SchemaError
    from runner.store import Store

    states = {info.name: "succeeded" for info in releases if info.succeeded}
    unrecorded = [info for info in releases if not info.succeeded]
    if not unrecorded:
        return states
    try:
        with contextlib.closing(Store(config.database_url, server=config.server_name)) as store:
            store.check_schema()
            for info in unrecorded:
                run = store.run(info.run_id)
                status = run.status if run is not None else "unknown"
                states[info.name] = "building" if status in ("queued", "running") else status
    except (SchemaError, SQLAlchemyError) as exc:
        print(f"runner: cannot read the runs of unrecorded releases: {exc}", file=sys.stderr)
    return {info.name: states.get(info.name, "unknown") for info in releases}


def cmd_releases(config: Config, args: argparse.Namespace) -> None:
    from runner.release_dirs import Releases

    pipeline = _release_pipeline(config, args.pipeline, None)
    releases = Releases(pipeline.workdir).all()
    states = _states(config, releases)
    if args.json:
        print(json.dumps([{**info.shown(), "state": states[info.name]} for info in releases], indent=2))
        return
    if not releases:
        print(f"pipeline {pipeline.name} has no releases yet", file=sys.stderr)
        return
    print(f"{'':2}{'RELEASE':<20} {'RUN':>6}  {'COMMIT':<12} {'STATE':<11} REF")
    for info in reversed(releases):
        mark = "* " if info.current else "  "
        commit = (info.commit or "-")[:12]
        state = states[info.name]
        print(f"{mark}{info.name:<20} {info.run_id:>6}  {commit:<12} {state:<11} {info.ref or '-'}")
    print("* current", file=sys.stderr)


def cmd_rollback(config: Config, args: argparse.Namespace) -> None:
    from runner.release_dirs import ReleaseError, Releases
    from runner.schema import SchemaError
    from runner.store import Store
    from runner.trigger import RunRequest, TriggerError

    pipeline = _release_pipeline(config, args.pipeline, "rollback")
    releases = Releases(pipeline.workdir)
    try:
        target = releases.target(args.to)
    except ReleaseError as exc:
        raise _fail(str(exc)) from None
    if target.current:
        raise _fail(f"release {target.name} is the current one already")
    request = RunRequest(pipeline.name, target.ref, target.commit, release=target.name)
    with contextlib.closing(Store(config.database_url, server=config.server_name)) as store:
        try:
            store.check_schema()
            entry = request.queue(config, store)
        except (TriggerError, SchemaError) as exc:
            raise _fail(str(exc)) from None
    print(f"run {entry.run_id} queued: pipeline {pipeline.name}, rollback to release {target.name}")
    print(f"follow it with: runner logs {entry.run_id}", file=sys.stderr)


def add_commands(commands: Commands) -> None:
    """``runner releases`` and ``runner rollback``."""
    listed = commands.add(
        "releases", cmd_releases, "a release pipeline's kept releases, and which is current"
    )
    listed.add_argument("pipeline")
    listed.add_argument("--json", action="store_true", help="print JSON")
    rollback = commands.add(
        "rollback",
        cmd_rollback,
        "switch a release pipeline back to a kept release and run its activate steps",
    )
    rollback.add_argument("pipeline")
    rollback.add_argument(
        "--to",
        metavar="RUN|COMMIT",
        help="the release of this run, or of this commit (4+ hex digits); default: the one before current",
    )
