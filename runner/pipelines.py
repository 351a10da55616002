"""The pipelines of a directory: its files, validated together, and the set reloaded as they change."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from pathlib import Path

from runner.config import nginx_templates_dir
from runner.loading import load, load_files
from runner.notify_checks import notify_warnings
from runner.pipeline import Pipeline
from runner.validation import Problem

# Not __name__: every line logged shows the name, and the journal has always had these as runner.pipeline's.
logger = logging.getLogger("runner.pipeline")

SUFFIXES = (".yaml", ".yml")


def pipeline_files(directory: Path) -> list[Path]:
    """The pipeline files in a directory, sorted; hidden files and editor backups (``name.yaml~``) are not."""
    try:
        entries = list(directory.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(
        path
        for path in entries
        if path.suffix in SUFFIXES and not path.name.startswith(".") and path.is_file()
    )


def pipeline_file_exists(directory: Path, name: str) -> bool:
    """Whether a file defines pipeline ``name`` (valid or not); a pipeline's name is its file's stem."""
    return any(path.stem == name for path in pipeline_files(directory))


def _duplicate_names(paths: Sequence[Path]) -> list[Problem]:
    by_name: dict[str, list[Path]] = {}
    for path in paths:
        by_name.setdefault(path.stem, []).append(path)
    problems = []
    for name, group in by_name.items():
        for path in group if len(group) > 1 else ():
            others = ", ".join(str(other) for other in group if other != path)
            problems.append(
                Problem(
                    path, 1, 1, f"pipeline name '{name}' is also the name of {others}: keep one of the files"
                )
            )
    return problems


def validate(paths: Sequence[Path], home: Path) -> list[Problem]:
    """Every problem in the files, including two files that give the same pipeline name; file by file."""
    paths = list(dict.fromkeys(paths))
    by_file = {path: load(path, home)[0] for path in paths}
    for problem in _duplicate_names(paths):
        by_file[problem.path].append(problem)
    return [
        problem for found in by_file.values() for problem in sorted(found, key=lambda p: (p.line, p.column))
    ]


def notify_file_warnings(paths: Sequence[Path], home: Path, *, smtp: bool) -> list[str]:
    """What may keep the valid pipelines' notifications from going out (``smtp``: an SMTP server is set)."""
    return [
        warning
        for path in dict.fromkeys(paths)
        if (pipeline := load(path, home)[1]) is not None
        for warning in notify_warnings(pipeline, smtp)
    ]


def secret_warnings(paths: Sequence[Path], home: Path, credentials_directory: str | None) -> list[str]:
    """The valid pipelines' secret files on this machine whose owner or mode lets others at them."""
    from runner.pipeline_secrets import secret_file_problems  # for runner validate: not in the worker

    return [
        f"{path}: warning: secret {name}: {file} {problem}"
        for path in dict.fromkeys(paths)
        if (pipeline := load(path, home)[1]) is not None
        for name, file, problem in secret_file_problems(pipeline, home, credentials_directory, missing=False)
    ]


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return -1


