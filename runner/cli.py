"""The ``runner`` command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from runner import config as config_module
from runner import shipped
from runner.config import Config, ConfigError
from runner.timefmt import LogFormatter, iso, shown

logger = logging.getLogger("runner")

# Connections that may wait for an accept(): GitHub's bursts, and a benchmark's connections, all at once.
SERVE_BACKLOG = 128


class CommandError(Exception):
    """Ends the command with this message and exit status 1."""


def _run_async(main: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
    """Run ``main`` on uvloop when it is there; SIGTERM and SIGINT ask it to stop."""

    async def wrapper() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await main(stop)

    try:
        import uvloop
    except ImportError:
        asyncio.run(wrapper())
    else:
        uvloop.run(wrapper())


def _open_store(config: Config, migrate_default: bool) -> Any:
    from runner.schema import SchemaError
    from runner.store import Store

    store = Store(config.database_url)
    try:
        if migrate_default and config.uses_default_database:
            store.upgrade()
        store.check_schema()
    except SchemaError as exc:
        store.close()
        raise CommandError(str(exc)) from None
    except Exception as exc:
        from runner.database import safe_url

        store.close()
        raise CommandError(f"cannot use the database {safe_url(config.database_url)}: {exc}") from None
    return store


def _listen(host: str, port: int) -> socket.socket:
    from runner.listen import ListenError, listen

    try:
        return listen(host, port, SERVE_BACKLOG)
    except ListenError as exc:
        raise CommandError(str(exc)) from None


def _serve(config: Config, migrate_default: bool, with_worker: bool) -> None:
    # Imported before any fork, so that the server processes share these pages with the parent.
    import runner.web  # noqa: F401

    secret = config.require_secret()
    store = _open_store(config, migrate_default)
    try:
        listener = _listen(config.host, config.port)
    except BaseException:
        store.close()
        raise
    from runner.listen import describe

    logger.info(
        "webhook endpoint: %s/github-webhook, queue: %s, %d server process(es)",
        describe(listener),
        config.main_queue_dir,
        config.workers,
    )
    if config.workers == 1:
        _serve_here(config, listener, secret, store, with_worker)
        return
    # The schema is checked; the children connect afresh, so no connection is shared across the fork.
    store.close()
    _serve_forked(config, listener, secret, store, with_worker)


def _serve_here(
    config: Config,
    listener: socket.socket,
    secret: Any,
    store: Any,
    with_worker: bool,
    parent_pipe: int | None = None,
) -> None:
    """Serve (and work, with ``with_worker``) in this process until SIGTERM or SIGINT.

    With ``parent_pipe``, the read end of a pipe only the parent writes to, it also stops when the parent
    is gone (even killed with SIGKILL), so that no orphan goes on serving the port.
    """
    from runner.queue import Queue
    from runner.web import serve

    # Each process opens its own queue: the flock that orders names across processes is held per open
    # file, so a lock file opened before a fork would not keep the children apart.
    queue = Queue(config.main_queue_dir)
    # Hypercorn owns the socket from here on and closes it when it stops.
    fd = listener.detach()

    async def main(stop: asyncio.Event) -> None:
        if parent_pipe is not None:
            loop = asyncio.get_running_loop()

            def parent_gone() -> None:
                loop.remove_reader(parent_pipe)
                logger.warning("the parent process is gone: stopping")
                stop.set()

            loop.add_reader(parent_pipe, parent_gone)
        web = serve(fd, secret, queue, store, stop)
        if not with_worker:
            await web
            return
        worker = _worker(config, store).run(stop)
        tasks = [asyncio.ensure_future(web), asyncio.ensure_future(worker)]
        # If either ends by itself (a crash), stop the other too rather than run half a runner.
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            task.result()

    try:
        _run_async(main)
    finally:
        queue.close()
        store.close()


def _serve_forked(
    config: Config, listener: socket.socket, secret: Any, store: Any, with_worker: bool
) -> None:
    """Fork ``config.workers`` server processes on one listening socket and wait for them.

    SIGTERM and SIGINT are passed on to every child. If a child ends while no stop was asked for, the
    others are stopped and the command fails: a runner serving at part strength would hide the fault.
    """
    import threading

    # fork() copies only the calling thread: a lock held by another thread would stay locked forever.
    if threading.active_count() != 1:
        raise CommandError("internal error: a thread was started before the server processes were forked")
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    children: dict[int, int] = {}
    stopping = False
    failures: list[str] = []

    def stop_children(signum: int) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        stop_children(signum)

    def reap() -> None:
        nonlocal stopping
        while children:
            pid, status = os.wait()
            code = os.waitstatus_to_exitcode(status)
            del children[pid]
            if stopping and code in (0, -signal.SIGTERM, -signal.SIGINT):
                continue
            failures.append(f"server process {pid} exited with status {code}")
            if not stopping:
                logger.error("%s; stopping the others", failures[-1])
                stopping = True
                stop_children(signal.SIGTERM)

    # Never written to: the children see its end of file when the parent is gone.
    pipe_read, pipe_write = os.pipe()
    # Blocked until the handlers are in place: a stop asked for during the forks reaches every child.
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    try:
        for index in range(config.workers):
            pid = os.fork()
            if pid == 0:
                os.close(pipe_write)
                child_worker = with_worker and index == 0
                _run_child(config, listener, secret, store, child_worker, pipe_read, previous_mask)
            children[pid] = index
        for signum in stop_signals:
            signal.signal(signum, forward)
    except BaseException:
        # A failed fork: the children already started must not outlive the command.
        stopping = True
        stop_children(signal.SIGTERM)
        reap()
        os.close(pipe_write)
        raise
    finally:
        # Only the children accept connections; they close their copies when they stop.
        listener.close()
        os.close(pipe_read)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
    reap()
    os.close(pipe_write)
    if failures:
        raise CommandError("; ".join(failures))


def _run_child(
    config: Config,
    listener: socket.socket,
    secret: Any,
    store: Any,
    with_worker: bool,
    parent_pipe: int,
    signal_mask: Any,
) -> NoReturn:
    code = 1
    try:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, signal_mask)
        _serve_here(config, listener, secret, store, with_worker, parent_pipe)
        code = 0
    except BaseException:
        logger.exception("server process %d failed", os.getpid())
    finally:
        # The parent's cleanup (its finally blocks, atexit) is not the child's to run.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _worker(config: Config, store: Any) -> Any:
    import os

    from runner.pipelines import PipelineSet
    from runner.worker import Worker

    # Steps inherit the worker's environment (less runner's own settings): PATH, HOME, locale.
    return Worker(PipelineSet(config.pipelines_dir, config.home), store, config, dict(os.environ))


def cmd_serve(config: Config, _args: argparse.Namespace) -> None:
    _serve(config, migrate_default=False, with_worker=False)


def _worker_lock(config: Config, command: str) -> Any:
    """The home's worker lock, taken, or a CommandError naming the worker that holds it."""
    from runner.lock import NotTheOwner, WorkerLock, WorkerRunning, require_owner

    lock = WorkerLock(config.worker_lock)
    try:
        require_owner(config.queues_dir, command)
        lock.acquire()
    except (NotTheOwner, WorkerRunning) as exc:
        raise CommandError(str(exc)) from None
    except OSError as exc:
        raise CommandError(f"cannot take the worker lock {config.worker_lock}: {exc}") from None
    return lock


