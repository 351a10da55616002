"""The nginx step: render a site from templates/nginx/, check it with ``nginx -t``, reload nginx, and make
sure the reload took.

What it does, in order, under a lock on the sites directory (two runs never interleave their files, tests
and reloads):

1. Renders the pipeline's ``vars`` (string values may use the run's expressions, ``{{ commit }}``) and then
   the template ``templates/nginx/<template>`` with them (and ``site``), in Jinja's sandbox, where an
   undefined variable is an error.
2. Writes ``<sites dir>/<site>.conf`` atomically: under a hidden temporary name (``.<site>.conf.*.tmp``,
   which neither ``include *.conf`` nor ``include sites-enabled/*`` matches), fsynced, renamed into place,
   the directory fsynced. nginx never reads half a file.
3. Runs ``nginx -t`` (RUNNER_NGINX_TEST). If it fails, the previous file is put back byte for byte (the same
   way), or the new one removed if there was none, and the step fails with nginx's message.
4. Unless ``reload: false``, reloads nginx (RUNNER_NGINX_RELOAD) and checks that the reload took. ``nginx -t``
   run by another user than the master (root through sudo, or the deploy user) can pass where the master
   cannot load the configuration, e.g. a certificate key it may not read; the master then keeps its old
   configuration and only its error log says why. So before the reload the step notes the master's pid
   (RUNNER_NGINX_PID_FILE), its child processes (from /proc) and the size of its error log
   (RUNNER_NGINX_ERROR_LOG); after it, it waits up to RELOAD_WAIT seconds for a child that was not there
   before: a new generation of workers is what a master starts once it has loaded the new configuration.
   A new ``[emerg]`` line in the error log ends the wait early. If no new generation comes, the step fails
   quoting the error log's new ``[emerg]``/``[alert]`` lines.

Whenever the step fails after it wrote the file (test, reload or its check, time limit, cancellation), the
previous file is put back: the sites directory then holds what nginx last loaded, and one broken site does
not make every later reload fail.

Event data cannot inject configuration. Every value a template prints with ``{{ }}`` goes through the
environment's ``finalize``, which refuses a value holding anything nginx reads as syntax: whitespace and
control characters (which end a word), ``;`` ``{`` ``}`` (which end or open a directive or block), quotes
and ``\\`` (which change how words are read), ``#`` (a comment) and ``$`` (a variable, in directives that
expand them). A printed value is therefore always part of one word, wherever it comes from. Text with such
characters (a commit message in a header, say) goes through the vetted filter ``nginx_quote``, which makes
one double-quoted nginx string of it: ``"`` and ``\\`` escaped, ``$`` and control characters refused (nginx
has no escape for ``$``). Only the template's own text (trusted: it is in the runner's home) is printed as
is. What one word means where the template puts it remains the template's business: nginx reads a
``server_name`` that starts with ``~`` as a regular expression, for example, so templates put event values
where any word is harmless.

The site and template names are checked by the schema; the step still refuses a name that is not a plain
file name, and any path that resolves outside the sites or templates directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import fcntl
import os
import re
import secrets
import shlex
import stat
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import TemplateRuntimeError

from runner import sudo
from runner.files import fsync_directory
from runner.pipeline import StepSpec
from runner.steps.base import Outcome, RunContext, RunLog, StepFailed, execute, step_timeout
from runner.templating import render, render_file

# How long a master may take to start its new workers after a reload; the step's time limit still applies.
RELOAD_WAIT = 10.0
POLL_INTERVAL = 0.05
# At most this long for the rest of a new generation once its first worker is there.
SETTLE_WAIT = 2.0
# The schema's patterns, checked again here: these names become paths.
SITE_NAME = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")
TEMPLATE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
# What nginx's tokenizer reads as syntax rather than as part of a word; \s also covers Unicode spaces.
NGINX_SYNTAX = re.compile(r"[\s;{}\"'#\\$\x00-\x1f\x7f]")
# Inside a double-quoted string nginx still expands $variables and turns \n, \r, \t into control characters.
QUOTED_REFUSED = re.compile(r"[$\x00-\x1f\x7f]")
NEW_SITE_MODE = 0o644
DIFF_LINES = 200
# Error log lines that explain a configuration the master refused.
REFUSAL = re.compile(rb"\[(emerg|alert)\]")


class NginxQuoted(str):
    """A value made into one double-quoted nginx string by ``nginx_quote``: printed as it is."""

    __slots__ = ()


def nginx_quote(value: Any) -> NginxQuoted:
    """The vetted filter: ``value`` as one double-quoted nginx string."""
    text = "" if value is None else str(value)
    bad = QUOTED_REFUSED.search(text)
    if bad:
        raise TemplateRuntimeError(
            f"nginx_quote refuses {_shown(text)}: it holds {bad.group()!r}, which nginx would expand or "
            "read as a control character even inside quotes"
        )
    return NginxQuoted('"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"')


def nginx_finalize(value: Any) -> Any:
    """Every value a template prints: refused if nginx would read any of it as syntax."""
    if isinstance(value, NginxQuoted):
        return value
    text = "" if value is None else str(value)
    bad = NGINX_SYNTAX.search(text)
    if bad:
        raise TemplateRuntimeError(
            f"refusing to print {_shown(text)} into an nginx configuration: {bad.group()!r} is nginx syntax "
            "(a printed value must stay part of one word); for text, use {{ value | nginx_quote }} in the "
            "template"
        )
    return text


def _shown(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:77] + "...")


# Rendering -------------------------------------------------------------------------------------------------


def _render_vars(value: Any, context: Mapping[str, Any]) -> Any:
    """The pipeline's vars with every string rendered as a pipeline value; other values as they are."""
    if isinstance(value, str):
        return render(value, context)
    if isinstance(value, Mapping):
        return {key: _render_vars(item, context) for key, item in value.items()}
    if isinstance(value, list):
        return [_render_vars(item, context) for item in value]
    return value


