"""Notifications, end to end: real ``runner serve`` and ``runner work`` processes carrying out real runs, a
webhook receiver (a real HTTP server on loopback, in a thread) and an SMTP server (aiosmtpd, on loopback).

Also the ``notify:`` keys' checks and warnings, and the messages' escaping.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from sqlalchemy import Row, insert
from support import free_port, require, run_cli, runner_env, wait_for
from test_worker import ZERO_COMMIT, Rig, fake_commit, push_payload

from runner import tables
from runner.config_values import read_smtp_url
from runner.loading import load
from runner.notifications import attempts
from runner.notify_messages import Facts, discord, email_subject, slack
from runner.notify_send import SendError, post_webhook, send_email
from runner.store import Store

PUBLIC_URL = "https://runner.example.com"
SERVER_NAME = "test-box"
# The step prints these, then fails when the workdir holds a file named `fail`.
DEPLOY = 'for i in $(seq 1 15); do echo "log line $i"; done; test ! -e fail'
PIPELINE = """
    on: {repository: acme/app, branches: [main]}
    workdir: <WORKDIR>
    steps:
      - name: prepare
        run: echo prepared
      - name: deploy
        run: <DEPLOY>
    notify:
    <NOTIFY>
"""
HOLD = "hold"


class Receiver:
    """A webhook: keeps each request's path and JSON body; answers 200, or what ``answers[path]`` says next
    for that path (a status, or HOLD: keep the request unanswered until ``release``, then answer 500). Per
    path, since a run's targets are sent side by side and may arrive in either order."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, Any]] = []
        self.answers: dict[str, list[int | str]] = {}
        self.holding = threading.Event()
        self.released = threading.Event()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    receiver.requests.append((self.path, json.loads(body)))
                    queued = receiver.answers.get(self.path)
                    answer = queued.pop(0) if queued else 200
                if answer == HOLD:
                    receiver.holding.set()
                    receiver.released.wait(60)
                    answer = 500
                try:
                    self.send_response(int(answer))
                    self.end_headers()
                    self.wfile.write(b"ok")
                except BrokenPipeError:
                    pass  # a held request's sender gave up waiting

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def bodies(self, path: str) -> list[Any]:
        with self.lock:
            return [body for at, body in self.requests if at == path]

    def wait_bodies(self, path: str, count: int, rig: Rig) -> list[Any]:
        return wait_for(
            lambda: found if len(found := self.bodies(path)) >= count else None,
            f"{count} request(s) to {path}",
            details=lambda: f"{rig.details()}\nreceived: {self.requests}\nworker: {rig.workers[-1].output()}",
        )

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    rig = Rig(tmp_path, f"sqlite:///{tmp_path / 'runner.db'}")
    try:
        yield rig
    finally:
        rig.close()


@pytest.fixture
def rig_on(database_url: str, tmp_path: Path) -> Iterator[Rig]:
    """A rig on SQLite, then on PostgreSQL."""
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


def setup(rig: Rig, notify: str, **env: str) -> Path:
    """The pipeline ``app`` with ``notify`` (YAML list items, indented two spaces) and a started worker;
    its workdir, where a file named ``fail`` fails the deploy step."""
    workdir = rig.workdir("app")
    rig.pipeline("app", PIPELINE, WORKDIR=workdir, DEPLOY=json.dumps(DEPLOY), NOTIFY=notify)
    rig.start_worker(RUNNER_SERVER_NAME=SERVER_NAME, RUNNER_PUBLIC_URL=PUBLIC_URL, **env)
    # The worker's server name is the one its runs carry: the rig looks at that server's rows.
    rig.store.close()
    rig.store = Store(rig.database_url, server=SERVER_NAME)
    return workdir


def deploy(rig: Rig, n: int, status: str, message: str | None = None) -> Row[Any]:
    """Push fake commit ``n`` to main; its run, once it ended in ``status``."""
    payload = push_payload(
        "refs/heads/main", ZERO_COMMIT, [(fake_commit(n), message or f"commit {n}\n\nbody")]
    )
    [run] = rig.runs_of(rig.deliver("push", payload), [status])
    return run


