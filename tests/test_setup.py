"""``runner setup`` for real: a throw-away deploy user, its directories, secret, sudoers, ACLs and units.

Each instance is a new user named ``rt-<random hex>`` and a temporary directory holding its home, a sites
directory standing in for /etc/nginx/conf.d, and the ``--prefix`` root that takes what setup would put under
/etc and /usr/local. What the deploy user can do afterwards is tried as that user (setpriv, as in
tests/test_sudo.py). The sudoers files setup renders are installed for real into /etc/sudoers.d (checked with
visudo first) and asked about with ``sudo -l``; systemd is not PID 1 here, so a right is proven with
``sudo -n -l COMMAND``, never by running the command. Everything a test creates outside its temporary
directories (users, groups, sudoers files, ACL entries, a stand-in certbot wrapper) is removed afterwards,
also when the test fails.

Needs root, useradd, setfacl, visudo, sudo and setpriv; nginx for the optional ``nginx -t`` check. The
helpers at the top are shared with tests/test_doctor.py and tests/test_units.py.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import secrets
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support import ROOT, Account, require

from runner.known_hosts import GITHUB_KEYS
from runner.setup import Setup

PACKAGED_WRAPPER = ROOT / "packaging" / "libexec" / "runner-certbot"
# Where the shipped sudoers file points the certbot step, whatever --prefix setup was given.
SYSTEM_WRAPPER = Path("/usr/local/libexec/runner-certbot")
PACKAGED_NGINX_WRAPPER = ROOT / "packaging" / "libexec" / "runner-nginx"
NGINX_WRAPPER = Path("/usr/local/libexec/runner-nginx")
SYSTEMCTL = "/usr/bin/systemctl"
PLACEHOLDER = re.compile(r"@[A-Z_]+@")
NOTHING_TO_CHANGE = "nothing to change: everything is set up"
# Root without its power to read what permissions deny it: what reads a site then reads it as "other".
BLIND_ROOT = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all", "--"]


# Shared helpers ----------------------------------------------------------------------------------------


def need_root(*programs: str) -> None:
    require(os.geteuid() == 0, "these tests add users, sudoers files and ACLs: they must run as root")
    for program in programs:
        require(shutil.which(program) is not None, f"{program} is not installed")


def check(argv: Sequence[str | Path]) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as root; it must succeed."""
    command = [str(arg) for arg in argv]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{shlex.join(command)}: {done.returncode}\n{done.stdout}{done.stderr}"
    return done


def unique_name() -> str:
    """A user name no other test or session uses; also valid as a sudoers.d file name (no '.')."""
    return f"rt-{secrets.token_hex(4)}"


def remove_user(name: str) -> None:
    subprocess.run(["userdel", name], capture_output=True, check=False)
    # setup creates the group itself (groupadd), and userdel may leave it when it is not a "user group".
    subprocess.run(["groupdel", name], capture_output=True, check=False)


def acl(path: Path) -> set[str]:
    done = check(["getfacl", "--omit-header", "--absolute-names", "--no-effective", path])
    return {line.strip() for line in done.stdout.splitlines() if line.strip()}


