"""Script injection, end to end: run-string shapes crossed with adversarial values, on a real runner.

One ``runner serve`` and one ``runner work`` for the module. Every shape is a pipeline of its own, taking
pushes to any branch; a few pushes, to real branches of a real repository, carry branch names and commit
messages that run ``touch pwned-...`` wherever a shell would read them as code. Each step runs in the
workdir of its pipeline, so a canary there belongs to one shape and one push. Afterwards: each shape was
refused by ``runner validate`` or ran, none left a canary, and each that ran printed exactly the values.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Row
from support import FINISHED, wait_for
from test_worker import ZERO_COMMIT, GitRepo, Rig, git, out_lines, push_payload

# Values git accepts in a branch name: ';', '$', '{}', '()', quotes, backticks, '|', '&', '#', '<>'.
BRANCHES = [
    "feat;touch${IFS}pwned-b1a;$(touch${IFS}pwned-b1b)`touch${IFS}pwned-b1c`",
    "x'$(touch${IFS}pwned-b2a)'\"$(touch${IFS}pwned-b2b)\"{a,b}(c)|touch${IFS}pwned-b2c&#",
    "EOF\"'${IFS}!$(touch${IFS}pwned-b3a)>x<y",
]
MESSAGES = [
    # The issue's: a command after ';', the rest a comment; here-document delimiters on lines of their own.
    'fix; touch pwned-m1a; #\n$(touch pwned-m1b) `touch pwned-m1c` it\'s "q"\nEOF\ntouch pwned-m1d\nEOF',
    # bash runs the subscript of a[...] in arithmetic, even quoted; quotes closing and reopening.
    "a[$(touch pwned-m2a)]\n'; touch pwned-m2b; echo '\n\"; touch pwned-m2c; echo \"\n"
    "\t-EOF\n\tEOF\ntouch pwned-m2d",
    "$'\\'' ; touch pwned-m3a ; '\\''\n${X:-$(touch pwned-m3b)} \\\n\\$(touch pwned-m3c)\n"
    "'EOF'\n\"EOF\"\nx[$(touch pwned-m3d)]=1",
]

B = "{{ branch }}"
M = "{{ event.head_commit.message }}"
Printed = Callable[[str, str], list[str]]


def lines(text: str) -> list[str]:
    return text.split("\n")


def upper(text: str) -> str:
    return text.translate(str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ"))


@dataclass
class Shape:
    name: str
    run: str | list[str]
    printed: Printed | None = None  # what the step prints for (branch, message); None: refused
    refused: str | None = None  # how validation's message starts
    env: dict[str, str] = field(default_factory=dict)
    # The step as YAML text, for shapes about the file itself (a block scalar, CRLF line endings).
    yaml: str | None = None
    crlf: bool = False


RUNS = [
    Shape("word-branch", f"echo {B}", lambda b, m: lines(b)),
    Shape("word-message", f"echo {M}", lambda b, m: lines(m)),
    Shape("double-quotes", f'echo "branch {B} message {M}"', lambda b, m: lines(f"branch {b} message {m}")),
    Shape("single-quotes", f"echo 'branch {B}'", lambda b, m: lines(f"branch {b}")),
    Shape("single-quotes-message", f"echo '{M}'", lambda b, m: lines(m)),
    Shape("printf", f"printf '%s\\n' {M} {B}", lambda b, m: lines(m) + lines(b)),
    Shape("assignment", f"VAR={M}; printf '%s\\n' \"$VAR\"", lambda b, m: lines(m)),
    # The issue's: a comment holding an apostrophe, a quoted expression further down.
    Shape("comment-apostrophe", f"# don't deploy on fridays\necho '{M}'", lambda b, m: lines(m)),
    # The issue's: a here-document whose body holds an apostrophe, then a quoted expression.
    Shape(
        "heredoc-apostrophe",
        f'cat <<EOF\ndon\'t stop\nEOF\necho "{B}"',
        lambda b, m: ["don't stop", *lines(b)],
    ),
    Shape("heredoc-value", f"cat <<EOF\nit's '{M}'\nEOF", lambda b, m: lines(f"it's '{m}'")),
    Shape(
        "heredoc-dash",
        f"cat <<-EOF\n\tbranch: {B}\n\tEOF\necho done",
        lambda b, m: [*lines(f"branch: {b}"), "done"],
    ),
    Shape(
        "heredoc-quoted-before",
        f"cat <<'EOF'\nit's $(literal) `x`\nEOF\necho {B}",
        lambda b, m: ["it's $(literal) `x`", *lines(b)],
    ),
    Shape("ansi-c-beside", f"echo $'it\\'s\\tok' {B}", lambda b, m: lines(f"it's\tok {b}")),
    Shape("nested-substitution", f'echo "$(echo "$(printf %s {M})")"', lambda b, m: lines(m)),
    Shape("backticks-quoted", f'echo "`echo {B}`"', lambda b, m: lines(b)),
    Shape("backticks-single", f"echo `echo '{B}'`", lambda b, m: lines(b)),
    Shape(
        "parameter-default",
        f'echo "${{UNSET_VAR:-{B}}}" ${{UNSET_VAR:-{B}}}',
        lambda b, m: lines(f"{b} {b}"),
    ),
    Shape(
        "case",
        f'case {B} in\n  main) echo main ;;\n  *) echo "other {B}" ;;\nesac',
        lambda b, m: lines(f"other {b}"),
    ),
    Shape(
        "for-in",
        f'for word in {B} "{M}"; do printf "<%s>\\n" "$word"; done',
        lambda b, m: lines(f"<{b}>") + lines(f"<{m}>"),
    ),
    Shape(
        "array", f"values=({B} '{M}'); printf '%s\\n' \"${{values[@]}}\"", lambda b, m: lines(b) + lines(m)
    ),
    Shape(
        "continuation",
        "",
        lambda b, m: lines(f"{b} end"),
        yaml=f"  - run: |\n      echo \\\n        {B} \\\n        end\n",
    ),
    Shape(
        "crlf-file",
        "",
        lambda b, m: ["one", *lines(b)],
        yaml=f"  - run: |\n      echo one\n      echo {B}\n",
        crlf=True,
    ),
    Shape("crlf-string", f"echo one\r\necho {B}", lambda b, m: ["one", *lines(b)]),
    Shape("here-string", f"cat <<< {M}", lambda b, m: lines(m)),
    Shape("subshell-and-group", f"( echo {B} ); {{ echo '{B}'; }}", lambda b, m: lines(b) + lines(b)),
    Shape(
        "string-tests",
        f"if [ {B} = main ]; then echo main; else echo other; fi; [[ {B} == main ]] || echo other",
        lambda b, m: ["other", "other"],
    ),
    Shape("comment-value", f"echo start # {M}", lambda b, m: ["start"]),
    # The value as the whole command word is one program name (none by that name here), never a command line.
    Shape("value-as-command", f"{M} | tr a-z A-Z || echo no such program", lambda b, m: ["no such program"]),
    Shape("pipe", f"echo {B} | tr a-z A-Z", lambda b, m: lines(upper(b))),
    Shape("concatenated-quotes", f"echo 'a'\"{B}\"'c'{B}", lambda b, m: lines(f"a{b}c{b}")),
    Shape("line-count", f'X="{M}"; printf "%s\\n" "$X" | wc -l', lambda b, m: [str(len(lines(m)))]),
    Shape("argv", ["printf", "%s\\n", B, M], lambda b, m: lines(b) + lines(m)),
    Shape("env-value", "printf '%s\\n' \"$SHOWN\"", lambda b, m: lines(b), env={"SHOWN": B}),
    # Near the new refusals, and accepted: a value assigned before a command, a closing backtick, and ';' or
    # '$' inside double quotes, none of which starts a command.
    Shape("leading-assignment", f"SHOWN={B} printenv SHOWN", lambda b, m: lines(b)),
    Shape("backticks-then-value", f'echo "`echo x` {B}"', lambda b, m: lines(f"x {b}")),
    Shape("quoted-separator", f'X=1; echo "b {B}; x $X"', lambda b, m: lines(f"b {b}; x 1")),
]
REFUSED = [
    Shape("arithmetic", f"echo $(( {M} ))", refused="$(( )) or (( ))"),
    Shape("arithmetic-command", f"(( {M} )) || true", refused="$(( )) or (( ))"),
    Shape("let", f"let n={M} || true", refused="let"),
    Shape("declare-integer", f"declare -i n={M}", refused="declare, typeset or local"),
    # The issue's: [[ ... -gt 0 ]] evaluates a[$(cmd)] even when quoted.
    Shape("test-arithmetic", f"# don't\nif [[ {M} -gt 0 ]]; then echo big; fi", refused="-eq, -ne"),
    Shape("assigned-then-arithmetic", f"N={M}; echo $((N + 1))", refused="$(( )) or (( ))"),
    Shape("eval", f"eval echo {B}", refused="eval"),
    Shape("source", f". ./{B}", refused=". (source)"),
    Shape("shell-c", f"bash -c 'echo {B}'", refused="a shell"),
    Shape("pipe-to-shell", f"echo {B} | sh", refused="a shell"),
    Shape("ssh", f"ssh -o BatchMode=yes localhost echo {B}", refused="ssh"),
    Shape("xargs", f"echo {B} | xargs echo", refused="xargs"),
    Shape("su", f"su -c 'echo {B}' nobody", refused="su, runuser, sudo"),
    Shape("printf-v", f"printf -v out '%s' {B}; echo \"$out\"", refused="printf -v"),
    Shape("indirection", f'x={B}; echo "${{!x}}"', refused="${!name}"),
    Shape("prompt-expansion", f'p={B}; echo "${{p@P}}"', refused="${name@...}"),
    Shape("python-c", f"python3 -c 'print(\"{M}\")'", refused="python -c"),
    Shape("quoted-heredoc", f"cat <<'EOF'\n{B}\nEOF", refused="{{ ... }} inside a quoted here-document"),
    Shape("ansi-c-inside", f"echo $'{B}'", refused="{{ ... }} inside $'...'"),
    Shape("backslash", f"echo \\{B}", refused="{{ ... }} inside a backslash's reach"),
    Shape("block", f"{{% if branch %}}echo {B}{{% endif %}}", refused="{% ... %} in a run string"),
    Shape(
        "argv-shell-c",
        ["bash", "-c", f"echo {B}"],
        refused="{{ ... }} in an argument that bash reads as code",
    ),
    Shape("env-bash-env", "echo hi", refused="BASH_ENV may not hold an expression", env={"BASH_ENV": B}),
    # An adversarial review's cases: each one, accepted, ran the value in a real bash.
    Shape("respelled-backslash", f"\\eval {B}", refused="eval"),
    Shape("respelled-quotes", f"ev''al {M}", refused="eval"),
    Shape("respelled-declare", f"\\declare x={M}; \\declare -i y=x", refused="declare, typeset or local"),
    Shape("quoted-ps4", f"export 'PS4'={B}; set -x; :", refused="an assignment to a variable read as code"),
    Shape("expansion-eval", f"E=eval; $E {B}", refused="a command named by an expansion"),
    Shape("expansion-shell", f"S=bash; $S -c {M}", refused="a command named by an expansion"),
    Shape("substitution-command", f"$(echo {B})", refused="a command named by an expansion"),
    Shape("positional-offset", f'echo "${{@:{M}}}"', refused="${name:offset:length}"),
    Shape("positional-offset-star", f'echo "${{*:{M}}}"', refused="${name:offset:length}"),
    Shape("positional-offset-name", f'X={M}; echo "${{@:X}}"', refused="${name:offset:length}"),
    Shape("wait-p", f"sleep 0 & wait -n -p {M}", refused="printf -v or wait -p"),
    Shape("bash-dev-stdin", f"bash /dev/stdin <<< {B}", refused="a shell"),
    Shape("python-dev-stdin", f"python3 /dev/stdin <<< {M}", refused="python -c or python reading"),
    Shape(
        "git-upload-pack", f"git ls-remote --upload-pack={B} .", refused="git -c or git config, or an option"
    ),
    Shape("make-variable", f"make V={M}", refused="make"),
    Shape("tar-to-command", f"tar xf a.tar --to-command={B}", refused="tar --to-command"),
    Shape("vim-c", f"vim -es -c {B}", refused="vim, vi, ex or nvim"),
    Shape("find-exec", f"find . -exec {B} \\;", refused="find -exec"),
    Shape("zip-tt", f"zip -TT {B} a.zip a", refused="zip -TT or --unzip-command"),
    Shape(
        "argv-option-argument",
        ["bash", "-o", "pipefail", "-c", B],
        refused="{{ ... }} in an argument that bash",
    ),
    Shape("argv-make-eval", ["make", "--eval", M], refused="{{ ... }} in an argument that make reads"),
    Shape("argv-tar", ["tar", "xf", "a.tar", "--to-command", B], refused="{{ ... }} in an argument that tar"),
    Shape("argv-git", ["git", "ls-remote", "--upload-pack", B], refused="{{ ... }} in an argument that git"),
    Shape("argv-vim", ["vim", "-es", "-c", B], refused="{{ ... }} in an argument that vim reads"),
    Shape("argv-find", ["find", ".", "-exec", B, ";"], refused="{{ ... }} in an argument that find reads"),
    Shape("argv-program", [B], refused="{{ ... }} in the program of an argument list"),
    Shape("env-tar-options", "echo hi", refused="TAR_OPTIONS may not hold", env={"TAR_OPTIONS": B}),
    Shape("env-makeflags", "echo hi", refused="MAKEFLAGS may not hold", env={"MAKEFLAGS": M}),
    Shape("env-git-dir", "echo hi", refused="GIT_DIR may not hold", env={"GIT_DIR": B}),
    Shape("env-home", "echo hi", refused="HOME may not hold", env={"HOME": B}),
    Shape(
        "env-npm-lowercase",
        "echo hi",
        refused="npm_config_script_shell may not",
        env={"npm_config_script_shell": B},
    ),
    Shape("env-cc", "echo hi", refused="CC may not hold", env={"CC": B}),
]
SHAPES = RUNS + REFUSED
HEAD = 'on: {repository: acme/app, events: [push], branches: ["**"]}\nworkdir: <WORKDIR>\nsteps:\n'


def pipeline_text(shape: Shape) -> str:
    if shape.yaml is not None:
        step = shape.yaml
    else:
        # JSON is YAML: the run string exactly as written, whatever it holds.
        step = f"  - run: {json.dumps(shape.run)}\n"
        if shape.env:
            step += f"    env: {json.dumps(shape.env)}\n"
    return HEAD + step


def finished_runs(rig: Rig, delivery: str, count: int) -> list[Row[Any]]:
    """The delivery's runs, once there are ``count`` and all have ended, whatever their status."""

    def check() -> list[Row[Any]] | None:
        runs = rig.runs(delivery)
        return runs if len(runs) >= count and all(run.status in FINISHED for run in runs) else None

    return wait_for(check, f"{count} runs of delivery {delivery} to end", 90, rig.details)