def _template_dir(ctx: RunContext) -> Path:
    return (ctx.config.templates_dir / "nginx").resolve()


def _template_path(ctx: RunContext, name: str) -> Path:
    directory = _template_dir(ctx)
    if not TEMPLATE_NAME.match(name):
        raise StepFailed(f"template {name!r} is not a file name in templates/nginx/")
    path = (directory / name).resolve()
    if not path.is_relative_to(directory):
        raise StepFailed(f"template {name!r} resolves to {path}, outside {directory}")
    if not path.is_file():
        raise StepFailed(f"template {name!r} not found in templates/nginx/ ({directory})")
    return path


def _site_path(ctx: RunContext, site: str) -> Path:
    if not SITE_NAME.match(site):
        raise StepFailed(f"site {site!r} is not a site name (lower-case letters, digits, dots and dashes)")
    directory = ctx.config.nginx_sites_dir
    if not directory.is_dir():
        raise StepFailed(f"the nginx sites directory {directory} does not exist (RUNNER_NGINX_SITES_DIR)")
    path = directory / f"{site}.conf"
    # Not the file itself: a symlink there is replaced by the rename, never written through.
    if path.parent.resolve() != directory.resolve():
        raise StepFailed(f"site {site!r} resolves outside {directory}")
    return path


# Files -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Previous:
    """A site file as it was before the step, to put back exactly."""

    data: bytes
    mode: int
    uid: int
    gid: int


