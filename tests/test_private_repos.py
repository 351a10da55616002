"""Private repositories: deploy keys over ssh, runner's own known_hosts, token files over HTTPS.

Everything is real: Debian's sshd, started on a loopback port with its own host key and configuration,
serves bare repositories to the keys a test authorises; a smart-HTTP git server (``git http-backend``
behind a small CGI server) asks for a token; ``runner up`` carries out the pipelines, ``runner known-hosts``
and ``runner doctor`` run as commands. The environment runner runs in has a ``~/.ssh`` (key, config,
known_hosts) and an ssh agent whose keys the server accepts: none of them may be used.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from support import GIT_ENV, register, require, run_cli, stop_process, wait_for
from support import git as support_git
from test_isolation import Home, assert_nowhere, step_output

from runner import known_hosts
from runner.loading import load

SSHD = "/usr/sbin/sshd"


def git(*args: str | Path, cwd: Path | None = None) -> str:
    # Submodules over file paths: git refuses the file protocol for them by default.
    return support_git("-c", "protocol.file.allow=always", *args, cwd=cwd)


def keypair(path: Path) -> str:
    """A new ed25519 key at ``path`` (mode 600); its SHA256 fingerprint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", path], check=True)
    return fingerprint(path.with_name(path.name + ".pub"))


def fingerprint(public: Path) -> str:
    done = subprocess.run(["ssh-keygen", "-lf", public], capture_output=True, text=True, check=True)
    return done.stdout.split()[1]


