"""Pipeline secrets, end to end: real ``runner serve`` and ``runner work`` processes run pipelines whose
``secrets:`` name files on disk; what a step prints of a secret is ``***`` in the run's log, its records, the
status page and a notification (a real webhook receiver on loopback). Also ``runner validate``'s refusals
and warnings, and ``runner doctor``'s checks of the files.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Row
from support import run_cli, runner_env
from test_notify import Receiver
from test_worker import ZERO_COMMIT, Rig, fake_commit, out_lines, push_payload
from ui_site import PASSWORD, USER, basic, request, write_users

from runner.masking import Masker

# Values no other text of a run holds: wherever one shows, it leaked.
VALUE = "s3cr3t-Value-9f2c"
OTHER = "0ther-s3cret-77aa"
MULTI = "first-line-of-key\nsecond-line-of-key"


@pytest.fixture
def rig(tmp_path: Path, database_url: str) -> Iterator[Rig]:
    rig = Rig(tmp_path, database_url)
    try:
        yield rig
    finally:
        rig.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    try:
        yield receiver
    finally:
        receiver.close()


def secret_file(rig: Rig, name: str, value: str, mode: int = 0o600) -> Path:
    """A secret's file as the deploy user keeps it: its own, readable by nobody else."""
    directory = rig.tmp / "secrets"
    directory.mkdir(mode=0o700, exist_ok=True)
    path = directory / name
    path.write_text(value + "\n")
    path.chmod(mode)
    return path


def deploy(rig: Rig, n: int, status: str, repository: str = "acme/app") -> Row[Any]:
    """Push fake commit ``n`` to main of ``repository``; its run, once it ended in ``status``."""
    payload = push_payload("refs/heads/main", ZERO_COMMIT, [(fake_commit(n), f"commit {n}")], repository)
    [run] = rig.runs_of(rig.deliver("push", payload), [status])
    return run


def everything_of(rig: Rig, run: Row[Any]) -> str:
    """Every text runner keeps of a run: its log, its reason, its steps' names and details."""
    parts = [rig.log_of(run), run.reason or ""]
    parts += [f"{s.name} {s.detail or ''}" for s in rig.steps(run.id)]
    return "\n".join(parts)


PRINTS = """
    on: {repository: acme/app, branches: [main]}
    workdir: <WORKDIR>
    secrets:
      TOKEN: <TOKEN>
      KEY: <KEY>
    env:
      DATABASE_URL: "postgres://app:{{ secrets.TOKEN }}@db.internal/app"
    steps:
      - name: prints
        run: |
          echo "$TOKEN"
          echo "the token is $TOKEN, keep it"
          echo "$TOKEN twice: $TOKEN"
          echo "$KEY"
          printf '%s\\n' "$KEY" | tail -n 1
          echo "url $DATABASE_URL"
          echo "hook <HOOK>"
          printf '%s' "$TOKEN" > seen-top
          printf '%s' "$DATABASE_URL" > seen-url
      - name: overridden
        secrets: {TOKEN: <OTHER>}
        run: printf '%s' "$TOKEN" > seen-step
      - name: fails
        run: echo "last words $TOKEN" && exit 3
    notify:
      - webhook: <HOOK>
"""


def test_a_printed_secret_is_masked_in_the_log_the_records_the_page_and_the_notification(
    rig: Rig, receiver: Receiver
) -> None:
    workdir = rig.workdir("app")
    rig.pipeline(
        "app",
        PRINTS,
        WORKDIR=workdir,
        TOKEN=secret_file(rig, "token", VALUE),
        KEY=secret_file(rig, "key", MULTI),
        OTHER=secret_file(rig, "other", OTHER),
        HOOK=receiver.url("/hook"),
    )
    rig.start_worker()
    run = deploy(rig, 1, "failed")

    # The steps got the values: the pipeline's, in env: through {{ secrets.TOKEN }}, the step's own over it.
    assert (workdir / "seen-top").read_text() == VALUE
    assert (workdir / "seen-url").read_text() == f"postgres://app:{VALUE}@db.internal/app"
    assert (workdir / "seen-step").read_text() == OTHER

    # Alone on a line, inside a longer one, twice on one line; a multi-line secret whole and line by line.
    assert out_lines(rig.log_of(run)) == [
        "***",
        "the token is ***, keep it",
        "*** twice: ***",
        "***",
        "***",
        "***",
        "url postgres://app:***@db.internal/app",
        "hook ***",
        "last words ***",
    ], rig.log_of(run)
    kept = everything_of(rig, run)
    for value in (VALUE, OTHER, *MULTI.splitlines()):
        assert value not in kept, kept
    assert run.reason == "step 3 (fails) failed: exited with status 3"

    # The notification's last lines come from the log: masked.
    [failure] = receiver.wait_bodies("/hook", 1, rig)
    sent = json.dumps(failure)
    assert "last words ***" in failure["log_tail"][-2], failure["log_tail"]
    assert VALUE not in sent and "first-line-of-key" not in sent, sent

    # The status page's run and its log.
    write_users(rig.home / "ui-users", {USER: PASSWORD})
    for path in (f"/runs/{run.id}", f"/runs/{run.id}/log"):
        page = request(rig.server.port, path, {"Authorization": basic(USER, PASSWORD)})
        assert page.status == 200, (path, page.status, page.text[:500])
        assert "***" in page.text and VALUE not in page.text and "second-line-of-key" not in page.text


