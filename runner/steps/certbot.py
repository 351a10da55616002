"""The certbot step: obtain or renew a site's certificate through the root-owned runner-certbot wrapper.

certbot must run as root, and `sudo certbot` with free arguments is root for anyone (its hooks run what
the caller names). So this step never runs certbot: it runs Config.certbot (by default
`sudo -n /usr/local/libexec/runner-certbot`) with only a certificate name and its domains; the wrapper
reads everything else from its own root-owned configuration, and decides whether the certificate needs
renewing at all (live/ is root-only).

The domains come from the pipeline, or from the server_name directives of a rendered nginx site.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

from runner import sudo
from runner.pipeline import StepSpec
from runner.steps.base import Capture, Outcome, RunContext, StepFailed, execute, step_timeout

CERT_NAME = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")
LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
DOMAIN = re.compile(rf"^{LABEL}(\.{LABEL})+$")
# What sudo 1.9 says when the sudoers file does not let the user run a command without a password.
SUDO_REFUSALS = (
    "a password is required",
    "a terminal is required",
    "is not allowed to execute",
    "is not in the sudoers file",
)
# The wrapper's one line of outcome on standard output.
REPORT = re.compile(r"^runner-certbot: (obtained|renewed|skipped)\b")


def check_cert_name(name: object) -> str:
    if not isinstance(name, str) or ".." in name or not CERT_NAME.match(name):
        raise StepFailed(
            f"cert-name {name!r}: lower-case letters, digits, dots and dashes, starting and ending with a "
            "letter or digit, no '..'"
        )
    return name


def check_domain(domain: object) -> str:
    if (
        not isinstance(domain, str)
        or len(domain) > 253
        or not DOMAIN.match(domain)
        or domain.rsplit(".", 1)[1].isdigit()
    ):
        raise StepFailed(f"domain {domain!r} is not a lower-case DNS name such as www.example.com")
    return domain


# nginx's server_name --------------------------------------------------------------------------------------


def _tokens(text: str) -> Iterator[tuple[str, int, bool]]:
    """nginx's configuration as (token, line, quoted): words, quoted strings and ; { }, without comments."""
    i, line, n = 0, 1, len(text)
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
        elif c.isspace():
            i += 1
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif c in ";{}":
            yield c, line, False
            i += 1
        elif c in "\"'":
            start_line, i, value = line, i + 1, []
            while i < n and text[i] != c:
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                if text[i] == "\n":
                    line += 1
                value.append(text[i])
                i += 1
            i += 1
            yield "".join(value), start_line, True
        else:
            start = i
            # A word ends at whitespace, ; { } or a quote; nginx lets # inside a word (e.g. a regex).
            while i < n and not text[i].isspace() and text[i] not in ";{}\"'":
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                i += 1
            yield text[start:i], line, False


def server_names(text: str) -> list[tuple[str, int]]:
    """Every name of every server_name directive, with its line, in order."""
    names: list[tuple[str, int]] = []
    statement: list[tuple[str, int, bool]] = []
    for word, line, quoted in _tokens(text):
        if not quoted and word in ";{}":
            if word == ";" and statement and statement[0][0] == "server_name" and not statement[0][2]:
                names.extend((name, where) for name, where, _ in statement[1:])
            statement = []
        else:
            statement.append((word, line, quoted))
    return names


def _not_a_domain(name: str) -> str | None:
    """Why a server name is no name to put in a certificate, or None if it is one."""
    if name in ("", "_"):
        return "catch-all"
    if name.startswith("~"):
        return "regular expression"
    if "*" in name or name.startswith("."):
        return "wildcard"
    if "$" in name:
        return "variable"
    try:
        ipaddress.ip_address(name.strip("[]"))
        return "IP address"
    except ValueError:
        pass
    if "." not in name.rstrip("."):
        return "no dot"
    return None