@dataclass
class Outcome:
    rig: Rig
    validation: str
    runs: dict[tuple[str, int], Row[Any]]  # (pipeline, push) -> its run
    values: list[tuple[str, str]]  # (branch, message) of each push
    commits: list[str]


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    tmp = tmp_path_factory.mktemp("injection")
    rig = Rig(tmp, f"sqlite:///{tmp / 'runner.db'}")
    try:
        repo = GitRepo(tmp / "git")
        for shape in SHAPES:
            path = rig.pipeline(shape.name, pipeline_text(shape), WORKDIR=rig.workdir(shape.name))
            if shape.crlf:
                path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
        # And the git step, checking out the real branches.
        rig.pipeline(
            "checkout",
            HEAD + f"  - git: {{remote: <BARE>}}\n  - run: echo {B}; git rev-parse HEAD\n",
            WORKDIR=tmp / "work-checkout",
            BARE=repo.bare,
        )
        validation = rig.cli("validate", expect=1)
        rig.start_worker()
        commits = []
        deliveries = []
        for index, (branch, message) in enumerate(zip(BRANCHES, MESSAGES, strict=True)):
            commit = repo.commit({"push.txt": f"push {index}\n"}, message, branch=branch)
            repo.push(branch)
            assert git("log", "-1", "--format=%B", cwd=repo.work) == message.strip()
            commits.append(commit)
            payload = push_payload(f"refs/heads/{branch}", ZERO_COMMIT, [(commit, message)])
            deliveries.append(rig.deliver("push", payload))
        runs: dict[tuple[str, int], Row[Any]] = {}
        for index, delivery in enumerate(deliveries):
            for run in finished_runs(rig, delivery, len(RUNS) + 1):
                runs[run.pipeline, index] = run
        values = list(zip(BRANCHES, MESSAGES, strict=True))
        yield Outcome(rig, validation.stdout + validation.stderr, runs, values, commits)
    finally:
        rig.close()


