"""The file queue: unique ordered names, atomic durable publication, and readers that miss nothing."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from inotify_simple import INotify, flags

from runner.queue import ENTRY_NAME, Queue, QueueError, Reader

ENTRY_RE = re.compile(r"^[0-9]{20}\.json$")


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