def rows(rig: Rig, run: Row[Any]) -> list[Row[Any]]:
    return attempts(rig.store, run.id)


def wait_row(rig: Rig, run: Row[Any], check: Any, what: str) -> Row[Any]:
    def found() -> Row[Any] | None:
        return next((row for row in rows(rig, run) if check(row)), None)

    return wait_for(found, what, details=lambda: f"{rows(rig, run)}\n{rig.workers[-1].output()}")


# Failure, recovery, nothing more ----------------------------------------------------------------------------


def test_a_failure_then_a_recovery_are_sent_and_a_second_success_sends_nothing(
    rig_on: Rig, receiver: Receiver
) -> None:
    rig = rig_on
    workdir = setup(rig, f"  - webhook: {receiver.url('/hook')}")
    (workdir / "fail").touch()
    failed = deploy(rig, 1, "failed")
    [failure] = receiver.wait_bodies("/hook", 1, rig)
    assert {key: failure[key] for key in ("pipeline", "server", "run", "status", "event", "step")} == {
        "pipeline": "app",
        "server": SERVER_NAME,
        "run": failed.id,
        "status": "failed",
        "event": "failure",
        "step": "2 (deploy)",
    }
    assert (failure["commit"], failure["subject"], failure["ref"]) == (
        fake_commit(1),
        "commit 1",
        "refs/heads/main",
    )
    assert failure["url"] == f"{PUBLIC_URL}/runs/{failed.id}"
    # The last lines: the step's last output, then runner's note of its failure.
    tail = failure["log_tail"]
    assert len(tail) == 10 and "log line 15" in tail[-2] and "log line 7" in tail[0], tail
    assert "step 2 (deploy) failed" in tail[-1]
    # The receiver has the body before the notifier has recorded that it was sent.
    wait_row(
        rig, failed, lambda row: row.state == "sent", "the failure's notification to be recorded as sent"
    )
    assert [(row.event, row.state, row.attempts) for row in rows(rig, failed)] == [("failure", "sent", 1)]

    (workdir / "fail").unlink()
    recovered = deploy(rig, 2, "succeeded")
    recovery = receiver.wait_bodies("/hook", 2, rig)[1]
    assert (recovery["event"], recovery["status"], recovery["run"]) == ("recovery", "succeeded", recovered.id)
    assert (recovery["step"], recovery["log_tail"]) == (None, [])

    again = deploy(rig, 3, "succeeded")
    # A failure after it is the next message: the lane recorded run 3's (none) before run 4 began.
    (workdir / "fail").touch()
    deploy(rig, 4, "failed")
    bodies = receiver.wait_bodies("/hook", 3, rig)
    assert [body["event"] for body in bodies] == ["failure", "recovery", "failure"]
    assert rows(rig, again) == []