def cmd_up(config: Config, _args: argparse.Namespace) -> None:
    # Taken before anything else, so that a second one refuses at once, before it migrates or listens; the
    # server processes forked later share it.
    lock = _worker_lock(config, "up")
    try:
        _serve(config, migrate_default=True, with_worker=True)
    finally:
        lock.release()


def cmd_work(config: Config, _args: argparse.Namespace) -> None:
    lock = _worker_lock(config, "work")
    try:
        store = _open_store(config, migrate_default=False)
        try:
            _run_async(_worker(config, store).run)
        finally:
            store.close()
    finally:
        lock.release()


def cmd_validate(config: Config, args: argparse.Namespace) -> None:
    from runner.pipelines import SUFFIXES, pipeline_files, validate

    files = [Path(f) for f in args.files] if args.files else pipeline_files(config.pipelines_dir)
    if not files:
        raise CommandError(
            f"no pipeline files in {config.pipelines_dir} ({', '.join('*' + s for s in SUFFIXES)}): "
            "nothing to validate"
        )
    problems = validate(files, config.home)
    for problem in problems:
        print(problem)
    if problems:
        files_with_problems = len({p.path for p in problems})
        raise CommandError(f"{len(problems)} problem(s) in {files_with_problems} of {len(files)} file(s)")
    print(f"{len(files)} pipeline file(s) valid", file=sys.stderr)


