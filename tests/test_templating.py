"""Templating: run strings rendered as references to variables, what validation refuses, and the sandbox.

The rendering functions are the unit here; where a test says a script prints a value, a real bash prints it.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support import PAYLOADS, require

from runner.code_variables import code_variable
from runner.injection import argv_template_problems, shell_template_problem_at
from runner.pipelines import validate
from runner.shell import render_shell
from runner.templating import RenderError, evaluate, render

# A value that would run a command in nearly every place a shell could read it as code.
NASTY = "x'\"; touch pwned; #\n$(touch pwned) `touch pwned` a[$(touch pwned)] ${IFS} \\ EOF"


def bash(script: str, env: dict[str, str], cwd: Path) -> str:
    bash = shutil.which("bash")
    require(bash is not None, "bash is not installed")
    assert bash is not None
    done = subprocess.run(
        [bash, "--noprofile", "--norc", "-e", "-o", "pipefail", "-c", script],
        env={"PATH": "/usr/bin:/bin", **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def shell_template_problem(source: str) -> str | None:
    """Why ``source`` cannot be a run string, or None: its syntax, or what reads a value again as code."""
    found = shell_template_problem_at(source)
    return found[0] if found else None


# render_shell ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "text"),
    [
        ("echo {{ x }}", 'echo "${RUNNER_EXPR_1}"'),
        ('echo "a {{ x }} b"', 'echo "a ${RUNNER_EXPR_1} b"'),
        ("echo 'a {{ x }} b'", "echo 'a '\"${RUNNER_EXPR_1}\"' b'"),
        ("cat <<EOF\nit's {{ x }}\nEOF", "cat <<EOF\nit's ${RUNNER_EXPR_1}\nEOF"),
        ("cat <<-EOF\n\t'{{ x }}'\n\tEOF", "cat <<-EOF\n\t'${RUNNER_EXPR_1}'\n\tEOF"),
        ("# it's {{ x }}\necho '{{ x }}'", "# it's ${RUNNER_EXPR_1}\necho ''\"${RUNNER_EXPR_2}\"''"),
        ("echo \"$(echo '{{ x }}')\"", "echo \"$(echo ''\"${RUNNER_EXPR_1}\"'')\""),
        ("echo ${UNSET:-{{ x }}}", 'echo ${UNSET:-"${RUNNER_EXPR_1}"}'),
        ('echo "${UNSET:-{{ x }}}"', 'echo "${UNSET:-${RUNNER_EXPR_1}}"'),
        # Where the shell would not expand a variable, validation refuses; the reference stays inert.
        ("cat <<'EOF'\n{{ x }}\nEOF", "cat <<'EOF'\n${RUNNER_EXPR_1}\nEOF"),
        ("echo $'{{ x }}'", "echo $'${RUNNER_EXPR_1}'"),
        ("echo \\{{ x }}", "echo \\${RUNNER_EXPR_1}"),
    ],
)
def test_each_quoting_context_gets_the_reference_that_keeps_the_value_whole(source: str, text: str) -> None:
    script = render_shell(source, {"x": NASTY})
    assert script.text == text
    assert set(script.env.values()) == {NASTY}
    assert "pwned" not in script.text


def test_expressions_are_numbered_in_order_and_none_is_empty() -> None:
    script = render_shell(
        "echo {{ a }} '{{ b }}' \"{{ c }}\" {{ a }}{# a comment #}{{ d }}",
        {"a": 1, "b": None, "c": "c", "d": [2]},
    )
    assert script.env == {
        "RUNNER_EXPR_1": "1",
        "RUNNER_EXPR_2": "",
        "RUNNER_EXPR_3": "c",
        "RUNNER_EXPR_4": "1",
        "RUNNER_EXPR_5": "[2]",
    }
    assert script.text == (
        'echo "${RUNNER_EXPR_1}" \'\'"${RUNNER_EXPR_2}"\'\' "${RUNNER_EXPR_3}" '
        '"${RUNNER_EXPR_4}""${RUNNER_EXPR_5}"'
    )
    with pytest.raises(RenderError, match="NUL"):
        render_shell("echo {{ a }}", {"a": "a\0b"})
    # Without an expression the string is the script, byte for byte.
    assert render_shell("echo '$HOME' {} ${x}", {}) == type(script)("echo '$HOME' {} ${x}", {})


# The forms users write: validated, and printing exactly the value (a real bash prints it).
PLAIN_FORMS = [
    ("echo {{ x }}", lambda v: v + "\n"),
    ('echo "{{ x }}"', lambda v: v + "\n"),
    ("echo '{{ x }}'", lambda v: v + "\n"),
    ("printf '%s\\n' {{ x }}", lambda v: v + "\n"),
    ("VAR={{ x }}; printf '%s\\n' \"$VAR\"", lambda v: v + "\n"),
    (
        "echo {{ x }} | tr a-z A-Z",
        lambda v: (
            v.translate(str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")) + "\n"
        ),
    ),
    ("# don't\ncat <<EOF\nit's \"{{ x }}\"\nEOF", lambda v: f'it\'s "{v}"\n'),
    ("cat <<< {{ x }}", lambda v: v + "\n"),
    ('echo "$(echo "$(echo \'{{ x }}\')")"', lambda v: v + "\n"),
    ("arr=({{ x }} two); printf '%s\\n' \"${arr[@]}\"", lambda v: v + "\ntwo\n"),
    ("echo \\\n  {{ x }} \\\n  end", lambda v: v + " end\n"),
    ('case {{ x }} in main) echo main;; *) echo "other {{ x }}";; esac', lambda v: f"other {v}\n"),
]


@pytest.mark.parametrize(("source", "printed"), PLAIN_FORMS, ids=[form for form, _ in PLAIN_FORMS])
def test_the_plain_forms_are_accepted_and_print_exactly_the_value(
    source: str, printed: Any, tmp_path: Path
) -> None:
    assert shell_template_problem(source) is None
    script = render_shell(source, {"x": NASTY})
    assert NASTY not in script.text
    assert bash(script.text, script.env, tmp_path) == printed(NASTY)
    assert not (tmp_path / "pwned").exists()


def test_the_value_reaches_the_shell_only_as_a_variable_even_where_the_lexer_is_wrong(tmp_path: Path) -> None:
    # A here-document the lexer does not see as one (its delimiter is built by an expansion): the reference is
    # quoted wrongly for the shell, and still only a variable's value, which nothing reads as code.
    source = "d=EOF; cat <<\"$d\"\nit's {{ x }}\n$d\necho '{{ x }}'"
    script = render_shell(source, {"x": NASTY})
    bash(script.text, script.env, tmp_path)
    assert not (tmp_path / "pwned").exists()


# Validation ------------------------------------------------------------------------------------------------

REFUSED = [
    ("echo $(( {{ x }} + 1 ))", "$(( )) or (( ))"),
    ("(( {{ x }} > 1 ))", "$(( )) or (( ))"),
    ("N={{ x }}; echo $((N + 1))", "$(( )) or (( ))"),
    ("# N={{ x }} then (( N ))", "$(( )) or (( ))"),
    ("echo $[ {{ x }} ]", "$[ ]"),
    ("let n={{ x }}", "let"),
    ("declare -i n={{ x }}", "declare, typeset or local"),
    ("f() { local n={{ x }}; }", "declare, typeset or local"),
    ("export -n ref={{ x }}", "export or readonly"),
    ("[[ {{ x }} -gt 0 ]]", "-eq, -ne, -lt, -le, -gt or -ge"),
    ("test {{ x }} -eq 1", "-eq, -ne, -lt, -le, -gt or -ge"),
    ("[[ -v {{ x }} ]]", "-v or -R"),
    ("echo ${!x} {{ x }}", "${!name}"),
    ("a=(1); echo ${a[i]} {{ x }}", "${name[...]}"),
    ("a[{{ x }}]=1", "name[...]="),
    ("a=([{{ x }}]=1)", "name[...]= or ([...]=...)"),
    ("RANDOM={{ x }}", "an assignment to RANDOM"),
    ("OPTIND={{ x }}", "an assignment to RANDOM"),
    ("a=(1 2); echo ${a[@]:1} {{ x }}", "${name:offset:length}"),
    ("[ -v {{ x }} ]", "-v or -R"),
    ("enable -f {{ x }} hello", "alias, trap"),
    ("s={{ x }}; echo ${s:1:2}", "${name:offset:length}"),
    ("p={{ x }}; echo ${p@P}", "${name@...}"),
    ("printf -v out %s {{ x }}", "printf -v"),
    ("read -r line <<< {{ x }}", "read, mapfile"),
    ("unset {{ x }}", "read, mapfile"),
    ("eval echo {{ x }}", "eval"),
    ("echo ok; eval {{ x }}", "eval"),
    ("echo $(eval {{ x }})", "eval"),
    ("source {{ x }}", "source"),
    ("cd /tmp && . ./env {{ x }}", ". (source)"),
    ("trap 'echo {{ x }}' EXIT", "alias, trap"),
    ("bash -c 'echo {{ x }}'", "a shell"),
    ('sh -ec "echo {{ x }}"', "a shell"),
    ("echo {{ x }} | sh", "a shell"),
    ("find . -exec sh -c 'echo {{ x }}' \\;", "a shell"),
    ("python3 -c 'print(\"{{ x }}\")'", "python -c"),
    ("perl -e 'print \"{{ x }}\"'", "perl -e"),
    ("python3 - <<EOF\nprint('{{ x }}')\nEOF", "python -c or python reading standard input"),
    ("echo 'print(\"{{ x }}\")' | python3 -u", "python -c or python reading standard input"),
    ("node <<< 'console.log(\"{{ x }}\")'", "node -e"),
    ("node -e 'console.log(\"{{ x }}\")'", "node -e"),
    ("awk 'BEGIN { print \"{{ x }}\" }'", "awk or sed"),
    ("sed -i 's/old/{{ x }}/' file", "awk or sed"),
    ("ssh deploy@host echo {{ x }}", "ssh"),
    ("echo {{ x }} | xargs echo", "xargs"),
    ("su -c 'echo {{ x }}' deploy", "su, runuser, sudo"),
    ("sudo -n echo {{ x }}", "su, runuser, sudo"),
    ("env -S 'echo {{ x }}'", "env -S"),
    ("git -c core.pager={{ x }} log", "git -c or git config"),
    ("PS4={{ x }}; set -x", "an assignment to a variable read as code"),
    ("GIT_SSH_COMMAND={{ x }} git fetch", "an assignment to a variable read as code"),
    ("export BASH_ENV={{ x }}", "an assignment to a variable read as code"),
    ("LD_PRELOAD=/x.so echo {{ x }}", "an assignment to a variable read as code"),
    # Words respelled: the shell removes quotes and backslashes before it looks the command up.
    ("\\eval {{ x }}", "eval"),
    ("ev''al {{ x }}", "eval"),
    ('e"va"l {{ x }}', "eval"),
    ("\\declare x={{ x }}; \\declare -i y=x", "declare, typeset or local"),
    ("export 'PS4'={{ x }}; set -x; :", "an assignment to a variable read as code"),
    # A command named by an expansion runs whatever the expansion yields.
    ("E=eval; $E {{ x }}", "a command named by an expansion"),
    ("B=bash; $B -c {{ x }}", "a command named by an expansion"),
    ('"${E}" {{ x }}', "a command named by an expansion"),
    ("$(echo {{ x }})", "a command named by an expansion"),
    ("`echo {{ x }}`", "a command named by an expansion"),
    ("echo ok; ./deploy-{{ x }}.sh", "a command named by an expansion"),
    ("e{v,}al {{ x }}", "a command named by an expansion"),
    ("ex''ec $E {{ x }}", "a command named by an expansion"),
    ("\\env A=1 $E {{ x }}", "a command named by an expansion"),
    ("timeout 5 $E {{ x }}", "a command named by an expansion"),
    ("if $E; then echo {{ x }}; fi", "a command named by an expansion"),
    ('X="a b" $E {{ x }}', "a command named by an expansion"),
    ("{ $E; } && echo {{ x }}", "a command named by an expansion"),
    # Offsets on $@, $* and the positional parameters, and wait -p's name.
    ('echo "${@:{{ x }}}"', "${name:offset:length}"),
    ('echo "${*:{{ x }}}"', "${name:offset:length}"),
    ('X={{ x }}; echo "${@:X}"', "${name:offset:length}"),
    ("echo ${1:{{ x }}}", "${name:offset:length}"),
    ("sleep 0 & wait -n -p {{ x }}", "printf -v or wait -p"),
    # An interpreter whose script file is standard input or a descriptor.
    ("bash /dev/stdin <<< {{ x }}", "a shell"),
    ("sh /proc/self/fd/0 <<< {{ x }}", "a shell"),
    ("bash <(echo {{ x }})", "a shell"),
    ("python3 /dev/stdin <<< {{ x }}", "python -c or python reading standard input"),
    ("node /dev/fd/0 <<< {{ x }}", "node -e"),
    # Programs whose options run a command.
    ("git ls-remote --upload-pack={{ x }} origin", "git -c or git config, or an option"),
    ("git fetch --upload-p {{ x }} origin", "git -c or git config, or an option"),
    ("git clone -u {{ x }} https://example.org/r.git", "git -c or git config, or an option"),
    ("git push --receive-pack={{ x }} origin", "git -c or git config, or an option"),
    ("git push --exec={{ x }} origin", "git -c or git config, or an option"),
    ("git rebase -x {{ x }} main", "git -c or git config, or an option"),
    ("git submodule foreach {{ x }}", "git -c or git config, or an option"),
    ("make V={{ x }}", "make"),
    ("make --eval={{ x }}", "make"),
    ("tar xf a.tar --to-command={{ x }}", "tar --to-command"),
    ("tar --checkpoint-action=exec={{ x }} -xf a.tar", "tar --to-command"),
    ("tar -I {{ x }} -xf a.tar", "tar --to-command"),
    ("tar xIf {{ x }} a.tar", "tar --to-command"),
    ("tar --use={{ x }} -xf a.tar", "tar --to-command"),
    ("tar -xf a.tar --rsh-command={{ x }}", "tar --to-command"),
    ("tar -cf a.tar -F {{ x }} .", "tar --to-command"),
    ("tar --new-volume-script={{ x }} -cf a.tar .", "tar --to-command"),
    ("vim -es -c {{ x }} file", "vim, vi, ex or nvim"),
    ("vi +{{ x }} file", "vim, vi, ex or nvim"),
    ("nvim -S {{ x }}", "vim, vi, ex or nvim"),
    ("find . -exec {{ x }} \\;", "find -exec"),
    ("find . -name x -execdir {{ x }} +", "find -exec"),
    ("find . -ok {{ x }} \\;", "find -exec"),
    ("rsync -e {{ x }} a host:b", "ssh, scp, sftp or rsync"),
    ("zip -TT {{ x }} a.zip a", "zip -TT or --unzip-command"),
    ("zip --unzip-command={{ x }} a.zip a", "zip -TT or --unzip-command"),
    ("perl -Mstrict -e 1 {{ x }}", "perl -e"),
    ("case a in a) $E {{ x }};; esac", "a command named by an expansion"),
    ("npx {{ x }}", "npx, pnpx"),
    ("pnpm dlx {{ x }}", "npx, pnpx"),
]


@pytest.mark.parametrize(("source", "construct"), REFUSED, ids=[source for source, _ in REFUSED])
def test_what_reads_a_value_again_as_code_is_refused_and_named(source: str, construct: str) -> None:
    problem = shell_template_problem(source)
    assert problem is not None
    assert problem.startswith(construct), problem
    # The message says the rule and what to write instead.
    assert "reaches the shell only as an environment variable" in problem
    assert "instead, check the value" in problem
    # Without an expression the same script is the operator's own, and accepted.
    assert shell_template_problem(source.replace("{{ x }}", "fixed")) is None


@pytest.mark.parametrize(
    ("source", "context"),
    [
        ("cat <<'EOF'\n{{ x }}\nEOF", "a quoted here-document"),
        ('cat <<"EOF"\n{{ x }}\nEOF', "a quoted here-document"),
        ("cat <<\\EOF\n{{ x }}\nEOF", "a quoted here-document"),
        ("echo $'\\t{{ x }}'", "$'...'"),
        ("echo \\{{ x }}", "a backslash's reach"),
        ('echo "\\{{ x }}"', "a backslash's reach"),
        ("cat <<EOF\n\\{{ x }}\nEOF", "a backslash's reach"),
    ],
)
def test_an_expression_the_shell_would_not_expand_is_refused(source: str, context: str) -> None:
    problem = shell_template_problem(source)
    assert problem is not None and problem.startswith(f"{{{{ ... }}}} inside {context}:"), problem


@pytest.mark.parametrize(
    "source",
    [
        "echo evaluate {{ x }} --source-map",
        "node --source-map build.js {{ x }}",
        "cp -r . /srv/{{ x }}; git add .",
        "bash ./deploy.sh {{ x }}",
        "python3 -m pytest -k {{ x }} && python3 manage.py migrate {{ x }}",
        "node --enable-source-maps build.js {{ x }}",
        "sh scripts/release {{ x }}",
        'echo ${UNSET:-{{ x }}} ${x} "${arr[@]}" "${arr[*]}"',
        "git commit -m {{ x }} && git -C sub log",
        "echo $'\\t' {{ x }} $'it\\'s'",
        "cat <<'EOF'\nno $(expansion) here\nEOF\necho {{ x }}",
        "VAR={{ x }} ./deploy.sh && A=1 B={{ x }} ./deploy.sh",
        'echo "deployed {{ x }}; commit $RUNNER_COMMIT" \'a; $b\' `date` "`date` {{ x }}"',
        "cat > .env <<EOF\n$HOME/{{ x }}\nURL=$URL\nEOF",
        "echo {{ x }} # ; $X",
        "git push -u origin {{ x }} && git log --cc {{ x }} && git clean -fdx",
        "tar czf out.tgz dist && echo {{ x }}",
        "exec ./server --branch {{ x }}",
        "env NODE_ENV=production node server.js {{ x }}",
        "echo $(date) $HOME {{ x }} >&2",
        "echo \\$HOME \\\n  {{ x }}",
        'f() { echo "$1"; }; f {{ x }}',
        "python3 manage.py migrate {{ x }}",
        "echo {% raw %}{{ literal }}{% endraw %}",
        'for w in {{ x }} end; do echo "$w"; done',
        "if [ {{ x }} = main ]; then echo yes; fi",
        "[[ {{ x }} == main ]] && echo yes",
        "LD_X echo a=1 {{ x }}; path={{ x }}",
        # The plain form: the value is one word, the program's name, never a command line.
        "{{ x }} | tr a-z A-Z",
    ],
)
def test_near_misses_and_plain_shell_are_accepted(source: str) -> None:
    assert shell_template_problem(source) is None


def test_a_respelled_word_or_a_command_named_by_an_expansion_is_said_on_its_own_line() -> None:
    # Found on a copy without quotes, or on the script's syntax: the line is still the script's.
    for source, construct in [
        ("echo 'it''s'\necho \"a\"\nev''al {{ x }}", "eval"),
        ("echo 'one;\n$two'\ncat <<EOF\n$three\nEOF\n  $E {{ x }}", "a command named by an expansion"),
    ]:
        found = shell_template_problem_at(source)
        assert found is not None and found[0].startswith(construct), found
        assert found[1] == source.count("\n"), found


def test_control_blocks_are_refused_in_run_strings_and_syntax_errors_said() -> None:
    for source in ("{% if branch %}echo x{% endif %}", "{% set y = branch %}echo {{ y }}"):
        problem = shell_template_problem(source)
        assert problem is not None and problem.startswith("{% ... %} in a run string"), problem
        with pytest.raises(RenderError, match=re.escape("only {{ expression }} may stand")):
            render_shell(source, {"branch": "main"})
    problem = shell_template_problem("echo {{ branch }")
    assert problem is not None and problem.startswith("template syntax error"), problem


@pytest.mark.parametrize(
    ("argv", "refused"),
    [
        (["bash", "-c", "echo {{ x }}"], {2}),
        (["/bin/sh", "-ec", "echo {{ x }}"], {2}),
        (["bash", "{{ x }}"], {1}),
        (["bash", "-c", 'echo "$1"', "{{ x }}"], {3}),
        (["env", "-S", "{{ x }}"], {2}),
        (["ssh", "host", "echo", "{{ x }}"], {3}),
        (["sudo", "-s", "{{ x }}"], {2}),
        (["xargs", "-0", "{{ x }}"], {2}),
        (["/usr/bin/python3.11", "-c", "{{ x }}"], {2}),
        (["node", "--eval", "{{ x }}"], {2}),
        (["git", "-c", "core.sshCommand={{ x }}", "fetch"], {2}),
        (["find", ".", "-exec", "sh", "-c", "{{ x }}", ";"], {5}),
        (["bash", "./deploy.sh", "{{ x }}"], set()),
        (["python3", "-m", "pytest", "-k", "{{ x }}"], set()),
        (["git", "commit", "-m", "{{ x }}"], set()),
        (["echo", "{{ x }}", "sh", "-c"], set()),
        (["env", "A=1", "printenv", "A"], set()),
        # An option's argument is not the script; a code option anywhere before the item refuses it.
        (["bash", "-o", "pipefail", "-c", "{{ x }}"], {4}),
        (["bash", "+O", "extglob", "{{ x }}"], {3}),
        (["bash", "./deploy.sh", "-c", "{{ x }}"], {3}),
        (["python3", "-W", "ignore", "{{ x }}"], {3}),
        (["php", "-f", "{{ x }}"], {2}),
        # The value as the program: the list's first item, or the program a wrapper runs.
        (["{{ x }}", "--version"], {0}),
        (["env", "A=1", "{{ x }}"], {2}),
        (["nice", "-n", "5", "{{ x }}"], {3}),
        (["env", "A={{ x }}", "printenv", "A"], set()),
        (["timeout", "5", "./x", "{{ x }}"], set()),
        # Programs whose options run a command.
        (["make", "--eval", "{{ x }}"], {2}),
        (["make", "V={{ x }}"], {1}),
        (["tar", "xf", "a.tar", "--to-command", "{{ x }}"], {4}),
        (["tar", "xf", "a.tar", "--to-com={{ x }}"], {3}),
        (["tar", "cIf", "{{ x }}", "a"], {2}),
        (["tar", "-xf", "a.tar", "-C", "{{ x }}"], set()),
        (["git", "ls-remote", "--upload-pack", "{{ x }}"], {3}),
        (["git", "clone", "-u", "{{ x }}", "url"], {3}),
        (["git", "rebase", "--exec={{ x }}"], {2}),
        (["git", "push", "-u", "origin", "{{ x }}"], set()),
        (["vim", "-es", "-c", "{{ x }}"], {3}),
        (["find", ".", "-exec", "{{ x }}", ";"], {3}),
        (["find", "{{ x }}", "-name", "x"], set()),
        (["zip", "-TT", "{{ x }}", "a.zip"], {2}),
        (["npx", "{{ x }}"], {1}),
        (["pnpm", "dlx", "{{ x }}"], {2}),
        (["pnpm", "run", "build", "{{ x }}"], set()),
    ],
)
def test_a_list_item_a_program_reads_as_code_is_refused(argv: list[str], refused: set[int]) -> None:
    problems = argv_template_problems(argv)
    assert set(problems) == refused, problems
    for problem in problems.values():
        assert "reads as code" in problem or "in the program of an argument list" in problem
        assert "instead, check the value" in problem


PIPELINE = """\
on: {repository: acme/app}
workdir: /tmp
env:
  NAME: "{{ branch }}"
  PATH: "/usr/bin:/bin"
  BASH_ENV: "{{ event.head_commit.message }}"
