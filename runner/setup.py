"""``runner setup``: the deploy and web users, their directories, the secret, the wrappers and templates,
sudoers and the systemd units.

Run as root; every action first looks at what is there and changes only what differs, so a second run
changes nothing. Where each file goes and what it holds is the instance's (runner/instance.py).
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import secrets
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from runner import known_hosts, shipped
from runner.instance import PACKAGING, Instance, SetupError

TEMPLATES = shipped.path(shipped.NGINX_TEMPLATES)
TEMPLATE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
# The main queue: the web user's, setgid to the deploy user's group, which reads and removes the entries.
MAIN_QUEUE_MODE = 0o2770


@dataclass
class Setup(Instance):
    """Makes the machine match the instance: each action looks first and changes only what differs."""

    dry_run: bool = False
    report: Callable[[str], None] = print
    changes: int = 0
    # The directories this run has seen to: each is said once, with one mode (a dry run makes none, so
    # without this the later actions that make sure of a directory would list it again).
    _dirs: set[Path] = field(default_factory=set, init=False, repr=False)

    # Running -----------------------------------------------------------------------------------------

    def run(self) -> int:
        """Carry out (or, with dry_run, describe) every action; returns how many changed something."""
        if os.geteuid() != 0 and not self.dry_run:
            raise SetupError("runner setup must run as root (sudo runner setup), or with --dry-run")
        if not self.user.replace("-", "").replace("_", "").isalnum() or self.user.startswith("-"):
            raise SetupError(f"{self.user!r} is not a user name")
        self.ensure_user()
        self.ensure_directories()
        self.ensure_known_hosts()
        self.ensure_secret_and_env()
        self.ensure_wrapper()
        self.ensure_sudoers()
        self.ensure_acl()
        self.ensure_units()
        self.report(
            f"{'would change' if self.dry_run else 'changed'} {self.changes} thing(s)"
            if self.changes
            else "nothing to change: everything is set up"
        )
        return self.changes

    def _change(self, what: str, action: Callable[[], None]) -> None:
        self.changes += 1
        if self.dry_run:
            self.report(f"would {what}")
            return
        action()
        self.report(f"{what}: done")

    def _ok(self, what: str) -> None:
        self.report(f"ok: {what}")

    # Actions -----------------------------------------------------------------------------------------

    def ensure_user(self) -> None:
        self._ensure_system_user(self.user, self.home, "runner deployments")
        # Whatever one uid can read, every step running as that uid can read too: the endpoint, which
        # holds the secret, runs as a user of its own, with no home and no shell.
        self._ensure_system_user(self.web_user, None, "runner webhook endpoint")

    def _ensure_system_user(self, name: str, home: Path | None, comment: str) -> None:
        """A system user ``name`` whose primary group is a system group of the same name."""
        try:
            grp.getgrnam(name)
            self._ok(f"group {name} exists")
        except KeyError:
            self._change(f"create system group {name}", lambda: _call("groupadd", "--system", name))
        try:
            entry = pwd.getpwnam(name)
            self._ok(f"user {name} exists (home {entry.pw_dir})")
        except KeyError:
            argv = ["useradd", "--system", "--gid", name, "--home-dir", str(home or "/nonexistent")]
            argv += ["--no-create-home", "--shell", "/usr/sbin/nologin", "--comment", comment, name]
            self._change(
                f"create system user {name} with home {home}" if home else f"create system user {name}",
                lambda: _call(*argv),
            )

    def _ids(self) -> tuple[int, int]:
        if self.dry_run:
            try:
                return pwd.getpwnam(self.user).pw_uid, grp.getgrnam(self.user).gr_gid
            except KeyError:
                return -1, -1
        return pwd.getpwnam(self.user).pw_uid, grp.getgrnam(self.user).gr_gid

    def _ensure_dir(self, path: Path, uid: int, gid: int, mode: int) -> None:
        if path in self._dirs:
            return
        self._dirs.add(path)
        if not path.is_dir():
            owner = self.user if uid else "root"
            self._change(f"create {path} ({owner}, {mode:o})", lambda: _make_dir(path, uid, gid, mode))
            return
        st = path.stat()
        if (st.st_uid, st.st_gid, st.st_mode & 0o7777) != (uid, gid, mode):
            self._change(f"set owner and mode of {path}", lambda: _own(path, uid, gid, mode))
        else:
            self._ok(f"{path}")

    def ensure_directories(self) -> None:
        uid, gid = self._ids()
        for path in (self.home, self.home / "queues"):
            self._ensure_dir(path, uid, gid, 0o750)
        self._ensure_main_queue(gid)
        self._ensure_dir(self.home / "logs", uid, gid, 0o750)
        # Pipelines are configuration: the deploy user reads them (and may update them through a pipeline).
        self._ensure_dir(self.home / "pipelines", uid, gid, 0o750)

    def ensure_known_hosts(self) -> None:
        """GitHub's published host keys in runner's known_hosts, the file's other lines kept as they are."""
        path = self.home / "known_hosts"
        existing = b""
        if path.exists():
            read = _read_plain_file(path)
            if read is None:
                raise SetupError(f"{path} is not a plain file: move it away and run setup again")
            existing = read
        merged = known_hosts.merge(existing.decode(errors="replace"), known_hosts.GITHUB_KEYS)
        if merged is None:
            self._ok(f"{path} holds GitHub's host keys")
            return
        uid, gid = self._ids()
        self._change(
            f"add GitHub's host keys to {path}",
            lambda: _write_file(path, merged.encode(), uid, gid, 0o644),
        )

    def _web_uid(self) -> int:
        try:
            return pwd.getpwnam(self.web_user).pw_uid
        except KeyError:
            if self.dry_run:
                return -1
            raise

    def _ensure_main_queue(self, gid: int) -> None:
        """The web user writes the main queue; the deploy user's group reads its entries and removes them.

        The setgid bit gives every entry (and the queue's ``.lock``) the deploy user's group; the web unit's
        umask makes them 0640. The web user can write nowhere else in RUNNER_HOME.
        """
        from runner.queue import LOCK_FILE

        main, uid = self.home / "queues" / "main", self._web_uid()
        owner = f"{self.web_user}:{self.user} {MAIN_QUEUE_MODE:o}"
        if not main.is_dir():
            self._change(f"create {main} ({owner})", lambda: _make_dir(main, uid, gid, MAIN_QUEUE_MODE))
            return
        st = main.stat()
        if (st.st_uid, st.st_gid, st.st_mode & 0o7777) != (uid, gid, MAIN_QUEUE_MODE):
            self._change(
                f"set owner and mode of {main} ({owner})", lambda: _own(main, uid, gid, MAIN_QUEUE_MODE)
            )
        else:
            self._ok(f"{main}")
        # A queue the deploy user used to write has its lock file: the web user must be able to take it.
        lock = main / LOCK_FILE
        if lock.is_file() and (lock.stat().st_uid, lock.stat().st_gid) != (uid, gid):
            self._change(f"give {lock} to {self.web_user}", lambda: _own(lock, uid, gid, 0o640))

    def _ensure_file(self, path: Path, content: bytes, uid: int, gid: int, mode: int, *, keep: bool) -> None:
        """Write ``content`` unless the file is there (``keep``: the admin's to edit) or already equal."""
        exists = path.is_file()
        if exists and (keep or path.read_bytes() == content):
            st = path.stat()
            if (st.st_uid, st.st_gid, st.st_mode & 0o7777) != (uid, gid, mode):
                self._change(f"set owner and mode of {path}", lambda: _own(path, uid, gid, mode))
            else:
                self._ok(f"{path}")
            return
        verb = "update" if exists else "write"
        self._change(f"{verb} {path}", lambda: _write_file(path, content, uid, gid, mode))

    def ensure_secret_and_env(self) -> None:
        _, gid = self._ids()
        self._ensure_dir(self.etc_dir, 0, gid, 0o750)
        # root's alone: systemd reads it for the web unit (LoadCredential=); a secret there is never
        # replaced, only its owner and mode are put right.
        self._ensure_file(self.secret_file, (secrets.token_hex(32) + "\n").encode(), 0, 0, 0o600, keep=True)
        self._ensure_env_without_secret()
        self._ensure_file(self.env_file, self.env_content(), 0, gid, 0o640, keep=True)

    def _ensure_env_without_secret(self) -> None:
        """An env file from before the web user named the secret, which the worker must not have.

        That line, as setup wrote it, is taken out (the web unit sets RUNNER_SECRET_FILE itself, and an
        EnvironmentFile= overrides Environment=); any other secret setting is the admin's to move.
        """
        if not self.env_file.is_file():
            return
        text = self.env_file.read_text()
        secret = self._strip_prefix(self.secret_file)
        ours = f"RUNNER_SECRET_FILE={secret}"
        kept, dropped = [], False
        for line in text.splitlines(keepends=True):
            setting = line.strip().removeprefix("export ").strip()
            if setting == ours:
                dropped = True
                continue
            if re.match(r"RUNNER_SECRET(_FILE)?\s*=", setting):
                name = setting.split("=", 1)[0].strip()
                raise SetupError(
                    f"{self.env_file} sets {name}: both units read that file, so the worker (and every "
                    f"step) could get the webhook secret. Put the secret into {secret} "
                    "(root:root 0600; the web unit loads it as a credential), delete that line, "
                    "and run setup again"
                )
            kept.append(line)
        if dropped:
            st = self.env_file.stat()
            content = "".join(kept).encode()
            self._change(
                f"remove {ours} from {self.env_file} (only the web unit gets the secret)",
                lambda: _write_file(self.env_file, content, st.st_uid, st.st_gid, st.st_mode & 0o7777),
            )

    def ensure_wrapper(self) -> None:
        source = PACKAGING / "libexec" / "runner-certbot"
        if not source.is_file():
            raise SetupError(f"{source} is missing from this installation")
        if not self.wrapper.parent.is_dir():
            self._ensure_dir(self.wrapper.parent, 0, 0, 0o755)
        self._ensure_file(self.wrapper, source.read_bytes(), 0, 0, 0o755, keep=False)
        conf = self._at("/etc/runner/certbot.conf")
        example = PACKAGING / "certbot.conf"
        if example.is_file():
            if not conf.parent.is_dir():
                self._ensure_dir(conf.parent, 0, 0, 0o755)
            self._ensure_file(conf, example.read_bytes(), 0, 0, 0o644, keep=True)
        self.ensure_nginx_wrapper()
        self.ensure_nginx_templates()
        self.ensure_nginx_conf()

    def ensure_nginx_wrapper(self) -> None:
        source = PACKAGING / "libexec" / "runner-nginx"
        if not source.is_file():
            raise SetupError(f"{source} is missing from this installation")
        if not self.nginx_wrapper.parent.is_dir():
            self._ensure_dir(self.nginx_wrapper.parent, 0, 0, 0o755)
        self._ensure_file(self.nginx_wrapper, source.read_bytes(), 0, 0, 0o755, keep=False)

    def ensure_nginx_templates(self) -> None:
        """The templates runner-nginx renders, root's: the shipped ones, then the home's own (which win).

        Copying the home's templates here is the root action that makes them usable: the deploy user may
        change its home, never this directory.
        """
        for directory in (self.nginx_templates.parent, self.nginx_templates):
            self._ensure_dir(directory, 0, 0, 0o755)
        wanted: dict[str, bytes] = {}
        for source in (TEMPLATES, self.home / "templates" / "nginx"):
            if source.is_dir():
                for path in sorted(source.iterdir()):
                    if TEMPLATE_NAME.match(path.name) and not path.name.startswith("."):
                        data = _read_plain_file(path)
                        if data is not None:
                            wanted[path.name] = data
        for name, data in wanted.items():
            self._ensure_file(self.nginx_templates / name, data, 0, 0, 0o644, keep=False)

    def ensure_nginx_conf(self) -> None:
        """runner-nginx's configuration for this instance (the admin's to edit once written)."""
        self._ensure_file(self.nginx_conf, self.nginx_conf_content(), 0, 0, 0o644, keep=True)

    def ensure_sudoers(self) -> None:
        content = self.sudoers()
        _check_sudoers(content)
        self._ensure_file(self.sudoers_file, content, 0, 0, 0o440, keep=False)

    def ensure_acl(self) -> None:
        """Take off the ACL entries an older setup gave the deploy user on nginx's sites: with write access
        there, it could make nginx's master (root) open any file; sites now go through runner-nginx."""
        if not self.sites_dir.is_dir():
            self.report(f"skipped: {self.sites_dir} does not exist (install nginx, then run setup again)")
            return
        for path in [self.sites_dir, *sorted(self.sites_dir.iterdir())]:
            if path.is_symlink() or not (path.is_dir() or path.is_file()):
                continue
            entries = _acl(path)
            for prefix, flag in ((f"user:{self.user}:", None), (f"default:user:{self.user}:", "-d")):
                if any(entry.startswith(prefix) for entry in entries):
                    args = ["setfacl", *([flag] if flag else []), "-x", f"u:{self.user}", str(path)]
                    what = f"remove ACL {prefix.rstrip(':')} from {path}"
                    self._change(what, lambda args=args: _call(*args))
        self._ok(f"{self.user} has no ACL entry in {self.sites_dir}")

    def ensure_units(self) -> None:
        before = self.changes
        for name, content in self.units().items():
            self._ensure_file(self.units_dir / name, content, 0, 0, 0o644, keep=False)
        if self.changes > before and Path("/run/systemd/system").is_dir() and self.prefix == Path("/"):
            self._change("reload systemd", lambda: _call("systemctl", "daemon-reload"))


