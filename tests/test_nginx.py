"""The nginx step and its root-owned wrapper (packaging/libexec/runner-nginx), against a real nginx.

Each test starts its own nginx master, as a non-root user (the tests run as root, as in CI): a prefix
directory of its own, a main configuration that includes the test's sites directory, a free loopback port.
The step runs the wrapper with the system's python3 -I, as root but not through sudo, so that
RUNNER_NGINX_CONF may name the test's wrapper configuration; ``nginx -t`` runs as root, as it does through
sudo in production, so that a configuration can pass the test and still be refused by the non-root master.
The end-to-end tests run a real ``runner work`` and queue runs with ``runner trigger``; the others call the
step in-process. tests/test_setup.py runs the wrapper as installed by ``runner setup``, through sudo, for
a deploy user that cannot write the sites directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import importlib.machinery
import importlib.util
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Row
from support import (
    FINISHED,
    GIT_ENV,
    ROOT,
    Server,
    alive,
    free_port,
    require,
    run_cli,
    runner_env,
    stop_process,
    wait_for,
)

from runner import steps
from runner.config import Config
from runner.loading import load_pipeline
from runner.pipeline import StepSpec
from runner.pipelines import validate
from runner.process import process_stat
from runner.steps.base import RunContext, RunLog, step_environment
from runner.store import Store

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
WRAPPER = ROOT / "packaging" / "libexec" / "runner-nginx"
# The system's interpreter, with its root-owned jinja2: never the checkout's venv.
SYSTEM_PYTHON = "/usr/bin/python3"
# The user the test's nginx master runs as when the tests run as root; created if missing.
NGINX_USER = "runner-nginx-test"
# A test-only template: one answer on one port, and gzip's value (which nginx -t checks) from a variable.
ANSWER_TEMPLATE = """\
{# answer.conf.j2 (tests): port, option (gzip's value: on, off or what nginx -t refuses), answer (any text) #}
server {
    listen 127.0.0.1:{{ port | port }};
    gzip {{ option | name }};
    location / {
        default_type text/plain;
        return 200 {{ answer | nginx_quote }};
    }
}
"""


def children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = process_stat(int(entry.name))
                if stat.parent == pid and stat.state != "Z":
                    found.add(int(entry.name))
    return found


# nginx ------------------------------------------------------------------------------------------------------


class Nginx:
    """A real nginx master on a loopback port, as ``user`` (None: as the tests' own user)."""

    def __init__(self, root: Path, user: str | None) -> None:
        self.prefix = root / "nginx"
        self.logs = self.prefix / "logs"
        self.sites = self.prefix / "sites"
        self.conf = self.prefix / "nginx.conf"
        self.pid_file = self.logs / "nginx.pid"
        self.error_log = self.logs / "error.log"
        self.logs.mkdir(parents=True)
        self.sites.mkdir()
        if user is not None:
            shutil.chown(self.logs, user)
            # The wrapper writes a site root's and its directory's group's, 0640 (it may hold a secret): so
            # the non-root master reads it, as a root master would.
            shutil.chown(self.sites, group=pwd.getpwnam(user).pw_gid)
        temp_paths = "\n".join(
            f"    {kind}_temp_path {self.logs / kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        # `user`: a master run by root ignores it, but `nginx -t` run by root then creates the temporary
        # directories for that user rather than for nobody.
        self.conf.write_text(
            (f"user {user};\n" if user is not None and os.geteuid() == 0 else "")
            + textwrap.dedent(
                f"""\
                worker_processes 1;
                pid {self.pid_file};
                error_log {self.error_log};
                events {{
                    worker_connections 64;
                }}
                http {{
                    access_log off;
                """
            )
            + temp_paths
            + f"\n    include {self.sites}/*.conf;\n}}\n"
        )
        self.argv = [NGINX, "-p", str(self.prefix), "-c", str(self.conf)]
        started = subprocess.run(
            [*(["runuser", "-u", user, "--"] if user is not None else []), *self.argv],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert started.returncode == 0, f"nginx did not start: {started.stderr}"
        self.pid = wait_for(self._read_pid, "nginx's pid file", 10)

    def _read_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int(self.pid_file.read_text())
        return None

    def wrapper_conf(self, path: Path, templates: Path, **changes: object) -> Path:
        """A configuration for runner-nginx that points it at this master (root's, 0644)."""
        settings: dict[str, object] = {
            "templates-dir": templates,
            "sites-dir": self.sites,
            "nginx": NGINX,
            "test": shlex.join([*self.argv, "-t"]),
            "reload": shlex.join([*self.argv, "-s", "reload"]),
            "pid-file": self.pid_file,
            "error-log": self.error_log,
            # Where the tests' certificates are (self_signed): root's, in the test's world.
            "certificate-dirs": f"{self.prefix.parent / 'live'} {self.prefix.parent / 'live-locked'}",
        }
        settings.update({key.replace("_", "-"): value for key, value in changes.items()})
        path.write_text("".join(f"{key} = {value}\n" for key, value in settings.items()))
        path.chmod(0o644)
        return path

    def workers(self) -> set[int]:
        return children(self.pid)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while alive(self.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in [*children(self.pid), self.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def get(
    port: int, path: str = "/", host: str = "localhost", tls: ssl.SSLContext | None = None
) -> tuple[int, str, dict[str, str]]:
    connection = (
        http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=tls)
        if tls is not None
        else http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    )
    try:
        connection.request("GET", path, headers={"Host": host})
        response = connection.getresponse()
        return response.status, response.read().decode(), dict(response.getheaders())
    finally:
        connection.close()


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A certificate for ``name`` and 127.0.0.1, laid out as certbot's live/<name>/ is."""
    directory.mkdir(parents=True)
    chain, key = directory / "fullchain.pem", directory / "privkey.pem"
    made = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
         "-addext", f"subjectAltName=DNS:{name},IP:127.0.0.1", "-keyout", str(key), "-out", str(chain)],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    return chain, key


@pytest.fixture
def world() -> Iterator[Path]:
    """A directory the nginx user can reach: pytest's own tmp_path is private to the tests' user."""
    root = Path(tempfile.mkdtemp(prefix="runner-nginx-test-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def wrapper_command(conf: Path) -> tuple[str, ...]:
    """How the step runs the wrapper here: as root directly, the only way RUNNER_NGINX_CONF counts."""
    return ("/usr/bin/env", f"RUNNER_NGINX_CONF={conf}", SYSTEM_PYTHON, "-I", str(WRAPPER))


def require_wrapper() -> None:
    require(os.geteuid() == 0, "runner-nginx runs as root: these tests must run as root")
    found = subprocess.run(
        [SYSTEM_PYTHON, "-I", "-c", "import jinja2"], capture_output=True, text=True, check=False
    )
    require(found.returncode == 0, f"{SYSTEM_PYTHON} has no jinja2: apt-get install python3-jinja2")


@pytest.fixture
def nginx_user() -> str:
    """The master's user: a throw-away system user (the tests run as root)."""
    require(Path(NGINX).exists(), f"nginx is not installed ({NGINX}): apt-get install nginx")
    require_wrapper()
    try:
        pwd.getpwnam(NGINX_USER)
    except KeyError:
        made = subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", NGINX_USER],
            capture_output=True,
            text=True,
            check=False,
        )
        assert made.returncode == 0 or "already exists" in made.stderr, made.stderr
    return NGINX_USER


@pytest.fixture
def nginx(world: Path, nginx_user: str | None) -> Iterator[Nginx]:
    server = Nginx(world, nginx_user)
    try:
        yield server
    finally:
        server.stop()


def make_home(world: Path, templates: dict[str, str] | None = None) -> Path:
    """A runner home whose templates/nginx/ holds the shipped templates and ``templates``."""
    home = world / "home"
    (home / "pipelines").mkdir(parents=True)
    shutil.copytree(ROOT / "templates" / "nginx", home / "templates" / "nginx")
    for name, text in (templates or {}).items():
        (home / "templates" / "nginx" / name).write_text(text)
    return home


def write_pipeline(home: Path, name: str, text: str, **values: object) -> Path:
    text = textwrap.dedent(text).lstrip("\n")
    for key, value in values.items():
        text = text.replace(f"<{key}>", str(value))
    assert not re.search(r"<[A-Z_0-9]+>", text), text
    path = home / "pipelines" / f"{name}.yaml"
    path.write_text(text)
    return path


# In-process: the step alone ---------------------------------------------------------------------------------


def config_for(home: Path, server: Nginx, **changes: object) -> Config:
    """runner's settings for the step, and the wrapper's configuration (``changes``) beside the home."""
    templates = home / "templates" / "nginx"
    conf = server.wrapper_conf(home.parent / "runner-nginx.conf", templates, **changes)
    return Config(
        home=home,
        database_url=f"sqlite:///{home / 'runner.db'}",
        nginx=wrapper_command(conf),
        nginx_sites_dir=server.sites,
        nginx_templates=templates,
    )


def step_context(
    home: Path, config: Config, step_yaml: str, event: dict[str, Any], name: str = "unit"
) -> tuple[StepSpec, RunContext]:
    """The one step of pipeline ``name`` and a run's context for it, its log in logs/<name>.log."""
    header = "on: {repository: acme/web}\nworkdir: .\nsteps:\n"
    path = write_pipeline(home, name, header + textwrap.indent(textwrap.dedent(step_yaml).strip("\n"), "  "))
    pipeline = load_pipeline(path, home)
    log_path = home / "logs" / f"{name}.log"
    log_path.unlink(missing_ok=True)
    ctx = RunContext(
        run_id=1,
        pipeline=pipeline,
        config=config,
        log=RunLog(log_path),
        trigger="push",
        ref="refs/heads/main",
        commit="c0ffee" + "0" * 34,
        repository="acme/web",
        delivery="d-1",
        event_name="push",
        event=event,
        previous_commit=None,
        deadline=time.monotonic() + 60,
        base_env=step_environment(os.environ),
    )
    return pipeline.steps[0], ctx


def run_step(
    home: Path,
    config: Config,
    step_yaml: str,
    event: dict[str, Any],
    after_load: Callable[[], None] | None = None,
) -> tuple[steps.Outcome, str]:
    """Run the one step of a pipeline in-process; returns its outcome and the run's log."""
    spec, ctx = step_context(home, config, step_yaml, event)
    if after_load is not None:
        after_load()
    try:
        outcome = asyncio.run(steps.run(spec, ctx))
    finally:
        ctx.log.close()
    return outcome, ctx.log.path.read_text()


ANSWER_STEP = """
- nginx:
    site: answer
    template: answer.conf.j2
    vars:
      port: <PORT>
      option: "on"
      answer: "{{ event.head_commit.message }}"
"""


def test_event_values_cannot_add_directives(world: Path, nginx: Nginx) -> None:
    bare = ANSWER_TEMPLATE.replace("{{ answer | nginx_quote }}", "{{ answer }}")
    named = ANSWER_TEMPLATE.replace("{{ answer | nginx_quote }}", "{{ answer | name }}")
    templates = {"answer.conf.j2": ANSWER_TEMPLATE, "bare.conf.j2": bare, "named.conf.j2": named}
    home = make_home(world, templates)
    port = free_port()
    config = config_for(home, nginx)
    step = ANSWER_STEP.replace("<PORT>", str(port))

    # Quoted by the vetted filter, text with nginx syntax in it is one string, and served as it is.
    text = 'said "hi"; } server { listen 1; } # \\ done'
    outcome, log = run_step(home, config, step, {"head_commit": {"message": text}})
    assert outcome.status == "succeeded", (outcome, log)
    site = nginx.sites / "answer.conf"
    assert r'return 200 "said \"hi\"; } server { listen 1; } # \\ done";' in site.read_text()
    assert get(port)[:2] == (200, text)
    before = site.read_bytes()

    # Printed without a type, even a plain word is refused, with the template's line.
    outcome, log = run_step(
        home, config, step.replace("answer.conf.j2", "bare.conf.j2"), {"head_commit": {"message": "hello"}}
    )
    detail = outcome.detail or ""
    assert outcome.status == "failed", (outcome, log)
    assert "bare.conf.j2:7: refusing to print 'hello' without a type" in detail, detail
    assert "{{ value | port }}" in detail and "server_name" in detail and "nginx_quote" in detail, detail
    assert f"$ {NGINX}" not in log and site.read_bytes() == before
    # Typed, every value that holds nginx syntax is refused before anything is written or run.
    bare = step.replace("answer.conf.j2", "named.conf.j2")
    for value in [
        "x; return 200 pwned",
        "x}server{listen 9;",
        "pwned{",
        "a\nreturn 200 pwned",
        'a"b',
        "a'b",
        "a#b",
        "a\\;b",
        "a b",
        "$request_uri",
    ]:
        outcome, log = run_step(home, config, bare, {"head_commit": {"message": value}})
        assert outcome.status == "failed", (value, outcome, log)
        assert f"named.conf.j2:7: refusing {value!r} as a name: " in (outcome.detail or ""), outcome.detail
        assert f"$ {NGINX}" not in log, log  # nginx was not asked
        assert site.read_bytes() == before, value
    # ... and through the vetted filter, a $ (which nginx would expand even in quotes) is refused too.
    outcome, _ = run_step(home, config, step, {"head_commit": {"message": "costs $5"}})
    assert outcome.status == "failed" and "nginx_quote refuses 'costs $5'" in (outcome.detail or "")
    assert site.read_bytes() == before
    assert get(port)[:2] == (200, text)
    assert list(nginx.sites.iterdir()) == [site], "a temporary file was left behind"


def test_a_missing_pid_file_fails_the_step_and_names_the_setting(world: Path, nginx: Nginx) -> None:
    home = make_home(world, {"answer.conf.j2": ANSWER_TEMPLATE})
    port = free_port()
    step = ANSWER_STEP.replace("<PORT>", str(port))
    outcome, _ = run_step(home, config_for(home, nginx), step, {"head_commit": {"message": "first"}})
    assert outcome.status == "succeeded", outcome
    before = (nginx.sites / "answer.conf").read_bytes()

    missing = world / "no-such.pid"
    config = config_for(home, nginx, pid_file=missing)
    outcome, log = run_step(home, config, step, {"head_commit": {"message": "second"}})
    assert outcome.status == "failed", (outcome, log)
    assert "(pid-file)" in (outcome.detail or "") and str(missing) in (outcome.detail or "")
    assert "put the previous answer.conf back" in (outcome.detail or "")
    assert "test is successful" in log  # nginx -t passed; the reload could not be checked
    assert (nginx.sites / "answer.conf").read_bytes() == before
    assert get(port)[:2] == (200, "first")

    # Without a reload there is nothing to check, and no pid needed.
    no_reload = step.replace("site: answer", "site: answer\n    reload: false")
    outcome, log = run_step(home, config, no_reload, {"head_commit": {"message": "third"}})
    assert outcome.status == "succeeded", (outcome, log)
    assert outcome.detail == "answer.conf: nginx -t passed; not reloaded (--no-reload)"
    assert '"third"' in (nginx.sites / "answer.conf").read_text()
    assert get(port)[:2] == (200, "first")


def test_two_runs_never_interleave_their_writes_tests_and_reloads(world: Path, nginx: Nginx) -> None:
    home = make_home(world, {"answer.conf.j2": ANSWER_TEMPLATE})
    config = config_for(home, nginx)
    ports = free_port(), free_port()
    contexts = [
        step_context(
            home,
            config,
            ANSWER_STEP.replace("<PORT>", str(port)).replace("site: answer", f"site: answer-{n}"),
            {"head_commit": {"message": f"site {n}"}},
            name=f"lane-{n}",
        )
        for n, port in enumerate(ports)
    ]

    async def both() -> list[steps.Outcome]:
        return list(await asyncio.gather(*(steps.run(spec, ctx) for spec, ctx in contexts)))

    outcomes = asyncio.run(both())
    logs = []
    for _, ctx in contexts:
        ctx.log.close()
        logs.append(ctx.log.path.read_text())
    assert [o.status for o in outcomes] == ["succeeded", "succeeded"], (outcomes, logs)
    # Whichever came second wrote its file only once the first had finished: after the first's reload took.
    spans = []
    for log in logs:
        wrote = re.search(r"^(\S+) \w+ *\| runner-nginx: wrote ", log, re.M)
        took = re.search(r"^(\S+) \w+ *\| runner-nginx: nginx master .* the reload took$", log, re.M)
        assert wrote and took, log
        spans.append((wrote.group(1), took.group(1)))
    first, second = sorted(spans)
    assert first[1] < second[0], logs
    if any("waiting for another nginx step" in log for log in logs):
        waited = next(n for n, log in enumerate(logs) if "waiting for another nginx step" in log)
        assert spans[waited] == second, logs
    assert [get(port)[:2] for port in ports] == [(200, "site 0"), (200, "site 1")]


def test_templates_outside_templates_nginx_are_refused(world: Path, nginx: Nginx) -> None:
    home = make_home(world)
    outside = world / "outside.conf.j2"
    outside.write_text("server { listen 127.0.0.1:1; }\n")
    template = home / "templates" / "nginx" / "static.conf.j2"
    config = config_for(home, nginx)
    step = "- nginx: {site: s, template: static.conf.j2}"

    # Validation refuses such a template; the step checks again, as the file may change after that.
    def make_link() -> None:
        template.unlink()
        template.symlink_to(outside)

    outcome, _ = run_step(home, config, step, {}, after_load=make_link)
    assert outcome.status == "failed" and "symlink" in (outcome.detail or ""), outcome
    template.unlink()
    shutil.copy(ROOT / "templates" / "nginx" / "static.conf.j2", template)
    outcome, _ = run_step(home, config, step, {}, after_load=template.unlink)
    assert outcome.status == "failed", outcome
    assert "template 'static.conf.j2' not found in" in (outcome.detail or ""), outcome
    assert list(nginx.sites.iterdir()) == []


def test_validation_names_a_template_that_is_not_in_templates_nginx(tmp_path: Path) -> None:
    home = tmp_path
    (home / "templates" / "nginx").mkdir(parents=True)
    (home / "pipelines").mkdir()
    (home / "templates" / "nginx" / "broken.conf.j2").write_text("server { {{ port }\n")
    path = write_pipeline(
        home,
        "site",
        """
        on: {repository: acme/web}
        workdir: web
        steps:
          - nginx:
              site: example.com
              template: nope.conf.j2
          - nginx: {site: example.org, template: broken.conf.j2}
        """,
    )
    problems = [str(problem) for problem in validate([path], home)]
    assert (
        problems[0]
        == f"{path}:6:17: step 1 nginx.template: template 'nope.conf.j2' not found in templates/nginx/"
    )
    assert problems[1].startswith(
        f"{path}:7:42: step 2 nginx.template: template 'broken.conf.j2' in templates/nginx/:"
    )
    assert "template syntax error" in problems[1]
    assert len(problems) == 2, problems
    done = run_cli("validate", env=runner_env(home))
    assert done.returncode == 1
    assert (
        f"{path}:6:17: step 1 nginx.template: template 'nope.conf.j2' not found in templates/nginx/"
        in done.stdout
    )


# End to end: runner work ------------------------------------------------------------------------------------


class Rig:
    """A runner home with a migrated database, a git repository to deploy and a running ``runner work``."""

    def __init__(self, world: Path, server: Nginx) -> None:
        self.world = world
        self.nginx = server
        self.home = make_home(world, {"answer.conf.j2": ANSWER_TEMPLATE})
        templates = self.home / "templates" / "nginx"
        conf = server.wrapper_conf(world / "runner-nginx.conf", templates)
        self.env = runner_env(
            self.home,
            RUNNER_NGINX=shlex.join(wrapper_command(conf)),
            RUNNER_NGINX_SITES_DIR=str(server.sites),
            RUNNER_NGINX_TEMPLATES=str(templates),
        )
        upgraded = run_cli("db", "upgrade", env=self.env)
        assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
        self.store = Store(f"sqlite:///{self.home / 'runner.db'}")
        self.bare = world / "app.git"
        work = world / "app-work"
        self._git("init", "-q", "--bare", "--initial-branch=main", str(self.bare))
        self._git("init", "-q", "--initial-branch=main", str(work))
        (work / "public").mkdir()
        (work / "public" / "index.html").write_text("version one\n")
        self._git("add", "--all", cwd=work)
        self._git("commit", "-q", "-m", "first", cwd=work)
        self._git("push", "-q", str(self.bare), "main:refs/heads/main", cwd=work)
        self.commit = self._git("rev-parse", "HEAD", cwd=work)
        self.worker: subprocess.Popen[bytes] | None = None
        self.worker_log = world / "worker.log"

    @staticmethod
    def _git(*args: str, cwd: Path | None = None) -> str:
        done = subprocess.run(
            ["git", *args],
            cwd=cwd,
            env={**os.environ, **GIT_ENV},
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, f"git {' '.join(args)}: {done.stderr}"
        return done.stdout.strip()

    def start(self) -> None:
        with self.worker_log.open("wb") as out:
            self.worker = subprocess.Popen(
                [sys.executable, "-m", "runner", "work"], env=self.env, stdout=out, stderr=subprocess.STDOUT
            )

        def started() -> bool:
            assert self.worker is not None
            if self.worker.poll() is not None:
                pytest.fail(f"runner work exited {self.worker.returncode}:\n{self.output()}")
            return "worker started" in self.output()

        wait_for(started, "runner work to start", details=self.output())

    def output(self) -> str:
        return self.worker_log.read_text(errors="replace") if self.worker_log.exists() else ""

    def trigger(self, pipeline: str) -> Row[Any]:
        done = run_cli("trigger", pipeline, "--ref", "main", env=self.env)
        assert done.returncode == 0, done.stdout + done.stderr
        run_id = int(re.search(r"run (\d+) queued", done.stdout).group(1))  # type: ignore[union-attr]

        def finished() -> Row[Any] | None:
            run = self.store.run(run_id)
            return run if run is not None and run.status in FINISHED else None

        return wait_for(finished, f"run {run_id} to finish", 60, self.output())

    def log_of(self, run: Row[Any]) -> str:
        assert run.log_path
        return Path(run.log_path).read_text()

    def details(self, run: Row[Any]) -> str:
        steps_said = "\n".join(f"  {s.name}: {s.status} {s.detail}" for s in self.store.steps(run.id))
        said = f"run {run.id}: {run.status} {run.reason}\n{steps_said}\n{self.log_of(run)}"
        return f"{said}\n--- runner work:\n{self.output()[-3000:]}"

    def close(self) -> None:
        if self.worker is not None and self.worker.poll() is None:
            self.worker.send_signal(signal.SIGTERM)
            try:
                self.worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.worker.kill()
                self.worker.wait()
        self.store.close()


@pytest.fixture
def rig(world: Path, nginx: Nginx) -> Iterator[Rig]:
    made = Rig(world, nginx)
    try:
        yield made
    finally:
        made.close()


WEB_PIPELINE = """
on: {repository: acme/web, branches: [main]}
workdir: checkout
steps:
  - git: {remote: <REMOTE>}
  - name: answer
    nginx:
      site: answer
      template: answer.conf.j2
      vars:
        port: <PORT>
        option: <OPTION>
        answer: "deployed {{ commit }} from {{ branch }}"
  - name: static site
    nginx:
      site: web.example
      template: static.conf.j2
      vars:
        server_name: "{{ branch }}.localhost"
        root: "{{ workdir }}/public"
        tls: false
        listen_addresses: [127.0.0.1]
        http_port: <STATIC_PORT>
"""


def test_a_run_renders_checks_and_reloads_and_a_broken_site_is_put_back(rig: Rig) -> None:
    port, static_port = free_port(), free_port()
    values = {"REMOTE": rig.bare, "PORT": port, "STATIC_PORT": static_port}
    write_pipeline(rig.home, "web", WEB_PIPELINE, OPTION='"on"', **values)
    write_pipeline(rig.home, "broken", WEB_PIPELINE, OPTION="bogus", **values)
    rig.start()
    workers = rig.nginx.workers()

    run = rig.trigger("web")
    assert run.status == "succeeded", rig.details(run)
    assert get(port)[:2] == (200, f"deployed {rig.commit} from main")
    assert get(static_port, host="main.localhost")[:2] == (200, "version one\n")
    static = (rig.nginx.sites / "web.example.conf").read_text()
    assert "server_name main.localhost;" in static and f"root {rig.home}/checkout/public;" in static
    wait_for(lambda: not rig.nginx.workers() & workers, "the old generation of workers to leave")
    log = rig.log_of(run)
    assert f"runner-nginx: $ {shlex.join([*rig.nginx.argv, '-t'])}" in log and "test is successful" in log
    assert f"runner-nginx: $ {shlex.join([*rig.nginx.argv, '-s', 'reload'])}" in log
    assert "the reload took" in log
    [_, answer_step, static_step] = rig.store.steps(run.id)
    assert "answer.conf: nginx -t passed, reloaded" in (answer_step.detail or ""), answer_step.detail
    assert static_step.status == "succeeded"

    # A value nginx -t refuses: it fails, the previous file is back byte for byte,
    # nothing is reloaded and nginx answers as before.
    site = rig.nginx.sites / "answer.conf"
    before = site.read_bytes()
    workers = rig.nginx.workers()
    run = rig.trigger("broken")
    assert run.status == "failed", rig.details(run)
    [_, answer_step] = rig.store.steps(run.id)
    assert answer_step.status == "failed"
    assert f'invalid value "bogus" in "gzip" directive, it must be "on" or "off" in {site}:3' in (
        answer_step.detail or ""
    ), answer_step.detail
    assert "put the previous answer.conf back" in (answer_step.detail or "")
    said = rf'^\S+ err +\| .*\[emerg\] .*invalid value "bogus" in "gzip" .* in {re.escape(str(site))}:3$'
    assert re.search(said, rig.log_of(run), re.M), rig.log_of(run)
    assert re.search(r"^\S+ diff +\| \+ +gzip bogus;$", rig.log_of(run), re.M), "the log shows no diff"
    assert site.read_bytes() == before
    assert sorted(p.name for p in rig.nginx.sites.iterdir()) == ["answer.conf", "web.example.conf"]
    assert rig.nginx.workers() <= workers, "nginx was reloaded"
    assert get(port)[:2] == (200, f"deployed {rig.commit} from main")


RELEASE_PIPELINE = """
on: {repository: acme/web, branches: [main]}
workdir: checkout
release: {keep: 2}
steps:
  - git: {remote: <REMOTE>}
  - run: test ! -e public/broken
activate:
  - name: static site
    nginx:
      site: web.example
      template: static.conf.j2
      vars:
        server_name: web.localhost
        root: <ROOT>
        tls: false
        listen_addresses: [127.0.0.1]
        http_port: <STATIC_PORT>
"""


def test_a_static_site_served_from_current_is_deployed_by_the_switch(rig: Rig) -> None:
    port = free_port()
    root = rig.home / "checkout" / "current" / "public"
    write_pipeline(rig.home, "web", RELEASE_PIPELINE, REMOTE=rig.bare, ROOT=root, STATIC_PORT=port)
    rig.start()
    first = rig.trigger("web")
    assert first.status == "succeeded", rig.details(first)
    assert f"root {root};" in (rig.nginx.sites / "web.example.conf").read_text()
    assert get(port, host="web.localhost")[:2] == (200, "version one\n")

    work = rig.world / "app-work"
    for version, files in (("two", {"index.html": "version two\n"}), ("broken", {"broken": "x"})):
        for name, text in files.items():
            (work / "public" / name).write_text(text)
        rig._git("add", "--all", cwd=work)
        rig._git("commit", "-q", "-m", version, cwd=work)
        rig._git("push", "-q", str(rig.bare), "main:refs/heads/main", cwd=work)
        run = rig.trigger("web")
        # The new version is served once switched to; a failed build leaves the one served before.
        assert run.status == ("failed" if version == "broken" else "succeeded"), rig.details(run)
        assert get(port, host="web.localhost")[:2] == (200, "version two\n")


PROXY_PIPELINE = """
on: {repository: acme/web, branches: [main]}
workdir: checkout
steps:
  - name: proxy
    nginx:
      site: tls.localhost
      template: proxy.conf.j2
      vars:
        server_name: tls.localhost
        upstream_port: <UPSTREAM>
        cert_dir: <CERT_DIR>
        acme_root: <ACME_ROOT>
        listen_addresses: [127.0.0.1]
        http_port: <HTTP_PORT>
        https_port: <HTTPS_PORT>
"""


def test_a_reload_the_master_refuses_fails_the_step_with_the_masters_reason(
    rig: Rig, nginx_user: str
) -> None:
    # nginx -t as root (the wrapper's) passes where the non-root master cannot read a key.
    upstream, http_port, https_port = free_port(), free_port(), free_port()
    # The upstream: a site of the same nginx.
    (rig.nginx.sites / "upstream.conf").write_text(
        f'server {{ listen 127.0.0.1:{upstream}; return 200 "from upstream $http_x_forwarded_proto"; }}\n'
    )
    acme_root = rig.world / "acme"
    (acme_root / ".well-known" / "acme-challenge").mkdir(parents=True)
    (acme_root / ".well-known" / "acme-challenge" / "token").write_text("key authorization\n")
    chain, key = self_signed(rig.world / "live" / "tls.localhost", "tls.localhost")
    shutil.chown(key, nginx_user)  # certbot's key, made readable to this master
    # The same certificate, its key readable by root only: as certbot leaves live/ and archive/.
    locked = rig.world / "live-locked" / "tls.localhost"
    locked.mkdir(parents=True)
    shutil.copy(chain, locked / "fullchain.pem")
    shutil.copy(key, locked / "privkey.pem")
    os.chown(locked / "privkey.pem", 0, 0)
    (locked / "privkey.pem").chmod(0o600)
    values = {"UPSTREAM": upstream, "ACME_ROOT": acme_root, "HTTP_PORT": http_port, "HTTPS_PORT": https_port}
    write_pipeline(rig.home, "tls", PROXY_PIPELINE, CERT_DIR=rig.world / "live", **values)
    write_pipeline(rig.home, "locked", PROXY_PIPELINE, CERT_DIR=rig.world / "live-locked", **values)
    rig.start()

    run = rig.trigger("tls")
    assert run.status == "succeeded", rig.details(run)
    tls = ssl.create_default_context(cafile=str(chain))
    assert get(https_port, host="tls.localhost", tls=tls)[:2] == (200, "from upstream https")
    status, _, headers = get(http_port, "/some/page?x=1", host="tls.localhost")
    assert (status, headers["Location"]) == (301, f"https://tls.localhost:{https_port}/some/page?x=1")
    assert get(http_port, "/.well-known/acme-challenge/token")[:2] == (200, "key authorization\n")

    site = rig.nginx.sites / "tls.localhost.conf"
    before = site.read_bytes()
    run = rig.trigger("locked")
    assert run.status == "failed", rig.details(run)
    log = rig.log_of(run)
    assert "test is successful" in log, "nginx -t (as root) should have passed"
    [step] = rig.store.steps(run.id)
    detail = step.detail or ""
    assert f"nginx master {rig.nginx.pid} kept its old configuration" in detail, detail
    assert (
        f'[emerg] {rig.nginx.pid}#{rig.nginx.pid}: cannot load certificate key "{locked}/privkey.pem"'
        in detail
    )
    assert "Permission denied" in detail
    assert "put the previous tls.localhost.conf back" in detail
    assert site.read_bytes() == before
    assert get(https_port, host="tls.localhost", tls=tls)[:2] == (200, "from upstream https")


SECRET_PIPELINE = """
on: {repository: acme/web, branches: [main]}
workdir: checkout
secrets: {ANSWER: <ANSWER>, OPTION: <OPTION>}
steps:
  - name: answer
    nginx:
      site: answer
      template: answer.conf.j2
      vars:
        port: <PORT>
        option: "<GZIP>"
        answer: "the answer is {{ secrets.ANSWER }}"
"""


def test_a_secret_in_an_nginx_var_reaches_the_wrapper_on_stdin_and_is_masked_in_the_diff(rig: Rig) -> None:
    answer, option = rig.world / "answer-secret", rig.world / "option-secret"
    answer.write_text("s3cret-Answer-4f1e\n")
    option.write_text("not-a-gzip-value-7e2\n")
    for path in (answer, option):
        path.chmod(0o600)
    # What the step hands the wrapper, recorded on the way: its command line and its standard input.
    seen_argv, seen_stdin = rig.world / "argv", rig.world / "stdin"
    recorder = rig.world / "record-nginx"
    recorder.write_text(
        "#!/bin/sh\n"
        f"printf '%s\\n' \"$@\" > {seen_argv}\n"
        f'tee {seen_stdin} | exec {rig.env["RUNNER_NGINX"]} "$@"\n'
    )
    recorder.chmod(0o755)
    rig.env["RUNNER_NGINX"] = str(recorder)
    port = free_port()
    values = {"ANSWER": answer, "OPTION": option, "PORT": port}
    write_pipeline(rig.home, "web", SECRET_PIPELINE, GZIP="on", **values)
    write_pipeline(rig.home, "refused", SECRET_PIPELINE, GZIP="{{ secrets.OPTION }}", **values)
    rig.start()

    run = rig.trigger("web")
    assert run.status == "succeeded", rig.details(run)
    # nginx serves the value; the wrapper got it on its standard input, never on its command line.
    assert get(port)[:2] == (200, "the answer is s3cret-Answer-4f1e")
    assert seen_argv.read_text().split("\n")[-3:] == ["--vars", "-", ""], seen_argv.read_text()
    assert "s3cret" not in seen_argv.read_text()
    assert json.loads(seen_stdin.read_text())["answer"] == "the answer is s3cret-Answer-4f1e"
    # The site holds the value: root's, readable by nobody but root and the deploy user's group.
    site = (rig.nginx.sites / "answer.conf").stat()
    assert (site.st_uid, site.st_mode & 0o777) == (0, 0o640)
    log = rig.log_of(run)
    assert re.search(r'^\S+ diff +\| \+ +return 200 "the answer is \*\*\*";$', log, re.M), log
    assert "s3cret-Answer-4f1e" not in log

    # A secret nginx -t refuses: its value is *** in the step's detail, the run's reason and the log.
    run = rig.trigger("refused")
    assert run.status == "failed", rig.details(run)
    [step] = rig.store.steps(run.id)
    assert 'invalid value "***" in "gzip" directive' in (step.detail or ""), step.detail
    said = "\n".join([rig.log_of(run), run.reason or "", step.detail or ""])
    assert "not-a-gzip-value-7e2" not in said and "***" in rig.log_of(run)
    assert get(port)[:2] == (200, "the answer is s3cret-Answer-4f1e")


def test_a_pipeline_waiting_for_its_template_is_loaded_once_the_template_appears(tmp_path: Path) -> None:
    from runner.pipelines import PipelineSet

    home = tmp_path
    (home / "templates" / "nginx").mkdir(parents=True)
    (home / "pipelines").mkdir()
    write_pipeline(
        home,
        "site",
        """
        on: {repository: acme/web}
        workdir: web
        steps:
          - nginx: {site: example.com, template: later.conf.j2}
        """,
    )
    pipelines = PipelineSet(home / "pipelines", home)
    assert [p.message for p in pipelines.reload()] == [
        "step 1 nginx.template: template 'later.conf.j2' not found in templates/nginx/"
    ]
    assert pipelines.get("site") is None
    # Saved the way editors save: written under another name, renamed into place.
    temp = home / "templates" / "nginx" / ".later.conf.j2.swp"
    temp.write_text("server { listen 8080; }\n")
    temp.rename(home / "templates" / "nginx" / "later.conf.j2")
    assert pipelines.reload() == []
    assert pipelines.get("site") is not None


# The sandbox ------------------------------------------------------------------------------------------------

ESCAPE = "{{ ''.__class__.__mro__[1].__subclasses__() }}"


def test_rendering_refuses_attribute_escapes_and_mutation(world: Path, nginx: Nginx) -> None:
    templates = {
        "answer.conf.j2": ANSWER_TEMPLATE,
        "escape.conf.j2": f"# {ESCAPE}\n" + ANSWER_TEMPLATE,
        "mutate.conf.j2": "{% set _ = names.append('evil.example') %}# {{ names | join(',') }}\n"
        + ANSWER_TEMPLATE,
        "mutate-map.conf.j2": "{% set _ = tags.update({'a': 'b'}) %}\n" + ANSWER_TEMPLATE,
    }
    home = make_home(world, templates)
    config = config_for(home, nginx)
    port = free_port()
    step = ANSWER_STEP.replace("<PORT>", str(port))

    # In a pipeline's var, the expression is the pipeline's own: the sandbox refuses it.
    escaping = step.replace('"{{ event.head_commit.message }}"', f'"{ESCAPE}"')
    outcome, log = run_step(home, config, escaping, {})
    assert outcome.status == "failed", (outcome, log)
    assert "unsafe" in (outcome.detail or "") and "__class__" in (outcome.detail or ""), outcome.detail
    # In an event's value it is text: quoted as it is, never evaluated.
    outcome, log = run_step(home, config, step, {"head_commit": {"message": ESCAPE}})
    assert outcome.status == "succeeded", (outcome, log)
    text = (nginx.sites / "answer.conf").read_text()
    assert f'return 200 "{ESCAPE}";' in text.replace('\\"', '"') or ESCAPE in text, text
    assert "<class" not in text
    assert get(port)[:2] == (200, ESCAPE)
    before = (nginx.sites / "answer.conf").read_bytes()

    # In a template, and changing the values handed to it: refused, and nothing is written.
    for name, vars_extra in (
        ("escape.conf.j2", ""),
        ("mutate.conf.j2", "\n      names: [a.example]"),
        ("mutate-map.conf.j2", "\n      tags: {x: y}"),
    ):
        bad = step.replace("answer.conf.j2", name).replace('option: "on"', 'option: "on"' + vars_extra)
        outcome, log = run_step(home, config, bad, {"head_commit": {"message": "x"}})
        assert outcome.status == "failed", (name, outcome, log)
        assert "unsafe" in (outcome.detail or ""), (name, outcome.detail)
        assert (nginx.sites / "answer.conf").read_bytes() == before
        assert "evil.example" not in log


# The wrapper's refusals -------------------------------------------------------------------------------------


def run_wrapper(conf: Path, *args: str, python: Sequence[str] = (SYSTEM_PYTHON, "-I"), **env: str) -> Any:
    return subprocess.run(
        [*python, str(WRAPPER), *args],
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "RUNNER_NGINX_CONF": str(conf), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


GOOD_VARS = '{"port": 1, "option": "on", "answer": "x"}'
REFUSED_ARGUMENTS = {
    "site with /": ["--site", "a/b", "--template", "answer.conf.j2", "--vars", GOOD_VARS],
    "site ..": ["--site", "..", "--template", "answer.conf.j2", "--vars", GOOD_VARS],
    "site a path": ["--site", "../../root/x", "--template", "answer.conf.j2", "--vars", GOOD_VARS],
    "template ../x": ["--site", "a", "--template", "../x", "--vars", GOOD_VARS],
    "template a path": ["--site", "a", "--template", "/etc/passwd", "--vars", GOOD_VARS],
    "unknown option": ["--site", "a", "--template", "answer.conf.j2", "--conf", "/tmp/x"],
    "vars not an object": ["--site", "a", "--template", "answer.conf.j2", "--vars", "[1]"],
    "vars not JSON": ["--site", "a", "--template", "answer.conf.j2", "--vars", "{port: 1}"],
    "vars NaN": ["--site", "a", "--template", "answer.conf.j2", "--vars", '{"port": NaN}'],
    "vars too big": ["--site", "a", "--template", "answer.conf.j2", "--vars", '{"a": "' + "x" * 70000 + '"}'],
    "vars set site": ["--site", "a", "--template", "answer.conf.j2", "--vars", '{"site": "b"}'],
}


@pytest.mark.parametrize("args", REFUSED_ARGUMENTS.values(), ids=REFUSED_ARGUMENTS.keys())
def test_the_wrapper_refuses_odd_arguments(world: Path, nginx: Nginx, args: list[str]) -> None:
    home = make_home(world, {"answer.conf.j2": ANSWER_TEMPLATE})
    conf = nginx.wrapper_conf(world / "runner-nginx.conf", home / "templates" / "nginx")
    done = run_wrapper(conf, *args)
    assert done.returncode == 2, f"{done.returncode}: {done.stdout}{done.stderr}"
    assert "refusing" in done.stderr or "is required" in done.stderr, done.stderr
    assert list(nginx.sites.iterdir()) == []


def test_the_wrapper_refuses_a_value_that_is_not_one_nginx_word(world: Path, nginx: Nginx) -> None:
    home = make_home(world, {"answer.conf.j2": ANSWER_TEMPLATE})
    conf = nginx.wrapper_conf(world / "runner-nginx.conf", home / "templates" / "nginx")
    owned = world / "root-only" / "owned"
    owned.parent.mkdir(mode=0o700)
    for option in (f"access_log {owned};", f"gzip on; access_log {owned}", "a\nb"):
        variables = json.dumps({"port": free_port(), "option": option, "answer": "x"})
        done = run_wrapper(conf, "--site", "a", "--template", "answer.conf.j2", "--vars", variables)
        assert done.returncode == 1, done.stdout + done.stderr
        assert f"answer.conf.j2:4: refusing {option!r} as a name" in done.stdout, done.stdout
    assert list(nginx.sites.iterdir()) == [] and not owned.exists()


def test_the_wrapper_refuses_a_configuration_others_could_change(world: Path, nginx: Nginx) -> None:
    home = make_home(world, {"answer.conf.j2": ANSWER_TEMPLATE})
    conf = nginx.wrapper_conf(world / "runner-nginx.conf", home / "templates" / "nginx")
    args = ["--site", "a", "--template", "answer.conf.j2", "--no-reload", "--vars", GOOD_VARS]
    assert run_wrapper(conf, *args).returncode == 0
    nobody = pwd.getpwnam("nobody").pw_uid
    conf.chmod(0o664)
    done = run_wrapper(conf, *args)
    assert done.returncode == 1 and "writable by group or others" in done.stdout, done.stdout
    conf.chmod(0o644)
    os.chown(conf, nobody, -1)
    done = run_wrapper(conf, *args)
    assert done.returncode == 1 and f"owned by uid {nobody}" in done.stdout, done.stdout
    os.chown(conf, 0, -1)
    # A template directory (or a template) another user may change is refused too.
    templates = home / "templates" / "nginx"
    os.chown(templates, nobody, -1)
    done = run_wrapper(conf, *args)
    assert done.returncode == 1 and "templates-dir" in done.stdout, done.stdout
    os.chown(templates, 0, -1)
    (templates / "answer.conf.j2").chmod(0o666)
    done = run_wrapper(conf, *args)
    assert done.returncode == 1 and "writable by others" in done.stdout, done.stdout
    (templates / "answer.conf.j2").chmod(0o644)
    # So is a certificate directory another user may change, or that is not there and another user could
    # make, and one that is not an absolute normalised path.
    mine = world / "mine"
    mine.mkdir()
    os.chown(mine, nobody, -1)
    for dirs, said in (
        (f"/etc/letsencrypt/live {mine}", f"refusing certificate-dirs {mine}"),
        (f"{mine}/live", f"refusing certificate-dirs {mine}"),
        ("live", "'live' must be an absolute, normalised path"),
        ("/etc/letsencrypt/live/", "must be an absolute, normalised path"),
    ):
        nginx.wrapper_conf(conf, home / "templates" / "nginx", certificate_dirs=dirs)
        done = run_wrapper(conf, *args)
        assert done.returncode == 1 and said in done.stdout, (dirs, done.stdout)


def test_the_wrapper_imports_nothing_from_a_place_another_user_can_write(world: Path, nginx: Nginx) -> None:
    home = make_home(world, {"answer.conf.j2": ANSWER_TEMPLATE})
    conf = nginx.wrapper_conf(world / "runner-nginx.conf", home / "templates" / "nginx")
    planted = world / "planted"
    (planted / "jinja2").mkdir(parents=True)
    marker = world / "planted-ran"
    (planted / "jinja2" / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    os.chown(planted, pwd.getpwnam("nobody").pw_uid, -1)
    args = ["--site", "a", "--template", "answer.conf.j2", "--no-reload", "--vars", GOOD_VARS]
    # python3 -I ignores PYTHONPATH: the system's jinja2 renders the site.
    done = run_wrapper(conf, *args, PYTHONPATH=str(planted))
    assert done.returncode == 0, done.stdout + done.stderr
    assert not marker.exists()
    # Without -I, an import path entry another user owns is refused before anything is done.
    (planted / "jinja2" / "__init__.py").unlink()
    (planted / "jinja2").rmdir()
    done = run_wrapper(conf, *args, python=(SYSTEM_PYTHON,), PYTHONPATH=str(planted))
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"refusing the import path entry {planted}" in done.stdout, done.stdout


# After a real runner setup: the deploy user, sudo and the installed wrapper ------------------------------


def test_after_setup_the_deploy_user_deploys_a_site_only_through_the_wrapper(
    world: Path, nginx: Nginx, nginx_user: str
) -> None:
    from test_setup import install_sudoers, let_run_python, new_instance

    from runner.instance import NGINX_WRAPPER

    with new_instance() as instance:
        cleanup = instance.cleanup
        (instance.home / "templates" / "nginx").mkdir(parents=True)
        (instance.home / "templates" / "nginx" / "answer.conf.j2").write_text(ANSWER_TEMPLATE)
        (instance.home / "pipelines").mkdir()
        port = free_port()
        step = ANSWER_STEP.replace("<PORT>", str(port)).replace("{{ event.head_commit.message }}", "via sudo")
        header = "on: {repository: acme/web}\nworkdir: checkout\nsteps:\n"
        write_pipeline(instance.home, "site", header + textwrap.indent(step.strip("\n"), "  "))
        instance.setup("--sites-dir", str(nginx.sites)).check_returncode()
        templates = instance.etc_dir / "templates" / "nginx"
        assert (templates / "answer.conf.j2").read_text() == ANSWER_TEMPLATE

        # The wrapper where sudoers names it, its configuration where it looks for the instance's.
        installed = Path("/") / NGINX_WRAPPER
        saved = installed.read_bytes() if installed.exists() else None
        installed.parent.mkdir(parents=True, exist_ok=True)
        cleanup.callback(lambda: installed.write_bytes(saved) if saved is not None else installed.unlink())
        shutil.copy(instance.prefix / NGINX_WRAPPER, installed)
        installed.chmod(0o755)
        etc = Path("/etc") / instance.name
        assert not etc.exists()
        cleanup.callback(shutil.rmtree, etc, ignore_errors=True)
        etc.mkdir(mode=0o755)
        nginx.wrapper_conf(etc / "nginx.conf", templates)
        install_sudoers(instance.sudoers_file.read_bytes(), instance.name, cleanup)
        let_run_python(instance.name, cleanup)

        account = instance.account
        env = account.env(
            RUNNER_DATABASE_URL=f"sqlite:///{instance.home / 'runner.db'}",
            RUNNER_NGINX_SITES_DIR=str(nginx.sites),
            RUNNER_NGINX_TEMPLATES=str(templates),
        )
        owned = world / "root-only" / "owned"
        owned.parent.mkdir(mode=0o700)
        evil = f"server {{ listen 127.0.0.1:{free_port()}; access_log {owned}; }}\n"
        # The sites directory and the templates are not the deploy user's to write.
        for target in (nginx.sites / "evil.conf", templates / "evil.conf.j2", templates / "answer.conf.j2"):
            done = account.run("/bin/sh", "-c", 'printf "%s" "$1" > "$2"', "sh", evil, target, env=env)
            assert done.returncode != 0 and "Permission denied" in done.stderr, (target, done.stderr)
        # Nor can it make the wrapper write such a site: a crafted value, a template or site name that is a
        # path, a configuration of its own.
        mine = instance.home / "mine"
        mine.mkdir()
        (mine / "evil.conf.j2").write_text(evil)
        account_conf = mine / "nginx.conf"
        account_conf.write_text(f"templates-dir = {mine}\nsites-dir = {nginx.sites}\n")
        sudo = ["sudo", "-n", str(installed)]
        for argv, extra in (
            ([*sudo, "--site", "a", "--template", "answer.conf.j2", "--vars",
              json.dumps({"port": port, "option": f"access_log {owned};", "answer": "x"})], {}),
            ([*sudo, "--site", "a", "--template", f"../../../..{mine}/evil.conf.j2", "--vars", "{}"], {}),
            ([*sudo, "--site", "../../root-only/x", "--template", "answer.conf.j2", "--vars", "{}"], {}),
            ([*sudo, "--site", "a", "--template", "evil.conf.j2", "--vars", "{}"],
             {"RUNNER_NGINX_CONF": str(account_conf)}),
        ):  # fmt: skip
            done = account.run(*argv, env={**env, **extra})
            assert done.returncode != 0, (argv, done.stdout, done.stderr)
        assert not owned.exists() and sorted(p.name for p in nginx.sites.iterdir()) == []

        # The worker, as the deploy user, deploys the site through sudo and the installed wrapper.
        done = account.run(sys.executable, "-m", "runner", "db", "upgrade", env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        log = instance.base / "worker.log"
        with log.open("wb") as out:
            worker = subprocess.Popen(
                account.argv(sys.executable, "-m", "runner", "work"),
                env=env, cwd=instance.home, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            wait_for(
                lambda: "worker started" in log.read_text(), "runner work to start", details=log.read_text
            )
            done = account.run(sys.executable, "-m", "runner", "trigger", "site", "--ref", "main", env=env)
            assert done.returncode == 0, done.stdout + done.stderr
            store = Store(f"sqlite:///{instance.home / 'runner.db'}")
            try:

                def finished() -> Row[Any] | None:
                    runs = [r for r in store.runs(limit=5) if r.status in FINISHED]
                    return runs[0] if runs else None

                run = wait_for(finished, "the run to finish", 60, log.read_text)
                steps_said = [(s.status, s.detail) for s in store.steps(run.id)]
            finally:
                store.close()
            assert run.status == "succeeded", (steps_said, Path(run.log_path or "").read_text())
            assert get(port)[:2] == (200, "via sudo")
            site_file = nginx.sites / "answer.conf"
            assert site_file.stat().st_uid == 0
            assert "sudo -n /usr/local/libexec/runner-nginx" in Path(run.log_path or "").read_text()
        finally:
            stop_process(worker)
        assert not owned.exists()


# Typed values: the deploy user cannot make nginx's master open, create or write a file of its choosing ------


def attack_vars(**changes: object) -> str:
    values: dict[str, object] = {"server_name": "e.test", "upstream_port": 9, "tls": False}
    values.update(changes)
    return json.dumps(values)


@pytest.fixture
def root_nginx(world: Path, nginx_user: str) -> Iterator[Nginx]:
    """A master running as root, as in production: what it creates, root creates."""
    server = Nginx(world, None)
    try:
        yield server
    finally:
        server.stop()


def test_a_unix_listener_from_values_is_refused_and_root_creates_no_file(
    world: Path, root_nginx: Nginx
) -> None:
    nginx = root_nginx
    home = make_home(world)
    conf = nginx.wrapper_conf(world / "runner-nginx.conf", home / "templates" / "nginx")
    # Short names: a socket's path has at most 107 bytes.
    deploy_dir = world / "d"
    (deploy_dir / "x:").mkdir(parents=True)
    target = world / "r" / "made"
    target.parent.mkdir(mode=0o700)
    up = "/.." * len(deploy_dir.parts)
    attacks = {
        # The review's attack: each value one nginx word, `listen unix:<D>/x:<up><target>:` as rendered.
        "unix: address": (
            {"listen_addresses": [f"unix:{deploy_dir}/x"], "http_port": f"{up}{target}"},
            f"'unix:{deploy_dir}/x' as an address",
        ),
        # No value holds "unix:", but the address and the port concatenate to it.
        "unix + path": (
            {"listen_addresses": ["unix"], "http_port": f"{deploy_dir}/x:{up}{target}"},
            "'unix' as an address",
        ),
        "port a path": ({"listen_addresses": ["127.0.0.1"], "http_port": f"{up}{target}"}, "as a port"),
        "upstream unix:": ({"upstream_host": f"unix:{deploy_dir}/x:{up}{target}"}, "as a host"),
        "upstream unix + path": ({"upstream_host": "unix", "upstream_port": f"/x:{up}{target}"}, "as a host"),
        "regex server_name": ({"server_name": "~^(?<x>.+)$"}, "as a server_name"),
        "acme_root ..": ({"acme_root": f"{deploy_dir}/../r"}, "as a path"),
        "max_body_size": ({"max_body_size": "10m;access_log"}, "as a size"),
    }
    for what, (changes, said) in attacks.items():
        variables = attack_vars(**changes)
        done = run_wrapper(conf, "--site", "evil", "--template", "proxy.conf.j2", "--vars", variables)
        assert done.returncode == 1, (what, done.stdout, done.stderr)
        assert said in done.stdout and "proxy.conf.j2:" in done.stdout, (what, done.stdout)
        assert f"$ {NGINX}" not in done.stderr, (what, "nginx was asked", done.stderr)
        assert not target.exists(), what
        assert list(nginx.sites.iterdir()) == [], what
    # A certificate directory the wrapper's certificate-dirs do not name: the master would read, as root,
    # whatever the deploy user put there (a symlink to another key, a FIFO that blocks it).
    (deploy_dir / "x" / "x").mkdir(parents=True)
    variables = attack_vars(tls=True, cert="x", cert_dir=str(deploy_dir / "x"))
    done = run_wrapper(conf, "--site", "evil", "--template", "proxy.conf.j2", "--vars", variables)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"refusing '{deploy_dir}/x/x/fullchain.pem' in ssl_certificate" in done.stdout, done.stdout
    assert "certificate-dirs" in done.stdout and list(nginx.sites.iterdir()) == []
    # A cert name that is a path, with TLS: refused before nginx's master reads anything.
    variables = attack_vars(tls=True, cert="../../r/x", cert_dir=str(world))
    done = run_wrapper(conf, "--site", "evil", "--template", "proxy.conf.j2", "--vars", variables)
    assert done.returncode == 1 and "'../../r/x' as a name" in done.stdout, done.stdout
    assert list(nginx.sites.iterdir()) == []


@pytest.fixture(scope="module")
def wrapper() -> Any:
    """The wrapper itself, loaded as a module: its types and its renderer, in-process."""
    loader = importlib.machinery.SourceFileLoader("runner_nginx_wrapper", str(WRAPPER))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


TYPE_CASES: dict[str, tuple[list[object], list[object]]] = {
    # type: (accepted, refused)
    "port": (
        [1, 80, 65535, "443", "8080"],
        [0, 65536, -1, True, 80.0, "080", "0", "80 ", " 80", "8o", "1e3", "", "/x", "unix:/x", "٣", None,
         [80]],
    ),
    "address": (
        ["127.0.0.1", "0.0.0.0", "*", "[::]", "[::1]", "[2001:db8::1]", "[::ffff:10.0.0.1]"],  # noqa: S104
        ["unix", "unix:/tmp/x", "UNIX:/x", "localhost", "example.com", "256.1.1.1", "127.0.0.01", "::1",
         "[::1", "[fe80::1%eth0]", "127.0.0.1:80", "*:80", "**", "", 1, None, ["127.0.0.1"]],
    ),
    "host": (
        ["127.0.0.1", "[::1]", "localhost", "api.internal", "a-b.example.com", "xn--bcher-kva.example",
         "a" * 63],
        ["unix", "unix:/x", "~x", "*.example.com", ".example.com", "example.com.", "-a.example", "a-.example",
         "a_b", "Api.example", "a..b", "a" * 64, "host:80", "[::1%lo]", "", 1, None],
    ),
    "server_name": (
        ["example.com", "*.example.com", "localhost", "main.localhost", "xn--bcher-kva.example"],
        ["~^(?<x>.+)$", "~x", ".example.com", "example.*", "*", "*.", "*.*.example", "_", "", "a b",
         "example.com:80", "www.Example.com", "unix:/x", 1, None],
    ),
    "path": (
        ["/", "/var/www/letsencrypt", "/tmp/runner-x_1/dist", "/a/.../b", "/a/.b"],
        ["relative/x", "", "/a/../b", "/a/./b", "/..", "/a//b", "//a", "/a/", "/a:b", "/d/x:/../etc/f",
         "~/x", "/a b", "/a\\b", "/ä", "/a\n", "/a;b", "/a$b", "/" + "a" * 4096, 1, None],
    ),
    "name": (
        ["index.html", "fullchain.pem", "example.com", "a_b-c.1", "...", "x" * 255],
        [".", "..", "", "a/b", "../x", "/x", "a:b", "*.example.com", "a b", "a;b", "x" * 256, 1, None],
    ),
    "size": (
        [0, 1024, "0", "100", "10m", "25M", "1g", "512k"],
        ["10mb", "-1", -1, "1.5m", "", "10m;", " 10m", True, "1t", "m", 1.5, None],
    ),
}  # fmt: skip


@pytest.mark.parametrize("kind", TYPE_CASES)
def test_each_type_accepts_its_values_and_refuses_the_edges(wrapper: Any, kind: str) -> None:
    from jinja2 import TemplateRuntimeError

    check = wrapper.TYPES[kind]
    accepted, refused = TYPE_CASES[kind]
    for value in accepted:
        typed = check(value)
        assert isinstance(typed, wrapper.Typed) and typed == str(value), (kind, value, typed)
        assert wrapper.nginx_finalize(typed) == f"\ue000{value}\ue001"
    article = "an" if kind == "address" else "a"
    for value in refused:
        with pytest.raises(TemplateRuntimeError) as raised:
            check(value)
        message = str(raised.value)
        assert message.startswith(f"refusing {str(value)[:77]!r}"[:-1]), (kind, value, message)
        assert f" as {article} {kind}: " in message, (kind, value, message)


def test_finalize_prints_only_typed_values_that_stay_one_word(wrapper: Any) -> None:
    from jinja2 import TemplateRuntimeError

    for untyped in ("80", 80, "/var/www", ["a"], wrapper.nginx_quote("x")[1:-1]):
        with pytest.raises(TemplateRuntimeError, match="without a type"):
            wrapper.nginx_finalize(untyped)
    # Should a type ever let syntax through, finalize still refuses it.
    with pytest.raises(TemplateRuntimeError, match="is nginx syntax"):
        wrapper.nginx_finalize(wrapper.Typed("a;b"))
    assert wrapper.nginx_finalize(wrapper.nginx_quote("a b; c")) == '\ue000"a b; c"\ue001'
    with pytest.raises(TemplateRuntimeError, match="nginx_quote refuses"):
        wrapper.nginx_quote("a\ue001b")


def test_a_secret_is_masked_as_the_wrapper_quotes_it_and_never_shown_in_its_refusals(wrapper: Any) -> None:
    from jinja2 import TemplateRuntimeError

    from runner.masking import Masker
    from runner.steps.nginx import quoted

    # The diff shows a value as nginx_quote wrote it: a secret's " and \\ escaped must be masked too.
    secret = 'pa"ss\\word-91'
    line = f"return 200 {wrapper.nginx_quote('the answer is ' + secret)};"
    assert Masker([secret, quoted(secret)]).mask(line) == 'return 200 "the answer is ***";'
    # A refusal shows a value's repr, cut after 77 characters: with --secret, no value at all.
    long = "token-" + "a1b2" * 30
    with pytest.raises(TemplateRuntimeError) as shown:
        wrapper.port(long)
    assert long[:40] in str(shown.value)
    wrapper.SHOW_VALUES = False
    try:
        with pytest.raises(TemplateRuntimeError) as hidden:
            wrapper.port(long)
    finally:
        wrapper.SHOW_VALUES = True
    assert long[:10] not in str(hidden.value) and "not shown: the vars hold a secret" in str(hidden.value)


RENDERED_REFUSALS = {
    "access_log": ("access_log {{ p | path }};", "in access_log: it is made from a value"),
    "error_log": ("error_log {{ p | path }} info;", "in error_log: it is made from a value"),
    "quoted log": ('access_log "{{ p | path }}";', "in access_log: it is made from a value"),
    "log as text": ("access_log {{ q | nginx_quote }};", "in access_log: it is made from a value"),
    "temp path": ("client_body_temp_path {{ p | path }};", "in client_body_temp_path"),
    "cache path": ("proxy_cache_path {{ p | path }} keys_zone=z:1m;", "in proxy_cache_path"),
    "include": ("include {{ p | path }};", "in include: it is made from a value"),
    "directive": ("{{ d | name }} /tmp/x;", "the directive 'access_log' is made from a value"),
    "half a directive": ("access_{{ e | name }} /tmp/x;", "the directive 'access_log' is made from a value"),
    "unix listen": ("listen unix:{{ p | path }};", "in listen: a unix socket made from a value"),
    "unix upstream": (
        "location / { proxy_pass http://{{ u | name }}:{{ port | port }}; }",
        "'http://unix:80' in proxy_pass: a unix socket",
    ),
    "unix uwsgi": ("location / { uwsgi_pass unix:{{ p | path }}; }", "in uwsgi_pass: a unix socket"),
    # nginx opens a string only at a word's start: quoted mid-word, the text ends the word at its space.
    "quoted mid-word": (
        "location / { return 200 x{{ t | nginx_quote }}; }",
        """'"a; include /etc/passwd; #"' is made from values and is not part of one word""",
    ),
    "certificate elsewhere": (
        "ssl_certificate {{ p | path }}/x.pem;",
        "refusing '/tmp/x/x.pem' in ssl_certificate: nginx's master reads it as root",
    ),
    "trusted elsewhere": (
        "location / { proxy_ssl_trusted_certificate {{ p | path }}; }",
        "in proxy_ssl_trusted_certificate: nginx's master reads it as root",
    ),
    "certificate beside the directory": (
        "ssl_certificate_key {{ c | path }}-x/k.pem;",
        "ssl_certificate_key",
    ),
}
RENDERED_ACCEPTED = [
    "access_log /var/log/nginx/literal.log; error_log /var/log/nginx/literal.error.log;",
    "listen unix:/run/literal.sock;",
    "root {{ p | path }}; ssl_certificate {{ c | path }}/{{ n | name }}/fullchain.pem;",
    "ssl_certificate /etc/letsencrypt/live/{{ n | name }}/f.pem; ssl_certificate_key /tmp/literal.pem;",
    "# access_log {{ p | path }};",
    'return 200 "{{ n | name }}"; add_header X-Path {{ p | path }}; add_header X-Text {{ t | nginx_quote }};',
    "location {{ p | path }} { proxy_pass http://{{ h | host }}:{{ port | port }}; }",
]
RENDER_VARS = {"p": "/tmp/x", "q": "/tmp/x", "d": "access_log", "e": "log", "u": "unix", "port": 80,
               "n": "name", "h": "localhost", "c": "/etc/letsencrypt/live",
               "t": "a; include /etc/passwd; #"}  # fmt: skip


def test_a_value_never_names_a_directive_a_file_the_master_opens_or_a_socket(
    wrapper: Any, tmp_path: Path
) -> None:
    conf = {"templates-dir": str(tmp_path), "certificate-dirs": ["/etc/letsencrypt/live"]}
    for what, (line, said) in RENDERED_REFUSALS.items():
        (tmp_path / "t.conf.j2").write_text(f"# {what}\nserver {{\n    {line}\n}}\n")
        with pytest.raises(wrapper.Problem) as raised:
            wrapper.render(conf, "t.conf.j2", "s", RENDER_VARS)
        assert str(raised.value).startswith("t.conf.j2, as rendered, line 3: "), (what, str(raised.value))
        assert said in str(raised.value), (what, str(raised.value))
    for line in RENDERED_ACCEPTED:
        (tmp_path / "t.conf.j2").write_text(f"server {{\n    {line}\n}}\n")
        rendered = wrapper.render(conf, "t.conf.j2", "s", RENDER_VARS).decode()
        assert "\ue000" not in rendered and "\ue001" not in rendered and "{{" not in rendered, rendered
    # A template may not hold the marks itself.
    (tmp_path / "t.conf.j2").write_text("server { listen \ue0001\ue001; }\n")
    with pytest.raises(wrapper.Problem, match="U\\+E000 or U\\+E001"):
        wrapper.render(conf, "t.conf.j2", "s", {})


def test_a_log_path_from_a_value_is_refused_where_template_text_is_not(world: Path, nginx: Nginx) -> None:
    owned = world / "r"
    owned.mkdir(mode=0o700)
    literal, chosen = owned / "literal.log", owned / "chosen.log"
    port = free_port()
    server = f"server {{\n    listen 127.0.0.1:{port};\n    access_log <LOG>;\n    return 204;\n}}\n"
    templates = {
        "literal.conf.j2": server.replace("<LOG>", str(literal)),
        "chosen.conf.j2": server.replace("<LOG>", "{{ log | path }}"),
    }
    home = make_home(world, templates)
    conf = nginx.wrapper_conf(world / "runner-nginx.conf", home / "templates" / "nginx")
    # Template text: nginx -t, as root, opens (creates) the log; that is the template's own choice.
    args = ["--site", "a", "--template", "literal.conf.j2", "--no-reload", "--vars", "{}"]
    done = run_wrapper(conf, *args)
    assert done.returncode == 0 and literal.stat().st_uid == 0, done.stdout + done.stderr
    before = (nginx.sites / "a.conf").read_bytes()
    # From a value, even a well-typed path: refused, before nginx is asked.
    args = [
        "--site",
        "a",
        "--template",
        "chosen.conf.j2",
        "--no-reload",
        "--vars",
        json.dumps({"log": str(chosen)}),
    ]
    done = run_wrapper(conf, *args)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"chosen.conf.j2, as rendered, line 3: refusing '{chosen}' in access_log" in done.stdout, (
        done.stdout
    )
    assert f"$ {NGINX}" not in done.stderr and not chosen.exists()
    assert (nginx.sites / "a.conf").read_bytes() == before


# The README's nginx location for the status page --------------------------------------------------------


def readme_nginx_locations(port: int) -> str:
    """The nginx block of the README's install steps, pointed at ``port``."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```nginx\n(.*?location /runner/ \{.*?)```", readme, re.S)
    assert block, "the README's nginx example with the status page's location"
    assert "http://127.0.0.1:3400" in block.group(1)
    return block.group(1).replace("http://127.0.0.1:3400", f"http://127.0.0.1:{port}")


def test_the_readmes_nginx_locations_serve_the_endpoint_and_the_status_page_with_its_live_events(
    world: Path, nginx: Nginx
) -> None:
    from ui_site import PASSWORD, USER, basic, write_users

    home = world / "home"
    env = runner_env(home, RUNNER_UI_PATH="/runner")
    upgraded = run_cli("db", "upgrade", env=env)
    assert upgraded.returncode == 0, upgraded.stderr
    write_users(home / "ui-users", {USER: PASSWORD})
    server = Server(home, env, command="serve")
    try:
        front = free_port()
        (nginx.sites / "runner.conf").write_text(
            f"server {{\n    listen 127.0.0.1:{front};\n{readme_nginx_locations(server.port)}}}\n"
        )
        reloaded = subprocess.run(
            ["runuser", "-u", NGINX_USER, "--", *nginx.argv, "-s", "reload"], capture_output=True, text=True
        )
        assert reloaded.returncode == 0, reloaded.stderr

        def through(path: str, method: str = "GET", **headers: str) -> http.client.HTTPResponse:
            connection = http.client.HTTPConnection("127.0.0.1", front, timeout=10)
            connection.request(method, path, headers=headers)
            return connection.getresponse()

        def page_status() -> int | None:
            with contextlib.suppress(OSError):
                return through("/runner/", Authorization=basic(USER, PASSWORD)).status
            return None

        wait_for(lambda: page_status() == 200, "the page through nginx", details=lambda: server.output())
        page = through("/runner/runs", Authorization=basic(USER, PASSWORD))
        assert page.status == 200 and 'href="/runner/static/style.css"' in page.read().decode()
        assert page.getheader("Content-Security-Policy", "").startswith("default-src 'none'")
        assert through("/runner/").status == 401
        assert through("/github-webhook", method="POST").status == 401  # the endpoint's: no signature
        # The client's address is the one nginx saw, whatever X-Forwarded-For it sent.
        before = len(server.output())
        wrong = through("/runner/", Authorization=basic(USER, "wrong"), **{"X-Forwarded-For": "198.51.100.7"})
        assert wrong.status == 401
        logged = server.output()[before:]
        assert f"failed login to the status page from 127.0.0.1 as '{USER}'" in logged, logged
        assert "198.51.100.7" not in logged

        # The live events pass through as they come: a run's log appearing is told at once.
        events = through("/runner/events", Authorization=basic(USER, PASSWORD))
        assert events.status == 200 and events.getheader("Content-Type", "").startswith("text/event-stream")
        assert events.readline() == b": listening\n"
        (home / "logs" / "app").mkdir(parents=True, exist_ok=True)
        (home / "logs" / "app" / "7.log").write_text("")
        started = time.monotonic()
        lines = [events.readline() for _ in range(3)]
        assert b"event: run\n" in lines and time.monotonic() - started < 5, lines
        events.close()
    finally:
        server.stop()
