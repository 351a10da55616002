"""The worker lock (one worker per RUNNER_HOME, held with ``flock`` for the worker's whole life), and who
may write the queues at all.

Two workers on one home would route a delivery twice and run one entry twice at once in one workdir. The
lock file (``queues/.worker.lock``) holds the pid of the worker that has it; the kernel releases the lock
when that process ends, however it ends, so a stale file never keeps the next worker out.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import time
from pathlib import Path

# A reader that tests the lock (``runner logs``) holds it for an instant: a worker starting at that very
# moment tries again for this long before it gives up.
ACQUIRE_PATIENCE = 0.5


class NotTheOwner(Exception):
    """The command runs as a user who does not own the queues; the message says whom to run it as."""


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"user id {uid}"


def require_owner(directory: Path, command: str) -> None:
    """Refuse to write in ``directory`` (the queues, or the nearest parent that exists) as anyone but its
    owner.

    Refused rather than chowned afterwards: a root process that creates files in a directory the deploy
    user can write follows whatever symlink that user put there (``.lock`` pointing at /etc/shadow would be
    written to), and what it left would be root's until a chown that a crash can skip; the worker could
    then neither lock nor remove it and would stop routing. Running as the owner has neither problem.
    """
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    owner, me = existing.stat().st_uid, os.geteuid()
    if owner != me:
        raise NotTheOwner(
            f"runner {command} runs as {_user(me)}, but {existing} belongs to {_user(owner)}: what it wrote "
            f"there would not be the queues' owner's. Run it as that user: sudo -u {_user(owner)} runner "
            f"{command} ..."
        )


class WorkerRunning(Exception):
    """Another worker holds the lock; the message names its pid."""


def _holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        return "unknown"
    return pid if pid.isdigit() else "unknown"


class WorkerLock:
    """Held from :meth:`acquire` until :meth:`release` or the process's end."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # O_CLOEXEC: a step that outlives the worker must not keep holding the lock.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        deadline = time.monotonic() + ACQUIRE_PATIENCE
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise WorkerRunning(
                        f"another worker (pid {_holder(self.path)}) is working {self.path.parent.parent}: "
                        f"only one `runner work` or `runner up` may run per RUNNER_HOME (lock: {self.path})"
                    ) from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> WorkerLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def worker_alive(path: Path) -> bool:
    """Whether a worker holds the lock now (a free lock: no worker is alive)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    except PermissionError:
        # Cannot tell: say alive, so that a follower goes on following as it would with a worker.
        return True
    try:
        try:
            # Shared and released at once: it never keeps a worker out for longer than ACQUIRE_PATIENCE.
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
