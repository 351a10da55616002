"""Only the web process can read the webhook secret: tried with real processes after a real ``runner setup``.

A throw-away instance (see tests/test_setup.py) is set up; its web unit is then carried out by hand the way
systemd would (systemd is not PID 1 here): as the unit's User=, Group= and SupplementaryGroups=, with its
UMask=, its Environment= and EnvironmentFile=, and the secret where LoadCredential= would put it (a
directory only the web user may enter, holding a copy only it may read). A real ``runner serve`` accepts a
signed delivery into queues/main; a real ``runner work``, as the deploy user, routes it, removes it and runs
a step that tries to read the secret every way it could. The database is a PostgreSQL one, which the web
user reaches as a role of its own with only the rights the README lists.

Needs root, useradd, setfacl, visudo, setpriv and PostgreSQL, like tests/test_setup.py.
"""

from __future__ import annotations

import grp
import http.client
import json
import os
import pwd
import shlex
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support import PAYLOADS, free_port, postgres_database, require, run_cli, sign, wait_for
from test_setup import Instance, let_run_python, new_instance
from test_units import Unit, one, parse

PUSH = PAYLOADS / "push" / "with-new-branch.payload.json"  # refs/heads/master of Codertocat/Hello-World
PIPELINE = """\
on: {repository: Codertocat/Hello-World, events: [push], branches: [master]}
workdir: checkout
steps:
  - run: |
      for f in @SECRET@ @CREDENTIAL@ /proc/@WEB_PID@/environ; do
        if out=$(cat "$f" 2>&1); then echo "read $f: $out"; else echo "refused $f: $out"; fi
      done
      env | grep '^RUNNER_SECRET' || echo "no RUNNER_SECRET in the step's environment"
"""


