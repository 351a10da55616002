"""The status page over HTTP, against real ``runner up``/``runner serve`` processes with real runs: the
login, the pages, the headers, the assets, escaping, RUNNER_UI_PATH, ``runner ui-user``, the read-only
store."""

from __future__ import annotations

import json
import os
import pty
import re
import shutil
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import bcrypt
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from support import ROOT, SECRET, Server, free_port, run_cli, runner_env, stop_process, stop_started, wait_for
from ui_site import PASSWORD, SCRIPT, SCRIPT_REF, SERVER, USER, Site, basic, request, write_users

from runner.store import Store
from runner.timefmt import shown
from runner.ui_headers import CONTENT_SECURITY_POLICY

CHALLENGE = 'Basic realm="runner", charset="UTF-8"'
PAGES = ["/", "/runs", "/runs?pipeline=broken&status=failed", "/deliveries"]
ESCAPED_SCRIPT = "&lt;script&gt;document.title="
FAILED_LOGIN = (
    r"failed login to the status page from 127\.0\.0\.1 as '(\w+)' "
    r"\(failure (\d) in a row, answered after ([\d.]+) s\)"
)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    started = Site.start(tmp_path_factory.mktemp("ui"))
    try:
        yield started
    finally:
        stop_started()
    assert SECRET not in started.server.output()
    assert PASSWORD not in started.server.output()


Serve = Callable[..., Server]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Starts ``runner serve`` on a migrated home (``serve(home, **env)``); each is stopped after the test
    (the module's ``runner up`` goes on)."""
    started: list[Server] = []

    def start(home: Path, **env: str) -> Server:
        environment = runner_env(home, **env)
        upgraded = run_cli("db", "upgrade", env=environment)
        assert upgraded.returncode == 0, upgraded.stderr
        started.append(Server(home, environment))
        return started[-1]

    yield start
    for server in started:
        server.stop()


def cli(*args: str, env: dict[str, str], input: str | None = None) -> subprocess.CompletedProcess[str]:
    """``runner ARGS``, with ``input`` on its stdin (the password of ``--password-stdin``)."""
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        env=env,
        input=input,
        capture_output=True,
        text=True,
        timeout=60,
    )


def page_paths(site: Site) -> list[str]:
    broken = site.runs["broken"]
    return [*PAGES, f"/runs/{broken}", f"/runs/{broken}/log", "/static/style.css"]


def test_no_users_file_means_no_page_until_ui_user_add_writes_one(serve: Serve, tmp_path: Path) -> None:
    server = serve(tmp_path)
    env = runner_env(tmp_path)
    for path in ["/", "/runs", "/runs/1", "/deliveries", "/static/style.css"]:
        answer = request(server.port, path, {"Authorization": basic("demo", "pw")})
        assert answer.status == 404, (path, answer.status)
        assert "www-authenticate" not in answer.headers
    assert server.get("/healthz").status == 200
    assert "answers 404 until `runner ui-user add NAME`" in server.output()

    added = cli("ui-user", "add", "demo", "--password-stdin", env=env, input="first password\n")
    assert added.returncode == 0, added.stderr
    users = tmp_path / "ui-users"
    assert stat.S_IMODE(users.stat().st_mode) == 0o640
    line = users.read_text()
    assert line.startswith("demo:$2b$12$") and "first password" not in line, line
    # Read at request time: no restart.
    assert request(server.port, "/", {"Authorization": basic("demo", "first password")}).status == 200

    # A new password replaces the old one, at once (a remembered check is dropped with the file's change).
    changed = cli("ui-user", "add", "demo", "--password-stdin", env=env, input="second password\n")
    assert changed.returncode == 0 and "changed the password of demo" in changed.stdout, changed
    assert request(server.port, "/", {"Authorization": basic("demo", "first password")}).status == 401
    assert request(server.port, "/", {"Authorization": basic("demo", "second password")}).status == 200

    other = cli("ui-user", "add", "bob", "--password-stdin", env=env, input="bobs password\n")
    assert other.returncode == 0, other.stderr
    listed = cli("ui-user", "list", env=env)
    assert listed.stdout.split() == ["demo", "bob"], listed
    removed = cli("ui-user", "remove", "demo", env=env)
    assert removed.returncode == 0, removed.stderr
    assert cli("ui-user", "list", env=env).stdout.split() == ["bob"]
    assert request(server.port, "/", {"Authorization": basic("demo", "second password")}).status == 401
    assert request(server.port, "/", {"Authorization": basic("bob", "bobs password")}).status == 200

    users.unlink()
    assert request(server.port, "/", {"Authorization": basic("bob", "bobs password")}).status == 404


