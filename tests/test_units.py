"""The shipped systemd units, as ``runner setup`` renders them, checked by ``systemd-analyze verify``.

They are rendered for a real throw-away user (so that ``User=`` names one) with the venv's ``runner`` as
``ExecStart``, written to a temporary directory and verified there: systemd need not run for that.
``systemd-analyze verify`` exits 0 on warnings (an unknown key, a bad boolean, a relative path), so its
stderr must be empty too. Then what the hardening promises is read from the files themselves.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import require
from test_setup import check, need_root, remove_user, unique_name

from runner.setup import Setup


@pytest.fixture(scope="module")
def user() -> Iterator[str]:
    need_root("useradd", "userdel")
    name = unique_name()
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(remove_user, name)
        check(
            ["useradd", "--system", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin", name]
        )
        yield name


Unit = dict[str, dict[str, list[str]]]


def parse(text: str) -> Unit:
    """A unit file's sections and their settings; a key given several times keeps every value."""
    unit: Unit = {}
    section: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = unit.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def one(unit: Unit, key: str) -> str:
    values = unit["Service"].get(key, [])
    assert len(values) == 1, f"{key}: {values}"
    return values[0]


def seconds(timespan: str) -> float:
    """A systemd time span in seconds, as systemd itself reads it."""
    done = check(["systemd-analyze", "timespan", timespan])
    match = re.search(r"^\s*μs:\s*(\d+)\s*$", done.stdout, re.MULTILINE)
    assert match, done.stdout
    return int(match.group(1)) / 1e6


Rendered = tuple[Setup, dict[str, Path]]


def render(user: str, directory: Path, stop_grace: float) -> Rendered:
    """The units for ``user``, written to ``directory``/units, by role ("web", "worker")."""
    require(shutil.which("systemd-analyze") is not None, "systemd-analyze is not installed")
    setup = Setup(user=user, home=directory / "home", sites_dir=directory / "sites", stop_grace=stop_grace)
    assert setup.runner_bin.is_file(), f"the venv's runner is not at {setup.runner_bin}"
    units = directory / "units"
    units.mkdir()
    files = {}
    for name, content in setup.units().items():
        (units / name).write_bytes(content)
        files[name.removeprefix(f"{user}-").removesuffix(".service")] = units / name
    assert sorted(files) == ["web", "web.socket", "worker"]
    return setup, files


# The default grace, and one that is not a whole number of seconds: both must make valid time spans.
GRACES = pytest.mark.parametrize("grace", [60.0, 7.5])


@pytest.fixture
def rendered(user: str, tmp_path: Path) -> Rendered:
    return render(user, tmp_path, 60.0)


@GRACES
def test_the_units_pass_systemd_analyze_verify_without_a_warning(
    user: str, tmp_path: Path, grace: float
) -> None:
    setup, files = render(user, tmp_path, grace)
    for role, path in files.items():
        text = path.read_text()
        assert not re.search(r"@[A-Z_]+@", text), f"{path.name} still holds a placeholder"
        if role == "web.socket":
            continue
        assert f"\nUser={setup.web_user if role == 'web' else setup.user}\n" in text
        assert f"\nExecStart={setup.runner_bin} " in text
    done = subprocess.run(
        ["systemd-analyze", "verify", *map(str, files.values())],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, ""), done.stdout + done.stderr


def test_the_web_unit_gets_no_privilege_and_writes_only_the_main_queue(
    rendered: Rendered,
) -> None:
    setup, files = rendered
    web = parse(files["web"].read_text())
    for key, value in (
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("Restart", "on-failure"),
        ("ExecStart", f"{setup.runner_bin} serve"),
    ):
        assert one(web, key) == value, key
    families = one(web, "RestrictAddressFamilies").split()
    assert families and not families[0].startswith("~"), "an allow-list, not a deny-list"
    assert set(families) <= {"AF_INET", "AF_INET6", "AF_UNIX"}, families
    assert web["Service"]["ReadWritePaths"] == [str(setup.home / "queues" / "main")]
    # The status page reads the logs and the pipelines, and may not write them.
    read_only = one(web, "ReadOnlyPaths").split()
    assert read_only == [f"-{setup.home / 'logs'}", f"-{setup.home / 'pipelines'}"], read_only


