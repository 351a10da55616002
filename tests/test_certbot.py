"""The certbot step and its root-owned wrapper, against a real ACME server.

Debian's pebble is the ACME server: a certificate the test makes with openssl for its API, validation
always passing (PEBBLE_VA_ALWAYS_VALID) and without its random sleeps, so that certbot obtains a real
certificate in about 3 s. The wrapper runs for real, as root, with RUNNER_CERTBOT_CONF pointing at a
configuration of the test's own (it honours that only when root runs it directly, not through sudo); the
step runs inside a real ``runner work``.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import pytest
from sqlalchemy import Row
from support import FINISHED, ROOT, free_port, require, run_cli, runner_env

from runner.steps import StepFailed
from runner.steps.certbot import server_names, site_domains
from runner.store import Store

WRAPPER = ROOT / "packaging" / "libexec" / "runner-certbot"
EXAMPLE_CONF = ROOT / "packaging" / "certbot.conf"
NOBODY = 65534
T = TypeVar("T")


def need(*programs: str) -> None:
    for program in programs:
        require(shutil.which(program) is not None, f"{program} is not installed")


def need_root() -> None:
    # certbot writes root-only live/ and archive/, and the wrapper refuses to run as anyone else.
    require(os.geteuid() == 0, "the certbot wrapper's tests run it as root, and this is not root")


# pebble ------------------------------------------------------------------------------------------------


class Pebble:
    """A real ACME server on a free loopback port, with a certificate of its own for its API."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.ca = directory / "pebble-api.pem"
        key = directory / "pebble-api.key"
        made = subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", key, "-out", self.ca, "-days", "2", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        self.port = free_port()
        config = directory / "pebble.json"
        config.write_text(
            json.dumps(
                {
                    "pebble": {
                        "listenAddress": f"127.0.0.1:{self.port}",
                        "managementListenAddress": f"127.0.0.1:{free_port()}",
                        "certificate": str(self.ca),
                        "privateKey": str(key),
                        # Never dialled: validation always passes. Free ports all the same.
                        "httpPort": free_port(),
                        "tlsPort": free_port(),
                        "ocspResponderURL": "",
                        "externalAccountBindingRequired": False,
                    }
                }
            )
        )
        env = {
            **os.environ,
            "PEBBLE_VA_ALWAYS_VALID": "1",
            "PEBBLE_VA_NOSLEEP": "1",
            # Pebble rejects 5% of good nonces by default to exercise clients' retries: not here.
            "PEBBLE_WFE_NONCEREJECT": "0",
            "PEBBLE_AUTHZREUSE": "100",
        }
        self.log_path = directory / "pebble.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            ["pebble", "-config", str(config)], env=env, stdout=self._log, stderr=subprocess.STDOUT
        )
        self.url = f"https://127.0.0.1:{self.port}/dir"
        context = ssl.create_default_context(cafile=str(self.ca))
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"pebble exited {self.process.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.url, context=context, timeout=2) as answer:  # noqa: S310
                    if "newOrder" in json.load(answer):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"pebble did not answer at {self.url}:\n{self.output()}")
            time.sleep(0.05)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


@pytest.fixture(scope="module")
def pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    need("pebble", "certbot", "openssl")
    need_root()
    server = Pebble(tmp_path_factory.mktemp("pebble"))
    try:
        yield server
    finally:
        server.stop()


# The wrapper -------------------------------------------------------------------------------------------


def write_conf(path: Path, pebble: Pebble | None, state: Path, **extra: str) -> Path:
    """A wrapper configuration for certbot against ``pebble``, its directories under ``state``."""
    values = {
        "server": pebble.url if pebble else "https://127.0.0.1:9/dir",
        "authenticator": "standalone",
        "http-01-port": str(free_port()),
        "http-01-address": "127.0.0.1",
        "register-unsafely-without-email": "yes",
        "config-dir": str(state / "etc"),
        "work-dir": str(state / "lib"),
        "logs-dir": str(state / "log"),
        "ca-bundle": str(pebble.ca if pebble else "/etc/ssl/certs/ca-certificates.crt"),
        **extra,
    }
    path.write_text(
        "# written by tests/test_certbot.py\n" + "".join(f"{k} = {v}\n" for k, v in values.items())
    )
    path.chmod(0o644)
    return path