def _call(*argv: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise SetupError(f"{' '.join(argv)} failed: {(result.stderr or result.stdout).strip()}")


def _make_dir(path: Path, uid: int, gid: int, mode: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    _own(path, uid, gid, mode)


def _own(path: Path, uid: int, gid: int, mode: int) -> None:
    os.chown(path, uid, gid)
    os.chmod(path, mode)


def _write_file(path: Path, content: bytes, uid: int, gid: int, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Owner and mode are set before the file gets its name: a secret is never readable by others.
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.write(fd, content)
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)


def _read_plain_file(path: Path) -> bytes | None:
    """A regular file's bytes, never through a symlink or a hard link (root reads the user's home here)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as file:
        st = os.fstat(file.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            return None
        return file.read()


def _check_sudoers(content: bytes) -> None:
    visudo = shutil.which("visudo") or "/usr/sbin/visudo"
    with tempfile.NamedTemporaryFile(prefix="runner-sudoers.") as candidate:
        candidate.write(content)
        candidate.flush()
        result = subprocess.run([visudo, "-c", "-f", candidate.name], capture_output=True, text=True)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()
        raise SetupError(f"the sudoers file does not pass visudo -c: {detail}")


def _acl(path: Path) -> set[str]:
    result = subprocess.run(
        ["getfacl", "--omit-header", "--absolute-names", "--no-effective", str(path)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise SetupError(f"getfacl {path} failed: {result.stderr.strip()}")
    return {line.strip() for line in result.stdout.splitlines() if line.strip()}