steps:
  - run: echo ok
    env:
      GIT_SSH_COMMAND: "ssh -i {{ branch }}"
      LD_PRELOAD: "{# nothing #}/lib/x.so"
      PYTHONSTARTUP: "{{ branch }}"
  - run: [bash, -c, "echo {{ branch }}"]
"""


def test_variables_read_as_code_refuse_templated_values_in_env(tmp_path: Path) -> None:
    path = tmp_path / "app.yaml"
    path.write_text(PIPELINE)
    problems = validate([path], tmp_path)
    assert [(p.line, p.column) for p in problems] == [(6, 13), (10, 24), (12, 22), (13, 21)], problems
    assert problems[0].message.startswith(
        "env.BASH_ENV: BASH_ENV may not hold an expression: bash and sh run"
    )
    assert problems[1].message.startswith("step 1 env.GIT_SSH_COMMAND: GIT_SSH_COMMAND may not hold")
    assert problems[2].message.startswith("step 1 env.PYTHONSTARTUP: PYTHONSTARTUP may not hold")
    assert problems[3].message.startswith(
        "step 2 run item 3: {{ ... }} in an argument that bash reads as code"
    )
    for name in (
        "BASH_ENV",
        "ENV",
        "PS4",
        "PROMPT_COMMAND",
        "BASH_FUNC_x%%",
        "LD_PRELOAD",
        "GIT_CONFIG_COUNT",
        "npm_config_script_shell",
        "NPM_CONFIG_SCRIPT_SHELL",
        "Npm_Config_Script_Shell",
        "TAR_OPTIONS",
        "MAKEFLAGS",
        "MFLAGS",
        "GNUMAKEFLAGS",
        "RSYNC_RSH",
        "GIT_DIR",
        "HOME",
        "XDG_CONFIG_HOME",
        "SHELL",
        "ZIPOPT",
        "UNZIP",
        "GZIP",
        "BZIP2",
        "XZ_OPT",
        "ZSTD_CLEVEL",
        "OPENSSL_CONF",
        "NODE_PATH",
        "MANPAGER",
        "MANOPT",
        "LESS",
        "LESSKEYIN",
        "BROWSER",
        "TERMINFO",
        "YARN_RC_FILENAME",
        "pnpm_config_x",
        "PIP_INDEX_URL",
        "CARGO_HOME",
        "RUSTFLAGS",
        "CC",
        "CXX",
        "CFLAGS",
        "LDFLAGS",
        "JAVA_OPTS",
    ):
        assert code_variable(name), name
    for name in (
        "NAME",
        "HOMEPAGE",
        "NODE_ENV",
        "DEPLOY_PATH",
        "ENVIRONMENT",
        "ACC",
        "GITHUB",
        "env",
        "path",
    ):
        assert code_variable(name) is None, name


# The sandbox -----------------------------------------------------------------------------------------------

ESCAPES = [
    "''.__class__.__mro__[1].__subclasses__()",
    "().__class__.__base__.__subclasses__()",
    "event.__class__.mro()",
    "lipsum.__globals__",
    "cycler.__init__.__globals__.os",
    "joiner.__init__.__globals__",
    "'{0.__class__.__mro__}'.format(event)",
    "'{ref.__class__}'.format_map(event)",
    "'%s'.__mod__",
]
MUTATIONS = [
    "event.update({'ref': 'refs/heads/evil'})",
    "event.commits.append(1)",
    "event.pop('ref')",
    "event.setdefault('new', 1)",
    "event.clear()",
    "event.popitem()",
    "event.commits.extend([1])",
    "event.commits.insert(0, 1)",
    "event.commits.sort()",
    "event.head_commit.update(message='changed')",
]


@pytest.fixture
def event() -> dict[str, Any]:
    require(PAYLOADS.is_dir(), f"the shared GitHub payloads are not at {PAYLOADS}")
    return json.loads((PAYLOADS / "push" / "with-new-branch.payload.json").read_text())


@pytest.mark.parametrize("expression", ESCAPES + MUTATIONS)
def test_the_sandbox_refuses_escapes_and_mutation_in_every_way_an_expression_is_read(
    expression: str, event: dict[str, Any]
) -> None:
    before = copy.deepcopy(event)
    context = {"event": event, "branch": "main"}
    with pytest.raises(RenderError):
        render("{{ " + expression + " }}", context)
    with pytest.raises(RenderError):
        render_shell("echo {{ " + expression + " }}", context)
    with pytest.raises(RenderError):
        evaluate(expression, context)
    assert event == before


POSITIONS = """\
on: {repository: acme/app}
workdir: /tmp
steps:
  - run: |
      # don't
      echo '{{ branch }}'
      if [[ {{ branch }} -gt 0 ]]; then echo big; fi
  - run: |
        cat <<'EOF'
        {{ branch }}
        EOF
  - run: |
      echo one
      echo {{ branch }
  - run: "echo one\\n eval {{ branch }}"
  - run: echo $(( {{ branch }} ))
"""


def test_a_problem_in_a_literal_block_is_said_on_its_own_line(tmp_path: Path) -> None:
    path = tmp_path / "app.yaml"
    path.write_text(POSITIONS)
    problems = validate([path], tmp_path)
    assert [(p.line, p.column) for p in problems] == [(7, 7), (10, 9), (14, 7), (15, 10), (16, 10)], problems
    assert problems[0].message.startswith("step 1 run: -eq, -ne, -lt, -le, -gt or -ge")
    assert problems[1].message.startswith("step 2 run: {{ ... }} inside a quoted here-document")
    assert problems[2].message.startswith("step 3 run: template syntax error")
    # Elsewhere than in a literal block, the value's start.
    assert problems[3].message.startswith("step 4 run: eval")
    assert problems[4].message.startswith("step 5 run: $(( )) or (( ))")
