"""The git step: clone if missing, fetch, and check out exactly the pushed commit; with ``release:``, into
the one clone the releases share (``<workdir>/repo``), the commit checked out as a new release's worktree.

A remote's credentials (``https://x-access-token:TOKEN@github.com/...``) never reach git's configuration or
the run's log: git is given the URL without them and asks for them through runner/credentials.py's helper.
Every git that talks to the remote (clone, fetch, submodules) does so as runner/git_access.py says: a deploy
key and runner's own known_hosts over ssh, a token file's token over HTTPS.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from pathlib import Path

from runner.credentials import Credentials, CredentialsError, TokenFile, split
from runner.git_access import AccessError, GitAccess, refusal
from runner.pipeline import StepSpec
from runner.process import DEVNULL, spawn
from runner.release_dirs import REPO, ReleaseError, Releases
from runner.steps.base import COMMIT, REF, Capture, Outcome, RunContext, StepFailed, execute, step_timeout


def _access(spec: StepSpec, ctx: RunContext) -> GitAccess:
    access = GitAccess.from_args(spec.args, ctx.home, ctx.config.known_hosts)
    try:
        access.check_files()
    except AccessError as exc:
        raise StepFailed(str(exc)) from None
    return access


def _remote(spec: StepSpec, ctx: RunContext, access: GitAccess) -> str | None:
    configured = (spec.args or {}).get("remote")
    if configured:
        from runner.templating import render  # Jinja: at a run's first template, not in a waiting worker

        remote = render(configured, ctx.template_context())
        # A plain relative path is a repository on this machine, relative to RUNNER_HOME.
        if "://" not in remote and ":" not in remote.split("/", 1)[0] and not remote.startswith("/"):
            remote = str(ctx.home / remote)
        return remote
    repository = ctx.event.get("repository") if isinstance(ctx.event, Mapping) else None
    # A deploy key is for the repository's ssh URL (git@github.com:owner/name.git), a token for HTTPS.
    field = "ssh_url" if access.ssh_key is not None else "clone_url"
    if isinstance(repository, Mapping) and isinstance(repository.get(field), str):
        return repository[field]
    return None


async def _git(
    ctx: RunContext,
    spec: StepSpec,
    *args: str,
    cwd: Path | None = None,
    credentials: Credentials | TokenFile | None = None,
    access: GitAccess | None = None,
) -> Outcome:
    """Run ``git ARGS``; with ``access``, as a git that talks to the remote (and, with ``credentials``,
    may answer its request for them); ssh's refusals become the outcome's detail."""
    env = ctx.env_for(spec)
    options: list[str] = []
    if access is not None:
        env = access.git_env(env)
    if credentials is not None:
        options = credentials.git_options()
        env.update(credentials.git_env())
    via = " (with the remote's credentials, through a credential helper)" if credentials else ""
    ctx.log.note("$ git " + " ".join(shlex.quote(a) for a in args) + via)
    # A remote's refusal is read from what git (and ssh) said.
    output = Capture(ctx.log) if access is not None else ctx.log
    outcome = await execute(
        ["git", *options, *args],
        cwd=cwd or checkout_dir(ctx),
        env=env,
        timeout=step_timeout(spec, ctx),
        log=output,
        group_file=ctx.group_file,
    )
    problem = None
    if isinstance(output, Capture) and access is not None and not outcome.ok:
        problem = refusal(output.err, access)
    if problem:
        outcome.detail = problem
    return outcome


async def _git_output(ctx: RunContext, *args: str) -> str | None:
    """A read-only git query's output, or None if it fails."""
    try:
        process = await spawn(["git", *args], cwd=checkout_dir(ctx), env=ctx.base_env, stderr=DEVNULL)
    except OSError as exc:
        raise StepFailed(f"cannot start git: {exc.strerror}") from None
    out, _ = await process.communicate()
    return out.decode(errors="replace") if process.returncode == 0 else None