def test_on_success_and_the_formats_keep_a_commit_message_inert_and_a_webhook_file_s_url_secret(
    rig: Rig, receiver: Receiver, tmp_path: Path
) -> None:
    secret_path = "/services/T0000/B0000/SeCrEtToKeN0123456789"
    url_file = tmp_path / "slack-url"
    url_file.write_text(receiver.url(secret_path) + "\n")
    url_file.chmod(0o600)
    notify = (
        f"  - {{webhook-file: {url_file}, format: slack, on: [failure, success]}}\n"
        f"  - {{webhook: {receiver.url('/discord')}, format: discord, on: [success]}}"
    )
    workdir = setup(rig, notify)
    message = "ship <script>alert(1)</script> & @everyone <!channel>\n\nthe rest"
    succeeded = deploy(rig, 1, "succeeded", message)
    [slack_body] = receiver.wait_bodies(secret_path, 1, rig)
    [discord_body] = receiver.wait_bodies("/discord", 1, rig)

    text = slack_body["text"]
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; @everyone &lt;!channel&gt;" in text
    assert "<script>" not in text and "<!channel>" not in text
    assert f"<{PUBLIC_URL}/runs/{succeeded.id}|run {succeeded.id}>" in text
    assert discord_body["allowed_mentions"] == {"parse": []}
    assert "@everyone" in discord_body["content"] and len(discord_body["content"]) <= 2000

    # on: [success] alone: the discord target is not told of a failure.
    (workdir / "fail").touch()
    failed = deploy(rig, 2, "failed")
    assert len(receiver.wait_bodies(secret_path, 2, rig)) == 2
    [row] = rows(rig, failed)
    assert (row.target, row.target_index, row.event) == (f"slack webhook from {url_file}", 0, "failure")

    # The URL's secret part is in no row, no run log, no process's output.
    secret = "SeCrEtToKeN0123456789"
    recorded = [(row.target, row.message, row.error) for run in (succeeded, failed) for row in rows(rig, run)]
    assert secret not in json.dumps(recorded)
    logs = [rig.log_of(run) for run in (succeeded, failed)]
    assert all(secret not in text for text in [*logs, rig.workers[-1].output(), rig.server.output()])


# A target that hangs or fails -------------------------------------------------------------------------------


def test_a_hanging_receiver_delays_no_run_nor_other_target_and_its_attempt_is_recorded_then_retried(
    rig: Rig, receiver: Receiver
) -> None:
    receiver.answers = {"/slow": [HOLD]}
    notify = f"  - webhook: {receiver.url('/slow')}\n  - webhook: {receiver.url('/fast')}"
    workdir = setup(rig, notify)
    (workdir / "fail").touch()
    failed = deploy(rig, 1, "failed")
    wait_for(receiver.holding.is_set, "the slow receiver to hold its request")
    receiver.wait_bodies("/fast", 1, rig)
    # While it still holds the request: the next run is carried out, and its recovery sent elsewhere.
    (workdir / "fail").unlink()
    deploy(rig, 2, "succeeded")
    assert receiver.wait_bodies("/fast", 2, rig)[1]["event"] == "recovery"
    assert not receiver.released.is_set()

    slow = wait_row(
        rig, failed, lambda row: row.target_index == 0 and row.attempts == 1, "the timed-out attempt"
    )
    assert slow.state == "pending" and "no answer from the webhook within 10 s" in (slow.error or "")
    receiver.released.set()
    sent = wait_row(rig, failed, lambda row: row.target_index == 0 and row.state == "sent", "the retry")
    assert sent.attempts == 2
    assert [body["event"] for body in receiver.bodies("/slow") if body["run"] == failed.id] == ["failure"] * 2
    assert receiver.url("/slow") not in (sent.error or "") and "127.0.0.1" not in (sent.error or "")


def test_a_receiver_answering_500_has_the_attempt_recorded_with_its_error_and_retried(
    rig: Rig, receiver: Receiver
) -> None:
    receiver.answers = {"/hook": [500]}
    workdir = setup(rig, f"  - webhook: {receiver.url('/hook')}")
    (workdir / "fail").touch()
    failed = deploy(rig, 1, "failed")
    first = wait_row(rig, failed, lambda row: row.attempts == 1, "the first attempt")
    assert first.state == "pending" and first.error == "the webhook answered HTTP 500 Internal Server Error"
    sent = wait_row(rig, failed, lambda row: row.state == "sent", "the retry")
    assert sent.attempts == 2 and sent.next_attempt_at > first.created_at
    assert len(receiver.bodies("/hook")) == 2


# E-mail -----------------------------------------------------------------------------------------------------


class Mailbox:
    def __init__(self) -> None:
        self.envelopes: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.envelopes.append(envelope)
        return "250 OK"