class SshServer:
    """sshd on a loopback port: its own host key, the keys it authorises, a debug log of every key offered."""

    def __init__(self, root: Path, authorized: list[Path]) -> None:
        require(Path(SSHD).is_file(), f"{SSHD} is missing: apt-get install openssh-server")
        self.root = root
        root.mkdir(parents=True)
        self.port = _free_port()
        self.log = root / "sshd.log"
        (root / "authorized_keys").write_text("".join(p.read_text() for p in authorized))
        self.host_fingerprint = ""
        self.process: subprocess.Popen[bytes] | None = None
        # sshd's privilege separation directory.
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.start(new_host_key=True)

    def start(self, new_host_key: bool = False) -> None:
        key = self.root / "host_key"
        if new_host_key:
            for old in (key, key.with_name("host_key.pub")):
                old.unlink(missing_ok=True)
            self.host_fingerprint = keypair(key)
        config = self.root / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {key}\n"
            f"AuthorizedKeysFile {self.root / 'authorized_keys'}\nPidFile {self.root / 'sshd.pid'}\n"
            "StrictModes no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nLogLevel DEBUG1\n"
        )
        self.process = subprocess.Popen([SSHD, "-D", "-f", config, "-E", self.log])
        register(self)  # type: ignore[arg-type]

        def listening() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                pytest.fail(f"sshd exited {self.process.returncode}: {self.log_text()}")
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        wait_for(listening, "sshd to listen", details=self.log_text)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def url(self, bare: Path) -> str:
        return f"ssh://root@127.0.0.1:{self.port}{bare}"

    def stop(self) -> int:
        return stop_process(self.process) if self.process is not None else 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Agent:
    """An ssh agent holding a key, as a deploy user's login session may have."""

    def __init__(self, root: Path, key: Path) -> None:
        self.socket = root / "agent.sock"
        self.process = subprocess.Popen(
            ["ssh-agent", "-D", "-a", self.socket], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        register(self)  # type: ignore[arg-type]
        wait_for(self.socket.exists, "the ssh agent's socket")
        env = {**os.environ, "SSH_AUTH_SOCK": str(self.socket)}
        subprocess.run(["ssh-add", "-q", key], env=env, check=True, capture_output=True)

    def stop(self) -> int:
        return stop_process(self.process)


class Repos:
    """Bare repositories app.git and lib.git (app's submodule, by the relative URL ../lib.git)."""

    def __init__(self, root: Path) -> None:
        self.app, self.lib = root / "app.git", root / "lib.git"
        self.work, lib_work = root / "app-work", root / "lib-work"
        for bare in (self.app, self.lib):
            git("init", "-q", "--bare", "--initial-branch=main", bare)
        git("init", "-q", "--initial-branch=main", lib_work)
        (lib_work / "lib.txt").write_text("library one\n")
        git("add", "--all", cwd=lib_work)
        git("commit", "-q", "-m", "lib", cwd=lib_work)
        git("push", "-q", self.lib, "main", cwd=lib_work)
        git("init", "-q", "--initial-branch=main", self.work)
        git("remote", "add", "origin", self.app, cwd=self.work)
        git("submodule", "add", "-q", "../lib.git", "lib", cwd=self.work)

    def commit(self, version: str) -> str:
        (self.work / "version.txt").write_text(version + "\n")
        git("add", "--all", cwd=self.work)
        git("commit", "-q", "-m", version, cwd=self.work)
        git("push", "-q", "origin", "main", cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work)


class Rig:
    """A runner home whose processes run with a deploy user's own ssh set-up that must not be used."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.repos = Repos(tmp / "srv")
        self.deploy_fingerprint = keypair(tmp / "keys" / "deploy")
        self.user_fingerprint = keypair(tmp / "user" / ".ssh" / "id_ed25519")
        self.agent_fingerprint = keypair(tmp / "keys" / "agent")
        self.other_fingerprint = keypair(tmp / "keys" / "other")
        self.sshd = SshServer(
            tmp / "sshd",
            [
                tmp / "keys" / "deploy.pub",
                tmp / "user" / ".ssh" / "id_ed25519.pub",
                tmp / "keys" / "agent.pub",
            ],
        )
        self.agent = Agent(tmp, tmp / "keys" / "agent")
        # The deploy user's own set-up: a config that would accept any host key and offer its key, and a
        # known_hosts that holds the server's key. runner must use none of it.
        ssh = tmp / "user" / ".ssh"
        (ssh / "config").write_text(
            "Host *\n  IdentityFile ~/.ssh/id_ed25519\n  StrictHostKeyChecking no\n"
            "  UserKnownHostsFile ~/.ssh/known_hosts\n"
        )
        scanned = subprocess.run(
            ["ssh-keyscan", "-p", str(self.sshd.port), "127.0.0.1"], capture_output=True, text=True
        )
        (ssh / "known_hosts").write_text(scanned.stdout)
        self.home = Home(tmp, HOME=str(tmp / "user"), SSH_AUTH_SOCK=str(self.agent.socket))
        shutil.copy(tmp / "keys" / "deploy", self.home.path / "deploy-key")
        os.chmod(self.home.path / "deploy-key", 0o600)

    def pipeline(self, name: str, key: str | None, submodules: bool = False, release: bool = False) -> None:
        options = f"remote: {self.sshd.url(self.repos.app)}"
        if key:
            options += f', ssh-key: "{key}"'
        if submodules:
            options += ", submodules: true"
        self.home.pipeline(
            name,
            """
            on:
              repository: acme/app
            workdir: <NAME>
            <RELEASE>
            steps:
              - git: {<OPTIONS>}
              - run: cat version.txt
            """,
            NAME=name,
            OPTIONS=options,
            RELEASE="release: {keep: 5}" if release else "",
        )

    def run(self, name: str) -> tuple[int, Any]:
        run_id = self.home.trigger(name)
        return run_id, self.home.finished(run_id)

    def offered_since(self, mark: int) -> str:
        """What sshd's log says of authentication since ``mark`` (a length of the log)."""
        text = self.sshd.log_text()[mark:]
        return "\n".join(line for line in text.splitlines() if "userauth" in line or "publickey" in line)

    def add_host(self) -> subprocess.CompletedProcess[str]:
        return run_cli("known-hosts", "add", f"127.0.0.1:{self.sshd.port}", "--yes", env=self.home.env)

    def close(self) -> None:
        self.home.close()
        self.agent.stop()
        self.sshd.stop()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    rig = Rig(tmp_path)
    try:
        yield rig
    finally:
        rig.close()


def step_detail(home: Home, run_id: int, position: int) -> str:
    steps = home.store.steps(run_id)
    return steps[position - 1].detail or ""


# Known hosts ----------------------------------------------------------------------------------------------


def test_known_hosts_add_shows_the_fingerprint_and_adds_the_key_only_when_confirmed(rig: Rig) -> None:
    target = f"127.0.0.1:{rig.sshd.port}"
    refused = run_cli("known-hosts", "add", target, env=rig.home.env)
    # No terminal and no --yes: the fingerprint is shown, nothing is written.
    assert refused.returncode == 1 and "no terminal" in refused.stderr, refused
    assert rig.sshd.host_fingerprint in refused.stdout
    assert not (rig.home.path / "known_hosts").exists()

    added = rig.add_host()
    assert added.returncode == 0, added.stderr
    assert rig.sshd.host_fingerprint in added.stdout and "added 1 key(s)" in added.stdout
    text = (rig.home.path / "known_hosts").read_text()
    assert re.fullmatch(rf"\[127\.0\.0\.1\]:{rig.sshd.port} ssh-ed25519 \S+\n", text), text
    again = rig.add_host()
    assert again.returncode == 0 and "already holds" in again.stdout
    assert (rig.home.path / "known_hosts").read_text() == text
    listed = run_cli("known-hosts", "list", env=rig.home.env)
    assert rig.sshd.host_fingerprint in listed.stdout

    # The host's key changes: adding the new one is refused, the old one stays.
    rig.sshd.stop()
    rig.sshd.start(new_host_key=True)
    changed = rig.add_host()
    assert changed.returncode == 1 and "already holds other keys" in changed.stderr, changed
    assert (rig.home.path / "known_hosts").read_text() == text


def test_githubs_published_keys_are_those_of_its_fingerprints_and_setup_merges_them(tmp_path: Path) -> None:
    from runner.setup import Setup

    said = [line.split()[1] for line in known_hosts.fingerprints(known_hosts.GITHUB_KEYS)]
    assert said == list(known_hosts.GITHUB_FINGERPRINTS)

    path = tmp_path / "known_hosts"
    other = "|1|abc=|def= ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeFakeFakeFakeFakeFakeFakeFakeFakeFakeFake"
    path.write_text(f"{other}\n{known_hosts.GITHUB_KEYS[0]} a comment\n")
    setup = Setup(user="root", home=tmp_path, sites_dir=tmp_path, stop_grace=60, report=lambda _: None)
    setup.ensure_known_hosts()
    lines = path.read_text().splitlines()
    assert lines[:2] == [other, f"{known_hosts.GITHUB_KEYS[0]} a comment"]
    assert sorted(lines[2:]) == sorted(known_hosts.GITHUB_KEYS[1:])
    changes = setup.changes
    setup.ensure_known_hosts()
    assert setup.changes == changes, "a second run changed the file again"
    assert path.read_text().splitlines() == lines


# Deploy keys ----------------------------------------------------------------------------------------------


def test_a_deploy_key_clones_and_fetches_with_submodules_and_nothing_of_the_users_ssh(rig: Rig) -> None:
    assert rig.add_host().returncode == 0
    first = rig.repos.commit("version one")
    # A path ssh would read otherwise: a space (a list of files to it) and a token (%h, the host's name).
    (rig.home.path / "keys dir").mkdir()
    shutil.copy(rig.home.path / "deploy-key", rig.home.path / "keys dir" / "deploy%h")
    rig.pipeline("app", "keys dir/deploy%h", submodules=True)
    rig.home.up()
    mark = len(rig.sshd.log_text())

    run_id, run = rig.run("app")
    assert (run.status, run.commit) == ("succeeded", first), rig.home.details(run_id)
    assert step_output(rig.home.log(run_id), 2) == ["version one"]
    workdir = rig.home.path / "app"
    assert (workdir / "lib" / "lib.txt").read_text() == "library one\n"
    assert git("remote", "get-url", "origin", cwd=workdir) == rig.sshd.url(rig.repos.app)

    second = rig.repos.commit("version two")
    run_id, run = rig.run("app")
    assert (run.status, run.commit) == ("succeeded", second), rig.home.details(run_id)
    assert step_output(rig.home.log(run_id), 2) == ["version two"]

    offered = rig.offered_since(mark)
    assert rig.deploy_fingerprint in offered, offered
    # Neither the deploy user's own key nor the agent's was ever offered, though the server takes both.
    assert rig.user_fingerprint not in offered and rig.agent_fingerprint not in offered, offered


def test_a_release_pipelines_shared_clone_fetches_with_the_deploy_key_and_submodules(rig: Rig) -> None:
    assert rig.add_host().returncode == 0
    first = rig.repos.commit("version one")
    rig.pipeline("app", "deploy-key", submodules=True, release=True)
    rig.home.up()
    workdir = rig.home.path / "app"
    for version, commit in (("one", first), ("two", None)):
        commit = commit or rig.repos.commit(f"version {version}")
        run_id, run = rig.run("app")
        assert (run.status, run.commit) == ("succeeded", commit), rig.home.details(run_id)
        # Built and served from a worktree of the one clone, with its submodule.
        current = workdir / "current"
        assert os.readlink(current) == f"releases/{run_id}-{commit[:7]}"
        assert (current / "version.txt").read_text() == f"version {version}\n"
        assert (current / "lib" / "lib.txt").read_text() == "library one\n"
    assert git("remote", "get-url", "origin", cwd=workdir / "repo") == rig.sshd.url(rig.repos.app)
    assert len(list((workdir / "releases").glob("*-*"))) == 4  # two releases, each with its record


def test_a_wrong_deploy_key_fails_clearly_and_the_users_own_keys_do_not_stand_in(rig: Rig) -> None:
    assert rig.add_host().returncode == 0
    rig.repos.commit("version one")
    shutil.copy(rig.tmp / "keys" / "other", rig.home.path / "other-key")
    os.chmod(rig.home.path / "other-key", 0o600)
    rig.pipeline("app", "other-key")
    rig.home.up()
    mark = len(rig.sshd.log_text())

    run_id, run = rig.run("app")
    assert run.status == "failed", rig.home.details(run_id)
    detail = step_detail(rig.home, run_id, 1)
    assert detail.startswith(f"the remote refused the deploy key {rig.home.path / 'other-key'}"), detail
    assert detail in (run.reason or "")
    offered = rig.offered_since(mark)
    assert rig.other_fingerprint in offered
    assert rig.user_fingerprint not in offered and rig.agent_fingerprint not in offered, offered
    assert not (rig.home.path / "app" / "version.txt").exists()


def test_an_unknown_or_changed_host_key_fails_before_any_key_is_offered(rig: Rig) -> None:
    rig.repos.commit("version one")
    rig.pipeline("app", "deploy-key")
    # Without a deploy key, ssh is the deploy user's, but the host keys are runner's still.
    rig.pipeline("plain", None)
    rig.home.up()
    target = f"127.0.0.1:{rig.sshd.port}"

    # The deploy user's known_hosts holds the key, and its config accepts any: runner's has none.
    for name in ("app", "plain"):
        mark = len(rig.sshd.log_text())
        run_id, run = rig.run(name)
        assert run.status == "failed", rig.home.details(run_id)
        detail = step_detail(rig.home, run_id, 1)
        assert f"the host key of {target} is not in runner's known_hosts" in detail, detail
        assert f"`runner known-hosts add {target}`" in detail
        assert rig.offered_since(mark) == "", "ssh went on to authenticate"

    assert rig.add_host().returncode == 0
    run_id, run = rig.run("app")
    assert run.status == "succeeded", rig.home.details(run_id)

    rig.sshd.stop()
    rig.sshd.start(new_host_key=True)
    mark = len(rig.sshd.log_text())
    run_id, run = rig.run("app")
    assert run.status == "failed", rig.home.details(run_id)
    detail = step_detail(rig.home, run_id, 1)
    assert f"the host key of {target} has CHANGED" in detail, detail
    assert rig.offered_since(mark) == "", "ssh went on to authenticate"
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in rig.home.log(run_id)


def test_doctor_reports_a_key_others_can_read_and_a_remote_it_cannot_reach(rig: Rig) -> None:
    rig.pipeline("app", "deploy-key")
    key = rig.home.path / "deploy-key"
    target = f"127.0.0.1:{rig.sshd.port}"

    def doctor_line() -> str:
        done = run_cli("doctor", env=rig.home.env, timeout=120)
        found = [line for line in done.stdout.splitlines() if "repository of app" in line]
        assert found, done.stdout + done.stderr
        return "\n".join(found)

    os.chmod(key, 0o644)
    line = doctor_line()
    assert line.startswith("FAIL") and f"chmod 600 {key}" in line, line
    os.chmod(key, 0o600)
    line = doctor_line()
    assert line.splitlines()[0].startswith("ok")
    assert "FAIL" in line and f"the host key of {target} is not in runner's known_hosts" in line, line
    assert rig.add_host().returncode == 0
    line = doctor_line()
    assert "FAIL" not in line and "git ls-remote" in line and "works" in line, line


# Validation -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "said"),
    [
        ("ssh-key: k, token-file: t", "not both"),
        ('ssh-key: "k-{{ branch }}"', "must be a fixed path"),
        ("remote: https://example.com/a.git, ssh-key: k", "ssh-key is for an ssh remote"),
        ("remote: git@example.com:a.git, token-file: t", "token-file is for an https:// remote"),
        ('remote: "https://u:p@example.com/a.git", token-file: t', "holds a password"),
    ],
)
def test_validation_refuses_a_key_or_token_that_cannot_work(tmp_path: Path, options: str, said: str) -> None:
    path = tmp_path / "app.yaml"
    path.write_text(f"on:\n  repository: acme/app\nworkdir: w\nsteps:\n  - git: {{{options}}}\n")
    problems, pipeline = load(path, tmp_path)
    assert pipeline is None and any(said in str(p) for p in problems), problems
    assert all(":5:" in str(p) for p in problems), problems