def site_domains(path: Path) -> tuple[list[str], list[str]]:
    """The domains a site's server_name directives name, and the names left out (with why)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise StepFailed(f"no site file {path}: an nginx step renders it before the certbot step") from None
    except OSError as exc:
        raise StepFailed(f"cannot read the site file {path}: {exc.strerror}") from None
    domains: list[str] = []
    ignored: list[str] = []
    for raw, line in server_names(text):
        # nginx compares server names without regard to case, and a trailing dot names the same host.
        name = raw.lower().rstrip(".") if not raw.startswith("~") else raw
        why = _not_a_domain(name)
        if why is not None:
            ignored.append(f"{raw} ({why})")
            continue
        if len(name) > 253 or not DOMAIN.match(name):
            raise StepFailed(f"{path}:{line}: server_name {raw!r} is not a valid domain name")
        if name not in domains:
            domains.append(name)
    if not domains:
        raise StepFailed(
            f"{path}: its server_name directives name no domain a certificate can be issued for"
            + (f" (left out: {', '.join(ignored)})" if ignored else "")
        )
    return domains, ignored


# sudo -------------------------------------------------------------------------------------------------------


def _missing_rule(wrapper: str) -> str:
    # The rule names the wrapper alone: it checks its own arguments, which differ from run to run.
    return (
        f"sudo refused to run {wrapper} without a password: add to {sudo.sudoers_file()}: "
        f"{sudo.rule([wrapper])}"
    )


async def _check_sudo(argv: list[str], env: dict[str, str], timeout: float) -> None:
    """Fail with the missing sudoers rule before running, rather than with sudo's bare refusal."""
    command = sudo.unwrap(argv)
    if command is None:
        return
    wrapper = command[0]
    if wrapper.startswith("/") and not Path(wrapper).exists():
        raise StepFailed(
            f"{wrapper} is not installed: install packaging/libexec/runner-certbot there, root:root 0755"
        )
    try:
        await sudo.check(argv, env=env, timeout=min(timeout, sudo.CHECK_TIMEOUT))
    except sudo.SudoRefused:
        raise StepFailed(_missing_rule(wrapper)) from None


def _refused_by_sudo(stderr: list[str]) -> bool:
    """Whether sudo refused after all: RUNNER_CERTBOT may put sudo where sudo.unwrap does not look."""
    return any(line.startswith("sudo: ") or line.startswith("Sorry, user ") for line in stderr) and any(
        refusal in line for line in stderr for refusal in SUDO_REFUSALS
    )


# The step ------------------------------------------------------------------------------------------------


def _domains(spec: StepSpec, ctx: RunContext) -> list[str]:
    args = spec.args or {}
    if "domains" in args:
        listed = args["domains"]
        if not isinstance(listed, list) or not listed:
            raise StepFailed("domains must be a list of one domain or more")
        return list(dict.fromkeys(check_domain(domain) for domain in listed))
    site = args.get("domains-from-site")
    if not isinstance(site, str) or ".." in site or not CERT_NAME.match(site):
        raise StepFailed(f"domains-from-site {site!r} is not a site name")
    path = ctx.config.nginx_sites_dir / f"{site}.conf"
    domains, ignored = site_domains(path)
    ctx.log.note(
        f"domains from {path}: {', '.join(domains)}"
        + (f" (left out: {', '.join(ignored)})" if ignored else "")
    )
    return domains


async def certbot_step(spec: StepSpec, ctx: RunContext) -> Outcome:
    """Obtain or renew the certificate cert-name for its domains; skipped when it needs nothing."""
    args = spec.args or {}
    name = check_cert_name(args.get("cert-name"))
    domains = _domains(spec, ctx)
    argv = [*ctx.config.certbot, "--cert-name", name]
    for domain in domains:
        argv += ["-d", domain]
    env = ctx.env_for(spec)
    timeout = step_timeout(spec, ctx)
    await _check_sudo(argv, env, timeout)
    ctx.log.note("$ " + shlex.join(argv))
    capture = Capture(ctx.log)
    # The certificate is the machine's, not the checkout's: no need for a workdir to exist yet.
    cwd = ctx.workdir if ctx.workdir.is_dir() else ctx.home
    outcome = await execute(argv, cwd=cwd, env=env, timeout=timeout, log=capture, group_file=ctx.group_file)
    if outcome.status != "succeeded":
        if outcome.status != "failed":
            return outcome
        if _refused_by_sudo(capture.err):
            # The configured prefix's last word is the wrapper: `sudo -n PATH`, or with more before it.
            return Outcome("failed", outcome.exit_code, _missing_rule(ctx.config.certbot[-1]))
        said = [line for line in capture.err if line.startswith("runner-certbot: ")]
        if said:
            return Outcome("failed", outcome.exit_code, said[-1].removeprefix("runner-certbot: "))
        return outcome
    report = next((line for line in reversed(capture.out) if REPORT.match(line)), None)
    if report is None:
        return Outcome(
            "failed", outcome.exit_code, f"{argv[0]} did not say what it did: is it runner-certbot?"
        )
    detail = report.removeprefix("runner-certbot: ")
    if detail.startswith("skipped: "):
        # The wrapper found the certificate good as it is: nothing was done, and the record says so.
        return Outcome("skipped", outcome.exit_code, detail.removeprefix("skipped: "))
    return Outcome("succeeded", outcome.exit_code, detail)
