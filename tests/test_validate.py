"""`runner validate` knows the names, filters and tests a template may use, and explains YAML's errors."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from support import run_cli, runner_env

from runner.config import load
from runner.loading import load_pipeline
from runner.steps.base import RunContext, RunLog
from runner.templating import CONTEXT_NAMES, name_problems, render

HEAD = "on:\n  repository: octo/app\nworkdir: app\n"


def validate(tmp_path: Path, body: str, name: str = "app.yaml") -> tuple[int, list[str], Path]:
    """`runner validate` on one pipeline file: its exit status, its lines on stdout, the file."""
    (tmp_path / "pipelines").mkdir(exist_ok=True)
    path = tmp_path / "pipelines" / name
    path.write_text(body)
    result = run_cli("validate", env=runner_env(tmp_path))
    return result.returncode, result.stdout.splitlines(), path


def test_a_misspelt_name_is_refused_at_its_expression_with_a_suggestion(tmp_path: Path) -> None:
    status, lines, path = validate(tmp_path, HEAD + "steps:\n  - run: echo {{ comit }}\n")
    assert status == 1
    assert lines == [f"{path}:5:15: step 1 run: unknown name 'comit' (did you mean commit?)"]


def test_an_unknown_filter_and_test_are_refused(tmp_path: Path) -> None:
    body = HEAD + (
        'steps:\n  - run: "echo {{ commit | nosuchfilter }}"\n'
        "    env:\n"
        '      A: "{% if branch is nosuchtest %}x{% endif %} {{ branch | uper }}"\n'
    )
    status, lines, path = validate(tmp_path, body)
    assert status == 1
    assert lines == [
        f"{path}:5:16: step 1 run: unknown filter 'nosuchfilter'",
        f"{path}:7:11: step 1 env.A: unknown test 'nosuchtest'",
        f"{path}:7:53: step 1 env.A: unknown filter 'uper' (did you mean upper?)",
    ]


def test_in_a_block_scalar_the_line_and_column_are_the_expression_s(tmp_path: Path) -> None:
    body = HEAD + "steps:\n  - run: |\n      echo start\n        echo {{ brnch }} {{ tagg }}\n"
    status, lines, path = validate(tmp_path, body)
    assert status == 1
    assert lines == [
        f"{path}:7:14: step 1 run: unknown name 'brnch' (did you mean branch?)",
        f"{path}:7:26: step 1 run: unknown name 'tagg' (did you mean tag?)",
    ]


def test_when_if_env_and_nginx_vars_are_checked_too(tmp_path: Path) -> None:
    body = HEAD + (
        'env:\n  WHO: "{{ repositry }}"\n'
        "steps:\n"
        "  - run: echo hi\n    when:\n      if: brnch == 'main'\n"
        '    env:\n      A: "{{ delivry }}"\n'
        "  - nginx:\n      site: app\n      template: proxy.conf.j2\n"
        '      vars:\n        upstream: "http://127.0.0.1:{{ run_idd }}"\n'
    )
    status, lines, path = validate(tmp_path, body)
    assert status == 1
    assert lines == [
        f"{path}:5:9: env.WHO: unknown name 'repositry' (did you mean repository?)",
        f"{path}:9:11: step 1 when.if: unknown name 'brnch' (did you mean branch?)",
        f"{path}:11:11: step 1 env.A: unknown name 'delivry' (did you mean delivery?)",
        f"{path}:16:37: step 2 nginx.vars.upstream: unknown name 'run_idd' (did you mean run_id?)",
    ]


def test_known_names_locals_globals_and_attributes_pass(tmp_path: Path) -> None:
    body = HEAD + (
        "steps:\n"
        "  - run: echo {{ commit[:7] | upper }} {{ env.WHO }} {{ event.after }} {{ range(2) | list }}\n"
        "    env:\n"
        "      A: >-\n"
        "        {% for f in changed_files or [] %}{{ f }}{% endfor %}\n"
        "        {% set short = commit[:7] %}{{ short }} {{ branch is none }} {{ tag is not string }}\n"
    )
    status, lines, _ = validate(tmp_path, body)
    assert (status, lines) == (0, [])


def test_a_tab_gets_a_hint(tmp_path: Path) -> None:
    status, lines, path = validate(tmp_path, HEAD + "steps:\n\t- run: echo hi\n")
    assert status == 1
    assert len(lines) == 1
    assert lines[0].startswith(f"{path}:5:1: YAML syntax error: found character '\\t'")
    assert lines[0].endswith("hint: YAML does not allow a tab in indentation: indent with spaces")


def test_a_missing_colon_and_a_bad_indent_get_hints(tmp_path: Path) -> None:
    _, lines, path = validate(tmp_path, HEAD + "steps:\n  - run: echo hi\n    name\n")
    assert lines[0].startswith(f"{path}:6:5: YAML syntax error: could not find expected ':'")
    assert "hint: a key needs ':'" in lines[0]
    _, lines, path = validate(tmp_path, "on:\n  repository: octo/app\n workdir: app\n")
    assert lines[0].startswith(f"{path}:3:2: YAML syntax error: expected <block end>")
    assert "hint: this line is indented differently" in lines[0]


def test_the_names_are_the_ones_a_run_renders_with(tmp_path: Path) -> None:
    (tmp_path / "pipelines").mkdir()
    path = tmp_path / "pipelines" / "app.yaml"
    path.write_text(HEAD + "env:\n  WHO: me\nsteps:\n  - run: echo hi\n")
    pipeline = load_pipeline(path, tmp_path)
    log = RunLog(tmp_path / "log")
    ctx = RunContext(
        run_id=1,
        pipeline=pipeline,
        config=load({"RUNNER_HOME": str(tmp_path)}),
        log=log,
        trigger="manual",
        ref="refs/heads/main",
        commit="a" * 40,
        repository="octo/app",
        delivery=None,
        event_name=None,
        event={},
        previous_commit=None,
        deadline=time.monotonic() + 60,
        base_env={},
    )
    context = ctx.template_context()
    assert sorted(context) == sorted(CONTEXT_NAMES)
    # Whatever the validator passes renders; what it refuses fails to.
    source = " ".join(f"{{{{ {name} }}}}" for name in CONTEXT_NAMES)
    assert name_problems(source) == []
    render(source, context)
    with pytest.raises(Exception, match="'comit' is undefined"):
        render("{{ comit }}", context)
