"""The worker reloads pipeline files when inotify tells it they changed, as files are really changed: moved
in from elsewhere, the whole directory replaced, a symlinked file's target edited, a broken file fixed while
an entry waits for it.

The worker no longer looks at the files every second; when it cannot watch a directory it looks once a
minute (runner/watch.py). Each wait here is far shorter than that, so a change seen only by such a look
fails the test. Real ``runner serve`` and ``runner work`` processes on SQLite (the watching does not depend
on the database).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Row
from support import run_cli, wait_for
from test_worker import ZERO_COMMIT, Rig, WorkerProcess, fake_commit, out_lines, push_payload

from runner.watch import UNWATCHED_CHECK

ECHO = """
    on: {repository: <REPOSITORY>, events: [push], branches: [main]}
    workdir: <WORKDIR>
    steps:
      - run: echo <WORDS>
"""
# Well under UNWATCHED_CHECK: only an inotify event can make the reload come this soon.
SOON = 25.0
assert SOON < UNWATCHED_CHECK / 2


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    rig = Rig(tmp_path, f"sqlite:///{tmp_path / 'runner.db'}")
    try:
        yield rig
    finally:
        rig.close()


def echo_text(rig: Rig, name: str, words: str) -> str:
    """The text of a pipeline ``name`` of repository acme/NAME that echoes ``words``."""
    text = ECHO.replace("<REPOSITORY>", f"acme/{name}").replace("<WORKDIR>", str(rig.workdir(name)))
    return "\n".join(line[4:] for line in text.replace("<WORDS>", words).splitlines()) + "\n"


def loaded(worker: WorkerProcess, name: str, after: int) -> None:
    """Wait until the worker says it loaded pipeline ``name``, in what it said past offset ``after``."""
    wanted = f"loaded pipeline {name} from"
    wait_for(lambda: wanted in worker.output()[after:], f"the worker to load {name}", SOON, worker.output)


def said_so_far(worker: WorkerProcess) -> int:
    return len(worker.output())


def deployed(rig: Rig, name: str, n: int) -> list[str]:
    """What a push to acme/NAME's main printed, once its run succeeded."""
    delivery = rig.deliver(
        "push", push_payload("refs/heads/main", ZERO_COMMIT, [(fake_commit(n), "x")], f"acme/{name}")
    )
    [run] = rig.runs_of(delivery, ["succeeded"])
    return out_lines(rig.log_of(run))


def test_a_file_moved_in_from_elsewhere_is_loaded(rig: Rig) -> None:
    worker = rig.start_worker()
    seen = said_so_far(worker)
    outside = rig.tmp / "drafts" / "moved.yaml"
    outside.parent.mkdir()
    outside.write_text(echo_text(rig, "moved", "moved in"))
    os.rename(outside, rig.home / "pipelines" / "moved.yaml")
    loaded(worker, "moved", seen)
    assert deployed(rig, "moved", 1) == ["moved in"], rig.details()


def test_a_replaced_directory_is_watched_afresh(rig: Rig) -> None:
    rig.pipeline("old", ECHO, REPOSITORY="acme/old", WORKDIR=rig.workdir("old"), WORDS="old")
    worker = rig.start_worker()
    pipelines = rig.home / "pipelines"
    fresh = rig.home / "pipelines.new"
    fresh.mkdir()
    (fresh / "new.yaml").write_text(echo_text(rig, "new", "first"))
    seen = said_so_far(worker)
    # As a deployment that ships its pipelines does: the old directory aside, the new one in its place.
    os.rename(pipelines, rig.home / "pipelines.old")
    os.rename(fresh, pipelines)
    loaded(worker, "new", seen)
    worker.wait_for_line(r"old\.yaml was removed", timeout=SOON)
    assert deployed(rig, "new", 1) == ["first"], rig.details()

    # The new directory is the one watched now: a file written in place in it is reloaded.
    seen = said_so_far(worker)
    (pipelines / "new.yaml").write_text(echo_text(rig, "new", "second"))
    loaded(worker, "new", seen)
    assert deployed(rig, "new", 2) == ["second"], rig.details()


def test_a_symlinked_file_is_reloaded_when_its_target_changes(rig: Rig) -> None:
    # A pipeline kept in the repository it deploys, linked into pipelines/.
    target = rig.tmp / "checkout" / "deploy.yaml"
    target.parent.mkdir()
    target.write_text(echo_text(rig, "linked", "as checked out"))
    (rig.home / "pipelines" / "linked.yaml").symlink_to(target)
    worker = rig.start_worker()
    assert deployed(rig, "linked", 1) == ["as checked out"], rig.details()

    seen = said_so_far(worker)
    with target.open("w") as edited:  # in place: nothing in pipelines/ itself changes
        edited.write(echo_text(rig, "linked", "as edited"))
    loaded(worker, "linked", seen)
    assert deployed(rig, "linked", 2) == ["as edited"], rig.details()

    # Replaced as a checkout replaces it: removed (the link dangles, and the worker reloads meanwhile),
    # then written anew. The dangling link's directory stays watched.
    seen = said_so_far(worker)
    target.unlink()
    worker_said = worker.output
    wait_for(lambda: "linked.yaml was removed" in worker_said()[seen:], "the removal", SOON, worker_said)
    target.write_text(echo_text(rig, "linked", "checked out again"))
    loaded(worker, "linked", seen)
    assert deployed(rig, "linked", 3) == ["checked out again"], rig.details()


def test_an_entry_waiting_for_a_valid_file_runs_once_it_is_fixed(rig: Rig) -> None:
    path = rig.pipeline("fixme", ECHO, REPOSITORY="acme/fixme", WORKDIR=rig.workdir("fixme"), WORDS="fixed")
    good = path.read_text()
    # Queued while no worker runs; then the file breaks before a worker has ever seen it valid.
    queued = run_cli("trigger", "fixme", "--ref", "main", "--commit", fake_commit(1), env=rig.env)
    assert queued.returncode == 0, queued.stdout + queued.stderr
    path.write_text("on: {repository: acme/fixme, events: [push]\nsteps: [\n")
    worker = rig.start_worker()
    worker.wait_for_line(r"pipeline fixme has no valid definition: entry \S+ waits for one", timeout=SOON)

    path.write_text(good)

    def succeeded() -> list[Row[Any]] | None:
        runs = rig.runs(pipeline="fixme")
        return runs if [r.status for r in runs] == ["succeeded"] else None

    [run] = wait_for(succeeded, "the waiting entry's run to succeed", SOON, rig.details)
    assert out_lines(rig.log_of(run)) == ["fixed"], rig.details(run)