@pytest.mark.parametrize(
    ("name", "problem"),
    [("a:b", "holds ':'"), ("a b", "holds ' '"), ("tab\there", "holds '\\t'"), ("", "1 to 64 characters")],
)
def test_ui_user_add_refuses_a_name_the_file_or_http_basic_cannot_carry(
    tmp_path: Path, name: str, problem: str
) -> None:
    done = cli("ui-user", "add", name, "--password-stdin", env=runner_env(tmp_path), input="pw\n")
    assert done.returncode == 1 and problem in done.stderr, done
    assert not (tmp_path / "ui-users").exists()


def prompted(env: dict[str, str], *answers: str) -> tuple[int, str]:
    """``runner ui-user add demo`` on a terminal of its own (a pty), typing ``answers`` at its prompts; its
    exit status and what the terminal showed."""
    pid, terminal = pty.fork()
    if pid == 0:  # the child: its terminal is the pty; nothing of pytest's runs here
        try:
            # No shell: the argument list as it is.
            os.execve(sys.executable, [sys.executable, "-m", "runner", "ui-user", "add", "demo"], env)  # noqa: S606
        finally:
            os._exit(127)
    shown, answered = b"", 0
    try:
        while True:
            try:
                chunk = os.read(terminal, 1024)
            except OSError:
                break  # the child ended: the pty is closed
            if not chunk:
                break
            shown += chunk
            # Each prompt shown gets its answer, typed as a user would.
            while answered < min(shown.count(b"Password"), len(answers)):
                os.write(terminal, answers[answered].encode() + b"\n")
                answered += 1
    finally:
        os.close(terminal)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), shown.decode(errors="replace")


def test_ui_user_add_asks_for_the_password_twice_on_a_terminal_without_echoing_it(tmp_path: Path) -> None:
    env = runner_env(tmp_path)
    code, shown = prompted(env, "typed password", "another one")
    assert code == 1 and "the two passwords differ" in shown, shown
    assert "typed password" not in shown and "another one" not in shown, shown
    assert not (tmp_path / "ui-users").exists()
    code, shown = prompted(env, "typed password", "typed password")
    assert code == 0 and shown.count("Password") == 2 and "typed password" not in shown, shown
    [line] = (tmp_path / "ui-users").read_text().splitlines()
    name, hashed = line.split(":", 1)
    assert name == "demo" and bcrypt.checkpw(b"typed password", hashed.encode())


def test_ui_user_refuses_an_empty_password_and_removing_a_user_that_is_not_there(tmp_path: Path) -> None:
    env = runner_env(tmp_path)
    empty = cli("ui-user", "add", "demo", "--password-stdin", env=env, input="\n")
    assert empty.returncode == 1 and "the password is empty" in empty.stderr, empty
    missing = cli("ui-user", "remove", "nobody", env=env)
    assert missing.returncode == 1 and "there is no user 'nobody'" in missing.stderr, missing


def test_without_credentials_every_page_asks_for_them(site: Site) -> None:
    for path in page_paths(site):
        answer = site.get(path, auth=None)
        assert answer.status == 401, (path, answer.status)
        assert answer.headers["WWW-Authenticate"] == CHALLENGE
        assert answer.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        assert b"<" not in answer.body  # nothing of the page
    # Another scheme, or a header that is not Basic's, is no login either.
    assert site.get("/", auth=None, Authorization="Bearer abc").status == 401
    assert site.get("/", auth=None, Authorization="Basic !!!").status == 401


def test_a_wrong_password_is_refused_logged_with_the_name_and_address_and_slowed_down(site: Site) -> None:
    # A success first: it forgets the address's earlier failures.
    assert site.get("/").status == 200
    before = len(site.server.output())
    started = time.monotonic()
    assert site.get("/", auth=(USER, "wrong one")).status == 401
    assert site.get("/", auth=("mallory", "wrong two")).status == 401
    second_took = time.monotonic() - started
    logged = site.server.output()[before:]
    failures = re.findall(FAILED_LOGIN, logged)
    assert failures == [(USER, "1", "0.5"), ("mallory", "2", "1.0")], logged
    # The delays were waited out: a generous lower bound only.
    assert second_took >= 1.4, second_took
    assert "wrong one" not in site.server.output() and "wrong two" not in site.server.output()
    # And the right password still works, and forgets the failures.
    assert site.get("/").status == 200


