"""``runner doctor`` run as the deploy user after a real ``runner setup``.

One throw-away instance (see tests/test_setup.py) with a pipeline that restarts a unit and writes an nginx
site: setup writes the unit's sudoers rule, the sudoers file is installed for real into /etc/sudoers.d, the
SQLite database in the user's home is migrated with ``runner db upgrade`` as that user. Doctor must then pass;
each test after that breaks one precondition, checks that doctor fails naming it and the fix, and puts it back
(also when the test fails).

Needs root, sudo, visudo, setfacl and setpriv, like tests/test_setup.py.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import ROOT
from test_setup import (
    NGINX_WRAPPER,
    Instance,
    check,
    ensure_system_wrapper,
    install_sudoers,
    let_run_python,
    need_root,
    new_instance,
    restore_acl,
)

from runner import sudo

SHIPPED_TEMPLATE = ROOT / "templates" / "nginx" / "static.conf.j2"
TINY_TEMPLATE = "server {\n    listen 127.0.0.1:8080;\n    server_name {{ server_name }};\n}\n"
PIPELINE = """\
on: {repository: acme/app, events: [push], branches: [main]}
workdir: checkout
steps:
  - nginx:
      site: NAME-app
      template: static.conf.j2
      vars: {server_name: app.example.com, root: /srv/app, tls: false}
  - systemctl: {action: restart, unit: NAME-app.service}
"""


@dataclass
class Deployed:
    instance: Instance
    sudoers: bytes

    @property
    def name(self) -> str:
        return self.instance.name

    @property
    def home(self) -> Path:
        return self.instance.home

    @property
    def templates(self) -> Path:
        return self.instance.etc_dir / "templates" / "nginx"

    @property
    def database(self) -> str:
        return f"sqlite:///{self.home / 'runner.db'}"

    def env(self, **extra: str) -> dict[str, str]:
        settings = {
            "RUNNER_DATABASE_URL": self.database,
            "RUNNER_NGINX_SITES_DIR": str(self.instance.sites),
            # Where setup installed the templates (under --prefix), as runner.env would name them.
            "RUNNER_NGINX_TEMPLATES": str(self.templates),
        }
        env = self.instance.account.env(**{**settings, **extra})
        # The worker's environment, as the units give it: the webhook secret is the web unit's alone.
        if "RUNNER_SECRET" not in extra:
            del env["RUNNER_SECRET"]
        return env

    def runner(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return self.instance.account.run(sys.executable, "-m", "runner", *args, env=self.env(**env))


@pytest.fixture(scope="module")
def deployed() -> Iterator[Deployed]:
    need_root("sudo")
    with new_instance() as instance:
        # What the admin puts in place before running setup: the pipeline and its template.
        pipelines, templates = instance.home / "pipelines", instance.home / "templates" / "nginx"
        pipelines.mkdir(parents=True)
        templates.mkdir(parents=True)
        (pipelines / "app.yaml").write_text(PIPELINE.replace("NAME", instance.name))
        template = templates / "static.conf.j2"
        if SHIPPED_TEMPLATE.is_file():
            shutil.copyfile(SHIPPED_TEMPLATE, template)
        else:
            template.write_text(TINY_TEMPLATE)
        instance.set_up()
        sudoers = instance.sudoers_file.read_bytes()
        install_sudoers(sudoers, instance.name, instance.cleanup)
        # Doctor checks the wrapper sudo would run, at the path the sudoers file names.
        ensure_system_wrapper(instance.cleanup, NGINX_WRAPPER)
        let_run_python(instance.name, instance.cleanup)
        deployed = Deployed(instance, sudoers)
        done = deployed.runner("db", "upgrade")
        assert done.returncode == 0, done.stdout + done.stderr
        yield deployed


@dataclass(frozen=True)
class Line:
    ok: bool
    name: str
    message: str


@dataclass
class Report:
    returncode: int
    lines: list[Line]
    output: str

    def failed(self) -> list[Line]:
        return [line for line in self.lines if not line.ok]

    def named(self, name: str) -> list[Line]:
        found = [line for line in self.lines if line.name == name]
        assert found, f"doctor printed no {name!r} check:\n{self.output}"
        return found


def doctor(deployed: Deployed, **env: str) -> Report:
    done = deployed.runner("doctor", **env)
    lines = []
    for text in done.stdout.splitlines()[:-1]:  # the last line counts what failed
        status, _, rest = text.partition("  ")
        name, _, message = rest.strip().partition(": ")
        assert status.strip() in ("ok", "FAIL"), f"not a check line: {text!r}\n{done.stdout}"
        lines.append(Line(status.strip() == "ok", name, message))
    return Report(done.returncode, lines, done.stdout + done.stderr)


def fails_only(report: Report, name: str) -> list[Line]:
    """The lines of check ``name``, which must fail, and fail alone: one broken thing, one FAIL."""
    assert report.returncode == 1, report.output
    lines = report.named(name)
    assert all(not line.ok for line in lines), report.output
    assert {line.name for line in report.failed()} == {name}, report.output
    return lines


@pytest.fixture
def lane_queue(deployed: Deployed) -> Iterator[None]:
    """The pipeline's queue, as the worker leaves it once it has routed a delivery.

    The tests that break one precondition start from a runner that has worked, so that each sees only the
    failure it causes; test_doctor_passes_right_after_setup covers the state setup leaves.
    """
    queue = deployed.home / "queues" / "app"
    done = deployed.instance.account.run("mkdir", "-p", queue)
    assert done.returncode == 0, done.stderr
    yield
    shutil.rmtree(queue, ignore_errors=True)


def test_doctor_passes_right_after_setup(deployed: Deployed) -> None:
    assert not (deployed.home / "queues" / "app").exists(), "a test left the pipeline's queue behind"
    report = doctor(deployed)
    assert report.returncode == 0, report.output
    assert report.failed() == [], report.output
    assert report.output.splitlines()[-1] == "all checks passed"
    messages = {(line.name, line.message) for line in report.lines}
    assert (
        "sudo /usr/bin/systemctl",
        f"may run `/usr/bin/systemctl restart {deployed.name}-app.service`",
    ) in (messages)
    assert (f"sudo {NGINX_WRAPPER}", f"may run `{NGINX_WRAPPER}`") in messages
    nobody = f"is not writable by {deployed.name}: only runner-nginx, as root"
    assert ("nginx sites", f"{deployed.instance.sites} {nobody}") in messages
    assert ("nginx templates", f"{deployed.templates} {nobody}") in messages
    assert any(name == "sudo scope" for name, _ in messages)


@pytest.mark.usefixtures("lane_queue")
def test_doctor_passes_once_the_worker_has_run(deployed: Deployed) -> None:
    report = doctor(deployed)
    assert report.returncode == 0, report.output
    assert all(line.ok for line in report.lines), report.output


@pytest.mark.usefixtures("lane_queue")
def test_a_missing_sudo_right_names_the_rule(deployed: Deployed) -> None:
    installed = Path("/etc/sudoers.d") / deployed.name
    with contextlib.ExitStack() as restore:
        installed.unlink()
        restore.callback(install_sudoers, deployed.sudoers, deployed.name, deployed.instance.cleanup)
        report = doctor(deployed)
    assert {line.name for line in report.failed()} == {"sudo /usr/bin/systemctl", f"sudo {NGINX_WRAPPER}"}
    [nginx_line] = report.named(f"sudo {NGINX_WRAPPER}")
    assert sudo.rule([str(NGINX_WRAPPER)], deployed.name) in nginx_line.message, report.output
    lines = report.named("sudo /usr/bin/systemctl")
    wanted = sudo.rule(["/usr/bin/systemctl", "restart", f"{deployed.name}-app.service"], deployed.name)
    assert (
        wanted
        == f"{deployed.name} ALL=(root) NOPASSWD: /usr/bin/systemctl restart {deployed.name}-app.service"
    )
    assert any(wanted in line.message for line in lines), report.output


@pytest.mark.usefixtures("lane_queue")
@pytest.mark.parametrize("what", ["nginx sites", "nginx templates"])
def test_write_access_to_nginx_sites_or_templates_is_a_root_equivalent_right(
    deployed: Deployed, what: str
) -> None:
    directory = deployed.instance.sites if what == "nginx sites" else deployed.templates
    with contextlib.ExitStack() as restore:
        # What an older setup did to the sites directory.
        restore.callback(restore_acl, directory, deployed.name)
        check(["setfacl", "-m", f"u:{deployed.name}:rwx", directory])
        report = doctor(deployed)
    [line] = fails_only(report, what)
    assert f"{deployed.name} can write {directory}" in line.message, line.message
    assert "root-equivalent right" in line.message
    assert f"setfacl -R -x u:{deployed.name} {directory}" in line.message


@pytest.mark.usefixtures("lane_queue")
def test_a_recovered_queue_the_deploy_user_cannot_write_fails_with_its_fix(deployed: Deployed) -> None:
    """The catch-up writes the deliveries it recovers into queues/recovered, as the deploy user: a directory
    left root's (made by hand, or by a setup run as root) would stop it at the first outage."""
    recovered = deployed.home / "queues" / "recovered"
    recovered.mkdir(mode=0o755)  # root's: this test runs as root
    try:
        report = doctor(deployed)
    finally:
        recovered.rmdir()
    [line] = fails_only(report, "queue recovered")
    assert f"cannot create a file in {recovered}" in line.message, line.message
    assert f"sudo install -d -o {deployed.name} -g {deployed.name} {recovered}" in line.message