def _when(value: Any) -> str:
    """A time in a table: UTC, marked Z, whatever the reader's TZ (the run logs' convention)."""
    return shown(value)


def _iso(value: Any) -> str | None:
    return iso(value)


@contextlib.contextmanager
def _listing() -> Iterator[None]:
    """Output a reader may stop reading (``runner runs --json | head -1``): a closed pipe ends it quietly."""
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        # Python's recipe: standard output becomes /dev/null, so that the flush at exit does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _table(rows: list[list[str]], headers: list[str]) -> None:
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]
    for row in [headers, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def cmd_deliveries(config: Config, args: argparse.Namespace) -> None:
    store = _open_store(config, migrate_default=False)
    try:
        deliveries = store.deliveries(limit=args.limit)
    finally:
        store.close()
    with _listing():
        _print_deliveries(deliveries, args.json)


def _print_deliveries(deliveries: list[Any], as_json: bool) -> None:
    if as_json:
        print(
            json.dumps(
                [
                    {
                        "delivery": d.delivery_id,
                        "event": d.event,
                        "repository": d.repository,
                        "ref": d.ref,
                        "received_at": _iso(d.received_at),
                        "outcome": d.outcome,
                        "detail": d.detail,
                        "duplicates": d.duplicates,
                    }
                    for d in deliveries
                ],
                indent=2,
            )
        )
        return
    rows = [
        [
            _when(d.received_at),
            d.delivery_id,
            d.event,
            d.repository or "-",
            d.ref or "-",
            d.outcome + (f" (+{d.duplicates} dup)" if d.duplicates else ""),
            d.detail or "",
        ]
        for d in deliveries
    ]
    _table(rows, ["RECEIVED", "DELIVERY", "EVENT", "REPOSITORY", "REF", "OUTCOME", "DETAIL"])


def _run_json(run: Any, steps: list[Any] | None = None) -> dict[str, Any]:
    data = {
        "id": run.id,
        "pipeline": run.pipeline,
        "status": run.status,
        "trigger": run.trigger,
        "delivery": run.delivery_id,
        "ref": run.ref,
        "commit": run.commit,
        "reason": run.reason,
        "queued_at": _iso(run.queued_at),
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
        "log": run.log_path,
    }
    if steps is not None:
        data["steps"] = [
            {
                "position": s.position,
                "name": s.name,
                "status": s.status,
                "exit_code": s.exit_code,
                "duration": s.duration,
                "detail": s.detail,
            }
            for s in steps
        ]
    return data


def cmd_runs(config: Config, args: argparse.Namespace) -> None:
    store = _open_store(config, migrate_default=False)
    try:
        runs = store.runs(args.pipeline, limit=args.limit)
        steps = {run.id: store.steps(run.id) for run in runs} if args.json else {}
    finally:
        store.close()
    with _listing():
        _print_runs(runs, steps, args.json)


def _print_runs(runs: list[Any], steps: dict[int, list[Any]], as_json: bool) -> None:
    if as_json:
        print(json.dumps([_run_json(run, steps[run.id]) for run in runs], indent=2))
        return
    rows = []
    for run in runs:
        took = (
            f"{(run.finished_at - run.started_at).total_seconds():.1f}s"
            if run.finished_at and run.started_at
            else "-"
        )
        ref = (run.ref or "").removeprefix("refs/heads/").removeprefix("refs/tags/")
        rows.append(
            [
                str(run.id),
                run.pipeline,
                run.status,
                run.trigger,
                ref or "-",
                (run.commit or "-")[:12],
                _when(run.started_at or run.queued_at),
                took,
                run.reason or "",
            ]
        )
    _table(rows, ["RUN", "PIPELINE", "STATUS", "TRIGGER", "REF", "COMMIT", "STARTED", "TOOK", "REASON"])


def cmd_logs(config: Config, args: argparse.Namespace) -> None:
    import time

    from runner.lock import worker_alive

    store = _open_store(config, migrate_default=False)
    try:
        run = store.run(args.run)
        if run is None:
            raise CommandError(f"there is no run {args.run}: `runner runs` lists them")
        offset = 0
        orphaned = False
        while True:
            path = Path(run.log_path) if run.log_path else None
            if path is not None and path.exists():
                with path.open("rb") as log:
                    log.seek(offset)
                    chunk = log.read()
                    offset += len(chunk)
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.flush()
            if not args.follow or run.status not in ("queued", "running") or orphaned:
                break
            time.sleep(0.25)
            # Checked before the run is read again: a worker that ends the run and then stops is not
            # taken for one that died with the run unfinished.
            orphaned = not worker_alive(config.worker_lock)
            run = store.run(args.run)
            assert run is not None
        if run.status not in ("queued", "running"):
            print(f"run {run.id}: {run.status}" + (f" ({run.reason})" if run.reason else ""), file=sys.stderr)
        elif args.follow:
            print(
                f"run {run.id}: {run.status}, and no worker is running on {config.home}: it goes on when "
                "`runner work` (or `runner up`) starts again",
                file=sys.stderr,
            )
    finally:
        store.close()


def cmd_trigger(config: Config, args: argparse.Namespace) -> None:
    from runner.trigger import RunRequest, TriggerError

    try:
        request = RunRequest.checked(config, args.pipeline, args.ref, args.commit)
        store = _open_store(config, migrate_default=False)
        try:
            entry = request.queue(config, store)
        finally:
            store.close()
    except TriggerError as exc:
        raise CommandError(str(exc)) from None
    what = " ".join(x for x in (entry.ref, entry.commit) if x)
    print(f"run {entry.run_id} queued: pipeline {entry.pipeline}, {what}")
    print(f"follow it with: runner logs {entry.run_id}", file=sys.stderr)


def cmd_setup(config: Config, args: argparse.Namespace) -> None:
    from runner.instance import SetupError
    from runner.setup import Setup

    setup = Setup(
        user=args.user,
        home=(args.home_dir or Path(f"/var/lib/{args.user}")).resolve(),
        sites_dir=args.sites_dir or config.nginx_sites_dir,
        stop_grace=config.stop_grace,
        prefix=args.prefix,
        database_url=args.database_url,
        dry_run=args.dry_run,
    )
    try:
        setup.run()
    except SetupError as exc:
        raise CommandError(str(exc)) from None


def cmd_doctor(config: Config, _args: argparse.Namespace) -> None:
    import os

    from runner import doctor

    if doctor.run(config, dict(os.environ)) != 0:
        raise SystemExit(1)


def cmd_db(config: Config, args: argparse.Namespace) -> None:
    from sqlalchemy.exc import SQLAlchemyError

    from runner.database import safe_url
    from runner.schema import head_revision
    from runner.store import Store

    store = Store(config.database_url)
    try:
        if args.db_command == "upgrade":
            store.upgrade(args.revision)
            print(f"{safe_url(config.database_url)}: at revision {store.current_revision()}")
        elif args.db_command == "downgrade":
            store.downgrade(args.revision)
            print(f"{safe_url(config.database_url)}: at revision {store.current_revision()}")
        else:
            current, head = store.current_revision(), head_revision()
            state = "up to date" if current == head else f"needs `runner db upgrade` to {head}"
            print(f"{safe_url(config.database_url)}: at revision {current} ({state})")
            if current != head:
                raise SystemExit(1)  # for scripts: `runner db current || runner db upgrade`
    except SQLAlchemyError as exc:
        raise CommandError(f"cannot use the database {safe_url(config.database_url)}: {exc}") from None
    finally:
        store.close()


def cmd_prune(config: Config, args: argparse.Namespace) -> None:
    from runner import retention

    store = _open_store(config, migrate_default=False)
    try:
        done = retention.prune(config, store, dry_run=args.dry_run)
    finally:
        store.close()
    for run in done.runs:
        logs = ", ".join(str(path) for path in done.files.get(run.id, []))
        print(
            f"run {run.id} of {run.pipeline}: {run.status}, ended {_when(run.finished_at or run.queued_at)}"
            + (f"; {logs}" if logs else "")
        )
    for delivery in done.deliveries:
        print(
            f"delivery {delivery.delivery_id}: {delivery.event}, {delivery.outcome}, "
            f"received {_when(delivery.received_at)}"
        )
    for entry in done.failed:
        reason = (entry.reason or "no reason given").splitlines()[0]
        print(f"failed entry {entry.key}: failed {_when(entry.failed_at)}: {reason}")
    for path in done.reasons:
        print(f"reason {path}: its entry is gone")
    for problem in done.problems:
        print(f"not removed: {problem}", file=sys.stderr)
    counts = (
        f"{len(done.runs)} run(s) with their steps and logs, {len(done.deliveries)} delivery record(s), "
        f"{len(done.failed)} failed entry(ies)"
    )
    rule = (
        f"older than {_when(done.cutoff)}, keeping each pipeline's last {done.keep_runs} runs "
        "and its last successful one"
    )
    print(f"{'would remove' if args.dry_run else 'removed'} {counts}: {rule}", file=sys.stderr)


def cmd_failed(config: Config, args: argparse.Namespace) -> None:
    from runner import failed

    try:
        if args.failed_command is None:
            entries = failed.failed_entries(config.queues_dir)
        else:
            entry = failed.find(config.queues_dir, args.entry)
            if args.failed_command == "drop":
                failed.drop(entry)
                print(f"dropped {entry.key}")
            else:
                store = _open_store(config, migrate_default=False)
                try:
                    print(failed.retry(entry, config.queues_dir, store))
                finally:
                    store.close()
            return
    except failed.FailedError as exc:
        raise CommandError(str(exc)) from None
    with _listing():
        _print_failed(entries, args.json)


def _print_failed(entries: list[Any], as_json: bool) -> None:
    if as_json:
        listed = [
            {
                "entry": e.key,
                "queue": e.queue,
                "name": e.name,
                "path": str(e.path),
                "failed_at": _iso(e.failed_at),
                "reason": e.reason,
            }
            for e in entries
        ]
        print(json.dumps(listed, indent=2))
        return
    if not entries:
        print("no failed entries", file=sys.stderr)
        return
    rows = [
        [e.key, _when(e.failed_at), (e.reason or "").splitlines()[0] if e.reason else "-"] for e in entries
    ]
    _table(rows, ["ENTRY", "FAILED", "REASON"])


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return int(text)


LIMIT_HELP = "how many to list, newest first: a positive number (default: 20)"


def _global_options(parser: argparse.ArgumentParser, top: bool = False) -> None:
    """--home and -v, on the top-level parser and again on each command's: accepted before or after the
    command. A command's own have no default, so that they override the top-level ones only when given."""
    home, verbose = (None, False) if top else (argparse.SUPPRESS, argparse.SUPPRESS)
    parser.add_argument(
        "--home", type=Path, default=home, help="the runner's directory (default: $RUNNER_HOME or .)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", default=verbose, help="log debugging detail")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runner", description="A declarative deployment runner driven by GitHub webhooks."
    )
    _global_options(parser, top=True)
    parser.add_argument("--version", action="version", version=f"runner {shipped.version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, handler: Callable[[Config, argparse.Namespace], None], help: str
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(handler=handler)
        _global_options(sub)
        return sub

    for name, handler, help in (
        ("serve", cmd_serve, "serve the webhook endpoint"),
        ("up", cmd_up, "migrate the default SQLite database if needed, then serve and work in one process"),
    ):
        sub = add(name, handler, help)
        sub.add_argument("--host", help="address to listen on (default: $RUNNER_HOST or 127.0.0.1)")
        sub.add_argument("--port", type=int, help="port to listen on (default: $RUNNER_PORT or 3400)")
        sub.add_argument(
            "--workers",
            type=_positive_int,
            help="server processes sharing the port (default: $RUNNER_WORKERS or 1)",
        )

    add(name="work", handler=cmd_work, help="route deliveries and run the pipelines")

    validate = add("validate", cmd_validate, "check pipeline files; print each problem as file:line:column")
    validate.add_argument("files", nargs="*", help="pipeline files (default: every file in pipelines/)")

    deliveries = add("deliveries", cmd_deliveries, "recent deliveries and what became of each")
    deliveries.add_argument("--limit", type=_positive_int, default=20, help=LIMIT_HELP)
    deliveries.add_argument("--json", action="store_true", help="print JSON")

    runs = add("runs", cmd_runs, "recent runs and their status")
    runs.add_argument("pipeline", nargs="?", help="only this pipeline's runs")
    runs.add_argument("--limit", type=_positive_int, default=20, help=LIMIT_HELP)
    runs.add_argument("--json", action="store_true", help="print JSON, with each run's steps")

    logs = add("logs", cmd_logs, "print a run's log, following it while the run goes on")
    logs.add_argument("run", type=int, help="the run's number (see `runner runs`)")
    logs.add_argument("--no-follow", dest="follow", action="store_false", help="print what is there and stop")

    trigger = add("trigger", cmd_trigger, "queue a run by hand: a redeploy, or a rollback to a commit")
    trigger.add_argument("pipeline")
    trigger.add_argument("--ref", help="branch name, or a full ref such as refs/tags/v1.2")
    trigger.add_argument(
        "--commit",
        help="the commit to deploy: its full id, or an abbreviation (4+ hex digits, as `runner runs` shows "
        "it) that names one commit in the pipeline's checkout",
    )

    setup = add(
        "setup",
        cmd_setup,
        "as root: the deploy and web users, directories, secret, wrappers, templates, sudoers and units",
    )
    setup.add_argument("--user", default="runner", help="the deploy user, also the instance's name (runner)")
    setup.add_argument("--home-dir", type=Path, help="the instance's RUNNER_HOME (default /var/lib/USER)")
    setup.add_argument(
        "--sites-dir", type=Path, help="nginx's sites directory (default $RUNNER_NGINX_SITES_DIR)"
    )
    setup.add_argument("--database-url", help="RUNNER_DATABASE_URL to write into the new env file")
    setup.add_argument(
        "--prefix", type=Path, default=Path("/"), help="install under this root (for packaging)"
    )
    setup.add_argument("--dry-run", action="store_true", help="print what would change, change nothing")

    add("doctor", cmd_doctor, "as the deploy user: check everything a deployment needs, print the fixes")

    db = add("db", cmd_db, "manage the database schema")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="DB_COMMAND")
    upgrade = db_commands.add_parser("upgrade", help="migrate the schema to a revision (default: the latest)")
    upgrade.add_argument("revision", nargs="?", default="head")
    downgrade = db_commands.add_parser("downgrade", help="migrate the schema back to a revision")
    downgrade.add_argument("revision", help="target revision, or 'base' for an empty database")
    current = db_commands.add_parser(
        "current", help="show the schema's revision; exit status 1 when it is not the latest"
    )
    for sub in (upgrade, downgrade, current):
        _global_options(sub)

    prune = add("prune", cmd_prune, "remove runs, deliveries and failed entries older than $RUNNER_RETENTION")
    prune.add_argument("--dry-run", action="store_true", help="print what would be removed, remove nothing")

    failed = add("failed", cmd_failed, "list the entries of every queue's failed/, with their reasons")
    failed.add_argument("--json", action="store_true", help="print JSON, with each full reason")
    failed_commands = failed.add_subparsers(dest="failed_command", metavar="ACTION")
    for action, help in (
        ("retry", "put a failed entry back at the end of its queue"),
        ("drop", "remove a failed entry and its reason"),
    ):
        sub = failed_commands.add_parser(action, help=help, description=help)
        _global_options(sub)
        sub.add_argument(
            "entry", help="QUEUE/NAME as `runner failed` lists it, or NAME if only one queue has it"
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Stamped like a run log's lines (UTC, Z), so that one instant reads the same in both. systemd sets
    # JOURNAL_STREAM when stderr is journald's: then a syslog priority instead, journald stamps the line.
    handler = logging.StreamHandler()
    handler.setFormatter(LogFormatter(journal=bool(os.environ.get("JOURNAL_STREAM"))))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=[handler])
    # Alembic narrates every connection at INFO; the commands say what changed themselves.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        config = config_module.load(home=args.home)
        config = config.with_overrides(
            host=getattr(args, "host", None),
            port=getattr(args, "port", None),
            workers=getattr(args, "workers", None),
        )
        args.handler(config, args)
    except (ConfigError, CommandError) as exc:
        print(f"runner: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