def test_the_endpoints_paths_stay_the_endpoints_beside_a_page_at_the_root(site: Site) -> None:
    assert request(site.server.port, "/healthz").status == 200
    assert request(site.server.port, "/github-webhook").status == 405
    assert request(site.server.port, "/healthz", method="POST").status == 405
    assert request(site.server.port, "/github-webhook", method="POST").status == 401  # no signature


def test_every_page_has_the_security_headers(site: Site) -> None:
    for path in page_paths(site):
        answer = site.get(path)
        assert answer.status == 200, (path, answer.status, answer.text[:500])
        assert answer.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY, path
        assert answer.headers["X-Content-Type-Options"] == "nosniff", path
        assert answer.headers["Referrer-Policy"] == "same-origin", path
        expected_cache = "private, no-cache" if path.startswith("/static/") else "no-store"
        assert answer.headers["Cache-Control"] == expected_cache, path
    css = site.get("/static/style.css")
    assert css.headers["Content-Type"].startswith("text/css") and b".log" in css.body
    assert b"url(" not in css.body and b"@import" not in css.body
    # Nothing from another origin (no CDN): every link, script and stylesheet is the page's own.
    for path in page_paths(site):
        for link in re.findall(r'(?:src|href|action)="([^"]*)"', site.get(path).text):
            assert link.startswith(("/", "#", "?")) and not link.startswith("//"), (path, link)
    page = site.get("/").text
    # No inline script or style: the CSP would refuse them. Scripts are runner's own files.
    assert re.findall(r"<script[^>]*>", page) == ['<script src="/static/live.js" defer>']
    assert "<style" not in page and " style=" not in page
    assert '<link rel="stylesheet" href="/static/style.css">' in page


@pytest.mark.parametrize(
    "path",
    [
        "/static/../../ui-users",
        "/static/%2e%2e/%2e%2e/ui-users",
        "/static/..%2f..%2fui-users",
        "/static/%2e%2e%2f%2e%2e%2fui-users",
        "/static/",
        "/static/../ui_templates/base.html",
    ],
)
def test_assets_stay_in_their_directory_and_are_not_listed(site: Site, path: str) -> None:
    answer = site.get(path)
    assert answer.status == 404, (path, answer.status, answer.text[:300])
    assert b"$2b$" not in answer.body and b"style.css" not in answer.body


def test_the_assets_directory_without_its_slash_is_sent_to_it_and_not_listed_there(site: Site) -> None:
    answer = site.get("/static")
    assert (answer.status, answer.headers["Location"]) == (
        307,
        f"http://127.0.0.1:{site.server.port}/static/",
    )
    assert site.get("/static/").status == 404


def test_the_pipelines_page_shows_the_last_deploy_and_the_failing_pipeline(site: Site) -> None:
    page = site.get("/").text
    good = re.search(r'<tr id="pipeline-site"[^>]*>(.*?)</tr>', page, re.S)
    bad = re.search(r'<tr id="pipeline-broken" class="failing">(.*?)</tr>', page, re.S)
    assert good and bad, page
    assert site.commit[:12] in good[1] and f'href="/runs/{site.runs["site_again"]}"' in good[1], good[1]
    # When: the deploying run's end, to the second.
    deployed = site.run(site.runs["site_again"])
    assert deployed.finished_at is not None
    assert f"<td>{shown(deployed.finished_at)}</td>" in good[1], good[1]
    # The deployed commit's subject, escaped.
    assert f"first version {ESCAPED_SCRIPT}" in good[1] and "<script>" not in page, good[1]
    assert f'<td class="server">{SERVER}</td>' in good[1]
    assert "its last run failed" not in good[1]
    assert "its last run failed" in bad[1] and "never deployed" in bad[1], bad[1]
    assert f'href="/runs/{site.runs["script_ref"]}">run {site.runs["script_ref"]}</a>' in bad[1]


