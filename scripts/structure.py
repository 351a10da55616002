"""The structure rules `scripts/check` enforces: who may import whom, how long a module or function may be.

The import table is the map of the code: each module of runner lists the modules of runner it may import, at
module level or inside a function alike. Data flows one way (web → main queue → router → pipeline queue →
worker → steps), so a module never imports its caller, and a module that is not in the table is an error
until someone says where it sits.

    python scripts/structure.py [ROOT]     # ROOT: the checkout (default: this script's parent's parent)
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60

# What a step may use: the step base, the pipeline model and its templating, root commands, child processes.
_STEP = {
    "runner.steps.base",
    "runner.pipeline",
    "runner.templating",
    "runner.shell",
    "runner.sudo",
    "runner.process",
    "runner.credentials",
    "runner.masking",
}

ALLOWED: dict[str, set[str]] = {
    "runner": set(),
    "runner.__main__": {"runner.start"},
    # The entry point: asyncio imported without ssl for `runner work`, then the command.
    "runner.start": {"runner.cli"},
    # The bottom: plain helpers that import nothing of runner's (shipped and github read runner.__version__).
    "runner.files": set(),
    "runner.events": set(),
    "runner.errors": set(),
    "runner.timefmt": set(),
    "runner.process": set(),
    "runner.credentials": set(),
    # Secret values written as ***: a run's masker over the process's (GitHub token, webhook URLs).
    "runner.masking": set(),
    "runner.listen": set(),
    "runner.accepting": set(),
    "runner.lock": set(),
    "runner.config_values": set(),
    # A pipeline's release directories, their records and the atomic switch of `current`.
    "runner.release_dirs": {"runner.files"},
    # Following a growing log file (a run's), for `runner logs` and the status page's live log.
    "runner.log_follow": set(),
    "runner.config": {"runner.config_values"},
    "runner.shipped": {"runner"},
    "runner.sudo": {"runner.process"},
    # Watching directories with inotify (the worker's pipeline files).
    "runner.watch": set(),
    # Storage: the queue and the database import nothing of runner's above them.
    "runner.queue": {"runner.files"},
    "runner.committer": {"runner.queue"},
    "runner.consumer": {"runner.queue"},
    "runner.entry": {"runner.events", "runner.queue"},
    "runner.tables": {"runner.timefmt"},
    "runner.database": set(),
    # The database through its DB-API driver alone, for a server (no SQLAlchemy).
    "runner.driver": set(),
    "runner.schema": {"runner.driver", "runner.shipped"},
    # Several servers on one database: whose rows a query selects; one server's records of its deliveries.
    "runner.servers": set(),
    "runner.delivery_records": {"runner.servers", "runner.tables"},
    "runner.store": {
        "runner.database",
        "runner.delivery_records",
        "runner.schema",
        "runner.servers",
        "runner.tables",
    },
    # Which run carries out an entry, or is called off: decided by the database.
    "runner.claims": {"runner.database", "runner.store", "runner.tables"},
    # The pipeline language: templating, the shell rules, the YAML, the model, its checks and loading.
    "runner.templating": set(),
    "runner.shell": {"runner.templating"},
    "runner.code_variables": set(),
    "runner.argv_readers": set(),
    "runner.reparsers": {"runner.argv_readers", "runner.code_variables", "runner.shell"},
    "runner.injection": {"runner.reparsers", "runner.shell", "runner.templating"},
    "runner.filters": set(),
    "runner.yaml_source": set(),
    "runner.pipeline": {"runner.filters"},
    "runner.validation": {"runner.pipeline", "runner.shipped", "runner.yaml_source"},
    # The schema's findings in words (jsonschema): only where files are checked, never in the worker.
    "runner.schema_check": {"runner.pipeline", "runner.validation", "runner.yaml_source"},
    "runner.checks": {
        "runner.code_variables",
        "runner.config",
        "runner.filters",
        "runner.injection",
        "runner.pipeline",
        "runner.shipped",
        "runner.templating",
        "runner.validation",
        "runner.yaml_source",
    },
    # Every problem in a file's text; the same checks in a child process, for the worker (both sides).
    "runner.file_checks": {
        "runner.checks",
        "runner.git_checks",
        "runner.notify_checks",
        "runner.pipeline",
        "runner.pipeline_secrets",
        "runner.schema_check",
        "runner.validation",
        "runner.yaml_source",
    },
    "runner.check_process": {"runner.file_checks", "runner.validation"},
    "runner.loading": {
        "runner.check_process",
        "runner.credentials",
        "runner.file_checks",
        "runner.filters",
        "runner.notify_checks",
        "runner.pipeline",
        "runner.validation",
        "runner.yaml_source",
    },
    # A pipeline's secrets: checked as the file loads, read as a run starts, their files' modes looked at.
    "runner.pipeline_secrets": {
        "runner.masking",
        "runner.pipeline",
        "runner.validation",
        "runner.yaml_source",
    },
    # Private repositories: how git reaches one (a deploy key, runner's known_hosts, a token file), the
    # checks of a git step's access, runner's known_hosts and its command, and doctor's checks.
    "runner.git_access": {"runner.credentials"},
    "runner.git_checks": {
        "runner.credentials",
        "runner.git_access",
        "runner.templating",
        "runner.validation",
    },
    "runner.known_hosts": {"runner.arguments", "runner.config"},
    "runner.repo_checks": {"runner.config", "runner.credentials", "runner.git_access", "runner.pipeline"},
    "runner.pipelines": {
        "runner.config",
        "runner.loading",
        "runner.notify_checks",
        "runner.pipeline",
        "runner.pipeline_secrets",
        "runner.validation",
    },
    # Which entries supersede which: the pipeline's concurrency, applied to queue entries.
    "runner.concurrency": {"runner.claims", "runner.entry", "runner.pipeline"},
    # GitHub's API.
    "runner.github": {"runner"},
    "runner.github_auth": {"runner.config", "runner.github", "runner.masking"},
    # What runs tell GitHub: the calls (pure), the outbox that keeps them, the reporter that sends them.
    "runner.github_reports": {"runner.pipeline"},
    "runner.outbox": {"runner.github_reports", "runner.store", "runner.tables"},
    "runner.reporter": {
        "runner.entry",
        "runner.errors",
        "runner.events",
        "runner.github",
        "runner.github_auth",
        "runner.github_reports",
        "runner.outbox",
        "runner.pipeline",
        "runner.store",
    },
    # Notifications (notify:): the targets' checks, the messages (pure), the outbox that keeps them, one
    # attempt at sending, and the notifier that records them for the lanes and sends them.
    "runner.notify_checks": {"runner.pipeline", "runner.validation"},
    "runner.notify_messages": set(),
    "runner.notifications": {
        "runner.credentials",
        "runner.notify_messages",
        "runner.pipeline",
        "runner.store",
        "runner.tables",
    },
    "runner.notify_send": {
        "runner",
        "runner.config_values",
        "runner.masking",
        "runner.notify_checks",
        "runner.notify_messages",
        "runner.pipeline",
    },
    "runner.notifier": {
        "runner.config",
        "runner.notifications",
        "runner.notify_send",
        "runner.pipeline",
        "runner.pipelines",
        "runner.store",
    },
    # The catch-up: what a pass found (a line), the missed deliveries it fetches into the recovered queue,
    # the moved branch heads it queues as runs (as runner trigger does), and the pass itself, which the
    # worker runs as a task and `runner catch-up` by hand.
    "runner.catchup_finding": set(),
    "runner.catchup_deliveries": {
        "runner.catchup_finding",
        "runner.config",
        "runner.entry",
        "runner.events",
        "runner.github",
        "runner.queue",
        "runner.store",
        "runner.tables",
    },
    "runner.catchup_branches": {
        "runner.catchup_finding",
        "runner.config",
        "runner.github",
        "runner.pipeline",
        "runner.steps",
        "runner.store",
        "runner.tables",
        "runner.trigger",
    },
    "runner.catchup": {
        "runner.catchup_branches",
        "runner.catchup_deliveries",
        "runner.catchup_finding",
        "runner.config",
        "runner.entry",
        "runner.events",
        "runner.github",
        "runner.github_auth",
        "runner.lock",
        "runner.pipelines",
        "runner.queue",
        "runner.store",
        "runner.timefmt",
    },
    # The flow: web → main queue → router → pipeline queues → lanes → steps; the worker runs router and lanes.
    "runner.body": {"runner.entry", "runner.queue"},
    "runner.web": {
        "runner.accepting",
        "runner.body",
        "runner.committer",
        "runner.config",
        "runner.driver",
        "runner.entry",
        "runner.queue",
        "runner.ui_door",
        "runner.ui_headers",
    },
    # The status page, which the web serves: its login, its rendering, its read-only queries, its pages.
    "runner.ui_auth": set(),
    "runner.ui_headers": set(),
    "runner.ui_render": {"runner.timefmt"},
    # The page's live parts: runs starting and ending (one watch on logs/), the live log, the actions.
    "runner.run_events": set(),
    "runner.ui_live": {
        "runner.config",
        "runner.log_follow",
        "runner.run_events",
        "runner.store",
    },
    "runner.ui_actions": {
        "runner.actions",
        "runner.config",
        "runner.entry",
        "runner.queue",
        "runner.store",
    },
    "runner.history": {"runner.store", "runner.tables"},
    "runner.ui_logs": {"runner.timefmt"},
    "runner.ui": {
        "runner.config",
        "runner.history",
        "runner.notifications",
        "runner.pipelines",
        "runner.queue",
        "runner.store",
        "runner.ui_actions",
        "runner.ui_auth",
        "runner.ui_live",
        "runner.ui_logs",
        "runner.ui_render",
    },
    # The page built on its first request with users: a server without a page imports none of it.
    "runner.ui_door": {"runner.config", "runner.queue", "runner.store", "runner.ui", "runner.ui_headers"},
    "runner.router": {
        "runner.consumer",
        "runner.entry",
        "runner.errors",
        "runner.events",
        "runner.pipeline",
        "runner.pipelines",
        "runner.queue",
        "runner.store",
    },
    "runner.steps": _STEP
    | {
        "runner.filters",
        "runner.steps.certbot",
        "runner.steps.command",
        "runner.steps.git",
        "runner.steps.nginx",
        "runner.steps.pnpm",
        "runner.steps.systemctl",
    },
    "runner.steps.base": _STEP | {"runner.config", "runner.timefmt", "runner.release_dirs"},
    "runner.steps.certbot": _STEP,
    "runner.steps.command": _STEP,
    "runner.steps.git": _STEP | {"runner.git_access", "runner.release_dirs"},
    "runner.steps.nginx": _STEP,
    "runner.steps.pnpm": _STEP,
    "runner.steps.systemctl": _STEP,
    # A lane's waiting entries, watched while a run goes on, and the cancel of the run going on.
    "runner.cancelling": {"runner.steps"},
    "runner.waiting": {
        "runner.cancelling",
        "runner.claims",
        "runner.concurrency",
        "runner.consumer",
        "runner.entry",
        "runner.pipeline",
        "runner.steps",
        "runner.store",
    },
    # A run's steps, one after the other, for its lane.
    "runner.run_steps": {
        "runner.cancelling",
        "runner.credentials",
        "runner.pipeline",
        "runner.pipeline_secrets",
        "runner.steps",
        "runner.store",
    },
    # A release pipeline's run: build, switch, activate, check, switch back; or a rollback.
    "runner.release_health": {"runner.cancelling", "runner.credentials", "runner.pipeline", "runner.steps"},
    "runner.release_run": {
        "runner.cancelling",
        "runner.pipeline",
        "runner.release_dirs",
        "runner.release_health",
        "runner.run_steps",
        "runner.steps",
    },
    "runner.lane": {
        "runner.github_reports",
        "runner.release_run",
        "runner.notifier",
        "runner.run_steps",
        "runner.cancelling",
        "runner.claims",
        "runner.config",
        "runner.consumer",
        "runner.credentials",
        "runner.entry",
        "runner.errors",
        "runner.events",
        "runner.pipeline",
        "runner.pipelines",
        "runner.queue",
        "runner.reporter",
        "runner.steps",
        "runner.store",
        "runner.waiting",
    },
    "runner.failed": {"runner.entry", "runner.events", "runner.files", "runner.queue", "runner.store"},
    "runner.retention": {
        "runner.config",
        "runner.failed",
        "runner.outbox",
        "runner.store",
        "runner.tables",
        "runner.timefmt",
    },
    # The status page's actions (redeploy, cancel), done for the router as the commands do them, recorded.
    "runner.actions": {
        "runner.cancel",
        "runner.config",
        "runner.entry",
        "runner.store",
        "runner.tables",
        "runner.trigger",
    },
    "runner.worker": {
        "runner.actions",
        "runner.catchup",
        "runner.config",
        "runner.entry",
        "runner.github_auth",
        "runner.lane",
        "runner.notifier",
        "runner.pipeline",
        "runner.pipelines",
        "runner.queue",
        "runner.reporter",
        "runner.retention",
        "runner.router",
        "runner.store",
        "runner.watch",
    },
    # Operating it: the commands around the flow. Nothing below imports them.
    "runner.trigger": {
        "runner.config",
        "runner.entry",
        "runner.events",
        "runner.lock",
        "runner.pipeline",
        "runner.pipelines",
        "runner.release_dirs",
        "runner.steps",
        "runner.store",
    },
    "runner.release_commands": {
        "runner.arguments",
        "runner.config",
        "runner.pipeline",
        "runner.release_dirs",
        "runner.schema",
        "runner.store",
        "runner.trigger",
    },
    "runner.cancel": {"runner.claims", "runner.config", "runner.entry", "runner.lock", "runner.store"},
    "runner.instance": {"runner.config", "runner.pipelines", "runner.shipped", "runner.steps.systemctl"},
    "runner.setup": {"runner.instance", "runner.known_hosts", "runner.queue", "runner.shipped"},
    "runner.doctor": {
        "runner.catchup",
        "runner.config",
        "runner.database",
        "runner.loading",
        "runner.pipeline",
        "runner.pipeline_secrets",
        "runner.pipelines",
        "runner.repo_checks",
        "runner.schema",
        "runner.steps.systemctl",
        "runner.store",
        "runner.sudo",
    },
    "runner.reports": {
        "runner.catchup",
        "runner.catchup_finding",
        "runner.config",
        "runner.failed",
        "runner.lock",
        "runner.log_follow",
        "runner.retention",
        "runner.store",
        "runner.timefmt",
    },
    "runner.server": {
        "runner.accepting",
        "runner.config",
        "runner.driver",
        "runner.listen",
        "runner.lock",
        "runner.pipelines",
        "runner.queue",
        "runner.store",
        "runner.web",
        "runner.worker",
    },
    "runner.arguments": {"runner.config"},
    # The status page's users file, managed by `runner ui-user`.
    "runner.ui_users": {"runner.arguments", "runner.config", "runner.ui_auth"},
    # Opening the database for a command: the store checked, or (a server alone) only the schema.
    "runner.opening": {"runner.config", "runner.driver", "runner.schema", "runner.store"},
    "runner.cli": {
        "runner.arguments",
        "runner.cancel",
        "runner.catchup",
        "runner.config",
        "runner.database",
        "runner.doctor",
        "runner.failed",
        "runner.instance",
        "runner.known_hosts",
        "runner.listen",
        "runner.opening",
        "runner.pipelines",
        "runner.release_commands",
        "runner.reports",
        "runner.retention",
        "runner.schema",
        "runner.server",
        "runner.servers",
        "runner.setup",
        "runner.shipped",
        "runner.store",
        "runner.timefmt",
        "runner.trigger",
        "runner.ui_users",
    },
}


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imported(module: str, is_package: bool, tree: ast.AST, known: set[str]) -> Iterator[tuple[int, str]]:
    """Each runner module ``tree`` imports, with its line; ``from runner import x`` names x if it is one."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "runner" or alias.name.startswith("runner."):
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, is_package, node)
            if source != "runner" and not source.startswith("runner."):
                continue
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                yield node.lineno, submodule if submodule in known else source