def wrapper_env(conf: Path | None) -> dict[str, str]:
    # As root runs it directly: pytest itself may run under sudo, whose variables would void the override.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SUDO_", "RUNNER_"))}
    if conf is not None:
        env["RUNNER_CERTBOT_CONF"] = str(conf)
    return env


def wrapper(conf: Path | None, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [WRAPPER, *args], env=wrapper_env(conf), capture_output=True, text=True, timeout=120, check=False
    )


def certificate_names(cert: Path) -> set[str]:
    shown = subprocess.run(
        ["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", cert],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return set(re.findall(r"DNS:([^,\s]+)", shown.stdout))


def issued(state: Path, name: str) -> list[str]:
    """The certificates certbot has kept for ``name``, oldest first."""
    archive = state / "etc" / "archive" / name
    return sorted(p.name for p in archive.glob("cert*.pem")) if archive.is_dir() else []


def test_the_wrapper_obtains_a_certificate_then_skips_and_reissues_only_when_needed(
    pebble: Pebble, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    conf = write_conf(tmp_path / "certbot.conf", pebble, state)
    live = state / "etc" / "live" / "app" / "cert.pem"

    started = time.monotonic()
    done = wrapper(conf, "--cert-name", "app", "-d", "app.example.com", "-d", "www.example.com")
    took = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr + pebble.output()[-2000:]
    assert re.fullmatch(
        r"runner-certbot: obtained: certificate app for app.example.com, www.example.com, "
        r"valid until \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(\d+ days left\)\n",
        done.stdout,
    ), done.stdout
    assert certificate_names(live) == {"app.example.com", "www.example.com"}
    assert issued(state, "app") == ["cert1.pem"]
    assert took < 20, f"obtaining took {took:.1f} s"

    # The same domains, in another order, far from expiry: certbot is not even asked.
    started = time.monotonic()
    done = wrapper(conf, "--cert-name", "app", "-d", "www.example.com", "-d", "app.example.com")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("runner-certbot: skipped: certificate app already covers "), done.stdout
    assert "valid until" in done.stdout
    assert issued(state, "app") == ["cert1.pem"]
    assert time.monotonic() - started < 5

    # One more domain: a new certificate, which has it.
    done = wrapper(
        conf, "--cert-name", "app", "-d", "app.example.com", "-d", "www.example.com", "-d", "api.example.com"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("runner-certbot: renewed (added api.example.com): certificate app"), (
        done.stdout
    )
    assert certificate_names(live) == {"app.example.com", "www.example.com", "api.example.com"}
    assert issued(state, "app") == ["cert1.pem", "cert2.pem"]

    # Close to expiry (pebble's certificates last 5 years: renewing 10 years ahead is always close).
    write_conf(conf, pebble, state, **{"renew-before-days": "3650"})
    done = wrapper(
        conf, "--cert-name", "app", "-d", "app.example.com", "-d", "www.example.com", "-d", "api.example.com"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("runner-certbot: renewed: certificate app for "), done.stdout
    assert issued(state, "app") == ["cert1.pem", "cert2.pem", "cert3.pem"]


REFUSED_ARGUMENTS = {
    "deploy hook": ["--cert-name", "app", "-d", "app.example.com", "--deploy-hook", "id > {marker}"],
    "pre hook": ["--pre-hook", "id > {marker}", "--cert-name", "app", "-d", "app.example.com"],
    "post hook": ["--cert-name", "app", "--post-hook", "id > {marker}", "-d", "app.example.com"],
    "manual auth hook": [
        "--cert-name",
        "app",
        "-d",
        "app.example.com",
        "--manual-auth-hook",
        "id > {marker}",
    ],
    "config file": ["--cert-name", "app", "-d", "app.example.com", "--config", "{marker}"],
    "short config": ["-c", "{marker}", "--cert-name", "app", "-d", "app.example.com"],
    "unknown option": ["--cert-name", "app", "-d", "app.example.com", "--staging"],
    "option as a domain": ["--cert-name", "app", "-d", "--deploy-hook=id"],
    "domain with a leading dash": ["--cert-name", "app", "-d", "-app.example.com"],
    "domain with a space": ["--cert-name", "app", "-d", "app.example.com www.example.com"],
    "upper-case domain": ["--cert-name", "app", "-d", "App.example.com"],
    "wildcard domain": ["--cert-name", "app", "-d", "*.example.com"],
    "IP address": ["--cert-name", "app", "-d", "127.0.0.1"],
    "cert name with a slash": ["--cert-name", "../../etc/passwd", "-d", "app.example.com"],
    "cert name with a slash inside": ["--cert-name", "app/x", "-d", "app.example.com"],
    "cert name with ..": ["--cert-name", "app..x", "-d", "app.example.com"],
    "cert name with a leading dash": ["--cert-name", "-app", "-d", "app.example.com"],
    "cert name joined with =": ["--cert-name=app", "-d", "app.example.com"],
    "domain joined to -d": ["--cert-name", "app", "-dapp.example.com"],
    "cert name twice": ["--cert-name", "app", "--cert-name", "other", "-d", "app.example.com"],
    "no domain": ["--cert-name", "app"],
    "no cert name": ["-d", "app.example.com"],
    "a value missing": ["--cert-name", "app", "-d"],
}


@pytest.mark.parametrize("args", REFUSED_ARGUMENTS.values(), ids=REFUSED_ARGUMENTS.keys())
def test_the_wrapper_accepts_only_a_cert_name_and_domains(args: list[str], tmp_path: Path) -> None:
    require(Path("/usr/bin/python3").exists(), "the wrapper runs with /usr/bin/python3, which is missing")
    marker = tmp_path / "marker"
    state = tmp_path / "state"
    conf = write_conf(tmp_path / "certbot.conf", None, state)
    done = wrapper(conf, *(arg.replace("{marker}", str(marker)) for arg in args))
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == ""
    assert done.stderr.startswith("runner-certbot: ")
    assert "usage: runner-certbot --cert-name NAME -d DOMAIN [-d DOMAIN ...]" in done.stderr
    # Refused before anything was read or run.
    assert not marker.exists()
    assert not state.exists()


def test_the_wrapper_names_what_it_refuses(tmp_path: Path) -> None:
    require(Path("/usr/bin/python3").exists(), "the wrapper runs with /usr/bin/python3, which is missing")
    done = wrapper(None, "--cert-name", "app", "-d", "app.example.com", "--deploy-hook", "id")
    assert "refusing '--deploy-hook': only --cert-name NAME and -d DOMAIN are accepted" in done.stderr
    done = wrapper(None, "--cert-name", "app", "-d", "-app.example.com")
    assert "refusing domain '-app.example.com'" in done.stderr
    done = wrapper(None, "--cert-name", "a/../b", "-d", "app.example.com")
    assert "refusing certificate name 'a/../b'" in done.stderr


def test_the_wrapper_imports_nothing_from_its_callers_environment(tmp_path: Path) -> None:
    require(Path("/usr/bin/python3").exists(), "the wrapper runs with /usr/bin/python3, which is missing")
    planted = tmp_path / "planted"
    planted.mkdir()
    marker = tmp_path / "imported"
    # The wrapper imports ssl: a module of that name first on PYTHONPATH would run as root, but for -I.
    (planted / "ssl.py").write_text(f"open({str(marker)!r}, 'w').write('imported')\n")
    env = {**wrapper_env(None), "PYTHONPATH": str(planted), "PYTHONSTARTUP": str(planted / "ssl.py")}
    done = subprocess.run(
        [WRAPPER, "--unknown"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2, done.stderr
    assert not marker.exists()


def test_the_wrapper_refuses_a_configuration_others_could_change(tmp_path: Path) -> None:
    need_root()
    state = tmp_path / "state"
    args = ("--cert-name", "app", "-d", "app.example.com")

    def refused(conf: Path, why: str) -> None:
        done = wrapper(conf, *args)
        assert done.returncode == 1, done.stdout + done.stderr
        assert why in done.stderr, done.stderr
        assert not state.exists(), "certbot ran"

    conf = write_conf(tmp_path / "certbot.conf", None, state)
    conf.chmod(0o664)
    refused(conf, f"refusing {conf}: it is writable by group or others (mode 664)")
    conf.chmod(0o646)
    refused(conf, f"refusing {conf}: it is writable by group or others (mode 646)")
    conf.chmod(0o644)
    os.chown(conf, NOBODY, NOBODY)
    refused(conf, f"refusing {conf}: it is owned by uid {NOBODY}, not by root")
    os.chown(conf, 0, 0)

    link = tmp_path / "link.conf"
    link.symlink_to(conf)
    refused(link, f"cannot open the configuration {link}")

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o775)
    inside = write_conf(shared / "certbot.conf", None, state)
    refused(inside, f"the directory {shared} is not root's or is writable by group or others")

    conf.write_text(conf.read_text() + "deploy-hook = id > /tmp/x\n")
    refused(conf, "unknown key 'deploy-hook'")
    write_conf(conf, None, state, authenticator="manual")
    refused(conf, "authenticator must be one of webroot, nginx, standalone, not 'manual'")
    refused(tmp_path / "missing.conf", f"no configuration at {tmp_path / 'missing.conf'}")


def test_a_certbot_failure_is_told_in_one_line_with_certbots_own_error(tmp_path: Path) -> None:
    need("certbot", "openssl")
    need_root()
    state = tmp_path / "state"
    # No ACME server listens there.
    conf = write_conf(tmp_path / "certbot.conf", None, state, server=f"https://127.0.0.1:{free_port()}/dir")
    done = wrapper(conf, "--cert-name", "app", "-d", "app.example.com")
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout == ""
    last = done.stderr.splitlines()[-1]
    assert re.fullmatch(
        rf"runner-certbot: certbot failed \(exit status 1\): .*Connection refused; its log is in {state}/log",
        last,
    ), done.stderr
    assert not (state / "etc" / "live" / "app").exists()


def test_through_sudo_the_caller_cannot_choose_the_configuration(tmp_path: Path) -> None:
    need("sudo")
    need_root()
    if Path("/etc/runner/certbot.conf").exists():
        pytest.skip("this machine has a real /etc/runner/certbot.conf, which this test would use")
    state = tmp_path / "state"
    conf = write_conf(tmp_path / "certbot.conf", None, state)
    done = subprocess.run(
        ["sudo", "-n", "/usr/bin/env", f"RUNNER_CERTBOT_CONF={conf}", WRAPPER, "--cert-name", "app", "-d",
         "app.example.com"],
        env=wrapper_env(None), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "no configuration at /etc/runner/certbot.conf" in done.stderr
    assert not state.exists()


def load_wrapper() -> ModuleType:
    """The wrapper as a module, to read a configuration without running certbot."""
    loader = importlib.machinery.SourceFileLoader("runner_certbot", str(WRAPPER))
    spec = importlib.util.spec_from_loader("runner_certbot", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_the_shipped_example_configuration_is_valid(tmp_path: Path) -> None:
    need_root()
    copy = tmp_path / "certbot.conf"
    shutil.copyfile(EXAMPLE_CONF, copy)
    copy.chmod(0o644)
    conf = load_wrapper().read_config(copy)
    assert conf["server"] == "https://acme-v02.api.letsencrypt.org/directory"
    assert (conf["authenticator"], conf["webroot"]) == ("webroot", "/var/www/letsencrypt")
    assert (conf["config-dir"], conf["renew-before-days"]) == ("/etc/letsencrypt", "30")


# Domains from an nginx site ----------------------------------------------------------------------------

SITE = r"""
# server_name commented.example.com;
server {
    listen 80;
    server_name app.example.com www.example.com;  # server_name trailing.example.com;
    server_name
        API.Example.com        # nginx names are case-insensitive
        "quoted.example.com"
        _ localhost ~^(?<sub>.+)\.example\.org$ *.example.com .example.net 127.0.0.1 [::1] $hostname
        www.example.com.;
    location / { return 200 "server_name fake.example.com;"; }
    # server_name commented-too.example.com
}
server { listen 443 ssl; server_name app.example.com; ssl_certificate /etc/x; }
"""


def test_the_domains_of_a_site_are_its_server_names_that_are_domains(tmp_path: Path) -> None:
    site = tmp_path / "app.conf"
    site.write_text(SITE)
    domains, ignored = site_domains(site)
    assert domains == ["app.example.com", "www.example.com", "api.example.com", "quoted.example.com"]
    assert ignored == [
        "_ (catch-all)",
        "localhost (no dot)",
        r"~^(?<sub>.+)\.example\.org$ (regular expression)",
        "*.example.com (wildcard)",
        ".example.net (wildcard)",
        "127.0.0.1 (IP address)",
        "[::1] (IP address)",
        "$hostname (variable)",
    ]
    assert [line for _, line in server_names(SITE)][:3] == [5, 5, 7]


def test_a_site_with_a_bad_name_or_none_to_certify_fails_the_step(tmp_path: Path) -> None:
    site = tmp_path / "app.conf"
    site.write_text("server {\n    server_name app.example.com\n        exa_mple.com;\n}\n")
    with pytest.raises(
        StepFailed, match=rf"^{re.escape(str(site))}:3: server_name 'exa_mple.com' is not a valid"
    ):
        site_domains(site)
    site.write_text("server { server_name _ localhost; }\n")
    with pytest.raises(StepFailed, match="name no domain a certificate can be issued for"):
        site_domains(site)
    with pytest.raises(StepFailed, match="no site file"):
        site_domains(tmp_path / "missing.conf")


# The step, in a real runner work ------------------------------------------------------------------------


class Runner:
    """A runner home with its database, a ``runner work`` process, and runs triggered by hand."""

    def __init__(self, tmp: Path, **env: str) -> None:
        self.home = tmp / "home"
        (self.home / "pipelines").mkdir(parents=True)
        self.database_url = f"sqlite:///{self.home / 'runner.db'}"
        self.env = runner_env(self.home, self.database_url, **env)
        upgraded = run_cli("db", "upgrade", env=self.env)
        assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
        self.store = Store(self.database_url)
        self.log_path = tmp / "worker.log"
        self._log = self.log_path.open("wb")
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "runner", "work"],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.wait(lambda: "worker started" in self.output(), "runner work to start")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self, check: Callable[[], T | None], what: str, timeout: float = 60) -> T:
        deadline = time.monotonic() + timeout
        while not (value := check()):
            if self.worker.poll() is not None:
                pytest.fail(f"runner work exited {self.worker.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}\n{self.output()[-4000:]}")
            time.sleep(0.05)
        return value

    def pipeline(self, name: str, text: str) -> None:
        (self.home / "pipelines" / f"{name}.yaml").write_text(textwrap.dedent(text).lstrip())

    def trigger(self, pipeline: str) -> Row[Any]:
        done = run_cli("trigger", pipeline, "--ref", "main", env=self.env)
        assert done.returncode == 0, done.stdout + done.stderr
        match = re.search(r"^run (\d+) queued", done.stdout, re.MULTILINE)
        assert match is not None, done.stdout
        run_id = int(match.group(1))

        def finished() -> Row[Any] | None:
            run = self.store.run(run_id)
            return run if run is not None and run.status in FINISHED else None

        return self.wait(finished, f"run {run_id} to finish")

    def steps(self, run: Row[Any]) -> list[tuple[str, str, str]]:
        return [(s.name, s.status, s.detail or "") for s in self.store.steps(run.id)]

    def log(self, run: Row[Any]) -> str:
        assert run.log_path
        return Path(run.log_path).read_text(errors="replace")

    def close(self) -> None:
        if self.worker.poll() is None:
            self.worker.terminate()
            try:
                self.worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.worker.kill()
                self.worker.wait()
        self._log.close()
        self.store.close()


CERTBOT_PIPELINE = """
    on: {repository: acme/site}
    workdir: site  # never made: the step does not need it
    steps:
      - name: site certificate
        certbot: {cert-name: site, domains-from-site: site}
      - name: api certificate
        certbot: {cert-name: api, domains: [api.example.com]}
"""


def test_the_step_obtains_a_certificate_for_a_sites_domains_then_skips_then_reissues(
    pebble: Pebble, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    conf = write_conf(tmp_path / "certbot.conf", pebble, state)
    sites = tmp_path / "sites"
    sites.mkdir()
    site = sites / "site.conf"
    site.write_text("server {\n  listen 80;\n  server_name site.example.com www.site.example.com _;\n}\n")
    runner = Runner(
        tmp_path,
        RUNNER_NGINX_SITES_DIR=str(sites),
        # As the sudo prefix would be, with the wrapper pointed at the test's configuration instead.
        RUNNER_CERTBOT=f"/usr/bin/env RUNNER_CERTBOT_CONF={conf} {WRAPPER}",
    )
    try:
        runner.pipeline("site", CERTBOT_PIPELINE)

        run = runner.trigger("site")
        assert run.status == "succeeded", runner.log(run)
        (site_step, api_step) = runner.steps(run)
        assert site_step[:2] == ("site certificate", "succeeded"), runner.log(run)
        assert site_step[2].startswith(
            "obtained: certificate site for site.example.com, www.site.example.com"
        )
        assert api_step[:2] == ("api certificate", "succeeded")
        assert api_step[2].startswith("obtained: certificate api for api.example.com, valid until ")
        assert certificate_names(state / "etc/live/site/cert.pem") == {
            "site.example.com",
            "www.site.example.com",
        }
        assert certificate_names(state / "etc/live/api/cert.pem") == {"api.example.com"}
        log = runner.log(run)
        assert f"domains from {site}: site.example.com, www.site.example.com (left out: _ (catch-all))" in log
        assert "--cert-name site -d site.example.com -d www.site.example.com" in log

        # Nothing changed: both steps are recorded as skipped, with why, and no certificate is issued.
        run = runner.trigger("site")
        assert run.status == "succeeded", runner.log(run)
        for name, status, detail in runner.steps(run):
            assert status == "skipped", (name, detail)
            assert detail.startswith(f"certificate {name.split()[0]} already covers "), detail
            assert "valid until" in detail
        assert issued(state, "site") == ["cert1.pem"]
        assert issued(state, "api") == ["cert1.pem"]

        # The site gains a name: its certificate is issued again, with it.
        site.write_text(
            "server {\n  listen 80;\n  server_name site.example.com www.site.example.com;\n"
            "  server_name new.site.example.com;\n}\n"
        )
        run = runner.trigger("site")
        assert run.status == "succeeded", runner.log(run)
        (site_step, api_step) = runner.steps(run)
        assert site_step[1] == "succeeded", runner.log(run)
        assert site_step[2].startswith("renewed (added new.site.example.com): certificate site for ")
        assert api_step[1] == "skipped"
        assert certificate_names(state / "etc/live/site/cert.pem") == {
            "site.example.com",
            "www.site.example.com",
            "new.site.example.com",
        }
        assert issued(state, "site") == ["cert1.pem", "cert2.pem"]

        # What the wrapper refuses reaches the step's record: here, a configuration others could change.
        conf.chmod(0o666)
        run = runner.trigger("site")
        assert run.status == "failed"
        assert runner.steps(run) == [
            ("site certificate", "failed", f"refusing {conf}: it is writable by group or others (mode 666)")
        ]
    finally:
        runner.close()


ONE_STEP = "on: {{repository: acme/site}}\nworkdir: app\nsteps:\n  - certbot: {step}\n"


def test_the_step_fails_naming_the_missing_sudoers_rule_or_the_bad_server_name(tmp_path: Path) -> None:
    need("sudo", "runuser")
    need_root()
    sites = tmp_path / "sites"
    sites.mkdir()
    (sites / "bad.conf").write_text("server { server_name ok.example.com bad_name.example.com; }\n")
    runner = Runner(
        tmp_path,
        RUNNER_NGINX_SITES_DIR=str(sites),
        # sudo for a user the sudoers file allows nothing: refused, as a deploy user without the rule is.
        RUNNER_CERTBOT=f"runuser -u nobody -- sudo -n {WRAPPER}",
    )
    try:
        runner.pipeline("nosudo", ONE_STEP.format(step="{cert-name: app, domains: [app.example.com]}"))
        run = runner.trigger("nosudo")
        assert run.status == "failed"
        [(_, status, detail)] = runner.steps(run)
        assert status == "failed"
        assert detail.startswith(
            f"sudo refused to run {WRAPPER} without a password: add to /etc/sudoers.d/root:"
        )
        assert detail.endswith(f"ALL=(root) NOPASSWD: {WRAPPER}"), detail

        runner.pipeline("badsite", ONE_STEP.format(step="{cert-name: app, domains-from-site: bad}"))
        run = runner.trigger("badsite")
        [(_, status, detail)] = runner.steps(run)
        assert (run.status, status) == ("failed", "failed")
        assert (
            detail == f"{sites / 'bad.conf'}:1: server_name 'bad_name.example.com' is not a valid domain name"
        )
    finally:
        runner.close()