@pytest.mark.usefixtures("lane_queue")
def test_an_unmigrated_database_names_runner_db_upgrade(deployed: Deployed) -> None:
    empty = deployed.home / f"empty-{secrets.token_hex(4)}.db"
    try:
        report = doctor(deployed, RUNNER_DATABASE_URL=f"sqlite:///{empty}")
    finally:
        empty.unlink(missing_ok=True)
    [line] = fails_only(report, "database")
    assert "runner db upgrade" in line.message, line.message
    assert str(empty) in line.message


@pytest.mark.usefixtures("lane_queue")
def test_an_invalid_pipeline_names_the_file_and_runner_validate(deployed: Deployed) -> None:
    broken = deployed.home / "pipelines" / "broken.yaml"
    try:
        broken.write_text("on: [unclosed\n")
        report = doctor(deployed)
    finally:
        broken.unlink(missing_ok=True)
    line = report.named("pipelines")[0]
    assert not line.ok, report.output
    assert str(broken) in line.message and "runner validate" in line.message, line.message
    # The valid pipeline still needs its sudo rights: one broken file must not make them look too wide.
    fails_only(report, "pipelines")


@pytest.mark.usefixtures("lane_queue")
def test_a_sudo_right_wider_than_needed_fails_the_scope_check(deployed: Deployed) -> None:
    with contextlib.ExitStack() as restore:
        install_sudoers(
            f"{deployed.name} ALL=(root) NOPASSWD: /usr/bin/bash\n".encode(),
            f"{deployed.name}-wider",
            restore,
        )
        report = doctor(deployed)
    [line] = fails_only(report, "sudo scope")
    assert "/usr/bin/bash" in line.message, line.message
    assert "/usr/bin/systemctl" not in line.message, line.message