def _read_previous(path: Path) -> _Previous | None:
    try:
        with path.open("rb") as file:
            st = os.fstat(file.fileno())
            return _Previous(file.read(), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
    except FileNotFoundError:
        return None


def _write_atomic(path: Path, data: bytes, mode: int, owner: tuple[int, int] | None) -> None:
    # Hidden and not *.conf: no include pattern nginx is given matches it.
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fchmod(file.fileno(), mode)  # exactly, whatever the umask
            if owner is not None and os.geteuid() == 0:
                os.fchown(file.fileno(), *owner)
            os.fsync(file.fileno())
        os.rename(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise
    fsync_directory(path.parent)


def _put_back(path: Path, previous: _Previous | None) -> str:
    """Restore the site file as it was; says what was done, for the step's detail."""
    try:
        if previous is None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            fsync_directory(path.parent)
            return f"removed the new {path.name}"
        _write_atomic(path, previous.data, previous.mode, (previous.uid, previous.gid))
        return f"put the previous {path.name} back"
    except OSError as exc:
        raise StepFailed(
            f"could not put {path} back as it was: {exc.strerror}; fix or remove it by hand before nginx "
            "next reloads"
        ) from None


def _diff(path: Path, old: bytes | None, new: bytes) -> list[str]:
    lines = list(
        difflib.unified_diff(
            (old or b"").decode(errors="replace").splitlines(),
            new.decode(errors="replace").splitlines(),
            f"{path} (before)" if old is not None else "/dev/null",
            str(path),
            lineterm="",
        )
    )
    if len(lines) > DIFF_LINES:
        lines = [*lines[:DIFF_LINES], f"... {len(lines) - DIFF_LINES} more lines of diff"]
    return lines


@contextlib.asynccontextmanager
async def _sites_locked(directory: Path, deadline: float, ctx: RunContext) -> AsyncIterator[None]:
    """Hold an exclusive flock on the sites directory itself, so that no file is left behind.

    Polled rather than blocking in a thread: a cancelled step must not leave a thread that takes the lock
    later.
    """
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        waiting = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waiting:
                    ctx.log.note(f"waiting for another nginx step to finish with {directory}")
                    waiting = True
                if time.monotonic() >= deadline:
                    raise StepFailed(
                        f"another nginx step held {directory} until this step's time limit"
                    ) from None
                await asyncio.sleep(0.1)
        yield
    finally:
        os.close(fd)  # releases the lock


# Programs --------------------------------------------------------------------------------------------------


class _CapturingLog(RunLog):
    """The run's log, also keeping what one program printed, for the step's detail."""

    def __init__(self, log: RunLog) -> None:  # no super().__init__: it writes through ``log``
        self.path = log.path
        self._inner = log
        self.lines: list[str] = []

    def write(self, stream: str, data: bytes | str) -> None:
        self._inner.write(stream, data)
        if stream != "runner":
            text = data if isinstance(data, str) else data.decode(errors="replace")
            self.lines.extend(text.splitlines())

    def close(self) -> None:
        pass  # the run's log is closed by its owner


async def _program(
    ctx: RunContext, spec: StepSpec, argv: Sequence[str], deadline: float
) -> tuple[Outcome, list[str]]:
    ctx.log.note("$ " + " ".join(shlex.quote(arg) for arg in argv))
    capture = _CapturingLog(ctx.log)
    outcome = await execute(
        argv,
        cwd=ctx.home,
        env=ctx.env_for(spec),
        timeout=deadline - time.monotonic(),
        log=capture,
        group_file=ctx.group_file,
    )
    return outcome, capture.lines


def _nginx_says(lines: list[str]) -> str:
    """nginx's own explanation: its [emerg]/[alert]/... lines, else the last lines it printed."""
    said = [line.strip() for line in lines if re.search(r"\[(emerg|alert|crit|error)\]", line)]
    return "; ".join(said or [line.strip() for line in lines[-3:] if line.strip()]) or "(no output)"


# The master ------------------------------------------------------------------------------------------------


def _master_pid(pid_file: Path) -> int:
    try:
        text = pid_file.read_text().strip()
    except OSError as exc:
        raise StepFailed(
            f"cannot read nginx's pid file {pid_file} (RUNNER_NGINX_PID_FILE): {exc.strerror}; is nginx "
            "running, and is RUNNER_NGINX_PID_FILE the `pid` of its configuration?"
        ) from None
    if not text.isdigit():
        raise StepFailed(f"nginx's pid file {pid_file} (RUNNER_NGINX_PID_FILE) holds {text!r}, not a pid")
    pid = int(text)
    if not _alive(pid):
        raise StepFailed(
            f"nginx is not running: its pid file {pid_file} (RUNNER_NGINX_PID_FILE) names process {pid}, "
            "which does not exist"
        )
    return pid


def _stat_fields(pid: int | str) -> list[bytes] | None:
    """The fields of /proc/PID/stat after the command name (state, ppid, ...), or None if it is gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # The command name in parentheses may hold anything; the fields after the last ')' are fixed.
    return data[data.rindex(b")") + 2 :].split()


def _alive(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != b"Z"


def _children(pid: int) -> set[int]:
    children = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(entry.name)
        if fields is not None and fields[0] != b"Z" and int(fields[1]) == pid:
            children.add(int(entry.name))
    return children


def _log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _log_since(path: Path, offset: int) -> tuple[list[str], str | None]:
    """The error log's refusal lines written since ``offset``, or why it cannot be read."""
    try:
        with path.open("rb") as file:
            if os.fstat(file.fileno()).st_size < offset:
                offset = 0  # rotated since: all of the new file is new
            file.seek(offset)
            data = file.read(1 << 20)
    except OSError as exc:
        return [], f"its error log {path} (RUNNER_NGINX_ERROR_LOG) cannot be read: {exc.strerror}"
    lines = [line.decode(errors="replace").strip() for line in data.splitlines() if REFUSAL.search(line)]
    return lines, None


async def _reload(ctx: RunContext, spec: StepSpec, deadline: float) -> Outcome:
    """Reload nginx and wait for the master to start a new generation of workers."""
    config = ctx.config
    # A missing sudo right fails here with the sudoers line to add, before anything is changed.
    await sudo.check(config.nginx_reload, env=ctx.env_for(spec))
    master = _master_pid(config.nginx_pid_file)
    before = _children(master)
    log_offset = _log_size(config.nginx_error_log)
    outcome, lines = await _program(ctx, spec, config.nginx_reload, deadline)
    if not outcome.ok:
        return Outcome(
            outcome.status,
            outcome.exit_code,
            f"reloading nginx failed ({outcome.detail}): {_nginx_says(lines)}",
        )
    wait_until = min(time.monotonic() + RELOAD_WAIT, deadline)
    while True:
        new = _children(master) - before
        if new:
            # A master forks its workers one after the other: let them all start, so that the next
            # nginx step's "before" holds the whole of this generation.
            settle_until = min(time.monotonic() + SETTLE_WAIT, deadline)
            while time.monotonic() < settle_until:
                await asyncio.sleep(POLL_INTERVAL * 2)
                more = _children(master) - before
                if more <= new:
                    break
                new |= more
            ctx.log.note(f"nginx master {master} started new workers {sorted(new)}: the reload took")
            return Outcome("succeeded", 0, f"master {master}, new workers {', '.join(map(str, sorted(new)))}")
        if not _alive(master):
            return Outcome("failed", None, f"the nginx master {master} exited during the reload")
        refusals, unreadable = _log_since(config.nginx_error_log, log_offset)
        if any("[emerg]" in line for line in refusals) or time.monotonic() >= wait_until:
            break
        await asyncio.sleep(POLL_INTERVAL)
    said = "; ".join(refusals) if refusals else (unreadable or "its error log has no new [emerg] or [alert]")
    waited = "its error log says why" if refusals else f"no new workers within {RELOAD_WAIT:.0f} s"
    return Outcome("failed", None, f"nginx master {master} kept its old configuration ({waited}): {said}")


# The step --------------------------------------------------------------------------------------------------


async def nginx_step(spec: StepSpec, ctx: RunContext) -> Outcome:
    args = spec.args if isinstance(spec.args, Mapping) else {}
    site, template = args.get("site"), args.get("template")
    if not isinstance(site, str) or not isinstance(template, str):
        raise StepFailed("the nginx step needs site and template")
    deadline = time.monotonic() + step_timeout(spec, ctx)
    template_path = _template_path(ctx, template)
    path = _site_path(ctx, site)
    variables = _render_vars(args.get("vars") or {}, ctx.template_context())
    if not isinstance(variables, dict):
        raise StepFailed("the nginx step's vars must be a mapping")
    text = render_file(
        _template_dir(ctx),
        template_path.name,
        {"site": site, **variables},
        finalize=nginx_finalize,
        filters={"nginx_quote": nginx_quote},
    )
    data = text.encode() if text.endswith("\n") else (text + "\n").encode()

    async with _sites_locked(path.parent, deadline, ctx):
        previous = _read_previous(path)
        changed = previous is None or previous.data != data
        if changed:
            for line in _diff(path, previous.data if previous else None, data):
                ctx.log.write("diff", line)
            mode = previous.mode if previous is not None else NEW_SITE_MODE
            owner = (previous.uid, previous.gid) if previous is not None else None
            try:
                _write_atomic(path, data, mode, owner)
            except OSError as exc:
                raise StepFailed(
                    f"cannot write {path}: {exc.strerror}; the runner's user needs write access to "
                    "RUNNER_NGINX_SITES_DIR (runner setup grants it with an ACL)"
                ) from None
            ctx.log.note(f"wrote {path} ({len(data)} bytes) from templates/nginx/{template}")
        else:
            # Still checked and reloaded: a renewed certificate, or a reload that failed before.
            ctx.log.note(f"{path} is unchanged")
        try:
            outcome = await _check_and_reload(ctx, spec, path, bool(args.get("reload", True)), deadline)
        except BaseException:
            # Cancelled midway (the worker stops, the run's time is up): the same promise as any failure.
            if changed:
                _put_back(path, previous)
            raise
        if outcome.ok:
            return outcome
        try:
            undone = _put_back(path, previous) if changed else f"{path.name} was unchanged"
        except StepFailed as exc:
            raise StepFailed(f"{outcome.detail}; {exc}") from None
        ctx.log.note(f"{undone}: the sites directory is as it was before this step")
        return Outcome(outcome.status, outcome.exit_code, f"{outcome.detail}; {undone}")


async def _check_and_reload(
    ctx: RunContext, spec: StepSpec, path: Path, reload: bool, deadline: float
) -> Outcome:
    """``nginx -t``, then the reload and its check; a failure's detail says what nginx said."""
    outcome, lines = await _program(ctx, spec, ctx.config.nginx_test, deadline)
    if not outcome.ok:
        what = "nginx -t failed" if outcome.status == "failed" else f"nginx -t {outcome.detail}"
        return Outcome(
            outcome.status, outcome.exit_code, f"{what}: {_nginx_says(lines)}; nothing was reloaded"
        )
    if not reload:
        return Outcome("succeeded", 0, f"{path.name}: nginx -t passed; not reloaded (reload: false)")
    try:
        reloaded = await _reload(ctx, spec, deadline)
    except (StepFailed, sudo.SudoRefused) as exc:
        return Outcome("failed", None, str(exc))
    if not reloaded.ok:
        return reloaded
    return Outcome("succeeded", 0, f"{path.name}: nginx -t passed, reloaded ({reloaded.detail})")
