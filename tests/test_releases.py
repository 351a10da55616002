"""Release directories (``release:``): the atomic switch of ``current``, the health gate and its switch back,
keeping the good releases through failures, ``runner rollback`` and ``runner releases``, and a worker killed
in the middle of a switch.

Real parts: a bare git repository, ``runner work`` processes (tests/test_worker.py's Rig), ``runner trigger``
and the new commands as the CLI runs them, an HTTP server the health check asks.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Row
from support import FINISHED, alive, git, run_cli, runner_env, wait_for
from test_isolation import Home, assert_nowhere, step_output
from test_private_repos import TOKEN, Repos, SmartHttp
from test_worker import GitRepo, Rig, out_lines, read_pid

from runner.release_dirs import Releases

# Each release says its run twice, in two files written one after the other with a pause between: a reader
# that saw a and b of different runs saw a mixed tree.
PIPELINE = """
    on: {repository: acme/app, events: [push], branches: [main]}
    workdir: <WORKDIR>
    release: <RELEASE>
    steps:
      - git: {remote: <REMOTE>}
      - name: build
        run: |
          echo "$RUNNER_RUN_ID" >> <TMP>/builds
          test ! -e fail-build
          echo "$RUNNER_RUN_ID" > a.txt
          sleep 0.2
          echo "$RUNNER_RUN_ID" > b.txt
    activate:
      - name: activate
        run: |
          echo "$RUNNER_RUN_ID $(basename "$PWD")" >> <TMP>/activations
          echo "$RUNNER_RUN_ID $RUNNER_COMMIT {{ commit }} $RUNNER_WORKDIR {{ workdir }}" >> <TMP>/activated
          if [ -e <TMP>/hold ]; then echo begin; sleep 60; fi