# Tokens over HTTPS ----------------------------------------------------------------------------------------

TOKEN = "github_pat_SECRETTOKEN1234"


class SmartHttp:
    """``git http-backend`` behind a CGI server that wants ``x-access-token`` and one token (Basic auth)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.seen: list[str] = []  # each request's Authorization: "none", "right" or "wrong"
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        http = self
        expected = "Basic " + base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.cgi()

            def do_POST(self) -> None:
                self.cgi()

            def cgi(self) -> None:
                given = self.headers.get("Authorization")
                http.seen.append("none" if given is None else "right" if given == expected else "wrong")
                if given != expected:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="git"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                path, _, query = self.path.partition("?")
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                env = {
                    "PATH": os.environ["PATH"],
                    "GIT_PROJECT_ROOT": str(http.root),
                    "GIT_HTTP_EXPORT_ALL": "1",
                    "PATH_INFO": path,
                    "QUERY_STRING": query,
                    "REQUEST_METHOD": self.command,
                    "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                    "CONTENT_LENGTH": str(len(body)),
                    "REMOTE_USER": "x-access-token",
                    "GIT_HTTP_MAX_REQUEST_BUFFER": "100M",
                }
                if self.headers.get("Git-Protocol"):
                    env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
                done = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True)
                head, _, content = done.stdout.partition(b"\r\n\r\n")
                status = 200
                headers = []
                for line in head.decode().split("\r\n"):
                    name, _, value = line.partition(":")
                    if name.lower() == "status":
                        status = int(value.split()[0])
                    elif name:
                        headers.append((name, value.strip()))
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            def log_message(self, *_args: Any) -> None:
                pass

        return Handler

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_token_file_clones_and_fetches_over_https_and_the_token_is_written_nowhere(tmp_path: Path) -> None:
    repos = Repos(tmp_path / "srv")
    server = SmartHttp(tmp_path / "srv")
    home = Home(tmp_path)
    try:
        first = repos.commit("version one")
        (home.path / "token").write_text(TOKEN + "\n")
        os.chmod(home.path / "token", 0o600)
        (home.path / "wrong-token").write_text("github_pat_WRONGTOKEN5678\n")
        url = f"http://127.0.0.1:{server.port}/app.git"
        for name, token in (("app", "token"), ("wrong", "wrong-token")):
            home.pipeline(
                name,
                """
                on:
                  repository: acme/app
                workdir: <NAME>
                steps:
                  - git: {remote: "<URL>", token-file: <TOKEN>}
                  - run: cat version.txt
                """,
                NAME=name,
                URL=url,
                TOKEN=token,
            )
        home.up()

        run_id = home.trigger("app")
        run = home.finished(run_id)
        assert (run.status, run.commit) == ("succeeded", first), home.details(run_id)
        second = repos.commit("version two")
        run_id = home.trigger("app")
        run = home.finished(run_id)
        assert (run.status, run.commit) == ("succeeded", second), home.details(run_id)
        assert step_output(home.log(run_id), 2) == ["version two"]
        assert "right" in server.seen and "wrong" not in server.seen, server.seen
        assert git("remote", "get-url", "origin", cwd=home.path / "app") == url
        assert_nowhere(TOKEN, home, run_id, home.path / "app")
        assert TOKEN not in step_detail(home, run_id, 1)

        # A pipeline naming no remote fetches from the checkout's origin, with the token still.
        home.pipeline(
            "origin",
            """
            on:
              repository: acme/app
            workdir: app
            steps:
              - git: {token-file: token}
              - run: cat version.txt
            """,
        )
        third = repos.commit("version three")
        seen = len(server.seen)
        run_id = home.trigger("origin")
        run = home.finished(run_id)
        assert (run.status, run.commit) == ("succeeded", third), home.details(run_id)
        assert "right" in server.seen[seen:], server.seen
        assert_nowhere(TOKEN, home, run_id, home.path / "app")

        run_id = home.trigger("wrong")
        run = home.finished(run_id)
        assert run.status == "failed", home.details(run_id)
        detail = step_detail(home, run_id, 1)
        assert detail.startswith(f"the remote refused the token in {home.path / 'wrong-token'}"), detail
        assert_nowhere("WRONGTOKEN", home, run_id, home.path / "wrong")
        assert_nowhere(TOKEN, home, run_id, home.path / "wrong")
    finally:
        home.close()
        server.close()


def test_the_token_is_given_to_the_remotes_host_only(tmp_path: Path) -> None:
    """git's credential helper for a token file answers for the remote's scheme and host, nothing else."""
    from runner.git_access import GitAccess

    (tmp_path / "token").write_text(TOKEN)
    access = GitAccess(known_hosts=tmp_path / "known_hosts", token_file=tmp_path / "token")
    given = access.token("https://git.example.com/acme/app.git", None)
    assert given is not None
    env = {**os.environ, **GIT_ENV, **given.git_env()}

    def fill(url: str) -> str:
        done = subprocess.run(
            ["git", *given.git_options(), "credential", "fill"],
            input=f"url={url}\n\n",
            env=env,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return done.stdout

    assert f"password={TOKEN}\n" in fill("https://git.example.com/acme/app.git")
    assert "username=x-access-token\n" in fill("https://git.example.com/acme/app.git")
    for elsewhere in ("https://other.example.com/acme/app.git", "http://git.example.com/acme/app.git"):
        assert TOKEN not in fill(elsewhere), elsewhere


def test_runner_known_hosts_takes_host_and_port_and_nothing_that_is_an_option() -> None:
    assert known_hosts.parse_target("github.com") == ("github.com", 22)
    assert known_hosts.parse_target("git.example.com:2222") == ("git.example.com", 2222)
    assert known_hosts.parse_target("[::1]:2222") == ("::1", 2222)
    assert known_hosts.entry("git.example.com", 2222) == "[git.example.com]:2222"
    for bad in ("-oProxyCommand=x", "host:port", "host:0", "a b"):
        with pytest.raises(known_hosts.KnownHostsError):
            known_hosts.parse_target(bad)