def test_every_shape_is_refused_by_validate_or_runs_and_only_as_expected(outcome: Outcome) -> None:
    home = outcome.rig.home / "pipelines"
    refused = {
        Path(m.group(1)).stem: m.group(4)
        for m in re.finditer(r"^(\S+\.yaml):(\d+):(\d+): (.*)$", outcome.validation, re.MULTILINE)
    }
    assert set(refused) == {shape.name for shape in REFUSED}, outcome.validation
    for shape in REFUSED:
        assert shape.refused is not None
        assert re.search(
            rf"step 1 (run|run item \d+|env\.\w+): {re.escape(shape.refused)}", refused[shape.name]
        ), (
            shape.name,
            refused[shape.name],
        )
        assert str(home / f"{shape.name}.yaml") in outcome.validation
    ran = {pipeline for pipeline, _ in outcome.runs}
    assert ran == {shape.name for shape in RUNS} | {"checkout"}


def test_no_value_from_an_event_ran_as_a_command(outcome: Outcome) -> None:
    canaries = sorted(str(path) for path in outcome.rig.tmp.rglob("pwned*"))
    assert canaries == [], f"a value from the event ran as a command: {canaries}"
    for shape in SHAPES:
        workdir = outcome.rig.tmp / f"work-{shape.name}"
        assert list(workdir.iterdir()) == [], f"{shape.name} left files in its workdir"


@pytest.mark.parametrize("shape", RUNS, ids=[shape.name for shape in RUNS])
def test_each_shape_that_runs_prints_exactly_the_values(outcome: Outcome, shape: Shape) -> None:
    assert shape.printed is not None
    for index, (branch, message) in enumerate(outcome.values):
        run = outcome.runs[shape.name, index]
        log = outcome.rig.log_of(run)
        assert run.status == "succeeded", outcome.rig.details(run)
        assert out_lines(log) == shape.printed(branch, message), outcome.rig.details(run)
        # The log shows the script with its references, and the values they stand for.
        if isinstance(shape.run, str) and "{{" in str(shape.run) + str(shape.yaml):
            assert re.search(r"runner\| +RUNNER_EXPR_1=", log), log


def test_the_git_step_checks_out_the_real_branches(outcome: Outcome) -> None:
    for index, (branch, _) in enumerate(outcome.values):
        run = outcome.runs["checkout", index]
        log = outcome.rig.log_of(run)
        assert run.status == "succeeded", outcome.rig.details(run)
        assert out_lines(log) == [*lines(branch), outcome.commits[index]], log