def test_the_run_page_shows_its_steps_the_failing_one_and_its_log_escaped(site: Site) -> None:
    broken = site.runs["broken"]
    page = site.get(f"/runs/{broken}").text
    assert "<script>" not in page, page
    assert f"hello {ESCAPED_SCRIPT}" in page.replace("&#39;", "'").replace("&#34;", '"').replace("'", '"')
    assert re.search(r'<tr id="step-3" class="failing">.*?id="failing-step".*?breaks.*?>3<', page, re.S), page
    assert 'id="step-2" class' not in page and 'id="step-4"' not in page  # it passed; it never ran
    assert "step 3 (breaks) failed: exited with status 3" in page
    # Each step's status, exit code and duration.
    steps = dict(re.findall(r'<tr id="step-(\d)"[^>]*>(.*?)</tr>', page, re.S))
    assert sorted(steps) == ["1", "2", "3"], steps
    for position, status, code in (("1", "succeeded", "0"), ("2", "succeeded", "0"), ("3", "failed", "3")):
        assert status in steps[position] and f'<td class="num">{code}</td>' in steps[position], steps
        assert re.search(r'<td class="num">\d+\.\d s</td>', steps[position]), steps
    # The failing step's log lines are marked, from its first line on.
    failing_lines = re.findall(r'<span class="line stream-(\w+) failing"[^>]*>.*?</span> (.*?)</span>', page)
    assert ("out", "about to fail") in failing_lines and ("err", "it broke") in failing_lines, failing_lines
    assert 'class="line stream-runner failing" id="log-step-3"' in page
    assert "a warning" in page and ("err", "a warning") not in failing_lines
    assert f'href="/runs/{broken}/log"' in page


def test_the_raw_log_is_plain_text_whole_and_not_a_page(site: Site) -> None:
    answer = site.get(f"/runs/{site.runs['broken']}/log")
    assert answer.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    run = site.run(site.runs["broken"])
    assert run.log_path is not None and answer.body == Path(run.log_path).read_bytes()
    assert site.get("/runs/999999/log").status == 404
    assert site.get("/runs/999999").status == 404


def test_a_ref_holding_a_script_shows_escaped_everywhere(site: Site) -> None:
    escaped = SCRIPT_REF.replace("<", "&lt;").replace(">", "&gt;").replace('"', "&#34;")
    for path in (f"/runs/{site.runs['script_ref']}", "/runs", "/runs?pipeline=broken"):
        page = site.get(path).text
        assert "<script>" not in page, path
        assert escaped in page, (path, page)


def test_runs_filter_by_pipeline_and_status(site: Site) -> None:
    def shown(query: str) -> list[int]:
        return [int(n) for n in re.findall(r'<tr id="run-(\d+)">', site.get("/runs" + query).text)]

    runs = site.runs
    assert shown("") == sorted(runs.values(), reverse=True)
    assert shown("?pipeline=site") == [runs["site_again"], runs["site"]]
    assert shown("?pipeline=broken&status=failed") == sorted(
        [runs["broken"], runs["script_ref"]], reverse=True
    )
    assert shown("?status=succeeded") == [runs["site_again"], runs["site"]]
    assert shown("?pipeline=nothing") == []
    assert shown(f"?server={SERVER}") == sorted(runs.values(), reverse=True)
    assert shown("?server=elsewhere") == []
    bad = site.get("/runs?status=bogus")
    assert bad.status == 400 and "there is no run status &#39;bogus&#39;" in bad.text
    for page in ("0", "x", "-1", "99999999999"):
        assert site.get(f"/runs?page={page}").status == 400, page


def test_deliveries_show_what_became_of_each_escaped(site: Site) -> None:
    delivery = str(uuid.uuid4())
    payload = json.dumps(
        {
            "ref": f"refs/heads/d{SCRIPT}",
            "before": "0" * 40,
            "after": "1" * 40,
            "repository": {"full_name": "acme/elsewhere", "name": "elsewhere", "owner": {"login": "acme"}},
            "sender": {"login": "octocat"},
        }
    ).encode()
    # The endpoint beside the page at / keeps working, without a login.
    answer = site.server.deliver("push", payload, delivery=delivery)
    assert answer.status == 202, answer.body

    def shown() -> str | None:
        page = site.get("/deliveries").text
        row = re.search(rf"<tr>((?:(?!</tr>).)*{delivery}.*?)</tr>", page, re.S)
        return row[1] if row and "received" not in row[1] else None

    row = wait_for(shown, "the delivery's outcome on the page", details=site.server.output)
    assert "acme/elsewhere" in row and "<script>" not in row and "&lt;script&gt;" in row, row
    assert "push" in row