def sql(url: str, *statements: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            for statement in statements:
                connection.execute(sa.text(statement))
    finally:
        engine.dispose()


def env_file_settings(path: Path) -> dict[str, str]:
    """What systemd's EnvironmentFile= takes from the env file setup wrote (plain KEY=value lines)."""
    settings = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    return settings


@dataclass
class Deployed:
    instance: Instance
    database: str  # the worker's URL
    web_database: str  # the web user's own role
    credentials: Path  # stands in for $CREDENTIALS_DIRECTORY
    secret: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.instance.name

    @property
    def home(self) -> Path:
        return self.instance.home

    @property
    def secret_file(self) -> Path:
        return self.instance.etc_dir / "secret"

    @property
    def web_unit(self) -> Unit:
        return parse((self.instance.units_dir / f"{self.name}-web.service").read_text())

    def settings(self) -> dict[str, str]:
        env_file = Path(one(self.web_unit, "EnvironmentFile"))
        return env_file_settings(self.instance.prefix / env_file.relative_to("/"))

    def web_argv(self, *argv: str | Path) -> list[str]:
        """``argv`` as the web unit's user, groups and supplementary groups."""
        unit = self.web_unit
        user, group = pwd.getpwnam(one(unit, "User")), grp.getgrnam(one(unit, "Group"))
        groups = ",".join(str(grp.getgrnam(g).gr_gid) for g in one(unit, "SupplementaryGroups").split())
        ids = [f"--reuid={user.pw_uid}", f"--regid={group.gr_gid}", f"--groups={groups}"]
        return ["setpriv", *ids, "--", *map(str, argv)]

    def web_env(self, port: int) -> dict[str, str]:
        """The web unit's environment: Environment= (with %d), then EnvironmentFile=, which wins."""
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONDONTWRITEBYTECODE": "1"}
        for value in self.web_unit["Service"].get("Environment", []):
            for item in shlex.split(value):
                key, _, setting = item.partition("=")
                env[key] = setting.replace("%d", str(self.credentials))
        env.update(self.settings())
        env.update(RUNNER_DATABASE_URL=self.web_database, RUNNER_PORT=str(port))
        return env

    def worker_env(self, **extra: str) -> dict[str, str]:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(self.home), "USER": self.name}
        env.update(LOGNAME=self.name, PYTHONDONTWRITEBYTECODE="1", **self.settings())
        env.update(RUNNER_DATABASE_URL=self.database, **extra)
        return env

    def start(self, argv: list[str], env: dict[str, str], umask: int, log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            process = subprocess.Popen(
                argv, env=env, cwd=self.home, umask=umask, stdout=out, stderr=subprocess.STDOUT
            )
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


@pytest.fixture(scope="module")
def deployed() -> Iterator[Deployed]:
    require(PUSH.is_file(), f"{PUSH} is missing")
    with new_instance() as instance:
        instance.set_up()
        name = instance.name
        web_user = f"{name}-web"
        cleanup = instance.cleanup
        let_run_python(name, cleanup)
        let_run_python(web_user, cleanup)

        # The web user's own role, which only reads the schema's revision (what the README grants it).
        database = cleanup.enter_context(postgres_database())
        import sqlalchemy as sa

        url = sa.engine.make_url(database)
        admin = url.set(database="postgres").render_as_string(hide_password=False)
        # Undone in reverse: its grants, then the role, then (postgres_database) the database.
        cleanup.callback(sql, admin, f'DROP ROLE IF EXISTS "{web_user}"')
        sql(admin, f'CREATE ROLE "{web_user}" LOGIN')
        cleanup.callback(sql, database, f'REVOKE ALL ON ALL TABLES IN SCHEMA public FROM "{web_user}"')
        done = run_cli("db", "upgrade", env={"PATH": os.environ["PATH"], "RUNNER_DATABASE_URL": database})
        assert done.returncode == 0, done.stdout + done.stderr
        sql(database, f'GRANT SELECT ON alembic_version TO "{web_user}"')
        web_database = url.set(username=web_user, password=None).render_as_string(hide_password=False)

        # What LoadCredential= makes: a directory and a copy of the secret, the unit's user's alone.
        credentials = instance.base / "credentials"
        credentials.mkdir()
        secret = (instance.etc_dir / "secret").read_text()
        (credentials / "secret").write_text(secret)
        web = pwd.getpwnam(web_user)
        for path, mode in ((credentials / "secret", 0o400), (credentials, 0o500)):
            os.chown(path, web.pw_uid, web.pw_gid)
            path.chmod(mode)

        deployed = Deployed(instance, database, web_database, credentials, secret.strip())
        cleanup.callback(deployed.stop_all)
        yield deployed


def entries(queue: Path) -> list[Path]:
    return sorted(path for path in queue.glob("*.json"))


def test_a_step_cannot_read_the_secret_that_the_web_process_verifies_with(deployed: Deployed) -> None:
    main = deployed.home / "queues" / "main"
    port = free_port()
    web = deployed.start(
        deployed.web_argv(*shlex.split(one(deployed.web_unit, "ExecStart"))),
        deployed.web_env(port),
        int(one(deployed.web_unit, "UMask"), 8),
        deployed.instance.base / "serve.log",
    )
    serve_log = deployed.instance.base / "serve.log"

    def answer(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            return connection.getresponse().status
        except OSError:
            return 0
        finally:
            connection.close()

    def healthy() -> bool:
        assert web.poll() is None, f"runner serve exited {web.returncode}:\n{serve_log.read_text()}"
        return answer("GET", "/healthz") == 200

    wait_for(healthy, "runner serve, as the web user, to answer /healthz", details=serve_log.read_text)

    body = PUSH.read_bytes()
    headers = {"Content-Type": "application/json", "X-GitHub-Event": "push", "X-GitHub-Hook-ID": "1"}
    # Signed with the secret setup generated: the web process read it from the credential's copy.
    forged = answer("POST", "/github-webhook", body, {**headers, "X-GitHub-Delivery": str(uuid.uuid4()),
                    "X-Hub-Signature-256": sign(body, "not the secret")})  # fmt: skip
    assert forged == 403
    delivery = str(uuid.uuid4())
    signed = {**headers, "X-GitHub-Delivery": delivery, "X-Hub-Signature-256": sign(body, deployed.secret)}
    assert answer("POST", "/github-webhook", body, signed) == 202, serve_log.read_text()

    [entry] = entries(main)
    st = entry.stat()
    # The web user's file, the deploy user's group (setgid directory), readable by that group alone.
    assert (st.st_uid, st.st_gid) == (
        pwd.getpwnam(f"{deployed.name}-web").pw_uid,
        grp.getgrnam(deployed.name).gr_gid,
    )
    assert stat.S_IMODE(st.st_mode) == 0o640
    entry_bytes = entry.read_bytes()
    assert json.loads(entry_bytes)["delivery"] == delivery

    # The pipeline names the web process, now that it runs; the worker starts after it is in place.
    script = PIPELINE.replace("@WEB_PID@", str(web.pid)).replace("@SECRET@", str(deployed.secret_file))
    script = script.replace("@CREDENTIAL@", str(deployed.credentials / "secret"))
    pipeline = deployed.home / "pipelines" / "probe.yaml"
    pipeline.write_text(script)
    pipeline.chmod(0o644)
    workdir = deployed.home / "checkout"
    workdir.mkdir()
    account = deployed.instance.account
    os.chown(workdir, account.uid, account.gid)

    worker_log = deployed.instance.base / "work.log"
    deployed.start(
        account.argv(sys.executable, "-m", "runner", "work"), deployed.worker_env(), 0o022, worker_log
    )

    def finished() -> list[dict[str, object]] | None:
        done = run_cli("runs", "--json", env={"PATH": os.environ["PATH"], **deployed.worker_env()})
        runs = json.loads(done.stdout) if done.returncode == 0 and done.stdout.strip() else []
        return runs if runs and runs[0]["status"] in ("succeeded", "failed") else None

    [run] = wait_for(finished, "the probe's run to finish", timeout=60, details=worker_log.read_text)
    assert run["status"] == "succeeded", worker_log.read_text()
    # The worker, as the deploy user, took the web user's entry out of the main queue.
    assert entries(main) == []
    assert entries(main / "failed") == [], "the worker could not route it"

    output = Path(str(run["log"])).read_text()
    assert deployed.secret not in output
    for path in (deployed.secret_file, deployed.credentials / "secret", Path(f"/proc/{web.pid}/environ")):
        assert f"refused {path}: cat: {path}: Permission denied" in output, output
    assert "no RUNNER_SECRET in the step's environment" in output, output
    assert deployed.secret not in worker_log.read_text() + serve_log.read_text()

    # The deploy user may remove entries from the main queue, so it can create files there too: one that
    # looks like a delivery is still not taken for a verified one, and nothing of it is lost.
    forged_entry = json.loads(entry_bytes)
    forged_entry["delivery"] = str(uuid.uuid4())
    name = f"{int(entry.name.removesuffix('.json')) + 1:020d}.json"
    done = account.run(
        "/bin/sh", "-c", 'printf %s "$1" > "$2/.forged" && mv "$2/.forged" "$2/$3"', "sh",
        json.dumps(forged_entry), main, name,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    reason = main / "failed" / f"{name}.reason"
    wait_for(reason.is_file, "the router to refuse the deploy user's entry", details=worker_log.read_text)
    assert "not written by the webhook endpoint" in reason.read_text()
    assert (main / "failed" / name).is_file()
    done = run_cli("runs", "--json", env={"PATH": os.environ["PATH"], **deployed.worker_env()})
    assert len(json.loads(done.stdout)) == 1, "a run was made from an entry the endpoint never wrote"


def test_a_main_queue_the_deploy_user_made_itself_is_not_trusted(deployed: Deployed) -> None:
    # The deploy user owns RUNNER_HOME and queues/: it can put a main queue of its own in place of the web
    # user's, and restart the worker (sudo allows that). The worker's unit names the web user, whose
    # entries alone are deliveries, whoever owns the directory.
    deployed.stop_all()  # one worker per home: the previous test's
    worker_unit = parse((deployed.instance.units_dir / f"{deployed.name}-worker.service").read_text())
    unit_env = dict(
        item.split("=", 1)
        for value in worker_unit["Service"].get("Environment", [])
        for item in shlex.split(value)
    )
    assert unit_env.get("RUNNER_WEB_USER") == f"{deployed.name}-web"
    queues, account = deployed.home / "queues", deployed.instance.account
    body = json.loads(PUSH.read_bytes())
    forged = {"event": "push", "delivery": str(uuid.uuid4()), "hook_id": "1", "payload": body}
    name = f"{time.time_ns():020d}.json"
    script = 'mv "$1/main" "$1/main.real" && mkdir -m 2770 "$1/main" && printf %s "$2" > "$1/main/$3"'
    done = account.run("/bin/sh", "-c", script, "sh", queues, json.dumps(forged), name)
    assert done.returncode == 0, done.stderr
    try:
        log = deployed.instance.base / "work-forged.log"
        env = deployed.worker_env(RUNNER_WEB_USER=unit_env["RUNNER_WEB_USER"])
        deployed.start(account.argv(sys.executable, "-m", "runner", "work"), env, 0o022, log)
        reason = queues / "main" / "failed" / f"{name}.reason"
        wait_for(
            reason.is_file, "the router to refuse the deploy user's own main queue", details=log.read_text
        )
        assert "not written by the webhook endpoint" in reason.read_text()
        done = run_cli("deliveries", "--json", env={"PATH": os.environ["PATH"], **env})
        assert forged["delivery"] not in done.stdout, "the forged delivery was recorded as one"
    finally:
        deployed.stop_all()
        subprocess.run(["rm", "-rf", "--", str(queues / "main")], check=True)
        (queues / "main.real").rename(queues / "main")


def test_the_web_user_writes_the_main_queue_and_nothing_else_in_the_home(deployed: Deployed) -> None:
    home = deployed.home
    script = 'touch "$1" && rm "$1"'
    for directory in (home, home / "queues", home / "logs", home / "pipelines"):
        target = directory / f".probe-{uuid.uuid4().hex[:8]}"
        done = subprocess.run(deployed.web_argv("/bin/sh", "-c", script, "sh", target), capture_output=True)
        assert done.returncode != 0 and not target.exists(), f"the web user could write in {directory}"
    target = home / "queues" / "main" / f".probe-{uuid.uuid4().hex[:8]}"
    done = subprocess.run(
        deployed.web_argv("/bin/sh", "-c", script, "sh", target), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    # Nor can it read the secret's file itself: only systemd (root) does, for LoadCredential=.
    done = subprocess.run(deployed.web_argv("cat", deployed.secret_file), capture_output=True, text=True)
    assert done.returncode != 0 and deployed.secret not in done.stdout


# runner doctor, as the deploy user ---------------------------------------------------------------------


@pytest.fixture
def etc_link(deployed: Deployed) -> Iterator[Path]:
    """/etc/NAME, where doctor looks for the secret, pointing at the --prefix setup wrote it under."""
    link = Path("/etc") / deployed.name
    assert not link.exists() and not link.is_symlink()
    link.symlink_to(deployed.instance.etc_dir)
    try:
        yield link / "secret"
    finally:
        link.unlink()


def secret_line(deployed: Deployed, **env: str) -> tuple[bool, str, str]:
    account = deployed.instance.account
    done = account.run(sys.executable, "-m", "runner", "doctor", env=deployed.worker_env(**env))
    lines = [
        line for line in done.stdout.splitlines() if line.split("  ", 1)[-1].strip().startswith("secret:")
    ]
    assert len(lines) == 1, done.stdout + done.stderr
    status, _, message = lines[0].partition("  ")
    return status.strip() == "ok", message.strip().removeprefix("secret: "), done.stdout


def test_doctor_passes_the_secret_check_after_setup(deployed: Deployed, etc_link: Path) -> None:
    ok, message, output = secret_line(deployed)
    assert ok, output
    assert f"{deployed.name} cannot read the webhook secret ({etc_link}: permission denied)" == message


def test_doctor_fails_when_the_deploy_user_can_read_the_secret(deployed: Deployed, etc_link: Path) -> None:
    deployed.secret_file.chmod(0o644)
    try:
        ok, message, output = secret_line(deployed)
    finally:
        deployed.secret_file.chmod(0o600)
    assert not ok, output
    assert f"can read the webhook secret {etc_link}" in message
    assert f"chown root:root {etc_link} && sudo chmod 600 {etc_link}" in message
    assert deployed.secret not in output


@pytest.mark.parametrize("variable", ["RUNNER_SECRET_FILE", "RUNNER_SECRET"])
def test_doctor_fails_when_the_worker_environment_names_a_secret(
    deployed: Deployed, etc_link: Path, variable: str
) -> None:
    value = str(etc_link) if variable == "RUNNER_SECRET_FILE" else "a secret in the env file"
    ok, message, output = secret_line(deployed, **{variable: value})
    assert not ok, output
    assert message.startswith(f"{variable} set in the worker's environment"), message
    assert "delete it from the env file" in message
    assert value not in output or variable == "RUNNER_SECRET_FILE"


# An instance set up before the web user existed ---------------------------------------------------------


def test_setup_moves_an_old_instance_over_and_keeps_its_secret() -> None:
    with new_instance() as instance:
        instance.set_up()
        name, gid = instance.name, grp.getgrnam(instance.name).gr_gid
        uid = pwd.getpwnam(name).pw_uid
        # What the previous setup left: a secret the deploy user's group reads, the env file naming it,
        # a main queue of the deploy user's own, with its lock file and an entry not yet routed.
        secret_file, env_file = instance.etc_dir / "secret", instance.etc_dir / "runner.env"
        os.chown(secret_file, 0, gid)
        secret_file.chmod(0o640)
        before = env_file.read_text()
        env_file.write_text(before + f"RUNNER_SECRET_FILE=/etc/{name}/secret\n")
        main = instance.home / "queues" / "main"
        os.chown(main, uid, gid)
        main.chmod(0o750)
        (main / ".lock").write_text("0" * 20)
        os.chown(main / ".lock", uid, gid)
        secret = secret_file.read_bytes()

        done = instance.set_up()

        lines = done.stdout.splitlines()
        for expected in (
            f"set owner and mode of {secret_file}: done",
            f"remove RUNNER_SECRET_FILE=/etc/{name}/secret from {env_file} "
            "(only the web unit gets the secret): done",
            f"set owner and mode of {main} ({name}-web:{name} 2770): done",
            f"give {main / '.lock'} to {name}-web: done",
        ):
            assert expected in lines, f"{expected!r} not in:\n{done.stdout}"
        assert secret_file.read_bytes() == secret, "setup replaced the secret GitHub has"
        st = secret_file.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o600)
        assert env_file.read_text() == before
        assert (main / ".lock").stat().st_uid == pwd.getpwnam(f"{name}-web").pw_uid
        assert instance.set_up().stdout.splitlines()[-1] == "nothing to change: everything is set up"


def test_setup_refuses_an_env_file_that_holds_the_secret_and_keeps_it() -> None:
    with new_instance() as instance:
        instance.set_up()
        env_file = instance.etc_dir / "runner.env"
        text = env_file.read_text() + "RUNNER_SECRET=the admin's secret\n"
        env_file.write_text(text)
        done = instance.setup()
        assert done.returncode != 0, done.stdout
        assert f"{env_file} sets RUNNER_SECRET:" in done.stderr, done.stderr
        assert f"Put the secret into /etc/{instance.name}/secret" in done.stderr
        assert "the admin's secret" not in done.stdout + done.stderr
        assert env_file.read_text() == text, "setup lost a line of the admin's env file"


def test_a_secret_file_nobody_can_read_stops_only_serve(tmp_path: Path) -> None:
    # The worker's commands never read the secret: an unreadable RUNNER_SECRET_FILE must not stop them.
    missing = tmp_path / "no-such-secret"
    env = {"PATH": os.environ["PATH"], "RUNNER_HOME": str(tmp_path), "RUNNER_SECRET_FILE": str(missing)}
    assert run_cli("db", "upgrade", env=env).returncode == 0
    done = run_cli("runs", env=env)
    assert done.returncode == 0, done.stderr
    done = run_cli("serve", "--port", "0", env=env, timeout=30)
    assert done.returncode == 1
    assert f"RUNNER_SECRET_FILE={missing}: cannot read it" in done.stderr, done.stderr
