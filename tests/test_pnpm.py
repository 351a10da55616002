"""The pnpm step, end to end: a real pnpm workspace in a bare git repository, deployed by a real
``runner work`` with the real pnpm and node.

The workspace has no external dependencies (``@demo/app`` depends on ``@demo/lib`` through
``workspace:*``), so nothing is fetched from the network. Runs on SQLite only: the step does not touch
the database, and test_worker.py covers both databases.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Row
from support import require
from test_worker import GitRepo, Rig

# Each package's build writes the arguments it was given, so that the test sees exactly what reached it.
BUILD_JS = "require('fs').writeFileSync('dist.json', JSON.stringify(process.argv.slice(2)))\n"

PIPELINE = """
    on: {repository: acme/app, events: [push], branches: [main]}
    workdir: checkout
    steps:
      - git: {remote: <REMOTE>}
      - pnpm: {install: true}
      - pnpm:
          run: build
          filter: ["<FILTER>"]
          args: [--mode, production]
"""


def package(name: str, **extra: object) -> str:
    return json.dumps({"name": name, "version": "1.0.0", "scripts": {"build": "node build.js"}, **extra})


WORKSPACE = {
    "pnpm-workspace.yaml": "packages:\n  - packages/*\n",
    "package.json": json.dumps({"name": "demo", "version": "1.0.0", "private": True}),
    ".gitignore": "node_modules/\n",
    "packages/lib/package.json": package("@demo/lib"),
    "packages/lib/build.js": BUILD_JS,
    "packages/app/package.json": package("@demo/app", dependencies={"@demo/lib": "workspace:*"}),
    "packages/app/build.js": BUILD_JS,
}


def write(root: Path, files: dict[str, str]) -> None:
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(content)


@pytest.fixture
def pnpm() -> str:
    found = shutil.which("pnpm")
    require(found is not None and shutil.which("node") is not None, "pnpm and node are not installed")
    assert found is not None
    return found


@pytest.fixture
def workspace(tmp_path: Path, pnpm: str) -> GitRepo:
    """The workspace, its lockfile made by pnpm itself, committed and pushed to main."""
    repo = GitRepo(tmp_path / "git")
    write(repo.work, WORKSPACE)
    # --no-frozen-lockfile: there is no lockfile yet, and under CI=true pnpm would insist on one.
    done = subprocess.run(
        [pnpm, "install", "--no-frozen-lockfile"], cwd=repo.work, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "@demo/lib" in (repo.work / "pnpm-lock.yaml").read_text()
    repo.commit({}, "a pnpm workspace")
    repo.push()
    return repo


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    rig = Rig(tmp_path, f"sqlite:///{tmp_path / 'runner.db'}")
    try:
        yield rig
    finally:
        rig.close()


def trigger(rig: Rig, pipeline: str, ref: str = "main") -> Row[Any]:
    queued = rig.cli("trigger", pipeline, "--ref", ref).stdout
    match = re.search(r"^run (\d+) queued", queued, re.MULTILINE)
    assert match is not None, queued
    return rig.finished_run(int(match.group(1)), timeout=60)


def step_details(rig: Rig, run: Row[Any]) -> list[tuple[str, str | None]]:
    return [(s.status, s.detail) for s in rig.steps(run.id)]


def test_install_then_a_filtered_build_builds_only_the_selected_package(
    rig: Rig, workspace: GitRepo, pnpm: str
) -> None:
    rig.pipeline("app", PIPELINE, REMOTE=workspace.bare, FILTER="@demo/app")
    rig.start_worker()
    run = trigger(rig, "app")
    assert run.status == "succeeded", rig.details(run)

    checkout = rig.home / "checkout"
    # install linked the workspace dependency; the filtered build ran in app only, with its arguments
    # exactly as given (no "--" in front).
    assert (checkout / "packages/app/node_modules/@demo/lib").resolve() == (checkout / "packages/lib")
    assert json.loads((checkout / "packages/app/dist.json").read_text()) == ["--mode", "production"]
    assert not (checkout / "packages/lib/dist.json").exists()

    log = rig.log_of(run)
    assert f"| $ {pnpm} install --frozen-lockfile\n" in log, log
    assert f"| $ {pnpm} --filter=@demo/app --fail-if-no-match run build --mode production\n" in log, log


def test_a_filter_that_selects_nothing_fails_the_step(rig: Rig, workspace: GitRepo) -> None:
    rig.pipeline("app", PIPELINE, REMOTE=workspace.bare, FILTER="@demo/typo")
    rig.start_worker()
    run = trigger(rig, "app")
    assert run.status == "failed", rig.details(run)
    assert step_details(rig, run)[1:] == [("succeeded", None), ("failed", "exited with status 1")]
    assert "No projects matched the filters" in rig.log_of(run)
    assert not (rig.home / "checkout/packages/app/dist.json").exists()


def test_install_refuses_a_lockfile_that_is_out_of_date(rig: Rig, workspace: GitRepo) -> None:
    # The root now depends on lib, and the committed lockfile does not say so.
    root = json.loads((workspace.work / "package.json").read_text())
    root["dependencies"] = {"@demo/lib": "workspace:*"}
    workspace.commit({"package.json": json.dumps(root)}, "a dependency, lockfile not updated")
    workspace.push()
    rig.pipeline("app", PIPELINE, REMOTE=workspace.bare, FILTER="@demo/app")
    rig.start_worker()
    run = trigger(rig, "app")
    assert run.status == "failed", rig.details(run)
    assert step_details(rig, run)[1] == ("failed", "exited with status 1")
    assert "ERR_PNPM_OUTDATED_LOCKFILE" in rig.log_of(run), rig.log_of(run)
    assert not (rig.home / "checkout/packages/app/node_modules").exists()


def test_pnpm_is_found_through_runner_tool_path_and_its_absence_is_named(
    rig: Rig, workspace: GitRepo, pnpm: str, tmp_path: Path
) -> None:
    # A PATH with what the run needs from the system (git; sh for pnpm's scripts) but neither pnpm nor
    # node, which are only in the tool directory, as a deploy user's own pnpm would be.
    system = tmp_path / "system-bin"
    tools = tmp_path / "tools"
    for directory, programs in ((system, ("git", "sh")), (tools, ("pnpm", "node"))):
        directory.mkdir()
        for program in programs:
            found = shutil.which(program)
            assert found is not None, program
            (directory / program).symlink_to(found)
    rig.pipeline("app", PIPELINE, REMOTE=workspace.bare, FILTER="@demo/app")

    worker = rig.start_worker(PATH=str(system))
    run = trigger(rig, "app")
    assert run.status == "failed", rig.details(run)
    status, detail = step_details(rig, run)[1]
    assert status == "failed"
    assert detail is not None and "pnpm was not found" in detail and "RUNNER_TOOL_PATH" in detail, detail
    worker.stop()

    rig.start_worker(PATH=str(system), RUNNER_TOOL_PATH=f"{tmp_path / 'missing'}:{tools}")
    run = trigger(rig, "app")
    assert run.status == "succeeded", rig.details(run)
    assert f"| $ {tools / 'pnpm'} install --frozen-lockfile\n" in rig.log_of(run)
    assert json.loads((rig.home / "checkout/packages/app/dist.json").read_text()) == ["--mode", "production"]