def test_the_web_unit_runs_as_its_own_user_and_alone_gets_the_secret(rendered: Rendered) -> None:
    # The secret reaches the web unit as a credential (systemd, as root, copies it into a directory only
    # the unit's user can read; %d is that directory), never through the env file both units read.
    setup, files = rendered
    web, worker = parse(files["web"].read_text()), parse(files["worker"].read_text())
    assert (one(web, "User"), one(web, "Group")) == (f"{setup.user}-web", f"{setup.user}-web")
    assert one(web, "SupplementaryGroups") == setup.user
    assert one(web, "LoadCredential") == f"secret:/etc/{setup.user}/secret"
    assert "RUNNER_SECRET_FILE=%d/secret" in web["Service"]["Environment"]
    assert one(web, "UMask") == "0027", "the worker reads the entries through the group: 0640"
    for key in ("LoadCredential", "SetCredential", "LoadCredentialEncrypted"):
        assert key not in worker["Service"], f"the worker unit has {key}"
    assert not any("RUNNER_SECRET" in value for value in worker["Service"].get("Environment", []))
    # Nor from an env file that an older set-up or a hand edit left naming it.
    assert set(one(worker, "UnsetEnvironment").split()) >= {"RUNNER_SECRET", "RUNNER_SECRET_FILE"}


@GRACES
def test_the_worker_unit_lets_sudo_work_and_outlasts_its_stop_grace(
    user: str, tmp_path: Path, grace: float
) -> None:
    setup, files = render(user, tmp_path, grace)
    worker = parse(files["worker"].read_text())
    service = worker["Service"]
    # sudo is setuid: NoNewPrivileges, an empty capability bounding set or a no-SUID mount would stop it.
    assert service.get("NoNewPrivileges", ["no"]) == ["no"]
    assert service.get("CapabilityBoundingSet", []) in ([], ["~"]), service.get("CapabilityBoundingSet")
    assert one(worker, "ExecStart") == f"{setup.runner_bin} work"
    assert one(worker, "KillMode") == "mixed"
    assert one(worker, "Restart") == "on-failure"
    environment = dict(
        item.split("=", 1) for value in service.get("Environment", []) for item in value.split()
    )
    stop_grace = float(environment["RUNNER_STOP_GRACE"])
    assert stop_grace == grace
    assert seconds(one(worker, "TimeoutStopSec")) > stop_grace


def test_the_worker_may_write_the_sites_directory_it_was_set_up_for(
    rendered: Rendered,
) -> None:
    # ProtectSystem=full makes /etc read-only: the nginx step writes into the sites directory setup was
    # given (its ACL is set on that one), so that is the directory the worker must be allowed to write.
    # A path that may be missing (/etc/letsencrypt before certbot ever ran) must be marked optional with
    # "-": systemd refuses to start a unit whose ReadWritePaths= names a missing path.
    setup, files = rendered
    worker = parse(files["worker"].read_text())
    paths = [path for value in worker["Service"].get("ReadWritePaths", []) for path in value.split()]
    assert str(setup.sites_dir) in [path.removeprefix("-") for path in paths], paths
    for path in paths:
        if path.removeprefix("-") not in (str(setup.sites_dir), str(setup.home)):
            assert path.startswith("-"), f"ReadWritePaths={path}: the worker would not start without it"


def test_the_web_unit_takes_its_socket_from_a_socket_unit_of_the_same_name(rendered: Rendered) -> None:
    # systemd activates NAME-web.service for NAME-web.socket by their common name; Requires= and After=
    # make the service start with its socket, so that `runner serve` is always handed the socket and a
    # restart of the service refuses no connection (they wait in the socket's backlog).
    setup, files = rendered
    web, sock = parse(files["web"].read_text()), parse(files["web.socket"].read_text())
    assert files["web.socket"].name == f"{setup.user}-web.socket"
    assert f"{setup.user}-web.socket" in web["Unit"]["Requires"]
    assert f"{setup.user}-web.socket" in " ".join(web["Unit"]["After"]).split()
    assert sock["Socket"]["ListenStream"] == ["127.0.0.1:3400"]
    assert int(sock["Socket"]["Backlog"][0]) >= 1024
    assert sock["Socket"].get("Accept", ["no"]) == ["no"], (
        "one service for the socket, not one per connection"
    )
    assert sock["Install"]["WantedBy"] == ["sockets.target"]


@pytest.mark.parametrize(
    ("settings", "listen"),
    [("RUNNER_HOST=0.0.0.0\nRUNNER_PORT=8080\n", "0.0.0.0:8080"), ("export RUNNER_HOST=::1\n", "[::1]:3400")],
)
def test_the_socket_unit_listens_where_the_env_file_says(
    user: str, tmp_path: Path, settings: str, listen: str
) -> None:
    setup = Setup(
        user=user, home=tmp_path / "home", sites_dir=tmp_path / "sites", prefix=tmp_path, stop_grace=60.0
    )
    setup.env_file.parent.mkdir(parents=True)
    setup.env_file.write_text("RUNNER_HOME=/var/lib/x\n" + settings)
    sock = parse(setup.units()[f"{user}-web.socket"].decode())
    assert sock["Socket"]["ListenStream"] == [listen]
