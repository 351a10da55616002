"""The file queue: unique ordered names, atomic durable publication, and readers that miss nothing."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from inotify_simple import INotify, flags
from support import PAYLOADS, Server, require, run_cli, runner_env, stop_started, wait_for

from runner.consumer import Consumer, QueueGone
from runner.queue import ENTRY_NAME, Queue, QueueError, Reader

ENTRY_RE = re.compile(r"^[0-9]{20}\.json$")


@pytest.fixture(autouse=True)
def _no_server_outlives_its_test() -> Iterator[None]:
    yield
    stop_started()


class PublishWatch:
    """Records, with inotify, the order in which entry names appear in a directory."""

    def __init__(self, directory: Path) -> None:
        self.inotify = INotify()
        self.inotify.add_watch(directory, flags.MOVED_TO)
        self.names: list[str] = []

    def collect(self, timeout_ms: int = 200) -> list[str]:
        while True:
            events = self.inotify.read(timeout=timeout_ms)
            if not events:
                break
            for event in events:
                assert not event.mask & flags.Q_OVERFLOW, "the test's own watch overflowed"
                self.names.append(event.name)
        self.inotify.close()
        return self.names


def test_put_writes_one_named_json_file(tmp_path: Path) -> None:
    queue = Queue(tmp_path / "q")
    before = time.time_ns()
    name = queue.put({"event": "ping", "n": 1})
    after = time.time_ns()
    assert ENTRY_RE.match(name)
    assert before <= int(name[:20]) <= after + 1_000
    assert queue.entries() == [name]
    assert queue.read(name) == {"event": "ping", "n": 1}
    assert [p.name for p in queue.directory.iterdir() if not p.name.startswith(".")] == [name]


def test_names_increase_even_when_the_clock_is_behind(tmp_path: Path) -> None:
    queue = Queue(tmp_path / "q")
    first = queue.put(b"{}")
    # As if the clock had stepped back an hour since the last name was given.
    future = time.time_ns() + 3600 * 10**9
    (queue.directory / ".lock").write_text(f"{future:020d}")
    second = queue.put(b"{}")
    third = queue.put(b"{}")
    assert int(second[:20]) == future + 1
    assert int(third[:20]) == future + 2
    assert queue.entries() == [first, second, third]


def test_threads_get_distinct_names_published_in_order(tmp_path: Path) -> None:
    queue = Queue(tmp_path / "q")
    watch = PublishWatch(queue.directory)
    barrier = threading.Barrier(8)
    results: list[str] = []

    def work(worker: int) -> None:
        barrier.wait()
        for i in range(50):
            results.append(queue.put({"worker": worker, "i": i}))

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    published = watch.collect()
    assert len(set(results)) == 400
    assert sorted(results) == queue.entries()
    assert published == sorted(published), "an entry was published before an older name"
    assert set(published) == set(results)


def test_processes_get_distinct_names_published_in_order(tmp_path: Path) -> None:
    directory = tmp_path / "q"
    queue = Queue(directory)
    watch = PublishWatch(directory)
    start = time.time() + 1.0
    script = (
        "import sys, time; from runner.queue import Queue\n"
        "q = Queue(sys.argv[1]); start = float(sys.argv[2])\n"
        "time.sleep(max(0, start - time.time()))\n"
        "for i in range(150): print(q.put({'pid': sys.argv[3], 'i': i}))\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(directory), str(start), str(p)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for p in range(4)
    ]
    outputs = [proc.communicate(timeout=60)[0].split() for proc in procs]
    assert all(proc.returncode == 0 for proc in procs)
    names = [name for output in outputs for name in output]
    published = watch.collect()
    assert len(names) == len(set(names)) == 600
    assert queue.entries() == sorted(names)
    assert published == sorted(published)
    # Each process saw its own names increase too.
    for output in outputs:
        assert output == sorted(output)


def test_crash_between_write_and_rename_leaves_nothing_to_read(tmp_path: Path) -> None:
    directory = tmp_path / "q"
    script = (
        "import os, signal, sys; from runner.queue import Queue\n"
        "q = Queue(sys.argv[1])\n"
        "print(q.put({'kept': True}), flush=True)\n"
        "os.rename = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n"
        "q.put({'kept': False})\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(directory)], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == -9, proc.stderr
    kept = proc.stdout.strip()
    queue = Queue(directory)
    temps = [p for p in directory.iterdir() if p.name.endswith(".tmp")]
    assert len(temps) == 1, "the crashed write should have left its temporary file"
    assert json.loads(temps[0].read_bytes()) == {"kept": False}
    with Reader(queue) as reader:
        assert reader.take() == kept
        assert reader.take() is None
    assert queue.remove_stale_temps(older_than=3600) == []
    assert queue.remove_stale_temps(older_than=0) == [temps[0].name]
    assert queue.entries() == [kept]


def test_reader_finds_a_backlog_in_order(tmp_path: Path) -> None:
    queue = Queue(tmp_path / "q")
    names = [queue.put({"i": i}) for i in range(30)]
    with Reader(Queue(tmp_path / "q")) as reader:
        taken = []
        while (name := reader.take()) is not None:
            taken.append(name)
            reader.done(name)
    assert taken == names
    assert queue.entries() == []


def test_entry_published_during_the_start_up_scan_is_not_missed(tmp_path: Path) -> None:
    class RacyQueue(Queue):
        raced: str | None = None

        def entries(self) -> list[str]:
            names = super().entries()
            if self.raced is None:
                # Published after the scan listed the directory, before the scan returned.
                self.raced = Queue(self.directory).put({"raced": True})
            return names

    Queue(tmp_path / "q").put({"before": True})
    queue = RacyQueue(tmp_path / "q")
    with Reader(queue) as reader:
        first = reader.take()
        assert first is not None and queue.read(first) == {"before": True}
        assert reader.take() is None
        assert reader.poll(timeout=2)
        assert reader.take() == queue.raced


def test_reader_rescans_after_an_inotify_overflow(tmp_path: Path) -> None:
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    if limit > 100_000:
        pytest.skip(f"max_queued_events is {limit}: too many files to overflow it in a test")
    queue = Queue(tmp_path / "q")
    with Reader(queue) as reader:
        count = limit + 500
        # Published the fast, non-durable way: this test is about the reader, not the disk.
        for i in range(count):
            temp = queue.directory / f".{i}.tmp"
            temp.write_bytes(b"{}")
            os.rename(temp, queue.directory / f"{i + 1:020d}.json")
        scans = reader.rescans
        assert reader.poll(timeout=1)
        assert reader.rescans == scans + 1
        taken = []
        while (name := reader.take()) is not None:
            taken.append(name)
        assert len(taken) == count
        assert taken == sorted(taken)


def test_take_done_and_release(tmp_path: Path) -> None:
    queue = Queue(tmp_path / "q")
    a, b = queue.put(b'{"a":1}'), queue.put(b'{"b":1}')
    with Reader(queue) as reader:
        assert reader.take() == a
        reader.scan()  # a rescan must not hand out an entry that is being worked on
        assert reader.take() == b
        assert reader.take() is None
        reader.release(a)
        assert reader.take() == a
        reader.done(a)
        assert queue.entries() == [b]
        reader.scan()
        assert reader.take() is None


def test_async_wait_wakes_on_a_new_entry(tmp_path: Path) -> None:
    queue = Queue(tmp_path / "q")

    async def main() -> str | None:
        with Reader(queue) as reader:
            threading.Timer(0.2, queue.put, args=(b"{}",)).start()
            await asyncio.wait_for(reader.wait(), timeout=5)
            return reader.take()

    name = asyncio.run(main())
    assert name is not None and queue.entries() == [name]


@pytest.mark.parametrize("name", ["../x.json", "1.json", "00000000000000000001.json/../../x", ".lock"])
def test_paths_from_outside_cannot_escape(tmp_path: Path, name: str) -> None:
    queue = Queue(tmp_path / "q")
    assert not ENTRY_NAME.match(name)
    with pytest.raises(QueueError):
        queue.path(name)


def test_put_many_publishes_a_temporary_file_its_caller_wrote_and_nothing_outside(tmp_path: Path) -> None:
    queue = Queue(tmp_path / "q")
    temp, fd = queue.create_temp(b'{"written":')
    os.write(fd, b' "in two parts"}')
    os.close(fd)
    names = queue.put_many([b'{"first": true}', temp])
    assert names == sorted(names) and queue.entries() == names
    assert [queue.read(name) for name in names] == [{"first": True}, {"written": "in two parts"}]
    assert not temp.exists()
    # Only a hidden temporary file of this very directory may be renamed into it.
    outside = tmp_path / ".elsewhere.tmp"
    outside.write_bytes(b"{}")
    visible = queue.directory / "visible.tmp"
    visible.write_bytes(b"{}")
    for path in (outside, visible, queue.directory / "sub" / ".x.tmp"):
        with pytest.raises(QueueError):
            queue.put_many([b"{}", path])
    assert outside.exists() and visible.exists()
    link = queue.directory / ".link.tmp"
    link.symlink_to(outside)
    with pytest.raises(OSError):
        queue.put_many([link])
    assert outside.exists() and queue.entries() == names


# What the strace test reads: "PID name(args) = result", or a call cut in two by another thread's.
STRACE_LINE = re.compile(r"^(\d+)\s+(.*)$")
QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')


def traced_calls(trace: Path) -> list[tuple[int, int, str]]:
    """The calls in an ``strace -f`` output, as (line it started, line it ended, its text), in order."""
    calls: list[tuple[int, int, str]] = []
    pending: dict[str, tuple[int, str]] = {}
    for index, line in enumerate(trace.read_text(errors="replace").splitlines()):
        match = STRACE_LINE.match(line)
        if not match:
            continue
        pid, text = match.groups()
        if text.endswith("<unfinished ...>"):
            pending[pid] = (index, text.removesuffix("<unfinished ...>").rstrip())
        elif text.startswith("<... ") and pid in pending:
            start, head = pending.pop(pid)
            calls.append((start, index, head + text.split(" resumed>", 1)[1]))
        elif not text.startswith(("+++", "---")):
            calls.append((index, index, text))
    return calls


def test_each_entry_is_fsynced_before_its_rename_and_the_directory_after_before_the_answer(
    tmp_path: Path,
) -> None:
    require(shutil.which("strace") is not None, "strace is not installed (apt-get install strace)")
    env = runner_env(tmp_path)
    assert run_cli("db", "upgrade", env=env).returncode == 0
    server = Server(tmp_path, env)
    main = (tmp_path / "queues" / "main").resolve()
    trace = tmp_path / "strace.txt"
    calls = "fsync,fdatasync,rename,renameat,renameat2,write,writev,sendto,sendmsg"
    tracer = subprocess.Popen(
        [
            "strace",
            "-f",
            "-y",
            "-s",
            "400",
            "-e",
            f"trace={calls}",
            "-o",
            str(trace),
            "-p",
            str(server.process.pid),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert tracer.stderr is not None
        line = tracer.stderr.readline()
        assert "attached" in line, line
        small = (PAYLOADS / "ping" / next(p.name for p in (PAYLOADS / "ping").iterdir())).read_bytes()
        # A spooled body (written as it arrives, published as a file) and small ones that share fsyncs.
        large = json.dumps({"zen": "x" * (600 * 1024)}).encode()
        answers: list[str] = []

        def deliver(body: bytes) -> None:
            answer = server.deliver("ping", body, str(uuid.uuid4()))
            assert answer.status == 202, answer.body
            answers.append(answer.json()["entry"])

        threads = [threading.Thread(target=deliver, args=(small,)) for _ in range(12)]
        threads.append(threading.Thread(target=deliver, args=(large,)))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        deliver(large)
    finally:
        tracer.send_signal(signal.SIGINT)  # strace detaches, the server goes on
        tracer.communicate(timeout=30)
    assert len(answers) == 14
    wait_for(lambda: trace.stat().st_size > 0, "strace's output")
    calls_seen = traced_calls(trace)

    def fsynced(path: str) -> list[tuple[int, int]]:
        return [
            (s, e) for s, e, text in calls_seen if re.match(rf"f(data)?sync\(\d+<{re.escape(path)}>\)", text)
        ]

    for name in answers:
        renames = [
            (s, e, QUOTED.findall(text)[0])
            for s, e, text in calls_seen
            if text.startswith("rename")
            and len(QUOTED.findall(text)) == 2
            and QUOTED.findall(text)[1] == f"{main}/{name}"
        ]
        assert len(renames) == 1, (name, renames)
        rename_start, rename_end, temp = renames[0]
        assert Path(temp).parent == main and Path(temp).name.startswith(".") and temp.endswith(".tmp")
        assert [s for s, e in fsynced(temp) if e < rename_start], (
            f"{name}: its file was not fsynced before its rename"
        )
        answered = [
            s
            for s, _, text in calls_seen
            if text.startswith(("write", "sendto", "sendmsg")) and f'\\"entry\\":\\"{name}\\"' in text
        ]
        assert len(answered) == 1, (name, answered)
        # The answer begins with its head, written on the same socket just before.
        body_line = next(text for s, _, text in calls_seen if s == answered[0])
        socket_fd = body_line.split(",", 1)[0].split("(", 1)[1]
        head = max(
            s
            for s, _, text in calls_seen
            if s <= answered[0] and socket_fd in text.split(",", 1)[0] and '"HTTP/1.1 202' in text
        )
        assert [s for s, e in fsynced(str(main)) if s > rename_end and e < head], (
            f"{name}: the directory was not fsynced between its rename and the answer"
        )


@pytest.mark.parametrize("how", ["removed", "renamed aside", "replaced", "replaced by a move"])
def test_a_consumer_is_told_at_once_when_its_directory_goes(tmp_path: Path, how: str) -> None:
    """No periodic look: the reader's watches (the directory's and the one above it) tell the consumer."""
    directory = tmp_path / "q"
    queue = Queue(directory)

    def act() -> None:
        if how == "removed":
            shutil.rmtree(directory)
        elif how == "renamed aside":
            directory.rename(tmp_path / "q.old")
        elif how == "replaced":
            shutil.rmtree(directory)
            Queue(directory).put(b"{}")
        else:
            Queue(tmp_path / "q.new").put(b"{}")
            os.rename(tmp_path / "q.new", tmp_path / "q.tmp")
            directory.rename(tmp_path / "q.old")
            os.rename(tmp_path / "q.tmp", directory)

    async def main() -> None:
        with Consumer(queue) as consumer:
            # Whatever happens beside it is no reason to stop.
            (tmp_path / "other").mkdir()
            (tmp_path / "other").rmdir()
            threading.Timer(0.2, act).start()
            await asyncio.wait_for(consumer.take(asyncio.Event()), timeout=5)

    try:
        with pytest.raises(QueueGone):
            asyncio.run(main())
    finally:
        queue.close()


def test_a_consumer_goes_on_when_a_sibling_directory_comes_and_goes(tmp_path: Path) -> None:
    queue = Queue(tmp_path / "q")

    def act() -> None:
        (tmp_path / "q2").mkdir()
        (tmp_path / "q2").rename(tmp_path / "q3")
        (tmp_path / "q3").rmdir()
        queue.put(b"{}")

    async def main() -> str | None:
        with Consumer(queue) as consumer:
            threading.Timer(0.2, act).start()
            return await asyncio.wait_for(consumer.take(asyncio.Event()), timeout=5)

    name = asyncio.run(main())
    assert name is not None and queue.entries() == [name]
    queue.close()
