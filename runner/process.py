"""Child processes: how runner starts programs, and what /proc says of a process.

Every child begins with exactly stdin, stdout and stderr open.

Not ``asyncio.create_subprocess_exec``: under uvloop (what ``runner up`` runs its worker on) it
ignores ``close_fds``, so every inheritable descriptor of the worker reaches the program (Hypercorn makes
its listening socket inheritable), and it marks its own copies of the child's stdin, stdout and stderr
inheritable, so the program holds each twice, under a second number, whatever was marked before the spawn.
``subprocess.Popen`` with ``close_fds`` closes every descriptor above 2 in the child, on any event loop;
asyncio's own loop starts its children the same way. The child is then followed through the loop:
its pipes as stream readers, its end through a pidfd.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

PIPE = subprocess.PIPE
DEVNULL = subprocess.DEVNULL
READ_SIZE = 65536


class Child:
    """A started program: its pid, its output as stream readers (for ``PIPE``), and its end."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        stdout: asyncio.StreamReader | None,
        stderr: asyncio.StreamReader | None,
    ) -> None:
        self._popen = popen
        self.pid = popen.pid
        self.stdout = stdout
        self.stderr = stderr
        self._ended = asyncio.get_running_loop().create_future()
        self._pidfd = os.pidfd_open(popen.pid)
        asyncio.get_running_loop().add_reader(self._pidfd, self._reap)

    def _reap(self) -> None:
        # A callback already queued may still come after the first one removed the reader: the pidfd's
        # number may be another file's by then.
        if self._ended.done():
            return
        # Readable once the program has ended; poll() reaps it and Popen keeps the status.
        if self._popen.poll() is None:
            return
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        if not self._ended.done():
            self._ended.set_result(self._popen.returncode)

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode

    async def wait(self) -> int:
        return await asyncio.shield(self._ended)

    async def communicate(self) -> tuple[bytes, bytes]:
        """Everything the program printed on its pipes, once it has ended."""
        outputs = await asyncio.gather(
            *(stream.read() if stream is not None else _nothing() for stream in (self.stdout, self.stderr))
        )
        await self.wait()
        return outputs[0], outputs[1]

    def kill(self) -> None:
        # Once reaped, the pid may be another process's.
        if self._popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._popen.kill()


async def _nothing() -> bytes:
    return b""


def _feed(pipe: IO[bytes], data: bytes) -> None:
    """Write ``data`` to a program's standard input and close it; a program that ended first misses it."""
    with contextlib.suppress(OSError):
        try:
            pipe.write(data)
        finally:
            pipe.close()


def _reader(pipe: IO[bytes] | None) -> asyncio.StreamReader | None:
    """The program's end of ``pipe`` as a stream reader, fed from the loop by a reader of our own.

    Not ``loop.connect_read_pipe``: uvloop closes the descriptor itself and then closes the file object
    too, a second close of a number that may by then be another thread's file (a database, a queue entry).
    Here the descriptor has one owner, which closes it once, at the end of the output.
    """
    if pipe is None:
        return None
    fd = os.dup(pipe.fileno())  # os.dup makes it non-inheritable, like every descriptor of runner's
    pipe.close()
    os.set_blocking(fd, False)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()

    def readable() -> None:
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""  # the pipe broke: its end, as far as the reader is concerned
        if data:
            reader.feed_data(data)
            return
        loop.remove_reader(fd)
        os.close(fd)
        reader.feed_eof()

    loop.add_reader(fd, readable)
    return reader


async def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path | str | None = None,
    stdout: int = PIPE,
    stderr: int = PIPE,
    start_new_session: bool = False,
    stdin: bytes | None = None,
) -> Child:
    """Start ``argv`` (never through a shell) with stdin from /dev/null, or a pipe that gives it ``stdin``
    and closes, and no other descriptor of runner's.

    Raises OSError when the program cannot be started.
    """
    popen = subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=dict(env),
        stdin=DEVNULL if stdin is None else PIPE,
        stdout=stdout,
        stderr=stderr,
        close_fds=True,
        start_new_session=start_new_session,
    )
    if stdin is not None and popen.stdin is not None:
        # A thread: a program that reads slowly (or not at all) must not hold up the event loop.
        threading.Thread(target=_feed, args=(popen.stdin, stdin), daemon=True).start()
    try:
        return Child(popen, _reader(popen.stdout), _reader(popen.stderr))
    except BaseException:
        popen.kill()
        popen.wait()
        raise


@dataclass(frozen=True)
class ProcessStat:
    """What /proc/PID/stat says of a process: its state (``Z`` for a zombie), its parent and its group."""

    state: str
    parent: int
    group: int


def process_stat(pid: int) -> ProcessStat:
    """/proc/PID/stat's first fields. Raises OSError when there is no such process (any more)."""
    stat = Path(f"/proc/{pid}/stat").read_bytes()
    # The command name in parentheses may hold spaces and parentheses; the fields after the last ")" do not.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return ProcessStat(fields[0].decode(), int(fields[1]), int(fields[2]))