def test_runs_are_paginated_in_pages_of_fifty(serve: Serve, tmp_path: Path) -> None:
    server = serve(tmp_path)
    write_users(tmp_path / "ui-users", {USER: PASSWORD})
    store = Store(f"sqlite:///{tmp_path / 'runner.db'}", server="paged")
    try:
        for number in range(1, 121):
            run_id = store.create_run("even" if number % 2 == 0 else "odd", trigger="manual", ref="main")
            store.finish_run(run_id, "succeeded" if number % 3 else "failed")
    finally:
        store.close()
    auth = {"Authorization": basic(USER, PASSWORD)}

    def shown(query: str) -> tuple[list[int], str]:
        page = request(server.port, "/runs" + query, auth).text
        return [int(n) for n in re.findall(r'<tr id="run-(\d+)">', page)], page

    first, page = shown("")
    assert first == list(range(120, 70, -1))
    assert 'rel="next" href="/runs?page=2"' in page and 'rel="prev"' not in page
    third, page = shown("?page=3")
    assert third == list(range(20, 0, -1))
    assert 'rel="prev" href="/runs?page=2"' in page and 'rel="next"' not in page
    odd_failed, page = shown("?pipeline=odd&status=failed")
    assert odd_failed == [n for n in range(120, 0, -1) if n % 2 and n % 3 == 0]
    assert shown("?page=9")[0] == []
    # The filter is kept across pages.
    even, page = shown("?pipeline=even")
    assert len(even) == 50 and 'href="/runs?page=2&amp;pipeline=even"' in page


def test_the_page_under_runner_ui_path_beside_the_webhook_endpoint(serve: Serve, tmp_path: Path) -> None:
    server = serve(tmp_path, RUNNER_UI_PATH="/runner")
    auth = {"Authorization": basic(USER, PASSWORD)}
    # Without users, no page: the door's 404 carries the headers too, once.
    closed = request(server.port, "/runner/", auth)
    assert closed.status == 404 and closed.text == "Not Found", closed.text
    assert closed.headers.get_all("Content-Security-Policy") == [CONTENT_SECURITY_POLICY]
    assert closed.headers["Cache-Control"] == "no-store"
    write_users(tmp_path / "ui-users", {USER: PASSWORD})
    page = request(server.port, "/runner/", auth)
    assert page.status == 200, page.text
    assert 'href="/runner/runs"' in page.text and 'href="/runner/static/style.css"' in page.text
    assert request(server.port, "/runner/runs", auth).status == 200
    style = request(server.port, "/runner/static/style.css", auth)
    assert style.status == 200 and style.headers["Cache-Control"] == "private, no-cache"
    assert style.headers.get_all("Content-Security-Policy") == [CONTENT_SECURITY_POLICY]
    assert request(server.port, "/runner/runs").status == 401
    # Nothing of the page outside its path; those answers, and the redirect to the path with its slash,
    # carry the page's security headers as its own do.
    answers = {path: request(server.port, path, auth) for path in ("/", "/runs", "/runnerx/runs", "/runner")}
    assert {path: answer.status for path, answer in answers.items()} == {
        "/": 404,
        "/runs": 404,
        "/runnerx/runs": 404,
        "/runner": 307,
    }
    assert answers["/runner"].headers["Location"].endswith("/runner/")
    for path, answer in [*answers.items(), ("/runner/", page)]:
        assert answer.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY, path
        assert answer.headers["X-Content-Type-Options"] == "nosniff", path
        assert answer.headers["Referrer-Policy"] == "same-origin", path
        assert answer.headers["Cache-Control"] == "no-store", path
        assert answer.headers.get_all("Content-Security-Policy") == [CONTENT_SECURITY_POLICY], path
    assert request(server.port, "/healthz").status == 200
    body = json.dumps({"zen": "Keep it logically awesome.", "hook_id": 1}).encode()
    delivered = server.deliver("ping", body)
    assert delivered.status == 202, delivered.body
    assert re.search(r"status page: http://127.0.0.1:\d+/runner, answers 404 until", server.output())


