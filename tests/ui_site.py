"""A runner home with real runs for the status page's tests: a real ``runner up``, a real git repository,
a pipeline that deploys and one that fails, a login, and HTTP requests with or without it.

``Site.start(home)`` builds it and waits for its runs to end; ``site.get(path)`` asks the page, logged in
unless told otherwise. Used by test_ui.py and test_browser.py (and the live parts' tests).
"""

from __future__ import annotations

import base64
import http.client
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
from sqlalchemy import Row
from support import Server, free_port, git, run_cli, runner_env, wait_for

from runner.store import Store

USER = "alice"
# The server's name on its runs and deliveries (RUNNER_SERVER_NAME).
SERVER = "alpha"
PASSWORD = "correct horse battery staple"
# Each of these shows on a page (a commit subject, a step's output, a ref) and would set the title if it ran.
SCRIPT = '<script>document.title="pwned"</script>'
SUBJECT = f"first version {SCRIPT}"
SCRIPT_REF = f"refs/heads/x{SCRIPT}"

DEPLOYS = """\
on: {repository: acme/site, branches: [main]}
workdir: site-checkout
steps:
  - git: {remote: REMOTE}
  - name: show
    run: echo deployed && cat version.txt
"""
FAILS = """\
on: {repository: acme/broken, branches: [main]}
workdir: broken-checkout
# Nothing listens there: each attempt fails, and the run's page shows it.
notify:
  - webhook: http://127.0.0.1:NOTIFY_PORT/hook
steps:
  - git: {remote: REMOTE}
  - name: greet
    run: echo 'hello SCRIPT' && echo 'a warning' >&2
  - name: breaks
    run: echo 'about to fail' && echo 'it broke' >&2 && exit 3
  - name: never
    run: echo never
"""


def write_users(path: Path, users: dict[str, str]) -> None:
    """The users file as `runner ui-user add` writes it, at bcrypt's lowest cost: the tests log in often."""
    lines = [f"{name}:{bcrypt.hashpw(pw.encode(), bcrypt.gensalt(4)).decode()}" for name, pw in users.items()]
    path.write_text("".join(line + "\n" for line in lines))


def basic(name: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


def request(port: int, path: str, headers: dict[str, str] | None = None, method: str = "GET") -> Answer:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return Answer(response.status, response.headers, response.read())
    finally:
        connection.close()


@dataclass
class Site:
    home: Path
    server: Server
    env: dict[str, str]
    commit: str
    runs: dict[str, int] = field(default_factory=dict)

    @classmethod
    def start(cls, home: Path, **env: str) -> Site:
        """A home with both pipelines and a user, ``runner up`` on it, and its runs done: ``site`` and
        ``site_again`` (succeeded; the second knows the commit's subject, which holds a script), ``broken``
        (failed at step 3), ``script_ref`` (a ref holding a script: failed at git)."""
        bare, work = home / "repo.git", home / "repo-work"
        git("init", "-q", "--bare", "--initial-branch=main", bare)
        git("init", "-q", "--initial-branch=main", work)
        (work / "version.txt").write_text("version one\n")
        git("add", "version.txt", cwd=work)
        git("commit", "-q", "-m", SUBJECT, cwd=work)
        git("push", "-q", bare, "main:refs/heads/main", cwd=work)
        commit = git("rev-parse", "HEAD", cwd=work)
        (home / "pipelines").mkdir()
        (home / "pipelines" / "site.yaml").write_text(DEPLOYS.replace("REMOTE", str(bare)))
        failing = FAILS.replace("REMOTE", str(bare)).replace("NOTIFY_PORT", str(free_port()))
        (home / "pipelines" / "broken.yaml").write_text(failing.replace("SCRIPT", SCRIPT.replace('"', "'")))
        write_users(home / "ui-users", {USER: PASSWORD})
        environment = runner_env(home, **{"RUNNER_SERVER_NAME": SERVER, **env})
        site = cls(home, Server(home, environment, command="up"), environment, commit)
        site.runs["site"] = site.trigger("site", "--ref", "main")
        site.wait_ended(site.runs["site"])
        # Its commit again, by hand: the checkout now tells the commit's subject.
        site.runs["site_again"] = site.trigger("site", "--commit", commit[:12])
        site.runs["broken"] = site.trigger("broken", "--ref", "main")
        site.runs["script_ref"] = site.trigger("broken", "--ref", SCRIPT_REF)
        for run_id in site.runs.values():
            site.wait_ended(run_id)
        return site

    def trigger(self, pipeline: str, *options: str) -> int:
        done = run_cli("trigger", pipeline, *options, env=self.env)
        assert done.returncode == 0, done.stderr
        return int(done.stdout.split()[1])

    def run(self, run_id: int) -> Row[Any]:
        store = Store(
            self.env.get("RUNNER_DATABASE_URL") or f"sqlite:///{self.home / 'runner.db'}", server=SERVER
        )
        try:
            run = store.run(run_id)
        finally:
            store.close()
        assert run is not None
        return run

    def wait_ended(self, run_id: int) -> Row[Any]:
        def ended() -> Row[Any] | None:
            run = self.run(run_id)
            return run if run.status not in ("queued", "running") else None

        return wait_for(ended, f"run {run_id} to end", timeout=60, details=self.server.output)

    def get(self, path: str, auth: tuple[str, str] | None = (USER, PASSWORD), **headers: str) -> Answer:
        if auth is not None:
            headers["Authorization"] = basic(*auth)
        return request(self.server.port, path, headers)