class PipelineSet:
    """The pipelines of a directory, reloaded when files change; an invalid file keeps its last valid version.

    ``reload`` runs in a worker thread while the event loop reads; it builds new dictionaries and swaps them
    in, so a reader sees either the old set or the new one.
    """

    def __init__(self, directory: Path, home: Path) -> None:
        self.directory = directory
        self.home = home
        self._lock = threading.Lock()
        self._signatures: dict[Path, tuple[int, ...]] = {}
        self._valid: dict[Path, Pipeline] = {}
        self._problems: dict[Path, list[Problem]] = {}
        self._conflicts: set[Path] = set()
        self._by_name: dict[str, Pipeline] = {}
        # Set, and replaced, after each reload: what waits for a pipeline file to change waits on it.
        self._reloaded: asyncio.Event | None = None

    def watched_directories(self) -> list[Path]:
        """Where a change can change the set: the directory, the nginx templates' (a pipeline is checked
        against the templates it names), and the directories that symlinked pipeline files point into."""
        directories = [self.directory, nginx_templates_dir(self.home)]
        try:
            entries = list(self.directory.iterdir())
        except OSError:
            entries = []
        # Broken links too: a `git pull` replacing the target leaves the link dangling for a moment.
        for path in entries:
            if path.suffix in SUFFIXES and path.is_symlink():
                directories.append(path.resolve().parent)
        return directories

    def announce_reload(self) -> None:
        """Wake what waits in :meth:`next_reload`; called in the event loop, after a reload."""
        event, self._reloaded = self._reloaded, None
        if event is not None:
            event.set()

    async def next_reload(self, stop: asyncio.Event) -> None:
        """Wait until the next reload is announced, or ``stop`` is set."""
        if self._reloaded is None:
            self._reloaded = asyncio.Event()
        waits = {asyncio.ensure_future(self._reloaded.wait()), asyncio.ensure_future(stop.wait())}
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    def reload(self) -> list[Problem]:
        """Re-read new and changed files, forget removed ones; returns the problems of every invalid file."""
        with self._lock:
            signatures: dict[Path, tuple[int, ...]] = {}
            # A pipeline is also checked against the templates it names: one refused because its template
            # was missing is read again when templates are added (or renamed, as editors save them).
            templates = _mtime(nginx_templates_dir(self.home))
            for path in pipeline_files(self.directory):
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue  # removed since it was listed
                except OSError:
                    # Read once, which reports why it cannot be; again when it can be stat'ed.
                    signatures[path] = (-1, -1, -1, -1)
                    continue
                # ctime too: a chmod that makes an unreadable file readable changes nothing else.
                signatures[path] = (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino, templates)
            valid = dict(self._valid)
            problems = dict(self._problems)
            for path in set(self._signatures) - set(signatures):
                if valid.pop(path, None) is not None:
                    logger.info("%s was removed: its pipeline is no longer loaded", path)
                problems.pop(path, None)
            changed = [
                path for path, signature in signatures.items() if self._signatures.get(path) != signature
            ]
            # In a child process: the checks' jsonschema and Jinja stay out of the worker.
            for path, (found, pipeline) in load_files(changed, self.home, in_child=True).items():
                if pipeline is not None:
                    valid[path] = pipeline
                    problems.pop(path, None)
                    logger.info("loaded pipeline %s from %s", pipeline.name, path)
                    continue
                problems[path] = found
                # One line per problem: each is a record of its own in journald and for grep.
                outcome = (
                    "its last valid version stays in force"
                    if path in valid
                    else "it has no valid version: it is not loaded"
                )
                for problem in found:
                    logger.error("invalid pipeline, %s: %s", outcome, problem)
            self._signatures = signatures
            self._valid = valid
            self._problems = problems
            self._by_name, conflicts = self._names(valid)
            return sorted(
                [problem for found in problems.values() for problem in found] + conflicts,
                key=lambda p: (str(p.path), p.line, p.column),
            )

    def _names(self, valid: dict[Path, Pipeline]) -> tuple[dict[str, Pipeline], list[Problem]]:
        by_name: dict[str, Pipeline] = {}
        conflicts: list[Problem] = []
        for path in sorted(valid):
            pipeline = valid[path]
            if pipeline.name in by_name:
                kept = by_name[pipeline.name].path
                conflicts.append(
                    Problem(
                        path,
                        1,
                        1,
                        f"pipeline name '{pipeline.name}' is also the name of {kept}, which is used",
                    )
                )
            else:
                by_name[pipeline.name] = pipeline
        ignored = {problem.path for problem in conflicts}
        for path in ignored - self._conflicts:
            logger.error("%s is ignored: %s", path, next(p.message for p in conflicts if p.path == path))
        self._conflicts = ignored
        return by_name, conflicts

    def get(self, name: str) -> Pipeline | None:
        return self._by_name.get(name)

    def all(self) -> list[Pipeline]:
        return sorted(self._by_name.values(), key=lambda pipeline: pipeline.name)