def test_a_failure_is_e_mailed_through_the_smtp_server_with_a_one_line_subject(rig: Rig) -> None:
    mailbox = Mailbox()
    controller = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        smtp = {
            "RUNNER_SMTP_URL": f"smtp://127.0.0.1:{controller.port}",
            "RUNNER_SMTP_FROM": "deploy@example.com",
        }
        workdir = setup(rig, "  - email: [ops@example.com, dev@example.com]", **smtp)
        (workdir / "fail").touch()
        failed = deploy(rig, 1, "failed", "fix it\rBcc: evil@example.com\n\nbody")
        [envelope] = wait_for(
            lambda: mailbox.envelopes, "the e-mail", details=lambda: rig.workers[-1].output()
        )
    finally:
        controller.stop()
    assert envelope.rcpt_tos == ["ops@example.com", "dev@example.com"]
    mail = message_from_bytes(envelope.content)
    assert mail["Subject"] == "[runner] app failed: fix it"
    assert (mail["From"], mail["To"], mail["Bcc"]) == (
        "deploy@example.com",
        "ops@example.com, dev@example.com",
        None,
    )
    text = mail.get_payload(decode=True).decode()
    assert "failed step: 2 (deploy)" in text and "log line 15" in text
    assert f"{PUBLIC_URL}/runs/{failed.id}" in text
    row = wait_row(rig, failed, lambda row: row.state == "sent", "the e-mail to be recorded as sent")
    assert [row.id for row in rows(rig, failed)] == [row.id]
    assert row.target == "email ops@example.com, dev@example.com"


# The keys, their checks and warnings ------------------------------------------------------------------------


def problems(tmp_path: Path, notify: str) -> list[str]:
    path = tmp_path / "pipelines" / "app.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"on: {{repository: acme/app}}\nworkdir: srv\nsteps:\n  - run: make\nnotify:\n{notify}")
    return [problem.message for problem in load(path, tmp_path)[0]]


def test_bad_targets_are_refused_naming_the_key(tmp_path: Path) -> None:
    assert problems(tmp_path, "  - webhook: http://hooks.example.com/x\n") == [
        "notify item 1 webhook: must be https://: http:// only on a loopback address "
        "(the URL is a credential)"
    ]
    assert problems(tmp_path, "  - {webhook: 'https://a.example/x', email: a@example.com}\n") == [
        "notify item 1 email: a target has one of webhook, webhook-file or email, not webhook and email"
    ]
    assert problems(tmp_path, "  - {email: a@example.com, format: slack}\n") == [
        "notify item 1 format: format is a webhook's: an e-mail is plain text"
    ]
    assert problems(tmp_path, "  - {webhook: 'https://a.example/x', on: [failure, deploy]}\n") == [
        "notify item 1 on item 2: 'deploy' is not one of failure, recovery, success"
    ]
    said = problems(tmp_path, '  - email: "a@example.com\\nBcc: b@example.com"\n')
    assert len(said) == 1 and said[0].startswith("notify item 1 email: must be an e-mail address")
    assert problems(tmp_path, "  - {}\n") == [
        "notify item 1: a target needs one of webhook, webhook-file or email"
    ]