def test_the_webs_store_refuses_to_write_on_both_databases(database_url: str) -> None:
    writer = Store(database_url)
    reader = Store(database_url, read_only=True)
    try:
        writer.upgrade()
        run_id = writer.create_run("app", trigger="manual", ref="main")
        reader.ping()
        run = reader.run(run_id)
        assert run is not None and run.pipeline == "app"
        with pytest.raises(DBAPIError, match=r"(?i)read-?only"):
            reader.create_run("app", trigger="manual", ref="main")
        with pytest.raises(DBAPIError, match=r"(?i)read-?only"):
            reader.record_delivery("d-1", "ping", datetime.now(UTC))
        assert [r.id for r in writer.runs()] == [run_id]
    finally:
        reader.close()
        writer.close()


def readme_role_sql() -> str:
    """The SQL of the README's read-only role for the status page."""
    section = (ROOT / "README.md").read_text().split("## Status page", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sql\n(.*?)```", section, re.S)
    assert block, "the README's status page section has no SQL"
    return block[1]


def test_the_readmes_read_only_role_reads_and_cannot_write(postgres_url: str) -> None:
    url = sa.engine.make_url(postgres_url)
    writer = Store(postgres_url)
    role = f"runner_web_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    sql = (
        readme_role_sql()
        .replace("runner_web", role)
        .replace("DATABASE runner", f'DATABASE "{url.database}"')
        .replace("FOR ROLE runner", f"FOR ROLE {url.username}")
    )
    try:
        writer.upgrade()
        with admin.connect() as connection:
            for statement in filter(None, (s.strip() for s in re.sub(r"--.*", "", sql).split(";"))):
                connection.execute(sa.text(statement))
        run_id = writer.create_run("app", trigger="manual", ref="main")
        reader = Store(url.set(username=role, password="choose-one").render_as_string(hide_password=False))
        try:
            run = reader.run(run_id)
            assert run is not None and run.pipeline == "app"
            with pytest.raises(DBAPIError, match="permission denied"):
                reader.create_run("app", trigger="manual", ref="main")
        finally:
            reader.close()
    finally:
        writer.close()
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP OWNED BY "{role}"'))
            connection.execute(sa.text(f'DROP ROLE IF EXISTS "{role}"'))
        admin.dispose()


def test_a_database_that_cannot_be_read_gets_a_clear_page_not_a_crash(
    serve: Serve, tmp_path: Path, postgres_url: str
) -> None:
    server = serve(tmp_path, RUNNER_DATABASE_URL=postgres_url)
    write_users(tmp_path / "ui-users", {USER: PASSWORD})
    auth = {"Authorization": basic(USER, PASSWORD)}
    assert request(server.port, "/runs", auth).status == 200
    engine = sa.create_engine(postgres_url)
    try:
        with engine.begin() as connection:
            connection.execute(sa.text("ALTER TABLE runs RENAME TO runs_away"))
    finally:
        engine.dispose()
    answer = request(server.port, "/runs", auth)
    assert answer.status == 503, answer.text
    assert "The database cannot be read just now (ProgrammingError)" in answer.text
    assert answer.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert "the status page cannot read the database: ProgrammingError" in server.output()
    # The webhook endpoint beside it is not touched.
    assert server.deliver("ping", json.dumps({"zen": "z", "hook_id": 1}).encode()).status == 202


def test_the_commit_subject_shows_escaped_on_the_runs_and_the_run_page(site: Site) -> None:
    again = site.runs["site_again"]
    assert site.run(again).subject == f"first version {SCRIPT}"
    for path in ("/runs", f"/runs/{again}"):
        page = site.get(path).text
        assert "<script>" not in page, path
        assert f"first version {ESCAPED_SCRIPT}" in page, (path, page)
    assert f'<dd id="server">{SERVER}</dd>' in site.get(f"/runs/{again}").text


def test_the_run_page_shows_its_notifications_attempts(site: Site) -> None:
    broken = site.runs["broken"]

    def attempted() -> str | None:
        page = site.get(f"/runs/{broken}").text
        row = re.search(r'<tr id="notification-\d+">(.*?)</tr>', page, re.S)
        return row[1] if row and not re.search(r'<td class="num">0</td>', row[1]) else None

    row = wait_for(attempted, "a notification attempt on the run's page", details=site.server.output)
    assert "127.0.0.1" in row and "failure" in row, row
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
    state, error = cells[2], cells[5]
    assert state in ("pending", "given_up") and error, row


def test_runs_and_deliveries_of_every_server_sharing_the_database(
    serve: Serve, tmp_path: Path, postgres_url: str
) -> None:
    server = serve(tmp_path, RUNNER_DATABASE_URL=postgres_url, RUNNER_SERVER_NAME="here")
    write_users(tmp_path / "ui-users", {USER: PASSWORD})
    auth = {"Authorization": basic(USER, PASSWORD)}
    ids = {}
    for name in ("here", "there"):
        store = Store(postgres_url, server=name)
        try:
            ids[name] = store.create_run("app", trigger="manual", ref="main")
            store.finish_run(ids[name], "succeeded")
            store.record_delivery("same-id", "ping", datetime.now(UTC), outcome="ping")
        finally:
            store.close()
    runs = request(server.port, "/runs", auth).text
    assert re.findall(r'<tr id="run-(\d+)">\s*<td>.*?</td>\s*<td class="server">(\w+)</td>', runs) == [
        (str(ids["there"]), "there"),
        (str(ids["here"]), "here"),
    ], runs
    assert '<option value="there">there</option>' in runs
    there = request(server.port, "/runs?server=there", auth).text
    assert re.findall(r'<tr id="run-(\d+)">', there) == [str(ids["there"])]
    # Each server's pipeline of the same name is its own, with its own last deploy.
    pipelines = request(server.port, "/", auth).text
    assert 'id="pipeline-app"' in pipelines and 'id="pipeline-app@there"' in pipelines
    # Another server's run: its page, without a log this server does not have.
    other = request(server.port, f"/runs/{ids['there']}", auth).text
    assert "No log here: it is on there." in other
    deliveries = request(server.port, "/deliveries", auth).text
    assert sorted(re.findall(r'<td class="server">(\w+)</td>', deliveries)) == ["here", "there"]
    only = request(server.port, "/deliveries?server=here", auth).text
    assert re.findall(r'<td class="server">(\w+)</td>', only) == ["here"]


def test_behind_nginx_a_failed_login_names_the_forwarded_client(site: Site) -> None:
    before = len(site.server.output())
    # As the README's location sends it: the client's address appended to what the client said.
    answer = site.get("/", auth=(USER, "wrong"), **{"X-Forwarded-For": "10.0.0.1, 198.51.100.23"})
    assert answer.status == 401
    logged = site.server.output()[before:]
    assert "failed login to the status page from 198.51.100.23 as 'alice' (failure 1 in a row" in logged


def test_scripts_up_creates_the_demo_user_once_with_a_random_password_and_prints_it(tmp_path: Path) -> None:
    # scripts/up in a tree of its own: its install and demo repository steps stubbed (they install packages
    # and make the demo's repository, not what is tested), its .venv this one's.
    tree, home = tmp_path / "tree", tmp_path / "home"
    (tree / "scripts").mkdir(parents=True)
    (tree / ".venv" / "bin").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "up", tree / "scripts" / "up")
    stubs = {
        "scripts/install": "#!/bin/sh\n",
        "scripts/demo-repository": "#!/bin/sh\n",
        ".venv/bin/python": f'#!/bin/sh\nexec {sys.executable} "$@"\n',
        ".venv/bin/runner": f'#!/bin/sh\nexec {sys.executable} -m runner "$@"\n',
    }
    for name, text in stubs.items():
        (tree / name).write_text(text)
        (tree / name).chmod(0o755)
    port = free_port()
    env = runner_env(home, RUNNER_PORT=str(port))
    up = subprocess.Popen(
        [str(tree / "scripts" / "up")], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        assert up.stdout is not None
        said = up.stdout.readline()  # printed before runner up starts
        found = re.search(r"login is demo / (\S+) \(shown once", said)
        assert found, said
        password = found.group(1)
        assert len(password) >= 16 and password not in (home / "ui-users").read_text()
        auth = {"Authorization": basic("demo", password)}
        wait_for(
            lambda: _answers(port, auth) == 200, "runner up's status page with the demo login", details=said
        )
        assert request(port, "/", {"Authorization": basic("demo", "not it")}).status == 401
    finally:
        stop_process(up)
    users = (home / "ui-users").read_text()
    # Started again: the user is there, nothing new is made or printed (runner up refuses the option).
    again = subprocess.run(
        [str(tree / "scripts" / "up"), "--no-such-option"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode != 0 and "login is" not in again.stdout + again.stderr, again
    assert (home / "ui-users").read_text() == users


def _answers(port: int, headers: dict[str, str]) -> int | None:
    try:
        return request(port, "/", headers).status
    except OSError:
        return None  # not listening yet