def test_a_secret_that_cannot_be_used_fails_the_run_naming_it_never_its_value(rig: Rig) -> None:
    workdir = rig.workdir("app")
    short = secret_file(rig, "short", "x9q")
    missing = rig.tmp / "secrets" / "missing"
    one = """
        on: {repository: acme/<NAME>, branches: [main]}
        workdir: <WORKDIR>
        steps:
          - run: touch ran
            secrets: {<SECRET>: <FILE>}
    """
    rig.pipeline("short", one, NAME="short", WORKDIR=workdir, SECRET="SHORT", FILE=short)
    rig.pipeline("gone", one, NAME="gone", WORKDIR=workdir, SECRET="GONE", FILE=missing)
    rig.start_worker()

    run = deploy(rig, 1, "failed", "acme/short")
    assert run.reason == (
        f"secret SHORT: the value in {short} is shorter than 4 characters, too short to be masked in logs "
        "without masking everything: use a longer secret"
    ), run.reason
    assert "x9q" not in everything_of(rig, run)
    assert rig.steps(run.id) == []

    run = deploy(rig, 2, "failed", "acme/gone")
    assert run.reason == f"secret GONE: cannot read {missing}: No such file or directory", run.reason
    assert rig.steps(run.id) == [] and not (workdir / "ran").exists()


def test_a_credential_systemd_loads_is_read_from_the_workers_credentials_directory(rig: Rig) -> None:
    workdir = rig.workdir("app")
    credentials = rig.tmp / "credentials"
    credentials.mkdir(mode=0o500)
    (credentials / "api-token").write_text(VALUE)
    (credentials / "api-token").chmod(0o400)
    rig.pipeline(
        "app",
        """
        on: {repository: acme/app, branches: [main]}
        workdir: <WORKDIR>
        secrets: {API_TOKEN: $CREDENTIALS_DIRECTORY/api-token}
        steps:
          - run: printf '%s' "$API_TOKEN" > seen && echo "$API_TOKEN"
        """,
        WORKDIR=workdir,
    )
    rig.start_worker(CREDENTIALS_DIRECTORY=str(credentials))
    run = deploy(rig, 1, "succeeded")
    assert (workdir / "seen").read_text() == VALUE
    assert out_lines(rig.log_of(run)) == ["***"]
    # A file loaded by systemd is checked where the unit runs; validate has nothing to say of it here.
    done = run_cli("validate", env=runner_env(rig.home))
    assert done.returncode == 0 and "warning" not in done.stderr, done.stderr


BAD = """\
on: {repository: acme/app, branches: [main]}
workdir: app
secrets:
  TOKEN: /etc/runner/token
  RUNNER_TOKEN: /etc/runner/token
  lower: /etc/runner/token
  RELATIVE: keys/token
  NESTED: $CREDENTIALS_DIRECTORY/a/b
  PORT: /etc/runner/port
env:
  PORT: "8080"
  FINE: "{{ secrets.TOKEN }}"
steps:
  - run: echo {{ secrets.TOKEN }}
  - run: [echo, "{{ secrets.TOKEN }}"]
  - run: "true"
    when: {if: "secrets.TOKEN == 'x'"}
  - git: {remote: "https://x:{{ secrets.TOKEN }}@github.com/acme/app.git"}
  - run: "true"
    env: {ALSO_FINE: "a {{ secrets.TOKEN }}", TOKEN: "x"}
  - run: "true"
    env: {UNKNOWN: "{{ secrets.TOKN }}"}
"""


