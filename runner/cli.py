"""The ``runner`` command: its commands, their options, and what each does with them."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

# Not reports (what the listing commands print, with log_follow): the commands that print import it; the
# worker prints none of it.
from runner import config as config_module
from runner import known_hosts, release_commands, server, shipped, ui_users
from runner.arguments import ALL_SERVERS_HELP, LIMIT_HELP, Commands, global_options, positive_int, top_parser
from runner.config import Config, ConfigError
from runner.listen import ListenError
from runner.opening import OpenError, check_database, open_store
from runner.server import ServeError
from runner.servers import THIS_SERVER
from runner.timefmt import LogFormatter

if TYPE_CHECKING:
    pass


class CommandError(Exception):
    """Ends the command with this message and exit status 1."""


def _serve(config: Config, migrate_default: bool, with_worker: bool) -> None:
    secret = config.require_secret()
    if with_worker:
        server.serve(config, secret, open_store(config, migrate_default), with_worker)
    else:
        check_database(config)
        server.serve(config, secret, None, with_worker)


def cmd_serve(config: Config, _args: argparse.Namespace) -> None:
    _serve(config, migrate_default=False, with_worker=False)


def cmd_up(config: Config, _args: argparse.Namespace) -> None:
    # Taken before anything else, so that a second one refuses at once, before it migrates or listens; the
    # server processes forked later share it.
    lock = server.worker_lock(config, "up")
    try:
        _serve(config, migrate_default=True, with_worker=True)
    finally:
        lock.release()


def cmd_work(config: Config, _args: argparse.Namespace) -> None:
    lock = server.worker_lock(config, "work")
    try:
        with contextlib.closing(open_store(config)) as store:
            server.run_async(server.new_worker(config, store).run, uvloop=False)
    finally:
        lock.release()


def cmd_validate(config: Config, args: argparse.Namespace) -> None:
    from runner.pipelines import SUFFIXES, notify_file_warnings, pipeline_files, secret_warnings, validate

    files = [Path(f) for f in args.files] if args.files else pipeline_files(config.pipelines_dir)
    if not files:
        raise CommandError(
            f"no pipeline files in {config.pipelines_dir} ({', '.join('*' + s for s in SUFFIXES)}): "
            "nothing to validate"
        )
    problems = validate(files, config.home)
    for problem in problems:
        print(problem)
    for warning in notify_file_warnings(files, config.home, smtp=config.smtp is not None):
        print(warning, file=sys.stderr)
    for warning in secret_warnings(files, config.home, config.credentials_directory):
        print(warning, file=sys.stderr)
    if problems:
        files_with_problems = len({p.path for p in problems})
        raise CommandError(f"{len(problems)} problem(s) in {files_with_problems} of {len(files)} file(s)")
    print(f"{len(files)} pipeline file(s) valid", file=sys.stderr)


def cmd_deliveries(config: Config, args: argparse.Namespace) -> None:
    from runner import reports

    with contextlib.closing(open_store(config)) as store:
        deliveries = store.deliveries(limit=args.limit, server=None if args.all_servers else THIS_SERVER)
    with reports.listing():
        reports.print_deliveries(deliveries, args.json, args.all_servers)


def cmd_runs(config: Config, args: argparse.Namespace) -> None:
    from runner import reports

    with contextlib.closing(open_store(config)) as store:
        runs = store.runs(args.pipeline, limit=args.limit, server=None if args.all_servers else THIS_SERVER)
        steps = {run.id: store.steps(run.id) for run in runs} if args.json else {}
    with reports.listing():
        reports.print_runs(runs, steps, args.json, args.all_servers)


def cmd_logs(config: Config, args: argparse.Namespace) -> None:
    from runner import reports

    with contextlib.closing(open_store(config)) as store:
        run = store.run(args.run)
        if run is None:
            raise CommandError(f"there is no run {args.run}: `runner runs` lists them")
        if run.server != store.server:
            raise CommandError(
                f"run {run.id} is server {run.server}'s: its log is there (`runner logs` on it)"
            )
        reports.print_log(store, run, config, args.follow)


def cmd_trigger(config: Config, args: argparse.Namespace) -> None:
    from runner.trigger import RunRequest, TriggerError

    try:
        request = RunRequest.checked(config, args.pipeline, args.ref, args.commit)
        with contextlib.closing(open_store(config)) as store:
            entry = request.queue(config, store)
    except TriggerError as exc:
        raise CommandError(str(exc)) from None
    what = " ".join(x for x in (entry.ref, entry.commit) if x)
    print(f"run {entry.run_id} queued: pipeline {entry.pipeline}, {what}")
    print(f"follow it with: runner logs {entry.run_id}", file=sys.stderr)


def cmd_cancel(config: Config, args: argparse.Namespace) -> None:
    from runner import cancel

    try:
        with contextlib.closing(open_store(config)) as store:
            print(cancel.cancel(config, store, args.run))
    except cancel.CancelError as exc:
        raise CommandError(str(exc)) from None


def cmd_catch_up(config: Config, args: argparse.Namespace) -> None:
    from runner import reports
    from runner.catchup import GITHUB_KEEPS, CatchUpError, command_pass

    since = config_module.read_duration({"--since": args.since}, "--since", GITHUB_KEEPS)
    say = (lambda _finding: None) if args.json else reports.print_finding
    try:
        with contextlib.closing(open_store(config)) as store:
            done = command_pass(config, store, since, say)
    except CatchUpError as exc:
        raise CommandError(str(exc)) from None
    reports.print_catch_up(done, args.json)


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
    from runner import doctor

    if doctor.run(config, dict(os.environ)) != 0:
        raise SystemExit(1)


def cmd_db(config: Config, args: argparse.Namespace) -> None:
    from sqlalchemy.exc import SQLAlchemyError

    from runner.database import safe_url
    from runner.schema import head_revision
    from runner.store import Store

    store = Store(config.database_url, server=config.server_name)
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
    from runner import reports, retention

    with contextlib.closing(open_store(config)) as store:
        done = retention.prune(config, store, dry_run=args.dry_run)
    reports.print_pruned(done, args.dry_run)


def cmd_failed(config: Config, args: argparse.Namespace) -> None:
    from runner import failed, reports

    try:
        if args.failed_command is None:
            entries = failed.failed_entries(config.queues_dir)
        else:
            entry = failed.find(config.queues_dir, args.entry)
            if args.failed_command == "drop":
                failed.drop(entry)
                print(f"dropped {entry.key}")
            else:
                with contextlib.closing(open_store(config)) as store:
                    print(failed.retry(entry, config.queues_dir, store))
            return
    except failed.FailedError as exc:
        raise CommandError(str(exc)) from None
    with reports.listing():
        reports.print_failed(entries, args.json)


def build_parser() -> argparse.ArgumentParser:
    parser, commands = top_parser(lambda: f"runner {shipped.version()}")
    # In the order `runner --help` lists them.
    _add_process_commands(commands)
    _add_run_commands(commands)
    release_commands.add_commands(commands)
    _add_instance_commands(commands)
    _add_data_commands(commands)
    ui_users.add_commands(commands)
    known_hosts.add_commands(commands)
    return parser


def _add_process_commands(commands: Commands) -> None:
    """The long-running processes: serve, up, work."""
    for name, handler, help in (
        ("serve", cmd_serve, "serve the webhook endpoint"),
        ("up", cmd_up, "migrate the default SQLite database if needed, then serve and work in one process"),
    ):
        sub = commands.add(name, handler, help)
        sub.add_argument("--host", help="address to listen on (default: $RUNNER_HOST or 127.0.0.1)")
        sub.add_argument("--port", type=int, help="port to listen on (default: $RUNNER_PORT or 3400)")
        sub.add_argument(
            "--workers",
            type=positive_int,
            help="server processes sharing the port (default: $RUNNER_WORKERS or 1)",
        )

    commands.add("work", cmd_work, "route deliveries and run the pipelines")


def _add_run_commands(commands: Commands) -> None:
    """The pipelines and their runs: validate, deliveries, runs, logs, trigger, cancel, catch-up."""
    validate = commands.add(
        "validate", cmd_validate, "check pipeline files; print each problem as file:line:column"
    )
    validate.add_argument("files", nargs="*", help="pipeline files (default: every file in pipelines/)")

    deliveries = commands.add("deliveries", cmd_deliveries, "recent deliveries and what became of each")
    deliveries.add_argument("--limit", type=positive_int, default=20, help=LIMIT_HELP)
    deliveries.add_argument("--json", action="store_true", help="print JSON")
    deliveries.add_argument("--all-servers", action="store_true", help=ALL_SERVERS_HELP)

    runs = commands.add("runs", cmd_runs, "recent runs and their status")
    runs.add_argument("pipeline", nargs="?", help="only this pipeline's runs")
    runs.add_argument("--limit", type=positive_int, default=20, help=LIMIT_HELP)
    runs.add_argument("--json", action="store_true", help="print JSON, with each run's steps")
    runs.add_argument("--all-servers", action="store_true", help=ALL_SERVERS_HELP)

    logs = commands.add("logs", cmd_logs, "print a run's log, following it while the run goes on")
    logs.add_argument("run", type=int, help="the run's number (see `runner runs`)")
    logs.add_argument("--no-follow", dest="follow", action="store_false", help="print what is there and stop")

    trigger = commands.add(
        "trigger", cmd_trigger, "queue a run by hand: a redeploy, or a rollback to a commit"
    )
    trigger.add_argument("pipeline")
    trigger.add_argument("--ref", help="branch name, or a full ref such as refs/tags/v1.2")
    trigger.add_argument(
        "--commit",
        help="the commit to deploy: its full id, or an abbreviation (4+ hex digits, as `runner runs` shows "
        "it) that names one commit in the pipeline's checkout",
    )
    canceller = commands.add("cancel", cmd_cancel, "cancel a run, waiting or going on, recorded as by hand")
    canceller.add_argument("run", type=int, help="the run's number (see `runner runs`)")

    catch_up = commands.add("catch-up", cmd_catch_up, "queue the pushes runner missed, from GitHub's record")
    catch_up.add_argument("--since", default="3d", help="how far back: 3d, 12h, 30m (default: 3d)")
    catch_up.add_argument("--json", action="store_true", help="print JSON")


def _add_instance_commands(commands: Commands) -> None:
    """Installing an instance and checking it: setup, doctor."""
    setup = commands.add(
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

    commands.add(
        "doctor", cmd_doctor, "as the deploy user: check everything a deployment needs, print the fixes"
    )


def _add_data_commands(commands: Commands) -> None:
    """What the runner keeps: db (its schema), prune (old records), failed (entries that failed)."""
    db = commands.add("db", cmd_db, "manage the database schema")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="DB_COMMAND")
    upgrade = db_commands.add_parser("upgrade", help="migrate the schema to a revision (default: the latest)")
    upgrade.add_argument("revision", nargs="?", default="head")
    downgrade = db_commands.add_parser("downgrade", help="migrate the schema back to a revision")
    downgrade.add_argument("revision", help="target revision, or 'base' for an empty database")
    current = db_commands.add_parser(
        "current", help="show the schema's revision; exit status 1 when it is not the latest"
    )
    for sub in (upgrade, downgrade, current):
        global_options(sub)

    prune = commands.add(
        "prune", cmd_prune, "remove runs, deliveries and failed entries older than $RUNNER_RETENTION"
    )
    prune.add_argument("--dry-run", action="store_true", help="print what would be removed, remove nothing")

    failed = commands.add(
        "failed", cmd_failed, "list the entries of every queue's failed/, with their reasons"
    )
    failed.add_argument("--json", action="store_true", help="print JSON, with each full reason")
    failed_commands = failed.add_subparsers(dest="failed_command", metavar="ACTION")
    for action, help in (
        ("retry", "put a failed entry back at the end of its queue"),
        ("drop", "remove a failed entry and its reason"),
    ):
        sub = failed_commands.add_parser(action, help=help, description=help)
        global_options(sub)
        sub.add_argument(
            "entry", help="QUEUE/NAME as `runner failed` lists it, or NAME if only one queue has it"
        )


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
    except (ConfigError, CommandError, OpenError, ListenError, ServeError, ui_users.UsersError) as exc:
        print(f"runner: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
