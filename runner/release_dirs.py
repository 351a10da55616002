"""A pipeline's release directories: ``<workdir>/releases/<run id>-<short commit>``, worktrees of the one
shared clone ``<workdir>/repo``, the paths they share from ``<workdir>/shared/``, which of them succeeded,
and the atomic switch of the symlink ``<workdir>/current``.

The switch makes a new symlink under a temporary name and renames it over ``current`` (rename(2)): a reader
of ``current/`` sees the old tree or the new one, never a mix. Before it, a journal (``releases/.switch``:
from, to, run, and whether activation began) is written, and removed once the run's activate steps and
health check are done: a worker killed in between leaves it, and the next run of the pipeline undoes the
switch (``recover``) before it does anything else, activating the release it went back to again when the
killed run's activate steps had begun (an app they restarted would run from a release about to go).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.files import fsync_directory

REPO = "repo"
RELEASES = "releases"
CURRENT = "current"
SHARED = "shared"
JOURNAL = ".switch"
# A release directory's name; its record (releases/<name>.json) says it succeeded, with its full commit.
RELEASE_NAME = re.compile(r"^(?P<run>[0-9]+)(?:-(?P<short>[0-9a-f]{4,40}))?$")
SHORT = 7


class ReleaseError(Exception):
    """A release asked for is not there, or cannot be switched to; the message says why."""


@dataclass(frozen=True)
class ReleaseInfo:
    name: str
    run_id: int
    commit: str | None
    ref: str | None
    succeeded: bool
    current: bool

    def shown(self) -> dict[str, Any]:
        return {
            "release": self.name,
            "run": self.run_id,
            "commit": self.commit,
            "ref": self.ref,
            "succeeded": self.succeeded,
            "current": self.current,
        }


def _write_durably(path: Path, data: dict[str, Any]) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with temp.open("w") as file:
        json.dump(data, file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temp, path)
    fsync_directory(path.parent)


class Releases:
    """The release directories of one pipeline's workdir."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.root = workdir / RELEASES
        self.repo = workdir / REPO
        self.link = workdir / CURRENT
        self.journal = self.root / JOURNAL

    @staticmethod
    def name_for(run_id: int, commit: str | None) -> str:
        return f"{run_id}-{commit[:SHORT]}" if commit else str(run_id)

    def path(self, name: str) -> Path:
        if not RELEASE_NAME.match(name):
            raise ReleaseError(f"{name!r} is not a release's name (RUN-COMMIT)")
        return self.root / name

    def prepare(self, name: str) -> Path:
        """An empty directory for a new release (the git step makes it a worktree of the shared clone)."""
        path = self.path(name)
        self.root.mkdir(parents=True, exist_ok=True)
        if path.exists():
            # Left by a run of the same number whose worker died: nothing in it was released.
            self.remove(name)
        path.mkdir()
        return path

    def current(self) -> str | None:
        """The name of the release ``current`` points at; None if there is none yet."""
        try:
            target = os.readlink(self.link)
        except (FileNotFoundError, OSError):
            return None
        return Path(target).name

    def link_shared(self, release: Path, shared: tuple[str, ...]) -> None:
        """Link each shared path into ``release``: ``<workdir>/shared/PATH``, made from the release's own
        file or directory the first time, or (a path ending in /) an empty directory; the release's own one
        goes. Raises ReleaseError for a file that is in neither place."""
        for written in shared:
            relative = written.rstrip("/")
            target = self.workdir / SHARED / relative
            inside = release / relative
            inside.parent.mkdir(parents=True, exist_ok=True)
            # The checkout's own symlink (public -> /somewhere) would have what follows move, delete and
            # link things outside the release.
            if not inside.parent.resolve().is_relative_to(release.resolve()):
                raise ReleaseError(
                    f"the shared path {relative} leads out of the release through a symlink of the "
                    f"checkout ({inside.parent} is {inside.parent.resolve()}): nothing was linked"
                )
            if not target.exists() and not target.is_symlink():
                target.parent.mkdir(parents=True, exist_ok=True)
                if inside.exists() and not inside.is_symlink():
                    shutil.move(inside, target)
                elif written.endswith("/"):
                    target.mkdir()
                else:
                    raise ReleaseError(
                        f"the shared file {relative} is neither in {target.parent} nor in the checkout: "
                        f"create {target} (or write {relative}/ for a directory)"
                    )
            if inside.is_symlink() or inside.is_file():
                inside.unlink()
            elif inside.is_dir():
                shutil.rmtree(inside)
            inside.symlink_to(target)

    # The switch -----------------------------------------------------------------------------------------

    def switch(self, to: str, run_id: int) -> str | None:
        """Point ``current`` at release ``to``, journalled; returns the release it pointed at before."""
        if not self.path(to).is_dir():
            raise ReleaseError(f"release {to} is not in {self.root}")
        previous = self.current()
        _write_durably(self.journal, {"from": previous, "to": to, "run": run_id, "activating": False})
        self.point(to)
        return previous

    def activating(self) -> None:
        """Note in the journal that activate steps begin: from now on, undoing the switch means activating
        the release switched back to again."""
        journal = json.loads(self.journal.read_text())
        _write_durably(self.journal, {**journal, "activating": True})

    def point(self, name: str) -> None:
        """Point ``current`` at ``name``: a new symlink renamed over the old one, both made durable."""
        temp = self.workdir / f".{CURRENT}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        # Relative: the workdir may be moved or mounted elsewhere, and the link still leads to the release.
        os.symlink(f"{RELEASES}/{name}", temp)
        fsync_directory(self.workdir)
        os.replace(temp, self.link)
        fsync_directory(self.workdir)

    def finish(self) -> None:
        """The switch is over (activated, checked, or switched back): its journal goes."""
        with contextlib.suppress(FileNotFoundError):
            self.journal.unlink()
            fsync_directory(self.root)

    def recover(self) -> tuple[str | None, str | None]:
        """Undo a switch whose run a dead worker left: ``current`` goes back to the release it was (its
        entry is run again); with none before, the new one, complete since it was built, stays. Returns
        what was done, for the run's log (None when there was nothing to do), and the release whose
        activate steps must run again, when the dead run's had begun: the journal stays until the caller
        has run them and calls ``finish``."""
        try:
            journal = json.loads(self.journal.read_text())
        except FileNotFoundError:
            return None, None
        except (OSError, ValueError) as exc:
            self.finish()
            return f"an unreadable switch journal was removed ({exc}); current is {self.current()}", None
        before, to = journal.get("from"), journal.get("to")
        cut = f"the switch of run {journal.get('run')} to {to} was cut short"
        if isinstance(before, str) and RELEASE_NAME.match(before) and (self.root / before).is_dir():
            if self.current() != before:
                self.point(before)
            if journal.get("activating") is True:
                return f"{cut} during its activate steps: current is {before} again, activated again", before
            said = f"{cut}: current is {before} again"
        else:
            said = f"{cut}: current stays {self.current()}"
        self.finish()
        return said, None

    # Records ---------------------------------------------------------------------------------------------

    def succeeded(self, name: str, run_id: int, commit: str | None, ref: str | None) -> None:
        _write_durably(self.root / f"{name}.json", {"run": run_id, "commit": commit, "ref": ref})

    def _record(self, name: str) -> dict[str, Any] | None:
        try:
            data = json.loads((self.root / f"{name}.json").read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def info(self, name: str) -> ReleaseInfo | None:
        return next((info for info in self.all() if info.name == name), None)

    def all(self) -> list[ReleaseInfo]:
        """Every release directory, oldest run first."""
        if not self.root.is_dir():
            return []
        current = self.current()
        found = []
        for path in self.root.iterdir():
            match = RELEASE_NAME.match(path.name)
            if match is None or not path.is_dir():
                continue
            record = self._record(path.name)
            commit = record.get("commit") if record else match["short"]
            ref = record.get("ref") if record else None
            info = ReleaseInfo(
                path.name, int(match["run"]), commit, ref, record is not None, path.name == current
            )
            found.append(info)
        return sorted(found, key=lambda info: info.run_id)

    def remove(self, name: str) -> None:
        path = self.path(name)
        # Not followed: the shared paths' symlinks go, what they point at stays.
        shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            (self.root / f"{name}.json").unlink()

    def prune(self, keep: int) -> list[str]:
        """Remove every release but the last ``keep`` successful ones and the current one; returns the
        names removed. Failed releases go whatever came between: the good ones stay."""
        releases = self.all()
        good = [info.name for info in releases if info.succeeded][-keep:]
        # A switch a stop left in its journal is undone by the next run: the release it goes back to stays.
        try:
            pending = json.loads(self.journal.read_text()).get("from")
        except (OSError, ValueError, AttributeError):
            pending = None
        removed = [
            info.name
            for info in releases
            if not info.current and info.name not in good and info.name != pending
        ]
        for name in removed:
            self.remove(name)
        if removed and (self.repo / ".git").exists():
            # The shared clone forgets the worktrees whose directories are gone.
            subprocess.run(
                ["git", "worktree", "prune"],
                cwd=self.repo,
                capture_output=True,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        return removed

    def target(self, to: str | None) -> ReleaseInfo:
        """The kept release a rollback goes to: ``to`` names its run or (4+ hex digits) its commit; by
        default the newest successful one before the current one. Raises ReleaseError."""
        releases = [info for info in self.all() if info.succeeded]
        current = self.current()
        kept = ", ".join(info.name for info in releases) or "none"
        if to is None:
            run = next((info.run_id for info in self.all() if info.current), None)
            earlier = [info for info in releases if not info.current and (run is None or info.run_id < run)]
            if not earlier:
                raise ReleaseError(
                    f"there is no successful release before the current one ({current}); kept: {kept}"
                )
            return earlier[-1]
        found = [info for info in releases if to.isdigit() and info.run_id == int(to)]
        if not found and re.fullmatch(r"[0-9a-fA-F]{4,40}", to):
            found = [info for info in releases if (info.commit or "").startswith(to.lower())]
        if not found:
            raise ReleaseError(f"no kept successful release is of run or commit {to!r}; kept: {kept}")
        if len(found) > 1:
            names = ", ".join(info.name for info in found)
            raise ReleaseError(f"{to!r} names more than one kept release ({names}): give the run's number")
        return found[-1]