def test_validate_refuses_secrets_outside_env_and_nginx_vars_and_bad_names_or_paths(tmp_path: Path) -> None:
    (tmp_path / "pipelines").mkdir()
    path = tmp_path / "pipelines" / "app.yaml"
    path.write_text(BAD)
    done = run_cli("validate", env=runner_env(tmp_path))
    assert done.returncode == 1
    said = done.stdout.splitlines()
    where = "secrets may be used only in env: values and nginx vars"
    expected = [
        f"{path}:5:3: secrets.RUNNER_TOKEN: RUNNER_TOKEN: names starting with RUNNER_ are runner's own",
        f"{path}:6:3: secrets: 'lower' is not a valid name",
        f"{path}:7:13: secrets.RELATIVE: must be an absolute path",
        f"{path}:8:11: secrets.NESTED: must name one credential",
        f"{path}:9:3: secrets.PORT: PORT is also set by env",
        f"{path}:14:15: step 1 run: unknown name 'secrets'; {where}",
        f"{path}:15:18: step 2 run item 2: unknown name 'secrets'; {where}",
        f"{path}:17:16: step 3 when.if: unknown name 'secrets'; {where}",
        f"{path}:18:30: step 4 git.remote: unknown name 'secrets'; {where}",
        f"{path}:20:47: step 5 env.TOKEN: TOKEN is one of the pipeline's secrets",
        f"{path}:22:20: step 6 env.UNKNOWN: secrets.TOKN is not one of step 6's secrets (TOKEN, ",
    ]
    for line in expected:
        assert any(s.startswith(line) for s in said), f"{line!r} not in:\n" + "\n".join(said)
    assert len(said) == len(expected), "\n".join(said)


def test_validate_and_doctor_warn_of_a_secret_file_others_may_read(rig: Rig) -> None:
    loose = secret_file(rig, "loose", VALUE, mode=0o644)
    tight = secret_file(rig, "tight", OTHER, mode=0o600)
    rig.pipeline(
        "app",
        """
        on: {repository: acme/app, branches: [main]}
        workdir: <WORKDIR>
        secrets: {LOOSE: <LOOSE>, TIGHT: <TIGHT>}
        steps:
          - run: "true"
        """,
        WORKDIR=rig.workdir("app"),
        LOOSE=loose,
        TIGHT=tight,
    )
    done = rig.cli("validate")
    warnings = [line for line in done.stderr.splitlines() if "warning" in line]
    assert warnings == [
        f"{rig.home / 'pipelines' / 'app.yaml'}: warning: secret LOOSE: {loose} others may read or write it "
        f"(mode 0644): chmod o-rwx,g-w {loose}"
    ], done.stderr

    doctor = run_cli("doctor", env=rig.env).stdout.splitlines()
    assert (
        f"FAIL  secret LOOSE of app: {loose} others may read or write it (mode 0644): chmod o-rwx,g-w {loose}"
        in doctor
    ), doctor
    assert any(line.startswith("ok    secret TIGHT of app: ") for line in doctor), doctor
    assert VALUE not in "\n".join(doctor) and OTHER not in "\n".join(doctor)


def test_the_masker_replaces_the_longest_value_first_and_ignores_values_too_short_to_mask() -> None:
    process = Masker(["process-wide-token"])
    masker = Masker(["abcd1234", "abcd1234-longer", "abc", "two-lines\nok\nthird-line"], parent=process)
    assert masker.mask("x abcd1234-longer y abcd1234 z") == "x *** y *** z"
    # A multi-line value whole, and each of its lines of 4 characters or more alone; "abc" masks nothing.
    assert masker.mask("two-lines\nok\nthird-line / third-line / ok / abc") == "*** / *** / ok / abc"
    assert masker.mask_bytes(b"token process-wide-token") == b"token ***"
    process.discard("process-wide-token")
    assert masker.mask("process-wide-token") == "process-wide-token"


def test_a_secret_file_that_is_a_fifo_or_a_directory_is_refused_at_once(tmp_path: Path) -> None:
    import os
    import threading

    from runner.pipeline_secrets import SecretError, read_secret

    fifo, directory = tmp_path / "fifo", tmp_path / "directory"
    os.mkfifo(fifo)
    directory.mkdir()
    said: list[str] = []

    def read(path: Path) -> None:
        try:
            read_secret("TOKEN", str(path), None)
        except SecretError as exc:
            said.append(str(exc))

    # A FIFO with no writer would hold open(2), and with it the run's start (and runner doctor), forever.
    reader = threading.Thread(target=read, args=(fifo,), daemon=True)
    reader.start()
    reader.join(5)
    if reader.is_alive():
        with open(fifo, "wb"):  # lets the stuck reader go
            pass
    assert said == [f"secret TOKEN: {fifo} is not a regular file (a FIFO, a device, a directory?)"]
    read(directory)
    assert said[1] == f"secret TOKEN: {directory} is not a regular file (a FIFO, a device, a directory?)"


def test_a_secret_of_blanks_is_refused_as_too_short(tmp_path: Path) -> None:
    from runner.pipeline_secrets import SecretError, read_secret

    # Four spaces would mask every indentation of every log line: no more a secret than "abc".
    blanks = tmp_path / "blanks"
    blanks.write_text("    \n")
    with pytest.raises(SecretError, match="shorter than 4 characters"):
        read_secret("BLANK", str(blanks), None)