async def git_step(spec: StepSpec, ctx: RunContext) -> Outcome:
    """Clone if missing, fetch, and check out exactly the pushed commit (detached)."""
    _check_target(ctx)
    access = _access(spec, ctx)
    remote, credentials = await _origin(spec, ctx, access)
    failed = await _clone_or_set_url(spec, ctx, remote, credentials, access)
    if failed is None:
        failed = await _fetch(spec, ctx, credentials, access)
    if failed is not None:
        return failed
    outcome = await _check_out(spec, ctx)
    if not outcome.ok:
        return outcome
    if (spec.args or {}).get("submodules"):
        outcome = await _submodules(spec, ctx, credentials, access)
        if not outcome.ok:
            return outcome
    if (spec.args or {}).get("clean"):
        outcome = await _git(ctx, spec, "clean", "-ffdx", cwd=ctx.workdir)
        if not outcome.ok:
            return outcome
    if ctx.pipeline.release is not None and ctx.release is not None:
        # After the clean, which would take the links out again.
        try:
            Releases(ctx.pipeline.workdir).link_shared(ctx.release, ctx.pipeline.release.shared)
        except ReleaseError as exc:
            raise StepFailed(str(exc)) from None
    ctx.changed_files = await _changed_files(ctx)
    if ctx.changed_files is None:
        ctx.log.note("changed files: all (no previously deployed commit to compare with)")
    else:
        ctx.log.note(f"changed files since {ctx.previous_commit}: {len(ctx.changed_files)}")
    return Outcome("succeeded", 0, f"checked out {ctx.commit}")


def checkout_dir(ctx: RunContext) -> Path:
    """The clone git fetches into: the workdir, or with ``release:`` the clone the releases share."""
    return ctx.pipeline.workdir / REPO if ctx.pipeline.release is not None else ctx.workdir


async def _check_out(spec: StepSpec, ctx: RunContext) -> Outcome:
    """The commit in the workdir; with ``release:``, a new worktree of the shared clone, named after the
    commit now that it is known."""
    if ctx.pipeline.release is None or ctx.release is None or ctx.commit is None:
        return await _git(ctx, spec, "checkout", "--force", "--detach", ctx.commit or "HEAD")
    releases = Releases(ctx.pipeline.workdir)
    await _git(ctx, spec, "worktree", "prune")
    placeholder, ctx.release = ctx.release, releases.path(Releases.name_for(ctx.run_id, ctx.commit))
    if placeholder.is_dir() and not any(placeholder.iterdir()):
        placeholder.rmdir()
    if ctx.release.exists():
        releases.remove(ctx.release.name)
    return await _git(ctx, spec, "worktree", "add", "--force", "--detach", str(ctx.release), ctx.commit)


def _check_target(ctx: RunContext) -> None:
    """Refuse a ref or commit that git could read as something else, and a run with neither."""
    if ctx.ref is not None and not REF.match(ctx.ref):
        raise StepFailed(f"refusing ref {ctx.ref!r}: not a branch or tag ref")
    if ctx.commit is not None and not COMMIT.match(ctx.commit):
        raise StepFailed(f"refusing commit {ctx.commit!r}: not a full commit id")
    if ctx.ref is None and ctx.commit is None:
        raise StepFailed("nothing to check out: the run has neither a ref nor a commit")


async def _submodules(
    spec: StepSpec, ctx: RunContext, credentials: Credentials | TokenFile | None, access: GitAccess
) -> Outcome:
    """The checked-out commit's submodules, as it records them, fetched the way origin is."""
    outcome = await _git(ctx, spec, "submodule", "sync", "--recursive", cwd=ctx.workdir)
    if not outcome.ok:
        return outcome
    return await _git(
        ctx,
        spec,
        "submodule",
        "update",
        "--init",
        "--recursive",
        "--force",
        cwd=ctx.workdir,
        credentials=credentials,
        access=access,
    )