"""


@pytest.fixture
def rig(tmp_path: Path, database_url: str) -> Iterator[Rig]:
    rig = Rig(tmp_path, database_url)
    try:
        yield rig
    finally:
        rig.close()


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    repo = GitRepo(tmp_path / "git")
    repo.commit({"README": "app\n"}, "first")
    repo.push()
    return repo


class App:
    """The release pipeline ``app`` of a rig, deployed by ``runner trigger``."""

    def __init__(self, rig: Rig, repo: GitRepo, release: str = "{keep: 5}") -> None:
        self.rig, self.repo = rig, repo
        self.workdir = rig.workdir("app")
        self.tmp = rig.tmp
        rig.pipeline("app", PIPELINE, WORKDIR=self.workdir, RELEASE=release, REMOTE=repo.bare, TMP=rig.tmp)

    def push(self, files: dict[str, str] | None = None, remove: tuple[str, ...] = ()) -> str:
        for name in remove:
            (self.repo.work / name).unlink()
        commit = self.repo.commit(files or {}, "change")
        self.repo.push()
        return commit

    def queue(self, *args: str) -> int:
        done = self.rig.cli(*args)
        found = re.search(r"^run (\d+) queued", done.stdout, re.MULTILINE)
        assert found, done.stdout
        return int(found[1])

    def deploy(self, status: str = "succeeded") -> Row[Any]:
        run = self.rig.finished_run(self.queue("trigger", "app", "--ref", "main"), timeout=60)
        assert run.status == status, self.rig.details(run)
        return run

    def current(self) -> str:
        return os.readlink(self.workdir / "current").removeprefix("releases/")

    def releases(self) -> list[str]:
        return sorted(p.name for p in (self.workdir / "releases").iterdir() if p.is_dir())

    def listed(self) -> list[dict[str, object]]:
        return json.loads(self.rig.cli("releases", "app", "--json").stdout)

    def lines(self, name: str) -> list[str]:
        path = self.tmp / name
        return path.read_text().splitlines() if path.exists() else []


def release_of(run: Row[Any]) -> str:
    assert run.commit
    return f"{run.id}-{run.commit[:7]}"


def test_a_reader_of_current_sees_one_whole_release_through_ten_switches(rig: Rig, repo: GitRepo) -> None:
    app = App(rig, repo, "{keep: 20}")
    rig.start_worker()
    first = app.deploy()
    seen: list[tuple[str, str]] = []
    problems: list[str] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            # As a server resolves a request's path once: the directory, then its files through it.
            try:
                directory = os.open(app.workdir / "current", os.O_RDONLY | os.O_DIRECTORY)
            except OSError as exc:
                problems.append(f"current: {exc}")
                continue
            try:
                pair = tuple(_read_at(directory, name) for name in ("a.txt", "b.txt"))
            except OSError as exc:
                problems.append(f"a file of current: {exc}")
                continue
            finally:
                os.close(directory)
            seen.append((pair[0], pair[1]))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        runs = []
        for n in range(10):
            app.push({"n.txt": f"{n}\n"})
            runs.append(app.deploy())
    finally:
        done.set()
        reader.join()
    assert not problems, problems[:5]
    assert all(a == b for a, b in seen), [pair for pair in seen if pair[0] != pair[1]][:5]
    ids = {a for a, _ in seen}
    # The reader saw the first release and the last, and others between: it read during the switches.
    assert {str(first.id), str(runs[-1].id)} <= ids and len(ids) >= 3, ids
    assert app.current() == release_of(runs[-1])


def _read_at(directory: int, name: str) -> str:
    descriptor = os.open(name, os.O_RDONLY, dir_fd=directory)
    try:
        return os.read(descriptor, 100).decode().strip()
    finally:
        os.close(descriptor)


def test_a_failing_build_leaves_current_serving_and_its_release_goes(rig: Rig, repo: GitRepo) -> None:
    app = App(rig, repo)
    rig.start_worker()
    good = app.deploy()
    app.push({"fail-build": "x\n"})
    bad = app.deploy("failed")
    assert bad.reason and "step 2 (build) failed" in bad.reason
    assert app.current() == release_of(good)
    assert (app.workdir / "current" / "a.txt").read_text().strip() == str(good.id)
    # The failed release is gone; its log stays.
    assert app.releases() == [release_of(good)]
    assert Path(bad.log_path or "").exists()
    assert [line.split()[0] for line in app.lines("activations")] == [str(good.id)]
    # What a clean-up cut short would leave, and a directory of no run this database knows: each is listed
    # with what its run became, not as building.
    (app.workdir / "releases" / release_of(bad)).mkdir()
    (app.workdir / "releases" / "999999-abcdef0").mkdir()
    states = {(r["release"], r["succeeded"], r["state"]) for r in app.listed()}
    assert states == {
        (release_of(good), True, "succeeded"),
        (release_of(bad), False, "failed"),
        ("999999-abcdef0", False, "unknown"),
    }
    table = rig.cli("releases", "app").stdout
    assert re.search(rf"^  {release_of(bad)} +{bad.id} +\S+ +failed ", table, re.MULTILINE), table


class Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health() -> Iterator[tuple[type[Health], int]]:
    handler = type("Handler", (Health,), {"status": 200})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        yield handler, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_failing_health_check_switches_back_and_activates_the_previous_release(
    rig: Rig, repo: GitRepo, health: tuple[type[Health], int]
) -> None:
    handler, port = health
    app = App(
        rig, repo, f"{{keep: 5, health: {{url: 'http://127.0.0.1:{port}/up', retries: 1, interval: 1}}}}"
    )
    rig.start_worker()
    good = app.deploy()
    handler.status = 503
    app.push({"v": "2\n"})
    bad = app.deploy("failed")
    assert bad.reason == (
        f"rolled back to release {release_of(good)}: health check failed: "
        f"GET http://127.0.0.1:{port}/up answered 503, not 200 (2 tries)"
    ), rig.details(bad)
    assert app.current() == release_of(good)
    # Activated: the good release, the bad one, the good one again.
    assert app.lines("activations") == [
        f"{good.id} {release_of(good)}",
        f"{bad.id} {release_of(bad)}",
        f"{bad.id} {release_of(good)}",
    ]
    assert [s.name for s in rig.steps(bad.id)] == ["git", "build", "activate", "activate"]
    # The previous release's activate steps see its commit and its directory, not the failed run's.
    again = app.workdir / "releases" / release_of(good)
    assert app.lines("activated")[-1].split() == [str(bad.id), *[good.commit or ""] * 2, *[str(again)] * 2]
    assert not (app.workdir / "releases" / release_of(bad)).exists()
    handler.status = 200
    assert app.current() != release_of(app.deploy())


def test_a_health_command_runs_in_the_new_release(rig: Rig, repo: GitRepo) -> None:
    app = App(rig, repo, "{health: {run: test -e healthy, retries: 0}}")
    rig.start_worker()
    app.push({"healthy": "yes\n"})
    good = app.deploy()
    app.push(remove=("healthy",))
    bad = app.deploy("failed")
    assert bad.reason and bad.reason.startswith(
        f"rolled back to release {release_of(good)}: health check failed:"
    )
    assert app.current() == release_of(good)


def test_the_last_good_releases_stay_through_a_streak_of_failures(rig: Rig, repo: GitRepo) -> None:
    app = App(rig, repo, "{keep: 2}")
    rig.start_worker()
    good = [app.deploy() for _ in range(3)]
    assert app.releases() == sorted(release_of(run) for run in good[1:])
    app.push({"fail-build": "x\n"})
    for _ in range(4):
        app.deploy("failed")
    # Deployer's keep_releases removed the good ones here: these stay, whatever failed since.
    assert app.releases() == sorted(release_of(run) for run in good[1:])
    assert app.current() == release_of(good[-1])
    app.push(remove=("fail-build",))
    newest = app.deploy()
    assert app.releases() == sorted([release_of(good[-1]), release_of(newest)])


def test_a_rollback_switches_and_activates_without_building(rig: Rig, repo: GitRepo) -> None:
    app = App(rig, repo)
    rig.start_worker()
    first = app.deploy()
    app.push({"v": "2\n"})
    second = app.deploy()
    app.push({"v": "3\n"})
    third = app.deploy()
    builds = app.lines("builds")

    back = rig.finished_run(app.queue("rollback", "app"), timeout=60)
    assert (back.status, back.trigger, back.commit) == ("succeeded", "rollback", second.commit), rig.details(
        back
    )
    assert app.current() == release_of(second)
    assert app.lines("builds") == builds, "a rollback ran a build step"
    assert app.lines("activations")[-1] == f"{back.id} {release_of(second)}"
    assert [s.name for s in rig.steps(back.id)] == ["activate"]

    by_run = rig.finished_run(app.queue("rollback", "app", "--to", str(first.id)), timeout=60)
    assert by_run.status == "succeeded" and app.current() == release_of(first)
    assert third.commit
    by_commit = rig.finished_run(app.queue("rollback", "app", "--to", third.commit[:8]), timeout=60)
    assert by_commit.status == "succeeded" and app.current() == release_of(third)
    assert app.lines("builds") == builds

    listed = app.listed()
    assert [(r["run"], r["commit"], r["current"]) for r in listed] == [
        (first.id, first.commit, False),
        (second.id, second.commit, False),
        (third.id, third.commit, True),
    ]
    table = rig.cli("releases", "app").stdout
    assert re.search(rf"^\* {release_of(third)} +{third.id} ", table, re.MULTILINE), table
    assert [r.trigger for r in rig.runs(pipeline="app")][-3:] == ["rollback"] * 3

    refused = run_cli("rollback", "app", "--to", "999999", env=rig.env)
    assert (
        refused.returncode == 1
        and "no kept successful release is of run or commit '999999'" in refused.stderr
    )
    current = run_cli("rollback", "app", "--to", str(third.id), env=rig.env)
    assert current.returncode == 1 and "is the current one already" in current.stderr

    # runner trigger --commit finds an abbreviation in the clone the releases share, and builds anew.
    assert first.commit
    rebuilt = rig.finished_run(app.queue("trigger", "app", "--commit", first.commit[:8]), timeout=60)
    assert (rebuilt.status, rebuilt.commit) == ("succeeded", first.commit), rig.details(rebuilt)
    assert app.current() == release_of(rebuilt) and len(app.lines("builds")) == len(builds) + 1


def test_a_worker_killed_during_a_switch_leaves_a_whole_release_and_the_restart_settles_it(
    rig: Rig, repo: GitRepo
) -> None:
    app = App(rig, repo)
    worker = rig.start_worker()
    good = app.deploy()
    (app.tmp / "hold").touch()
    app.push({"v": "2\n"})
    held = app.queue("trigger", "app", "--ref", "main")

    def activating() -> Row[Any] | None:
        run = rig.run(held)
        return run if run.log_path and "begin" in out_lines(rig.log_of(run)) else None

    wait_for(activating, "the activate step to start", 60, rig.details)
    switched = app.current()
    # Its run is still going: its release is building, the one before it succeeded.
    states = [(r["release"], r["state"], r["current"]) for r in app.listed()]
    assert states == [(release_of(good), "succeeded", False), (switched, "building", True)], states
    assert switched == release_of(rig.run(held)) and (app.workdir / "releases" / ".switch").exists()
    step = read_pid(rig.home / "logs" / "app" / f"{held}.pgid")
    worker.process.send_signal(signal.SIGKILL)
    worker.process.wait()
    (app.tmp / "hold").unlink()

    rig.start_worker()

    def settled() -> list[Row[Any]] | None:
        runs = rig.runs(pipeline="app")
        return runs if len(runs) == 3 and all(r.status in FINISHED for r in runs) else None

    runs = wait_for(settled, "the interrupted run to be done again", 60, rig.details)
    assert [r.status for r in runs] == ["succeeded", "interrupted", "succeeded"], rig.details()
    again = runs[-1]
    log = rig.log_of(again)
    assert (
        f"the switch of run {held} to {switched} was cut short during its activate steps: "
        f"current is {release_of(good)} again, activated again"
    ) in log
    # The killed run had restarted the app on its release: the good one is activated again, as it is,
    # before the entry is built anew.
    previous = app.workdir / "releases" / release_of(good)
    assert app.lines("activations")[-2:] == [
        f"{again.id} {release_of(good)}",
        f"{again.id} {release_of(again)}",
    ]
    assert app.lines("activated")[-2].split() == [
        str(again.id),
        *[good.commit or ""] * 2,
        *[str(previous)] * 2,
    ]
    assert [s.name for s in rig.steps(again.id)] == ["activate", "git", "build", "activate"]
    assert app.current() == release_of(again)
    whole = [(app.workdir / "current" / name).read_text().strip() for name in ("a.txt", "b.txt")]
    assert whole == [str(again.id)] * 2
    assert not (app.workdir / "releases" / ".switch").exists()
    assert app.releases() == sorted([release_of(good), release_of(again)])
    assert step is None or not alive(step)


def test_a_run_cancelled_during_its_activate_steps_switches_back(rig: Rig, repo: GitRepo) -> None:
    app = App(rig, repo)
    rig.start_worker()
    good = app.deploy()
    (app.tmp / "hold").touch()
    app.push({"v": "2\n"})
    held = app.queue("trigger", "app", "--ref", "main")
    wait_for(
        lambda: "begin" in out_lines(rig.log_of(rig.run(held))) if rig.run(held).log_path else False,
        "the activate step to start",
        60,
        rig.details,
    )
    (app.tmp / "hold").unlink()
    rig.cli("cancel", str(held))
    cancelled = rig.finished_run(held, timeout=60)
    assert cancelled.status == "cancelled", rig.details(cancelled)
    assert cancelled.reason == f"cancelled by hand; rolled back to release {release_of(good)}"
    assert app.current() == release_of(good)
    assert app.lines("activations")[-1] == f"{held} {release_of(good)}"
    assert not (app.workdir / "releases" / ".switch").exists()
    assert app.releases() == [release_of(good)]


def test_shared_paths_persist_across_releases(rig: Rig, repo: GitRepo) -> None:
    app = App(rig, repo, "{shared: [uploads/, .env]}")
    rig.pipeline(
        "app",
        """
        on: {repository: acme/app, events: [push], branches: [main]}
        workdir: <WORKDIR>
        release: {shared: [uploads/, .env]}
        steps:
          - git: {remote: <REMOTE>}
          - run: echo "$RUNNER_RUN_ID" >> uploads/log && cat .env
          - {cwd: uploads, run: echo "$RUNNER_RUN_ID" >> from-cwd}
          - {cwd: <CWD>, run: "true"}
        """,
        WORKDIR=app.workdir,
        REMOTE=repo.bare,
        CWD="uploads/.",
    )
    app.push({".env": "FROM=checkout\n"})
    worker = rig.start_worker()
    first = app.deploy()
    # The first release's own .env became the shared one; an operator edits it there.
    shared = app.workdir / "shared"
    assert (shared / ".env").read_text() == "FROM=checkout\n"
    (shared / ".env").write_text("FROM=operator\n")
    second = app.deploy()
    assert (shared / "uploads" / "log").read_text().split() == [str(first.id), str(second.id)]
    assert "FROM=operator" in out_lines(rig.log_of(second))
    for name in (release_of(first), release_of(second)):
        assert (app.workdir / "releases" / name / "uploads").resolve() == shared / "uploads"
    # A cwd through a shared path's symlink is inside the workdir's shared/: allowed; one that leads to the
    # workdir beside the releases (its clone, the other releases) is not.
    assert (shared / "uploads" / "from-cwd").read_text().split() == [str(first.id), str(second.id)]
    worker.process.send_signal(signal.SIGTERM)
    worker.process.wait()
    path = rig.home / "pipelines" / "app.yaml"
    path.write_text(path.read_text().replace("cwd: uploads/.", "cwd: escape"))
    # A symlink of the checkout's own: it leads to the workdir's clone, outside the release and shared/.
    (repo.work / "escape").symlink_to("../../repo")
    app.push()
    rig.start_worker()
    refused = app.deploy("failed")
    assert refused.reason and "cwd 'escape' is outside the workdir" in refused.reason, refused.reason


def test_activate_steps_need_release_and_no_git_step(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "pipelines").mkdir(parents=True)
    path = home / "pipelines" / "app.yaml"
    path.write_text("on: {repository: acme/app}\nworkdir: w\nsteps:\n  - run: make\nactivate:\n  - git: {}\n")
    done = run_cli("validate", env=runner_env(home))
    assert done.returncode == 1
    assert f"{path}:6:3: activate: activate steps run after a release's switch" in done.stdout
    assert f"{path}:6:10: activate step 1 git: a git step checks a release out" in done.stdout


def test_a_release_section_is_checked_where_it_is_wrong(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "pipelines").mkdir(parents=True)
    path = home / "pipelines" / "app.yaml"
    path.write_text(
        "on: {repository: acme/app}\nworkdir: w\n"
        "release:\n  keep: 0\n  shared: [../etc, ok/]\n"
        "  health: {url: 'http://127.0.0.1/', run: 'true', timeout: 0s}\n"
        "steps:\n  - run: make\n"
    )
    done = run_cli("validate", env=runner_env(home))
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        f"{path}:4:9: release.keep: must be at least 1 (got the number 0)",
        f"{path}:5:12: release.shared item 1: must stay inside the release: '..' leads out of it",
        f"{path}:6:11: release.health: a health check is either `url: http://...` or `run: COMMAND`",
        f"{path}:6:60: release.health.timeout: bad duration '0s': it must be longer than 0 seconds",
    ]
    path.write_text(
        "on: {repository: acme/app}\nworkdir: w\n"
        "release:\n  health: {url: 'https://ops:hunter22@127.0.0.1/health'}\nsteps:\n  - run: make\n"
    )
    done = run_cli("validate", env=runner_env(home))
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        f"{path}:4:17: release.health.url: a health URL holds no credentials: check an address that needs "
        "no login"
    ]


def test_a_switch_cut_short_before_its_activate_steps_activates_nothing_again(tmp_path: Path) -> None:
    releases = Releases(tmp_path)
    for name in ("1-aaaaaaa", "2-bbbbbbb"):
        releases.prepare(name)
    releases.switch("1-aaaaaaa", 1)
    releases.finish()
    releases.switch("2-bbbbbbb", 2)
    # The worker died between the switch and the first activate step: the app never left release 1.
    assert releases.recover() == (
        "the switch of run 2 to 2-bbbbbbb was cut short: current is 1-aaaaaaa again",
        None,
    )
    assert releases.current() == "1-aaaaaaa" and not releases.journal.exists()
    releases.switch("2-bbbbbbb", 3)
    releases.activating()
    said, again = releases.recover()
    assert again == "1-aaaaaaa" and said and said.endswith("activated again")
    # The journal stays until the caller has activated release 1 again.
    assert releases.journal.exists()


def test_a_release_pipelines_shared_clone_fetches_with_a_token_file(tmp_path: Path) -> None:
    repos = Repos(tmp_path / "srv")
    server = SmartHttp(tmp_path / "srv")
    home = Home(tmp_path)
    try:
        (home.path / "token").write_text(TOKEN + "\n")
        os.chmod(home.path / "token", 0o600)
        url = f"http://127.0.0.1:{server.port}/app.git"
        home.pipeline(
            "app",
            """
            on:
              repository: acme/app
            workdir: app
            release: {keep: 5}
            steps:
              - git: {remote: "<URL>", token-file: token}
              - run: cat version.txt
            """,
            URL=url,
        )
        home.up()
        runs = []
        for version in ("version one", "version two"):
            commit = repos.commit(version)
            run_id = home.trigger("app")
            run = home.finished(run_id)
            assert (run.status, run.commit) == ("succeeded", commit), home.details(run_id)
            runs.append(run)
        workdir = home.path / "app"
        assert os.readlink(workdir / "current") == f"releases/{runs[-1].id}-{runs[-1].commit[:7]}"
        assert (workdir / "current" / "version.txt").read_text().strip() == "version two"
        assert step_output(home.log(runs[-1].id), 2) == ["version two"]
        # One clone, fetched with the token each time; the token is in neither it nor a release nor a log.
        assert "right" in server.seen and "wrong" not in server.seen, server.seen
        assert git("remote", "get-url", "origin", cwd=workdir / "repo") == url
        for run in runs:
            assert_nowhere(TOKEN, home, run.id, workdir)
    finally:
        home.close()
        server.close()


def test_a_health_urls_credentials_are_masked_in_what_the_check_says() -> None:
    from runner.cancelling import Cancel
    from runner.pipeline import HealthCheck
    from runner.release_health import _try_url

    async def tried(url: str) -> str | None:
        return await _try_url(HealthCheck(url=url, run=None, timeout=5), url, asyncio.Event(), Cancel())

    # Nothing listens on port 1 of loopback: the GET fails, and says which URL it asked.
    url = "http://monitor:h3alth-Token-77@127.0.0.1:1/up"
    said = asyncio.run(tried(url))
    assert said is not None and said.startswith("GET http://***@127.0.0.1:1/up failed: "), said
    assert "h3alth-Token-77" not in said


def test_a_shared_path_through_a_symlink_of_the_checkout_is_refused_and_touches_nothing_outside(
    tmp_path: Path,
) -> None:
    from runner.release_dirs import ReleaseError, Releases

    releases = Releases(tmp_path / "workdir")
    release = releases.prepare("7-abcdef1")
    outside = tmp_path / "deploy-data"
    (outside / "uploads").mkdir(parents=True)
    (outside / "uploads" / "keep").write_text("mine\n")
    # A commit's symlink: public -> the deploy user's own directory.
    (release / "public").symlink_to(outside)
    with pytest.raises(ReleaseError, match="leads out of the release through a symlink of the checkout"):
        releases.link_shared(release, ("public/uploads/",))
    assert (outside / "uploads" / "keep").read_text() == "mine\n"
    assert not (outside / "uploads").is_symlink()


def test_keep_spares_the_release_a_switch_left_in_its_journal_goes_back_to(tmp_path: Path) -> None:
    from runner.release_dirs import Releases

    releases = Releases(tmp_path / "workdir")
    for run in (1, 2):
        releases.prepare(f"{run}-abcdef{run}")
        releases.succeeded(f"{run}-abcdef{run}", run, f"abcdef{run}" + "0" * 33, "refs/heads/main")
    releases.point("1-abcdef1")  # rolled back to run 1's release
    releases.prepare("3-abcdef3")
    # Run 3's worker was stopped during its activate steps: the journal stays, and keep: 1 runs after.
    assert releases.switch("3-abcdef3", 3) == "1-abcdef1"
    releases.activating()
    assert releases.prune(1) == []
    said, again = releases.recover()
    assert releases.current() == "1-abcdef1" and again == "1-abcdef1", said


def test_a_run_cancelled_during_its_health_check_switches_back(rig: Rig, repo: GitRepo) -> None:
    app = App(rig, repo, "{keep: 5, health: {run: sleep 4, retries: 0}}")
    rig.start_worker()
    good = app.deploy()
    app.push({"v": "2\n"})
    held = app.queue("trigger", "app", "--ref", "main")
    wait_for(
        lambda: (
            f"{held} {release_of(rig.run(held))}" in app.lines("activations")
            if rig.run(held).commit
            else False
        ),
        "the activate step to end and the health check to begin",
        60,
        rig.details,
    )
    rig.cli("cancel", str(held))
    cancelled = rig.finished_run(held, timeout=60)
    # Recorded as cancelled: the release it built must not be the one serving.
    assert cancelled.status == "cancelled", rig.details(cancelled)
    assert cancelled.reason == f"cancelled by hand; rolled back to release {release_of(good)}"
    assert app.current() == release_of(good)
    assert app.releases() == [release_of(good)]


def test_a_worker_stop_during_a_health_check_ends_the_check_and_the_entry_is_deployed_again(
    rig: Rig, repo: GitRepo, health: tuple[type[Health], int]
) -> None:
    handler, port = health
    # Twenty tries half a minute apart: ten minutes, far beyond any stop's patience, unless a stop ends it.
    app = App(
        rig,
        repo,
        f"{{keep: 5, health: {{url: 'http://127.0.0.1:{port}/up', retries: 20, interval: 30, timeout: 2}}}}",
    )
    worker = rig.start_worker()
    good = app.deploy()
    handler.status = 503
    app.push({"v": "2\n"})
    held = app.queue("trigger", "app", "--ref", "main")

    def first_try_failed() -> bool:
        run = rig.run(held)
        return bool(run.log_path) and "health check try 1 of 21: " in rig.log_of(run)

    wait_for(first_try_failed, "the health check's first try to fail", 60, rig.details)
    started = time.monotonic()
    worker.process.send_signal(signal.SIGTERM)
    assert worker.process.wait(timeout=30) == 0, worker.output()
    assert time.monotonic() - started < 15, "the stop waited for the health check's tries"
    stopped = rig.run(held)
    assert "health check called off: the worker stopped (after try 1 of 21)" in rig.log_of(stopped)
    assert stopped.status == "cancelled" and stopped.reason == (
        f"the worker stopped during the health check: GET http://127.0.0.1:{port}/up answered 503, not 200 "
        "(called off after try 1 of 21)"
    ), rig.details(stopped)
    # The switch is left in the journal: the next worker undoes it and deploys the entry again.
    handler.status = 200
    rig.start_worker()

    def deployed_again() -> Row[Any] | None:
        runs = rig.runs(pipeline="app")
        return runs[-1] if len(runs) == 3 and runs[-1].status in FINISHED else None

    again = wait_for(deployed_again, "the stopped entry to be deployed again", 60, rig.details)
    assert again.status == "succeeded", rig.details(again)
    assert app.current() == release_of(again) and release_of(again) != release_of(good)