def _long_functions(tree: ast.AST) -> Iterator[tuple[int, str, int]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                yield node.lineno, node.name, length


def cycles(table: dict[str, set[str]]) -> list[str]:
    """Each module from which the table itself allows a way back to it: a table with a cycle is no map."""
    found = []
    for start in sorted(table):
        seen, todo = set(), list(table[start] - {start})
        while todo:
            module = todo.pop()
            if module == start:
                found.append(f"scripts/structure.py: the table lets {start} import, through others, itself")
                break
            if module not in seen:
                seen.add(module)
                todo.extend(table.get(module, set()) - {module})
    return found


def problems(root: Path) -> list[str]:
    package = root / "runner"
    paths = sorted(p for p in package.rglob("*.py") if "_shipped" not in p.parts)
    known = {module_name(root, path) for path in paths}
    found = cycles(ALLOWED)
    for path in paths:
        where = path.relative_to(root)
        module = module_name(root, path)
        text = path.read_text()
        tree = ast.parse(text, str(where))
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            found.append(f"{where}: {lines} lines; a module holds one concept in at most {MAX_MODULE_LINES}")
        for line, name, length in _long_functions(tree):
            found.append(f"{where}:{line}: {name} is {length} lines; at most {MAX_FUNCTION_LINES}")
        if module not in ALLOWED:
            found.append(f"{where}: {module} is not in the import table of scripts/structure.py")
            continue
        imports = sorted(set(imported(module, path.name == "__init__.py", tree, known)))
        for line, target in imports:
            if target != module and target not in ALLOWED[module]:
                found.append(f"{where}:{line}: {module} may not import {target} (see scripts/structure.py)")
    return found


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent
    found = problems(root)
    for problem in found:
        print(problem, file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
