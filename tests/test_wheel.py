"""The wheel: built from the checkout, installed into a fresh venv, used from an empty directory."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import ROOT, SECRET, free_port, git, wait_for

# The top-level directories the wheel must carry, and where they go in it.
SHIPPED = ("schema", "migrations", "templates/nginx", "packaging")
PROXY_PIPELINE = """\
on: {repository: acme/site}
workdir: site
steps:
  - nginx:
      site: app.example.com
      template: proxy.conf.j2
      vars: {server_name: app.example.com, upstream_port: 3101}
"""
APP_PIPELINE = """\
on: {repository: acme/app, branches: [main]}
workdir: checkout
steps:
  - git: {remote: REMOTE}
  - name: show
    run: echo deployed {{ commit }} && cat version.txt
"""


@dataclass
class Installed:
    wheel: Path
    venv: Path

    @property
    def runner(self) -> Path:
        return self.venv / "bin" / "runner"


def source_files() -> list[str]:
    """The checkout's files as a build sees them: tracked or new, not ignored."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    )
    return [name for name in listed.stdout.decode().split("\0") if name and (ROOT / name).is_file()]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("wheel")
    # A copy of the checkout, so that the build leaves nothing (build/, *.egg-info) in the real one.
    source = base / "source"
    for name in source_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    dist = base / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = dist.glob("runner-*.whl")
    # A fresh venv that gets runner from the wheel only; the dependencies are the project venv's (a .pth
    # adds its site-packages after the venv's own, and processes none of its .pth files, the editable
    # install's included).
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(
        subprocess.run(
            [venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (site / "project-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install"]
    done = subprocess.run(
        [*pip, "--no-deps", "--no-index", "--quiet", str(wheel)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return Installed(wheel, venv)


@pytest.fixture
def empty(tmp_path: Path) -> Path:
    """An empty working directory, far from the checkout, that is also the runner's home."""
    home = tmp_path / "home"
    home.mkdir()
    return home


def env_for(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNNER_", "PYTHON"))}
    # Validation reads the wrapper's templates first: here an empty directory, so the shipped ones count.
    (home / "own-templates").mkdir(exist_ok=True)
    env.update(
        RUNNER_HOME=str(home), RUNNER_SECRET=SECRET, RUNNER_NGINX_TEMPLATES=str(home / "own-templates")
    )
    env.update(extra)
    return env


def run(installed: Installed, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [installed.runner, *args], cwd=home, env=env_for(home), capture_output=True, text=True, timeout=60
    )


def test_the_wheel_holds_the_schema_migrations_templates_and_packaging(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    wanted = [
        name
        for name in source_files()
        if name.startswith(tuple(f"{d}/" for d in SHIPPED)) and "__pycache__" not in name
    ]
    assert any(name.startswith("packaging/systemd/") for name in wanted), wanted
    missing = [name for name in wanted if f"runner/_shipped/{name}" not in names]
    assert missing == [], missing
    # The status page's templates and assets, beside its code.
    page_files = [
        name for name in source_files() if name.startswith(("runner/ui_templates/", "runner/ui_static/"))
    ]
    assert "runner/ui_templates/base.html" in page_files and "runner/ui_static/style.css" in page_files
    assert [name for name in page_files if name not in names] == []
    assert not [name for name in names if name.endswith(".pyc")]


def test_the_installed_runner_knows_its_version_and_runs_from_the_wheel(
    installed: Installed, empty: Path
) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    done = run(installed, empty, "--version")
    assert (done.returncode, done.stdout) == (0, f"runner {version}\n"), done
    where = subprocess.run(
        [installed.venv / "bin" / "python", "-c", "import runner.shipped as s; print(s.root())"],
        cwd=empty,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(installed.venv) and where.endswith("runner/_shipped"), where


def test_the_installed_status_page_finds_its_templates_and_assets(installed: Installed, empty: Path) -> None:
    script = (
        "from runner.ui_render import STATIC_DIR, Renderer\n"
        "renderer = Renderer('/', 'x')\n"
        "for name in ('base.html', 'pipelines.html', 'runs.html', 'run.html', 'deliveries.html'):\n"
        "    renderer.environment.get_template(name)\n"
        "print(STATIC_DIR, (STATIC_DIR / 'style.css').is_file())\n"
    )
    done = subprocess.run(
        [installed.venv / "bin" / "python", "-c", script],
        cwd=empty,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    where, found = done.stdout.split()
    assert Path(where).is_relative_to(installed.venv) and found == "True", done.stdout


def test_validate_uses_the_shipped_templates_after_the_own_ones(installed: Installed, empty: Path) -> None:
    pipelines = empty / "pipelines"
    pipelines.mkdir()
    (pipelines / "site.yaml").write_text(PROXY_PIPELINE)
    done = run(installed, empty, "validate")
    assert done.returncode == 0 and "1 pipeline file(s) valid" in done.stderr, done

    # A template of the same name in the wrapper's own directory comes first.
    (empty / "own-templates" / "proxy.conf.j2").write_text("server { {{ server_name }\n")
    done = run(installed, empty, "validate")
    assert done.returncode == 1 and "template 'proxy.conf.j2' in " in done.stdout, done
    (empty / "own-templates" / "proxy.conf.j2").unlink()

    (pipelines / "site.yaml").write_text(PROXY_PIPELINE.replace("proxy.conf.j2", "proxy.conf"))
    done = run(installed, empty, "validate")
    assert done.returncode == 1 and "template 'proxy.conf' not found in" in done.stdout, done


@contextlib.contextmanager
def up_process(installed: Installed, empty: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A real ``runner up`` from the wheel, stopped on the way out whatever happened."""
    port = free_port()
    log = (empty / "up.log").open("wb")
    process = subprocess.Popen(
        [installed.runner, "up", "--port", str(port)],
        cwd=empty,
        env=env_for(empty),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


def test_db_upgrade_up_and_trigger_deploy_from_a_bare_repository(
    installed: Installed, empty: Path, tmp_path: Path
) -> None:
    bare, work = tmp_path / "app.git", tmp_path / "app-work"
    git("init", "-q", "--bare", "--initial-branch=main", bare)
    git("init", "-q", "--initial-branch=main", work)
    (work / "version.txt").write_text("version one\n")
    git("add", "version.txt", cwd=work)
    git("commit", "-q", "-m", "first", cwd=work)
    git("push", "-q", bare, "main:refs/heads/main", cwd=work)
    commit = git("rev-parse", "HEAD", cwd=work)
    (empty / "pipelines").mkdir()
    (empty / "pipelines" / "app.yaml").write_text(APP_PIPELINE.replace("REMOTE", str(bare)))

    done = run(installed, empty, "db", "upgrade")
    assert done.returncode == 0, done
    current = run(installed, empty, "db", "current")
    assert current.returncode == 0 and "(up to date)" in current.stdout, current

    with up_process(installed, empty) as process:
        queued = run(installed, empty, "trigger", "app", "--ref", "main")
        assert queued.returncode == 0, queued

        def finished() -> dict[str, object] | None:
            listed = run(installed, empty, "runs", "--json")
            runs = json.loads(listed.stdout) if listed.returncode == 0 else []
            return next((r for r in runs if r["status"] not in ("queued", "running")), None)

        result = wait_for(
            finished, "the triggered run", timeout=60, details=lambda: (empty / "up.log").read_text()
        )
        assert process.poll() is None, (empty / "up.log").read_text()
    assert (result["status"], result["commit"]) == ("succeeded", commit), result
    log = Path(str(result["log"]))
    log = log if log.is_absolute() else empty / log
    assert f"deployed {commit}" in log.read_text(), log.read_text()
    assert (empty / "checkout" / "version.txt").read_text() == "version one\n"