def restore_acl(directory: Path, user: str) -> None:
    """Take ``user``'s entry off ``directory``; an ACL left with nothing else in it goes altogether."""
    subprocess.run(["setfacl", "-x", f"u:{user}", str(directory)], capture_output=True, check=False)
    listing = subprocess.run(
        ["getfacl", "--omit-header", "--absolute-names", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    if not re.search(r"^(default:|(user|group):[^:]+:)", listing, re.MULTILINE):
        subprocess.run(["setfacl", "-b", str(directory)], capture_output=True, check=False)


def let_run_python(user: str, cleanup: contextlib.ExitStack) -> None:
    """Let ``user`` run this checkout's Python: an ACL entry on each directory it could not enter
    (a 0700 /root holding the venv's interpreter), taken off again when ``cleanup`` closes."""
    python = Path(sys.executable)
    blocked = set()
    for path in (python.parent, python.resolve().parent, Path(sys.base_prefix), ROOT):
        for directory in (path, *path.parents):
            if directory.is_dir() and not directory.stat().st_mode & stat.S_IXOTH:
                blocked.add(directory)
    for directory in sorted(blocked):
        # Registered before it is set: the entry must go even if setfacl fails half way.
        cleanup.callback(restore_acl, directory, user)
        check(["setfacl", "-m", f"u:{user}:x", directory])


def install_sudoers(content: bytes, filename: str, cleanup: contextlib.ExitStack) -> Path:
    """Put ``content`` into /etc/sudoers.d/``filename`` for real, removed when ``cleanup`` closes.

    A broken file there breaks sudo for everyone, so it is checked before it is in force: staged under a
    name with a '.' (which sudo skips), checked with visudo, then renamed into place.
    """
    assert "." not in filename, f"sudo skips {filename!r}: a sudoers.d file name must hold no '.'"
    installed = Path("/etc/sudoers.d") / filename
    staged = installed.with_name(f".{filename}.tmp")
    cleanup.callback(staged.unlink, missing_ok=True)
    cleanup.callback(installed.unlink, missing_ok=True)
    staged.write_bytes(content)
    staged.chmod(0o440)
    check(["visudo", "-c", "-q", "-f", staged])
    staged.rename(installed)
    return installed


def ensure_system_wrapper(cleanup: contextlib.ExitStack, wrapper: Path = SYSTEM_WRAPPER) -> None:
    """sudo -l only answers for a command that exists: a stand-in wrapper while none is installed."""
    if wrapper.exists():
        return
    for directory in reversed([wrapper.parent, *wrapper.parent.parents]):
        if not directory.exists():
            directory.mkdir()
            cleanup.callback(_remove_if_empty, directory)
    cleanup.callback(wrapper.unlink, missing_ok=True)
    wrapper.write_text("#!/bin/sh\n# stand-in left by runner's tests/test_setup.py\nexit 64\n")
    wrapper.chmod(0o755)


def _remove_if_empty(directory: Path) -> None:
    with contextlib.suppress(OSError):
        directory.rmdir()


@dataclass
class Instance:
    """A throw-away instance: its user's name and a temporary directory for all it owns."""

    name: str
    base: Path
    cleanup: contextlib.ExitStack = field(repr=False)
    runs: list[subprocess.CompletedProcess[str]] = field(default_factory=list, repr=False)

    @property
    def home(self) -> Path:
        return self.base / "home"

    @property
    def sites(self) -> Path:
        return self.base / "sites"

    @property
    def prefix(self) -> Path:
        return self.base / "root"

    @property
    def etc_dir(self) -> Path:
        return self.prefix / "etc" / self.name

    @property
    def sudoers_file(self) -> Path:
        return self.prefix / "etc" / "sudoers.d" / self.name

    @property
    def units_dir(self) -> Path:
        return self.prefix / "etc" / "systemd" / "system"

    @property
    def wrapper(self) -> Path:
        return self.prefix / "usr" / "local" / "libexec" / "runner-certbot"

    @property
    def account(self) -> Account:
        return Account(self.name, self.home)

    def setup(self, *extra: str) -> subprocess.CompletedProcess[str]:
        """``runner setup`` for this instance, a real process run as root."""
        argv = [sys.executable, "-m", "runner", "setup", "--user", self.name, "--home-dir", str(self.home),
                "--sites-dir", str(self.sites), "--prefix", str(self.prefix), *extra]  # fmt: skip
        env = {key: value for key, value in os.environ.items() if not key.startswith("RUNNER_")}
        done = subprocess.run(argv, env=env, cwd=self.base, capture_output=True, text=True, timeout=120)
        self.runs.append(done)
        return done

    def set_up(self) -> subprocess.CompletedProcess[str]:
        done = self.setup()
        assert done.returncode == 0, f"runner setup: {done.returncode}\n{done.stdout}{done.stderr}"
        return done


@contextlib.contextmanager
def new_instance() -> Iterator[Instance]:
    """A new name and temporary directory; the user, its group and the directory go afterwards."""
    need_root("useradd", "userdel", "groupadd", "setfacl", "getfacl", "visudo", "setpriv")
    name = unique_name()
    with contextlib.ExitStack() as cleanup:
        base = Path(tempfile.mkdtemp(prefix=f"{name}-"))
        cleanup.callback(shutil.rmtree, base, ignore_errors=True)
        # Registered early, so it runs last: the ACL and sudoers entries naming the user go first.
        cleanup.callback(remove_user, name)
        cleanup.callback(remove_user, f"{name}-web")
        # The deploy user must reach its home and the sites directory in here (mkdtemp makes it 0700).
        base.chmod(0o755)
        (base / "sites").mkdir(mode=0o755)
        yield Instance(name, base, cleanup)


def sudo_entries(user: str) -> list[str]:
    """What ``sudo -l -U USER`` lists, one string per rule ("(root) NOPASSWD: /a, /b c")."""
    listing = check(["sudo", "-l", "-U", user]).stdout
    _, found, rules = listing.partition(f"User {user} may run the following commands on")
    assert found, listing
    entries: list[str] = []
    for line in rules.splitlines()[1:]:
        if not line.strip():
            continue
        if line.strip().startswith("(") or not entries:
            entries.append(line.strip())
        else:
            # sudo wraps long lines when its output is not a pipe; a continuation is part of the rule.
            entries[-1] += " " + line.strip()
    return entries


def tree(*roots: Path) -> dict[Path, tuple[int, int, int, int, int]]:
    """Every path under ``roots`` with its mtime, ctime, mode and owner: what a change would change."""
    found = {}
    for root in roots:
        for path in [root, *root.rglob("*")]:
            st = path.lstat()
            found[path] = (st.st_mtime_ns, st.st_ctime_ns, st.st_mode, st.st_uid, st.st_gid)
    return found


# An instance set up from scratch ------------------------------------------------------------------------

SITE = "server {{\n    listen 127.0.0.1:{port};\n    server_name {name};\n    return 204;\n}}\n"


def site(name: str, port: int) -> str:
    return SITE.format(name=name, port=port)


@pytest.fixture(scope="module")
def fresh() -> Iterator[Instance]:
    """An instance set up once, with two root-owned sites in its sites directory from before."""
    with new_instance() as instance:
        for index, stem in enumerate(("old", "other")):
            path = instance.sites / f"{stem}.conf"
            path.write_text(site(f"{stem}.example.com", 18080 + index))
            path.chmod(0o644)
        instance.set_up()
        yield instance


def test_setup_creates_the_user_directories_secret_wrapper_sudoers_acls_and_units(fresh: Instance) -> None:
    done = fresh.runs[0]  # the first run, whatever ran since
    output = done.stdout + done.stderr
    assert done.stdout.rstrip().splitlines()[-1].startswith("changed "), output

    user, group = pwd.getpwnam(fresh.name), grp.getgrnam(fresh.name)
    assert user.pw_gid == group.gr_gid
    assert user.pw_dir == str(fresh.home)
    assert user.pw_shell == "/usr/sbin/nologin"
    uid, gid = user.pw_uid, group.gr_gid

    def owned(path: Path, owner: tuple[int, int], mode: int, kind: int = stat.S_IFREG) -> None:
        st = path.lstat()
        assert stat.S_IFMT(st.st_mode) == kind, f"{path} is not of the expected type"
        assert ((st.st_uid, st.st_gid), stat.S_IMODE(st.st_mode)) == (owner, mode), (
            f"{path}: {st.st_uid}:{st.st_gid} {stat.S_IMODE(st.st_mode):o}"
        )

    for path in ("", "queues", "logs", "pipelines"):
        owned(fresh.home / path, (uid, gid), 0o750, stat.S_IFDIR)
    # The host keys git over ssh may accept: GitHub's published ones, for a start.
    owned(fresh.home / "known_hosts", (uid, gid), 0o644)
    assert (fresh.home / "known_hosts").read_text().splitlines() == list(GITHUB_KEYS)
    # The webhook endpoint's own user, and the main queue it writes: setgid, so that the deploy user's
    # group reads and removes the entries.
    web = pwd.getpwnam(f"{fresh.name}-web")
    assert web.pw_gid == grp.getgrnam(f"{fresh.name}-web").gr_gid != gid
    assert web.pw_shell == "/usr/sbin/nologin"
    assert not Path(web.pw_dir).exists(), web.pw_dir
    assert fresh.name not in grp.getgrgid(web.pw_gid).gr_mem
    owned(fresh.home / "queues" / "main", (web.pw_uid, gid), 0o2770, stat.S_IFDIR)

    # The settings: root's to write, the deploy user's group's to read. The secret: root's alone.
    owned(fresh.etc_dir, (0, gid), 0o750, stat.S_IFDIR)
    secret_file, env_file = fresh.etc_dir / "secret", fresh.etc_dir / "runner.env"
    owned(secret_file, (0, 0), 0o600)
    owned(env_file, (0, gid), 0o640)
    secret = secret_file.read_text().strip()
    assert len(secret) >= 32, "the generated secret is empty or short"
    assert secret not in output, "setup printed the webhook secret"
    settings = env_file.read_text().splitlines()
    assert f"RUNNER_HOME={fresh.home}" in settings
    assert f"RUNNER_NGINX_SITES_DIR={fresh.sites}" in settings

    if PACKAGED_WRAPPER.is_file():
        owned(fresh.wrapper, (0, 0), 0o755)
        assert fresh.wrapper.read_bytes() == PACKAGED_WRAPPER.read_bytes()

    owned(fresh.sudoers_file, (0, 0), 0o440)
    check(["visudo", "-c", "-f", fresh.sudoers_file])

    for role in ("web", "worker"):
        unit = fresh.units_dir / f"{fresh.name}-{role}.service"
        owned(unit, (0, 0), 0o644)
        text = unit.read_text()
        assert not PLACEHOLDER.search(text), f"{unit} still holds {PLACEHOLDER.findall(text)}"
        assert f"\nUser={fresh.name}{'-web' if role == 'web' else ''}\n" in text

    # nginx: the wrapper, its configuration for this instance and the templates it renders, all root's;
    # the deploy user gets no ACL entry on the sites (write access there would be root).
    owned(fresh.prefix / "usr/local/libexec/runner-nginx", (0, 0), 0o755)
    assert (
        fresh.prefix / "usr/local/libexec/runner-nginx"
    ).read_bytes() == PACKAGED_NGINX_WRAPPER.read_bytes()
    nginx_conf = fresh.etc_dir / "nginx.conf"
    owned(nginx_conf, (0, 0), 0o644)
    conf_lines = nginx_conf.read_text().splitlines()
    assert f"templates-dir = /etc/{fresh.name}/templates/nginx" in conf_lines
    assert f"sites-dir = {fresh.sites}" in conf_lines
    templates = fresh.etc_dir / "templates" / "nginx"
    owned(templates, (0, 0), 0o755, stat.S_IFDIR)
    for shipped in sorted((ROOT / "templates" / "nginx").iterdir()):
        owned(templates / shipped.name, (0, 0), 0o644)
        assert (templates / shipped.name).read_bytes() == shipped.read_bytes()
    for path in (fresh.sites, fresh.sites / "old.conf", fresh.sites / "other.conf"):
        assert not any(fresh.name in entry for entry in acl(path)), (path, acl(path))

    # --prefix: nothing of this instance went to the real /etc.
    for path in (Path("/etc/sudoers.d") / fresh.name, Path("/etc") / fresh.name,
                 Path("/etc/systemd/system") / f"{fresh.name}-web.service"):  # fmt: skip
        assert not path.exists(), f"setup --prefix wrote {path}"


def test_only_the_web_unit_names_the_secret_where_systemd_will_read_it(fresh: Instance) -> None:
    # The units are rendered for the installed system (paths without the --prefix). The env file both
    # units load never names the secret: the worker must not have it.
    web = (fresh.units_dir / f"{fresh.name}-web.service").read_text()
    assert f"\nEnvironmentFile=/etc/{fresh.name}/runner.env\n" in web
    assert f"\nLoadCredential=secret:/etc/{fresh.name}/secret\n" in web
    settings = (fresh.etc_dir / "runner.env").read_text()
    assert "RUNNER_SECRET" not in settings.replace("# ", ""), settings


def test_a_second_run_changes_nothing(fresh: Instance) -> None:
    before = tree(fresh.base)
    acls = {path: acl(path) for path in (fresh.sites, *fresh.sites.glob("*.conf"))}
    done = fresh.set_up()
    lines = done.stdout.rstrip().splitlines()
    assert lines[-1] == NOTHING_TO_CHANGE, done.stdout
    assert all(line.startswith("ok: ") for line in lines[:-1]), done.stdout
    assert tree(fresh.base) == before
    assert {path: acl(path) for path in acls} == acls


def test_dry_run_on_a_fresh_name_changes_nothing() -> None:
    with new_instance() as instance:
        (instance.sites / "old.conf").write_text(site("old.example.com", 18080))
        before = tree(instance.base)
        acls = {path: acl(path) for path in (instance.sites, instance.sites / "old.conf")}

        done = instance.setup("--dry-run")

        assert done.returncode == 0, done.stdout + done.stderr
        with pytest.raises(KeyError):
            pwd.getpwnam(instance.name)
        with pytest.raises(KeyError):
            grp.getgrnam(instance.name)
        with pytest.raises(KeyError):
            pwd.getpwnam(f"{instance.name}-web")
        assert tree(instance.base) == before, "setup --dry-run wrote into its directories"
        assert {path: acl(path) for path in acls} == acls, "setup --dry-run changed an ACL"
        assert not (Path("/etc/sudoers.d") / instance.name).exists()
        lines = done.stdout.splitlines()
        for expected in (
            f"would create system group {instance.name}",
            f"would create system user {instance.name} with home {instance.home}",
            f"would create system group {instance.name}-web",
            f"would create system user {instance.name}-web",
            f"would create {instance.home / 'queues' / 'main'} ({instance.name}-web:{instance.name} 2770)",
            f"would write {instance.sudoers_file}",
            f"would write {instance.etc_dir / 'secret'}",
            f"would write {instance.etc_dir / 'nginx.conf'}",
            f"would write {instance.etc_dir / 'templates' / 'nginx' / 'proxy.conf.j2'}",
            f"would write {instance.units_dir / (instance.name + '-web.service')}",
            f"would write {instance.units_dir / (instance.name + '-worker.service')}",
        ):
            assert expected in lines, f"{expected!r} not in:\n{done.stdout}"
        assert re.fullmatch(r"would change \d+ thing\(s\)", lines[-1]), done.stdout


# What the deploy user can do in the sites directory ---------------------------------------------------


def as_user(instance: Instance, script: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return instance.account.run("/bin/sh", "-c", script, "sh", *args)


def test_the_deploy_user_cannot_write_nginx_sites_or_templates(fresh: Instance) -> None:
    """nginx's master opens as root what a site names: write access to sites or templates would be root."""
    templates = fresh.etc_dir / "templates" / "nginx"
    old = fresh.sites / "old.conf"
    before = old.read_bytes()
    attempts = {
        "create a site": ('printf "%s" "$1" > "$2"', fresh.sites / f"{fresh.name}-new.conf"),
        "rewrite a site": ('printf "%s" "$1" > "$2"', old),
        "rename over a site": ('printf "%s" "$1" > "$2.tmp" && mv -f "$2.tmp" "$2"', old),
        "create a template": ('printf "%s" "$1" > "$2"', templates / "mine.conf.j2"),
        "rewrite a template": ('printf "%s" "$1" > "$2"', templates / "static.conf.j2"),
        "change the wrapper's configuration": ('printf "%s" "$1" >> "$2"', fresh.etc_dir / "nginx.conf"),
    }
    payload = "server { access_log /root/owned; }\n"
    for what, (script, target) in attempts.items():
        done = as_user(fresh, script, payload, target)
        assert done.returncode != 0, f"the deploy user could {what} ({target})"
        assert "Permission denied" in done.stderr, (what, done.stderr)
    assert old.read_bytes() == before
    assert not (fresh.sites / f"{fresh.name}-new.conf").exists()
    assert not (templates / "mine.conf.j2").exists()


def test_setup_takes_off_the_acl_an_older_setup_gave_the_deploy_user(fresh: Instance) -> None:
    old = fresh.sites / "old.conf"
    with contextlib.ExitStack() as restore:
        restore.callback(restore_acl, old, fresh.name)
        restore.callback(restore_acl, fresh.sites, fresh.name)
        check(["setfacl", "-m", f"u:{fresh.name}:rwx", fresh.sites])
        check(["setfacl", "-d", "-m", f"u:{fresh.name}:rw-", fresh.sites])
        check(["setfacl", "-m", f"u:{fresh.name}:rw-", old])
        assert as_user(fresh, 'printf x > "$1"', fresh.sites / "acl-made.conf").returncode == 0
        (fresh.sites / "acl-made.conf").unlink()

        done = fresh.set_up()

        for entry in (f"user:{fresh.name}", f"default:user:{fresh.name}"):
            assert f"remove ACL {entry} from {fresh.sites}: done" in done.stdout, done.stdout
        assert f"remove ACL user:{fresh.name} from {old}: done" in done.stdout, done.stdout
        for path in (fresh.sites, old):
            assert not any(fresh.name in entry for entry in acl(path)), acl(path)
        done = as_user(fresh, 'printf x > "$1"', fresh.sites / "acl-made.conf")
        assert done.returncode != 0 and "Permission denied" in done.stderr, done.stderr


# The sudoers files, installed for real ------------------------------------------------------------------

PIPELINE = """\
on: {repository: acme/app, events: [push], branches: [main]}
workdir: checkout
steps:
  - systemctl: {action: restart, unit: NAME-app.service}
  - systemctl: {action: reload, unit: NAME-proxy.service, no-block: true}
  - systemctl: {action: reload, unit: nginx}
"""


@pytest.fixture(scope="module")
def with_pipeline() -> Iterator[Instance]:
    """An instance whose home held a pipeline with systemctl steps when setup ran."""
    with new_instance() as instance:
        (instance.home / "pipelines").mkdir(parents=True)
        (instance.home / "pipelines" / "app.yaml").write_text(PIPELINE.replace("NAME", instance.name))
        instance.set_up()
        yield instance


@pytest.fixture(scope="module")
def installed(with_pipeline: Instance, fresh: Instance) -> Iterator[tuple[Instance, Instance]]:
    """Both instances' sudoers files in /etc/sudoers.d at once: the one with a pipeline first."""
    need_root("sudo")
    with contextlib.ExitStack() as cleanup:
        ensure_system_wrapper(cleanup)
        ensure_system_wrapper(cleanup, NGINX_WRAPPER)
        for instance in (with_pipeline, fresh):
            install_sudoers(instance.sudoers_file.read_bytes(), instance.name, cleanup)
        yield with_pipeline, fresh


def rules(*commands: str) -> str:
    return "(root) NOPASSWD: " + ", ".join(commands)


def self_restart(name: str) -> list[str]:
    return [f"{SYSTEMCTL} --no-block restart {name}-{role}.service" for role in ("web", "worker")]


def test_sudo_lists_exactly_the_allowed_commands(installed: tuple[Instance, Instance]) -> None:
    instance, _ = installed
    name = instance.name
    assert sudo_entries(name) == [
        rules(str(SYSTEM_WRAPPER), str(NGINX_WRAPPER), f"{SYSTEMCTL} reload nginx", *self_restart(name)),
        # One line per systemctl step of the pipelines; reloading nginx is there already.
        rules(
            f"{SYSTEMCTL} restart {name}-app.service", f"{SYSTEMCTL} --no-block reload {name}-proxy.service"
        ),
    ]


ALLOWED = [
    ["WRAPPER"],
    ["WRAPPER", "--cert-name", "app", "-d", "app.example.com"],  # the wrapper checks its own arguments
    [str(NGINX_WRAPPER), "--site", "app", "--template", "static.conf.j2", "--vars", "{}"],
    [SYSTEMCTL, "reload", "nginx"],
    [SYSTEMCTL, "--no-block", "restart", "NAME-web.service"],
    [SYSTEMCTL, "--no-block", "restart", "NAME-worker.service"],
    [SYSTEMCTL, "restart", "NAME-app.service"],
    [SYSTEMCTL, "--no-block", "reload", "NAME-proxy.service"],
]
REFUSED = [
    [SYSTEMCTL, "reboot"],
    [SYSTEMCTL, "reload", "sshd"],
    [SYSTEMCTL, "reload", "nginx; id"],
    [SYSTEMCTL, "reload", "nginx", ";", "id"],
    [SYSTEMCTL, "restart", "nginx"],
    [SYSTEMCTL, "restart", "NAME-web.service"],  # only with --no-block
    [SYSTEMCTL, "restart", "NAME-app.service", "sshd.service"],
    [SYSTEMCTL, "--no-block", "restart", "OTHER-web.service"],  # the other instance's unit
    ["/usr/bin/bash"],
    ["/usr/bin/certbot"],
    ["certbot", "renew", "--post-hook", "id > /tmp/owned"],
]


def spell(command: list[str], instance: Instance, other: Instance) -> list[str]:
    replaced = (word.replace("NAME", instance.name).replace("OTHER", other.name) for word in command)
    return [str(SYSTEM_WRAPPER) if word == "WRAPPER" else word for word in replaced]


def sudo_list(instance: Instance, command: list[str]) -> subprocess.CompletedProcess[str]:
    account = instance.account
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/",
        "USER": account.name,
        "LOGNAME": account.name,
    }
    return account.run("sudo", "-n", "-l", *command, env=env)


@pytest.mark.parametrize("command", ALLOWED, ids=shlex.join)
def test_the_allowed_commands_pass_sudo_n_l(installed: tuple[Instance, Instance], command: list[str]) -> None:
    instance, other = installed
    argv = spell(command, instance, other)
    done = sudo_list(instance, argv)
    assert done.returncode == 0, f"{shlex.join(argv)}: {done.stderr}"
    assert done.stdout.strip() == " ".join(argv)


@pytest.mark.parametrize("command", REFUSED, ids=shlex.join)
def test_anything_else_is_refused(installed: tuple[Instance, Instance], command: list[str]) -> None:
    instance, other = installed
    argv = spell(command, instance, other)
    done = sudo_list(instance, argv)
    assert done.returncode != 0, f"sudo allows {shlex.join(argv)}: {done.stdout}"
    assert done.stdout == ""


def test_a_second_instance_gets_its_own_aliases(installed: tuple[Instance, Instance]) -> None:
    first, second = installed

    def aliases(instance: Instance) -> set[str]:
        return set(re.findall(r"^\w+_Alias\s+(\w+)\s*=", instance.sudoers_file.read_text(), re.MULTILINE))

    assert aliases(first) and aliases(second)
    assert not aliases(first) & aliases(second)
    # Both files in force at once: the whole configuration still parses, and each user gets its own rules.
    check(["visudo", "-c"])
    assert sudo_entries(second.name) == [
        rules(
            str(SYSTEM_WRAPPER), str(NGINX_WRAPPER), f"{SYSTEMCTL} reload nginx", *self_restart(second.name)
        )
    ]
    done = sudo_list(second, [SYSTEMCTL, "restart", f"{first.name}-app.service"])
    assert done.returncode != 0, done.stdout


def sudoers_commands(text: str) -> set[str]:
    """Every command the Cmnd_Alias lines of a sudoers file name."""
    text = text.replace("\\\n", " ")
    commands: set[str] = set()
    for match in re.finditer(r"^Cmnd_Alias\s+\w+\s*=\s*(.+)$", text, re.MULTILINE):
        commands.update(" ".join(part.split()) for part in match.group(1).split(","))
    return commands


def test_a_pipeline_unit_spelled_like_part_of_a_shipped_rule_gets_its_own_rule(tmp_path: Path) -> None:
    # systemctl takes a unit without its .service; sudo compares arguments exactly, so
    # `restart NAME-web` needs a rule of its own even though `restart NAME-web.service` has one.
    name = unique_name()
    (tmp_path / "pipelines").mkdir()
    pipeline = (
        PIPELINE.split("steps:")[0]
        + "steps:\n  - systemctl: {action: restart, unit: NAME-web, no-block: true}\n"
    )
    (tmp_path / "pipelines" / "self.yaml").write_text(pipeline.replace("NAME", name))
    setup = Setup(user=name, home=tmp_path, sites_dir=tmp_path, stop_grace=60)
    assert setup.pipeline_units() == [[SYSTEMCTL, "--no-block", "restart", f"{name}-web"]]
    commands = sudoers_commands(setup.sudoers().decode())
    assert f"{SYSTEMCTL} --no-block restart {name}-web.service" in commands
    assert f"{SYSTEMCTL} --no-block restart {name}-web" in commands, sorted(commands)


# The certbot wrapper as setup installed it, run by root directly ----------------------------------------


@pytest.fixture
def certbot_conf(fresh: Instance, tmp_path: Path) -> Path:
    """A valid configuration whose certbot is a stub that records being run (never the real one)."""
    require(fresh.wrapper.is_file(), f"{PACKAGED_WRAPPER} is not there: setup installed no wrapper")
    state = tmp_path / "state"
    stub = tmp_path / "certbot"
    stub.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {tmp_path / "certbot-ran"}\nexit 0\n')
    stub.chmod(0o755)
    conf = tmp_path / "certbot.conf"
    conf.write_text(
        textwrap.dedent(
            f"""\
            server = https://127.0.0.1:14000/dir
            authenticator = standalone
            register-unsafely-without-email = yes
            config-dir = {state / "etc"}
            work-dir = {state / "work"}
            logs-dir = {state / "logs"}
            certbot = {stub}
            """
        )
    )
    conf.chmod(0o644)
    return conf


def run_wrapper(instance: Instance, conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # Root running it itself, not through sudo: the only way RUNNER_CERTBOT_CONF is honoured.
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "RUNNER_CERTBOT_CONF": str(conf)}
    return subprocess.run(
        [instance.wrapper, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_the_installed_wrapper_passes_a_certificate_name_and_domains_to_certbot(
    fresh: Instance, certbot_conf: Path
) -> None:
    done = run_wrapper(fresh, certbot_conf, "--cert-name", "app.example.com", "-d", "app.example.com")
    ran = certbot_conf.with_name("certbot-ran")
    # certbot (the stub) ran and issued nothing, which the wrapper notices.
    assert ran.is_file(), f"{done.returncode}: {done.stdout}{done.stderr}"
    assert "--cert-name app.example.com -d app.example.com" in ran.read_text()
    assert done.returncode == 1, done.stderr


REFUSED_ARGUMENTS = {
    "post-hook": ["--cert-name", "app", "-d", "app.example.com", "--post-hook", "touch MARKER"],
    "deploy-hook": ["--cert-name", "app", "-d", "app.example.com", "--deploy-hook", "touch MARKER"],
    "pre-hook": ["--pre-hook", "touch MARKER", "--cert-name", "app", "-d", "app.example.com"],
    "manual-auth-hook": ["--cert-name", "app", "-d", "app.example.com", "--manual-auth-hook", "touch MARKER"],
    "hook as a domain's value": ["--cert-name", "app", "-d", "--deploy-hook=touch MARKER"],
    "domain starting with -": ["--cert-name", "app", "-d", "-app.example.com"],
    "domain that is an option": ["--cert-name", "app", "-d", "--staging"],
    "cert name with /": ["--cert-name", "app/../../etc", "-d", "app.example.com"],
    "cert name with ..": ["--cert-name", "app..example.com", "-d", "app.example.com"],
    "cert name ..": ["--cert-name", "..", "-d", "app.example.com"],
    "cert name is a path": ["--cert-name", "/etc/passwd", "-d", "app.example.com"],
}


@pytest.mark.parametrize("args", REFUSED_ARGUMENTS.values(), ids=REFUSED_ARGUMENTS.keys())
def test_the_installed_wrapper_refuses_hooks_and_odd_names(
    fresh: Instance, certbot_conf: Path, args: list[str]
) -> None:
    marker = certbot_conf.with_name("hook-ran")
    done = run_wrapper(fresh, certbot_conf, *(arg.replace("MARKER", str(marker)) for arg in args))
    assert done.returncode == 2, f"{done.returncode}: {done.stdout}{done.stderr}"
    assert "refusing" in done.stderr or "needs a value" in done.stderr, done.stderr
    assert done.stdout == ""
    assert not certbot_conf.with_name("certbot-ran").exists(), "certbot ran"
    assert not marker.exists()


def test_an_activate_steps_unit_gets_its_rule_too(tmp_path: Path) -> None:
    # A release pipeline restarts its unit after the switch: the sudoers file must allow it all the same.
    name = unique_name()
    (tmp_path / "pipelines").mkdir()
    pipeline = (
        PIPELINE.split("steps:")[0]
        + "release: {keep: 2}\nsteps:\n  - run: make\n"
        + "activate:\n  - systemctl: {action: restart, unit: NAME-api.service}\n"
    )
    (tmp_path / "pipelines" / "api.yaml").write_text(pipeline.replace("NAME", name))
    setup = Setup(user=name, home=tmp_path, sites_dir=tmp_path, stop_grace=60)
    assert setup.pipeline_units() == [[SYSTEMCTL, "restart", f"{name}-api.service"]]
    assert f"{SYSTEMCTL} restart {name}-api.service" in sudoers_commands(setup.sudoers().decode())