async def _origin(
    spec: StepSpec, ctx: RunContext, access: GitAccess
) -> tuple[str | None, Credentials | TokenFile | None]:
    """The remote to clone from or to set as origin (None: leave origin as it is), without its
    credentials, and those credentials (a URL's, or the token file's)."""
    remote = _remote(spec, ctx, access)
    if remote is None and (checkout_dir(ctx) / ".git").exists():
        # No remote named (a run triggered by hand): origin's URL, if it holds credentials, for the
        # set-url below to take them out of .git/config; with a token file, for its token to be given.
        origin = (await _git_output(ctx, "remote", "get-url", "origin") or "").strip()
        if "@" in origin or (origin and access.token_file is not None):
            remote = origin
    if remote is None:
        return None, None
    problem = access.remote_problem(remote)
    if problem:
        raise StepFailed(problem)
    try:
        plain, credentials = split(remote)
    except CredentialsError as exc:
        raise StepFailed(str(exc)) from None
    if access.token_file is None:
        return plain, credentials
    if credentials is not None and credentials.password:
        raise StepFailed("the remote's URL holds a password and the step names a token-file: keep one")
    return plain, access.token(plain, credentials.username if credentials else None)


async def _clone_or_set_url(
    spec: StepSpec,
    ctx: RunContext,
    remote: str | None,
    credentials: Credentials | TokenFile | None,
    access: GitAccess,
) -> Outcome | None:
    """A checkout whose origin is ``remote``, cloned if there is none yet; the failed git's outcome, or
    None."""
    workdir = checkout_dir(ctx)
    if not (workdir / ".git").exists():
        if workdir.exists() and any(workdir.iterdir()):
            raise StepFailed(f"the workdir {workdir} exists, is not empty and is not a git checkout")
        if remote is None:
            raise StepFailed("no checkout yet and no remote to clone from: set `remote:` on the git step")
        workdir.parent.mkdir(parents=True, exist_ok=True)
        outcome = await _git(
            ctx,
            spec,
            "clone",
            "--no-checkout",
            "--",
            remote,
            str(workdir),
            cwd=workdir.parent,
            credentials=credentials,
            access=access,
        )
    elif remote is not None:
        # Also takes out of .git/config the credentials a URL put there before they were kept out of it.
        outcome = await _git(ctx, spec, "remote", "set-url", "origin", remote)
    else:
        return None
    return None if outcome.ok else outcome


async def _fetch(
    spec: StepSpec, ctx: RunContext, credentials: Credentials | TokenFile | None, access: GitAccess
) -> Outcome | None:
    """Fetch the run's ref and settle its commit (the ref's, when the run names none); the failed git's
    outcome, or None."""
    if ctx.ref is not None:
        outcome = await _git(
            ctx,
            spec,
            "fetch",
            "--prune",
            "--no-tags",
            "origin",
            f"+{ctx.ref}:{_tracking(ctx.ref)}",
            credentials=credentials,
            access=access,
        )
        if not outcome.ok:
            return outcome
    if ctx.commit is None:
        resolved = await _git_output(
            ctx, "rev-parse", "--verify", "-q", f"{_tracking(ctx.ref or '')}^{{commit}}"
        )
        if not resolved:
            raise StepFailed(f"{ctx.ref} was not found on the remote")
        ctx.commit = resolved.strip()
        if ctx.on_commit is not None:
            await ctx.on_commit(ctx.commit)
    if await _git_output(ctx, "cat-file", "-e", f"{ctx.commit}^{{commit}}") is None:
        # Not reachable from the ref (a force-push since?): ask for the commit itself.
        outcome = await _git(
            ctx, spec, "fetch", "--no-tags", "origin", ctx.commit, credentials=credentials, access=access
        )
        if not outcome.ok:
            raise StepFailed(f"commit {ctx.commit} is not on the remote")
    return None


def _tracking(ref: str) -> str:
    """Where a fetched ref is kept in the checkout: branches as origin's, tags as themselves."""
    if ref.startswith("refs/heads/"):
        return "refs/remotes/origin/" + ref.removeprefix("refs/heads/")
    return ref


async def _changed_files(ctx: RunContext) -> list[str] | None:
    previous = ctx.previous_commit
    if not previous or not COMMIT.match(previous):
        return None
    diff = await _git_output(ctx, "diff", "--name-only", "--no-renames", "-z", previous, ctx.commit or "HEAD")
    if diff is None:
        return None
    return [name for name in diff.split("\0") if name]