def test_validate_warns_of_a_webhook_file_missing_or_readable_by_others_and_of_email_without_smtp(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    (home / "pipelines").mkdir(parents=True)
    notify = "notify:\n  - {webhook-file: slack-url, format: slack}\n  - email: ops@example.com\n"
    (home / "pipelines" / "app.yaml").write_text(
        f"on: {{repository: acme/app}}\nworkdir: srv\nsteps:\n  - run: make\n{notify}"
    )
    done = run_cli("validate", env=runner_env(home))
    assert done.returncode == 0, done.stderr
    assert "app.yaml:6: warning: notify: webhook-file " in done.stderr and "No such file" in done.stderr
    assert "app.yaml:7: warning: notify: e-mail needs RUNNER_SMTP_URL" in done.stderr
    (home / "slack-url").write_text("https://hooks.slack.com/services/x\n")
    (home / "slack-url").chmod(0o644)
    done = run_cli("validate", env=runner_env(home, RUNNER_SMTP_URL="smtp://127.0.0.1:2525"))
    assert "is readable by others" in done.stderr and "RUNNER_SMTP_URL" not in done.stderr
    (home / "slack-url").chmod(0o600)
    assert (
        "warning"
        not in run_cli("validate", env=runner_env(home, RUNNER_SMTP_URL="smtp://127.0.0.1:2525")).stderr
    )


# The messages -----------------------------------------------------------------------------------------------


def facts(**values: Any) -> Facts:
    base: dict[str, Any] = {
        "pipeline": "app",
        "server": "box",
        "run": 7,
        "status": "failed",
        "event": "failure",
        "commit": "a" * 40,
        "subject": "subject",
        "ref": "refs/heads/main",
        "step": "2 (deploy)",
        "log_tail": [],
        "url": None,
    }
    return Facts(**{**base, **values})


def test_a_discord_message_stays_within_2000_characters_keeping_the_last_log_lines() -> None:
    lines = [f"line {i} " + "x" * 300 for i in range(10)]
    body = discord(facts(log_tail=lines))
    assert len(body["content"]) <= 2000
    assert "line 9 " in body["content"] and "line 0 " not in body["content"]


def test_a_subject_s_markdown_is_escaped_for_discord_so_it_makes_no_link() -> None:
    content = discord(facts(subject="[see](https://evil.example) **now**"))["content"]
    assert r"commit\: aaaaaaa \[see\]\(https\://evil.example\) \*\*now\*\*" in content


def test_a_log_line_cannot_close_slack_s_code_block_nor_a_subject_add_a_line() -> None:
    text = slack(facts(log_tail=["```<!here>"]))["text"]
    assert text.count("```") == 2 and "&lt;!here&gt;" in text
    assert "\n" not in email_subject(facts(subject="a\u2028b\x1b[31mc"))


# Retention --------------------------------------------------------------------------------------------------


def test_a_run_s_notifications_are_pruned_with_it(rig: Rig) -> None:
    store = rig.store
    now = datetime.now(UTC)
    made = []
    for status, when in (("failed", now - timedelta(days=200)), ("succeeded", now - timedelta(days=199))):
        run_id = store.create_run(
            "app", trigger="push", delivery_id=None, ref="refs/heads/main", commit="c" * 40
        )
        store.set_run(run_id, status=status, queued_at=when, started_at=when, finished_at=when)
        made.append(run_id)
        with store.engine.begin() as connection:
            connection.execute(
                insert(tables.notifications).values(
                    run_id=run_id,
                    target="email ops@example.com",
                    target_index=0,
                    event="failure",
                    message={},
                    state="sent",
                    attempts=1,
                    created_at=when,
                    next_attempt_at=when,
                )
            )
    done = run_cli("prune", env={**rig.env, "RUNNER_KEEP_RUNS": "1", "RUNNER_RETENTION": "30d"})
    assert done.returncode == 0, done.stdout + done.stderr
    old, kept = made
    assert (attempts(store, old), [row.run_id for row in attempts(store, kept)]) == ([], [kept])


def certificate(tmp_path: Path) -> tuple[Path, ssl.SSLContext]:
    """A self-signed certificate for 127.0.0.1 (the worker is told to trust it with SSL_CERT_FILE, which
    OpenSSL's default trust store honours), and a server's TLS context holding it."""
    require(shutil.which("openssl") is not None, "openssl (to make the SMTP server's certificate)")
    cert, key = tmp_path / "smtp.crt", tmp_path / "smtp.key"
    request = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
    made = subprocess.run(
        [
            "openssl",
            *request,
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        capture_output=True,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return cert, context


def password_file(tmp_path: Path) -> Path:
    password = tmp_path / "smtp-password"
    password.write_text("s3cret-pass\n")
    password.chmod(0o600)
    return password


def test_e_mail_over_smtps_logs_in_with_the_password_file_s_password(rig: Rig, tmp_path: Path) -> None:
    cert, context = certificate(tmp_path)
    logins: list[tuple[bytes, bytes]] = []

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        logins.append((data.login, data.password))
        return AuthResult(success=data.password == b"s3cret-pass")

    mailbox = Mailbox()
    controller = Controller(
        mailbox,
        hostname="127.0.0.1",
        port=free_port(),
        ssl_context=context,
        authenticator=authenticator,
        # aiosmtpd counts only STARTTLS as TLS; this connection is TLS from its start.
        auth_require_tls=False,
    )
    controller.start()
    password = password_file(tmp_path)
    try:
        smtp = {
            "RUNNER_SMTP_URL": f"smtps://deployer@127.0.0.1:{controller.port}",
            "RUNNER_SMTP_PASSWORD_FILE": str(password),
            # The test's own certificate authority: OpenSSL's default trust store, as the worker uses it.
            "SSL_CERT_FILE": str(cert),
        }
        workdir = setup(rig, "  - email: ops@example.com", **smtp)
        (workdir / "fail").touch()
        failed = deploy(rig, 1, "failed")
        [envelope] = wait_for(
            lambda: mailbox.envelopes, "the e-mail", details=lambda: rig.workers[-1].output()
        )
    finally:
        controller.stop()
    assert logins == [(b"deployer", b"s3cret-pass")]
    assert envelope.rcpt_tos == ["ops@example.com"]
    assert message_from_bytes(envelope.content)["From"] == f"runner@{socket.gethostname()}"
    wait_row(rig, failed, lambda row: row.state == "sent", "the e-mail to be recorded as sent")
    assert [row.state for row in rows(rig, failed)] == ["sent"]
    assert "s3cret-pass" not in rig.workers[-1].output()


def test_smtp_with_a_user_logs_in_only_after_starttls_and_trusts_the_certificate_authority_it_is_told(
    rig: Rig, tmp_path: Path
) -> None:
    cert, context = certificate(tmp_path)
    # (user, password, whether the connection was TLS when AUTH came). The server takes AUTH before
    # STARTTLS too, so that a client sending the password in clear would show here.
    logins: list[tuple[bytes, bytes, bool]] = []

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        logins.append((data.login, data.password, session.ssl is not None))
        return AuthResult(success=data.password == b"s3cret-pass")

    mailbox = Mailbox()
    controller = Controller(
        mailbox,
        hostname="127.0.0.1",
        port=free_port(),
        tls_context=context,
        authenticator=authenticator,
        auth_require_tls=False,
    )
    controller.start()
    try:
        smtp = {
            "RUNNER_SMTP_URL": f"smtp://deployer@127.0.0.1:{controller.port}",
            "RUNNER_SMTP_PASSWORD_FILE": str(password_file(tmp_path)),
            "SSL_CERT_FILE": str(cert),
        }
        workdir = setup(rig, "  - email: ops@example.com", **smtp)
        (workdir / "fail").touch()
        failed = deploy(rig, 1, "failed")
        [envelope] = wait_for(
            lambda: mailbox.envelopes, "the e-mail", details=lambda: rig.workers[-1].output()
        )
    finally:
        controller.stop()
    assert logins == [(b"deployer", b"s3cret-pass", True)]
    assert envelope.rcpt_tos == ["ops@example.com"]
    assert "failed step: 2 (deploy)" in message_from_bytes(envelope.content).get_payload(decode=True).decode()
    wait_row(rig, failed, lambda row: row.state == "sent", "the e-mail to be recorded as sent")
    assert "s3cret-pass" not in rig.workers[-1].output()


def test_smtp_with_a_user_refuses_a_server_offering_no_starttls_before_sending_the_password(
    tmp_path: Path,
) -> None:
    logins: list[Any] = []

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        logins.append(data.password)
        return AuthResult(success=True)

    mailbox = Mailbox()
    # No TLS context: no STARTTLS offered; AUTH offered in clear, which a careless client would use.
    controller = Controller(
        mailbox, hostname="127.0.0.1", port=free_port(), authenticator=authenticator, auth_require_tls=False
    )
    controller.start()
    try:
        server = read_smtp_url({"RUNNER_SMTP_URL": f"smtp://deployer@127.0.0.1:{controller.port}"})
        assert server is not None and server.starttls
        with pytest.raises(SendError, match="does not offer STARTTLS") as refused:
            send_email(server, password_file(tmp_path), "runner@example.com", ["ops@example.com"], MAIL)
        # Without a password file, nothing is tried at all: the error says what to set.
        with pytest.raises(SendError, match="set RUNNER_SMTP_PASSWORD_FILE"):
            send_email(server, None, "runner@example.com", ["ops@example.com"], MAIL)
    finally:
        controller.stop()
    assert logins == [] and mailbox.envelopes == []
    assert "s3cret-pass" not in str(refused.value) and "nothing was sent" in str(refused.value)
    # A loopback relay taking mail without a login needs no STARTTLS (the test above's first e-mail).
    relay = read_smtp_url({"RUNNER_SMTP_URL": "smtp://127.0.0.1:2525"})
    assert relay is not None and not relay.starttls
    remote = read_smtp_url({"RUNNER_SMTP_URL": "smtp://mail.example.com"})
    assert remote is not None and remote.starttls and remote.port == 587


# Each attempt's time is bounded as a whole -----------------------------------------------------------------

MAIL = {"subject": "[runner] app failed", "text": "failed step: 1 (deploy)"}


class Trickler:
    """A TCP server on loopback that sends ``answer`` a byte every ``pause`` seconds to each client, never
    reaching its end within a test (a socket's per-read timeout never fires)."""

    def __init__(self, answer: bytes, pause: float = 0.25) -> None:
        self.answer, self.pause = answer, pause
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sent = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.listener.settimeout(0.2)
        while not self.stop.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._trickle, args=(client,), daemon=True).start()

    def _trickle(self, client: socket.socket) -> None:
        with client:
            for byte in self.answer * 100:
                if self.stop.wait(self.pause):
                    return
                try:
                    client.sendall(bytes([byte]))
                except OSError:
                    return  # the client gave up, as it should
                self.sent += 1

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.listener.close()


def test_a_webhook_trickling_its_answer_a_byte_at_a_time_is_given_up_at_the_attempt_s_deadline() -> None:
    trickler = Trickler(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
    try:
        started = time.monotonic()
        with pytest.raises(SendError, match="no answer from the webhook within 2 s"):
            post_webhook(f"http://127.0.0.1:{trickler.port}/hook", {"text": "failed"}, timeout=2.0)
        took = time.monotonic() - started
    finally:
        trickler.close()
    assert 1.9 <= took < 3.5, took
    assert trickler.sent > 5  # it was answering all along: each read got a byte in time


def test_a_webhook_that_answered_2xx_then_trickles_its_body_is_sent_within_the_deadline() -> None:
    # The 2xx says the message was taken: a retry would be a second message. The body is not waited for.
    trickler = Trickler(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000, pause=0.01)
    try:
        started = time.monotonic()
        post_webhook(f"http://127.0.0.1:{trickler.port}/hook", {"text": "failed"}, timeout=2.0)
        took = time.monotonic() - started
    finally:
        trickler.close()
    assert 1.9 <= took < 3.5, took


def test_an_smtp_server_trickling_its_greeting_is_given_up_at_the_attempt_s_deadline() -> None:
    trickler = Trickler(b"220 mail.example.com ESMTP " + b"." * 1000)
    try:
        server = read_smtp_url({"RUNNER_SMTP_URL": f"smtp://127.0.0.1:{trickler.port}"})
        assert server is not None
        started = time.monotonic()
        with pytest.raises(SendError, match=f"no answer from 127.0.0.1:{trickler.port} within 2 s"):
            send_email(server, None, "runner@example.com", ["ops@example.com"], MAIL, timeout=2.0)
        took = time.monotonic() - started
    finally:
        trickler.close()
    assert 1.9 <= took < 3.5, took
    assert trickler.sent > 5
