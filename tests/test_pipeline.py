"""Pipeline files: loading, every kind of problem with its position, matching real payloads, reloading."""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from support import PAYLOADS, ROOT, payload_files, require

from runner.filters import Filter
from runner.loading import load_pipeline
from runner.pipeline import NAME, STEP_TYPES, Match, Pipeline, parse_duration
from runner.pipelines import PipelineSet, pipeline_files, validate
from runner.validation import SCHEMA_PATH, PipelineError, Problem

BROKEN = Path(__file__).resolve().parent / "data" / "pipelines-broken"
EXPECT = re.compile(r"^# expect (\d+):(\d+) (.*)$")

SHAPE = """\
# yaml-language-server: $schema=../schema/pipeline.schema.json
on:
  repository: ducompsoc/durhack
  events: [push]
  branches: [main, "release/**"]
  tags: ["v*"]
  paths: ["server/**"]
workdir: /var/www/api.durhack.com
env:
  INSTANCE_NAME: api.durhack.com
timeout: 30m
steps:
  - git: {}
  - run: pnpm install --frozen-lockfile
  - run: [pnpm, run, build]
    timeout: 10m
"""


def write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


def pipeline(tmp_path: Path, on: str, name: str = "api") -> Pipeline:
    """A pipeline whose ``on:`` block is ``on`` (YAML, indented by two spaces)."""
    text = "on:\n" + textwrap.indent(textwrap.dedent(on), "  ") + "workdir: srv\nsteps:\n  - git: {}\n"
    return load_pipeline(write(tmp_path / "pipelines", f"{name}.yaml", text), tmp_path)


def problems_of(tmp_path: Path, text: str, name: str = "api.yaml") -> list[Problem]:
    path = write(tmp_path / "pipelines", name, text)
    with pytest.raises(PipelineError) as caught:
        load_pipeline(path, tmp_path)
    assert str(caught.value) == "\n".join(str(problem) for problem in caught.value.problems)
    return caught.value.problems


# Payloads: GitHub's own, with only the fields the README says a test may change.


def _payload(name: str) -> dict[str, Any]:
    require(PAYLOADS.is_dir(), f"the shared GitHub payloads are not at {PAYLOADS}")
    return json.loads((PAYLOADS / "push" / name).read_text())


def push(
    ref: str,
    repository: str = "ducompsoc/durhack",
    changed: list[list[str]] | None = None,
) -> dict[str, Any]:
    """A push of ``ref`` creating a branch or tag, as in with-new-branch.payload.json.

    ``changed``: the files of each commit (as ``modified``), for a push of that many commits.
    """
    payload = _payload("with-new-branch.payload.json")
    commit = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"
    payload["ref"] = ref
    payload["after"] = commit
    payload["head_commit"]["id"] = commit
    payload["repository"]["full_name"] = repository
    payload["repository"]["clone_url"] = f"https://github.com/{repository}.git"
    if changed is not None:
        template = payload["commits"][0]
        payload["commits"] = []
        for files in changed:
            listed = copy.deepcopy(template)
            listed["added"], listed["removed"], listed["modified"] = [], [], files
            payload["commits"].append(listed)
    return payload


def deletion(ref: str, repository: str = "ducompsoc/durhack") -> dict[str, Any]:
    """A push deleting ``ref``, as in payload.json (a tag deletion)."""
    payload = _payload("payload.json")
    payload["ref"] = ref
    payload["repository"]["full_name"] = repository
    return payload


# Loading -----------------------------------------------------------------------------------------------


def test_the_documented_shape_loads_with_its_values(tmp_path: Path) -> None:
    path = write(tmp_path / "pipelines", "api.yaml", SHAPE)
    loaded = load_pipeline(path, tmp_path)
    assert loaded.name == "api"
    assert loaded.path == path
    trigger = loaded.trigger
    assert trigger.repository == "ducompsoc/durhack"
    assert trigger.events == ("push",)
    assert trigger.branches == Filter(["main", "release/**"])
    assert trigger.tags == Filter(["v*"])
    assert trigger.paths == Filter(["server/**"])
    assert loaded.workdir == Path("/var/www/api.durhack.com")
    assert loaded.env == {"INSTANCE_NAME": "api.durhack.com"}
    assert loaded.timeout == 1800.0
    git, install, build = loaded.steps
    assert (git.type, git.args, git.name, git.timeout, git.line) == ("git", {}, "git", None, 13)
    assert (install.type, install.args, install.line) == ("run", "pnpm install --frozen-lockfile", 14)
    assert install.name == "run: pnpm install --frozen-lockfile"
    assert (build.type, build.args, build.name, build.timeout) == (
        "run",
        ["pnpm", "run", "build"],
        "run: pnpm run build",
        600.0,
    )
    assert (build.env, build.cwd, build.when) == ({}, None, None)


def test_defaults_and_relative_workdir(tmp_path: Path) -> None:
    path = write(
        tmp_path / "pipelines",
        "site.yml",
        """\
        on: {repository: Owner/Site}
        workdir: var/site/../www
        steps:
          - git:
          - run: |
              ./a-script-with-a-long-name --and --many --options
              echo done
          - name: last
            run: make
            cwd: server
            env: {MODE: production, TARGET: "{{ branch }}"}
            when: {changed: ["server/**"], if: "branch == 'main'"}
        """,
    )
    loaded = load_pipeline(path, tmp_path)
    assert loaded.name == "site"
    assert loaded.workdir == tmp_path / "var" / "www"
    assert loaded.workdir.is_absolute()
    assert loaded.timeout == 3600.0
    assert loaded.env == {}
    assert loaded.trigger.events == ("push",)
    assert (loaded.trigger.branches, loaded.trigger.tags, loaded.trigger.paths) == (None, None, None)
    git, script, last = loaded.steps
    assert git.args == {}
    # The first 40 characters of the command, its whitespace folded.
    assert script.name == "run: " + "./a-script-with-a-long-name --and --many --options echo done"[:40]
    assert (last.name, last.cwd, last.env) == (
        "last",
        "server",
        {"MODE": "production", "TARGET": "{{ branch }}"},
    )
    assert last.when == {"changed": ["server/**"], "if": "branch == 'main'"}


def test_yaml_1_1_surprises_stay_strings(tmp_path: Path) -> None:
    path = write(
        tmp_path / "pipelines",
        "api.yaml",
        """\
        on:
          repository: a/b
        workdir: srv
        env: {A: "yes", B: on, C: no, D: "0755"}
        steps:
          - git: {clean: TRUE}
          - run: [chmod, 0755, x]
            name: off
        """,
    )
    # `on:` is a key, not the boolean true; on, no, yes are strings, and 0755 stays as written.
    loaded = load_pipeline(path, tmp_path)
    assert loaded.env == {"A": "yes", "B": "on", "C": "no", "D": "0755"}
    assert loaded.steps[0].args == {"clean": True}
    assert loaded.steps[1].args == ["chmod", "0755", "x"]
    assert loaded.steps[1].name == "off"
    # A plain number is still a number, which an argument list does not take: it must be quoted.
    path.write_text(path.read_text().replace("0755, x", "755, x"))
    with pytest.raises(PipelineError) as caught:
        load_pipeline(path, tmp_path)
    (problem,) = caught.value.problems
    assert (problem.line, problem.column) == (7, 18)
    assert problem.message.startswith("step 2 run item 2: must be a string")


def test_anchors_and_merge_keys(tmp_path: Path) -> None:
    path = write(
        tmp_path / "pipelines",
        "api.yaml",
        """\
        on: {repository: a/b}
        workdir: srv
        env: &common {NODE_ENV: production, PORT: "3000"}
        steps:
          - run: make
            env:
              <<: *common
              PORT: "3001"
        """,
    )
    loaded = load_pipeline(path, tmp_path)
    assert loaded.steps[0].env == {"NODE_ENV": "production", "PORT": "3001"}


def test_integer_timeouts_are_seconds(tmp_path: Path) -> None:
    path = write(
        tmp_path / "pipelines",
        "api.yaml",
        "on: {repository: a/b}\nworkdir: x\ntimeout: 90\nsteps: [{git: {}}]\n",
    )
    assert load_pipeline(path, tmp_path).timeout == 90.0


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("90s", 90), ("10m", 600), ("1h", 3600), ("1h30m", 5400), ("2h5m10s", 7510), ("45", 45), (120, 120)],
)
def test_parse_duration(value: str | int, seconds: int) -> None:
    assert parse_duration(value) == float(seconds)


@pytest.mark.parametrize(
    "value", ["", "1.5h", "10 m", " 10m", "30m1h", "1d", "0s", "0", 0, -5, True, "m", 1.5]
)
def test_parse_duration_refuses(value: Any) -> None:
    with pytest.raises(ValueError, match="bad duration"):
        parse_duration(value)


# The schema --------------------------------------------------------------------------------------------


def _schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())


def test_the_schema_is_a_valid_2020_12_schema() -> None:
    schema = _schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] and schema["title"]
    Draft202012Validator.check_schema(schema)


def test_the_schema_describes_every_property_and_allows_no_other() -> None:
    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if "properties" in node:
                assert node.get("additionalProperties") is False, f"{where}: additionalProperties"
                for key, value in node["properties"].items():
                    described = "description" in value or (
                        "$ref" in value and "description" in _schema()["$defs"][value["$ref"].split("/")[-1]]
                    )
                    assert described, f"{where}.{key} has no description"
            for key, value in node.items():
                walk(value, f"{where}.{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{where}[{index}]")

    walk(_schema(), "schema")


def test_the_schema_knows_the_step_types_the_code_knows() -> None:
    step = _schema()["$defs"]["step"]
    in_schema = {branch["required"][0] for branch in step["oneOf"]}
    assert in_schema == set(STEP_TYPES)
    assert set(STEP_TYPES) <= set(step["properties"])


def test_the_shape_is_valid_for_the_schema_too(tmp_path: Path) -> None:
    # What an editor sees through yaml-language-server; `on` is a string key there as here.
    data = {
        "on": {"repository": "a/b", "branches": ["main"]},
        "workdir": "x",
        "timeout": "1h30m",
        "steps": [{"git": None}, {"run": "make", "timeout": 60, "cwd": "server"}],
    }
    assert list(Draft202012Validator(_schema()).iter_errors(data)) == []


# Problems ----------------------------------------------------------------------------------------------


def _expectations(path: Path) -> list[tuple[int, int, str]]:
    found = []
    for line in path.read_text().splitlines():
        match = EXPECT.match(line)
        if match:
            found.append((int(match[1]), int(match[2]), match[3]))
    return found


@pytest.mark.parametrize("path", pipeline_files(BROKEN), ids=lambda path: path.stem)
def test_each_broken_file_gives_its_problems_at_their_lines(path: Path, tmp_path: Path) -> None:
    """Each file in tests/data/pipelines-broken says what is wrong in `# expect LINE:COLUMN message` lines."""
    expected = _expectations(path)
    assert expected, f"{path} has no `# expect` line"
    problems = validate([path], tmp_path)
    assert [(p.line, p.column) for p in problems] == [(line, column) for line, column, _ in expected], (
        problems
    )
    for problem, (_, _, message) in zip(problems, expected, strict=True):
        assert problem.path == path
        assert message in problem.message, problem
        assert str(problem).startswith(f"{path}:{problem.line}:{problem.column}: ")


def test_every_problem_of_a_file_is_reported_at_once(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        """\
        on:
          repository: ducompsoc
          tags: ["[abc"]
        workdir: srv
        timeout: soon
        steps:
          - run: eval echo '{{ commit }}'
          - deploy: {}
        """,
    )
    assert [(p.line, p.column) for p in problems] == [(2, 15), (3, 10), (5, 10), (7, 10), (8, 5)]
    assert "owner/name" in problems[0].message
    assert "unclosed '['" in problems[1].message
    assert "duration" in problems[2].message
    assert problems[3].message.startswith("step 1 run: eval (it runs its arguments as a command line)")
    assert problems[4].message == (
        "step 2: unknown step type 'deploy' (known: git, run, pnpm, nginx, certbot, systemctl)"
    )


@pytest.mark.parametrize("name", ["API", "my_site", "-api", "main", "site.v2"])
def test_a_bad_pipeline_name_is_a_problem(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, f"{name}.yaml", SHAPE)
    (problem,) = validate([path], tmp_path)
    assert (problem.path, problem.line, problem.column) == (path, 1, 1)
    assert f"'{name}'" in problem.message
    assert ("main queue" if name == "main" else "lowercase letters, digits and '-'") in problem.message


def test_the_name_pattern() -> None:
    assert all(NAME.match(name) for name in ["api", "api-v2", "2024-site", "a"])
    assert not any(NAME.match(name) for name in ["", "-a", "A", "a_b", "a.b", "a/b"])


def test_duplicate_pipeline_names_across_yaml_and_yml(tmp_path: Path) -> None:
    directory = tmp_path / "pipelines"
    yaml_file = write(directory, "api.yaml", SHAPE)
    yml_file = write(directory, "api.yml", SHAPE)
    other = write(directory, "web.yaml", SHAPE)
    problems = validate(pipeline_files(directory), tmp_path)
    assert [(p.path, p.line, p.column) for p in problems] == [(yaml_file, 1, 1), (yml_file, 1, 1)]
    assert "'api'" in problems[0].message and str(yml_file) in problems[0].message
    assert str(yaml_file) in problems[1].message
    assert validate([yaml_file, other], tmp_path) == []


def test_an_unreadable_file_is_a_problem(tmp_path: Path) -> None:
    path = tmp_path / "gone.yaml"
    path.symlink_to(tmp_path / "nowhere.yaml")
    (problem,) = validate([path], tmp_path)
    assert (problem.line, problem.column) == (1, 1)
    assert "cannot read the file" in problem.message


def test_a_file_that_is_not_utf8_is_a_problem(tmp_path: Path) -> None:
    path = tmp_path / "latin.yaml"
    path.write_bytes(b"on:\n  repository: caf\xe9/x\n")
    (problem,) = validate([path], tmp_path)
    assert (problem.line, problem.column) == (2, 18)
    assert "not UTF-8" in problem.message


def test_more_than_one_document_is_a_problem(tmp_path: Path) -> None:
    (problem,) = problems_of(tmp_path, SHAPE + "---\non: {repository: a/b}\n")
    assert (problem.line, problem.column) == (17, 1)
    assert problem.message == (
        "YAML syntax error: expected a single document in the stream on line 2, but found another document"
    )


def test_validate_the_pipelines_of_this_repository() -> None:
    # The directory may be empty; whatever is there must be valid.
    directory = ROOT / "pipelines"
    assert validate(pipeline_files(directory), ROOT) == []


def test_pipeline_files_skips_hidden_files_and_backups(tmp_path: Path) -> None:
    for name in ["b.yml", "a.yaml", ".hidden.yaml", "a.yaml~", "notes.txt", ".#a.yaml", "c.yaml.bak"]:
        (tmp_path / name).write_text("")
    (tmp_path / "dir.yaml").mkdir()
    assert [p.name for p in pipeline_files(tmp_path)] == ["a.yaml", "b.yml"]
    assert pipeline_files(tmp_path / "missing") == []


# Matching ----------------------------------------------------------------------------------------------


def test_branch_patterns_apply_in_order_and_the_last_match_decides(tmp_path: Path) -> None:
    api = pipeline(tmp_path, 'repository: ducompsoc/durhack\nbranches: ["release/**", "!release/**-alpha"]\n')
    assert api.match("push", push("refs/heads/release/2.0")) == Match(True, None)
    excluded = api.match("push", push("refs/heads/release/2.0-alpha"))
    assert excluded == Match(
        False,
        "branch 'release/2.0-alpha' does not match pipeline api's branches [release/**, !release/**-alpha]",
    )
    again = pipeline(
        tmp_path, 'repository: ducompsoc/durhack\nbranches: ["!release/**-alpha", "release/**"]\n'
    )
    assert again.match("push", push("refs/heads/release/2.0-alpha")).matched


def test_double_star_crosses_slashes_and_single_star_does_not(tmp_path: Path) -> None:
    one = pipeline(tmp_path, 'repository: ducompsoc/durhack\nbranches: ["feature/*"]\n')
    two = pipeline(tmp_path, 'repository: ducompsoc/durhack\nbranches: ["feature/**"]\n')
    assert one.match("push", push("refs/heads/feature/login")).matched
    assert not one.match("push", push("refs/heads/feature/login/v2")).matched
    assert two.match("push", push("refs/heads/feature/login/v2")).matched
    assert not two.match("push", push("refs/heads/main")).matched


@pytest.mark.parametrize(
    ("pattern", "matching", "not_matching"),
    [
        ("v1.jsx?", ["v1.js", "v1.jsx"], ["v1.jsxx", "v1.j"]),
        ("v[0-9]+", ["v1", "v10", "v2024"], ["v", "va", "v1a"]),
        ("[CB]at", ["Cat", "Bat"], ["cat", "Hat"]),
        ("v[0-9].[0-9a-z]", ["v1.2", "v1.x"], ["v1.X", "v12.2"]),
        ("rc\\+1", ["rc+1"], ["rcc1"]),
        ("**", ["main", "a/b/c"], []),
        ("!dev", ["main", "feature/x"], ["dev"]),
    ],
)
def test_filter_patterns(pattern: str, matching: list[str], not_matching: list[str]) -> None:
    patterns = Filter([pattern])
    for value in matching:
        assert patterns.matches(value), value
    for value in not_matching:
        assert not patterns.matches(value), value


def test_paths_patterns_as_github_documents_them() -> None:
    readme = Filter(["**/README.md"])
    assert readme.matches("README.md") and readme.matches("docs/a/README.md")
    docs = Filter(["docs/**/*.md", "!docs/drafts/**"])
    assert docs.matches("docs/a.md") and docs.matches("docs/a/b.md")
    assert not docs.matches("docs/drafts/c.md") and not docs.matches("src/a.md")


@pytest.mark.parametrize("pattern", ["[abc", "?v1", "+v1", "", "!", "[]", "[a-Z]", "[!a]", "v1\\"])
def test_bad_globs(pattern: str) -> None:
    with pytest.raises(ValueError, match=r"^bad glob .*: "):
        Filter([pattern])


def test_with_neither_branches_nor_tags_everything_matches(tmp_path: Path) -> None:
    api = pipeline(tmp_path, "repository: ducompsoc/durhack\n")
    assert api.match("push", push("refs/heads/anything/at/all")).matched
    assert api.match("push", push("refs/tags/v1.0")).matched


def test_branches_only_never_match_tags_and_tags_only_never_branches(tmp_path: Path) -> None:
    branches = pipeline(tmp_path, "repository: ducompsoc/durhack\nbranches: [main]\n")
    assert branches.match("push", push("refs/heads/main")).matched
    assert branches.match("push", push("refs/tags/main")) == Match(
        False, "pipeline api runs for branches only; 'main' is a tag"
    )
    tags = pipeline(tmp_path, 'repository: ducompsoc/durhack\ntags: ["v*"]\n')
    assert tags.match("push", push("refs/tags/v1.2")).matched
    assert tags.match("push", push("refs/tags/release")) == Match(
        False, "tag 'release' does not match pipeline api's tags [v*]"
    )
    assert tags.match("push", push("refs/heads/v1")) == Match(
        False, "pipeline api runs for tags only; 'v1' is a branch"
    )
    both = pipeline(tmp_path, 'repository: ducompsoc/durhack\nbranches: [main]\ntags: ["v*"]\n')
    assert (
        both.match("push", push("refs/heads/main")).matched
        and both.match("push", push("refs/tags/v2")).matched
    )
    assert not both.match("push", push("refs/heads/dev")).matched


def test_a_reason_names_the_pipeline_the_branch_and_the_patterns(tmp_path: Path) -> None:
    api = pipeline(tmp_path, 'repository: ducompsoc/durhack\nbranches: [main, "release/**"]\n')
    assert api.match("push", push("refs/heads/dev")) == Match(
        False, "branch 'dev' does not match pipeline api's branches [main, release/**]"
    )


def test_deleted_branches_and_tags_never_match(tmp_path: Path) -> None:
    api = pipeline(tmp_path, "repository: Codertocat/Hello-World\n")
    assert api.match("push", _payload("payload.json")) == Match(False, "tag 'simple-tag' was deleted")
    assert api.match("push", deletion("refs/heads/main", "Codertocat/Hello-World")) == Match(
        False, "branch 'main' was deleted"
    )


def test_every_shared_push_payload_is_matched_without_error(tmp_path: Path) -> None:
    api = pipeline(tmp_path, "repository: codertocat/hello-world\nbranches: [master]\n")
    for path in payload_files():
        if path.parent.name != "push":
            continue
        payload = json.loads(path.read_text())
        result = api.match("push", payload)
        if payload["deleted"]:
            assert result == Match(False, "tag 'simple-tag' was deleted"), path
        else:
            assert result == Match(True, None), path


def test_another_repository_does_not_match_and_case_does_not_matter(tmp_path: Path) -> None:
    api = pipeline(tmp_path, "repository: DUCompSoc/DurHack\n")
    assert api.match("push", push("refs/heads/main", repository="ducompsoc/durhack")).matched
    other = api.match("push", push("refs/heads/main", repository="ducompsoc/other"))
    assert not other.matched
    assert "ducompsoc/other" in (other.reason or "") and "DUCompSoc/DurHack" in (other.reason or "")


def test_another_event_does_not_match(tmp_path: Path) -> None:
    api = pipeline(tmp_path, "repository: Codertocat/Hello-World\n")
    ping = json.loads((PAYLOADS / "ping" / "payload.json").read_text())
    assert api.match("ping", ping) == Match(
        False, "event 'ping' is not handled by pipeline api (events: push)"
    )
    release = json.loads((PAYLOADS / "release" / "published.payload.json").read_text())
    assert not api.match("release", release).matched


def test_paths_filter_on_the_files_the_push_changed(tmp_path: Path) -> None:
    api = pipeline(tmp_path, 'repository: ducompsoc/durhack\npaths: ["server/**", "!server/**.md"]\n')
    assert api.match("push", push("refs/heads/main", changed=[["client/a.ts"], ["server/api.ts"]])).matched
    docs_only = api.match("push", push("refs/heads/main", changed=[["client/a.ts", "server/README.md"]]))
    assert docs_only == Match(
        False,
        "no file changed on branch 'main' matches pipeline api's paths [server/**, !server/**.md] "
        "(changed: client/a.ts, server/README.md)",
    )
    # The README's own payload: one commit adding README.md.
    assert not api.match("push", push("refs/heads/main")).matched


def test_paths_filter_is_not_applied_when_the_changed_files_are_not_all_known(tmp_path: Path) -> None:
    api = pipeline(tmp_path, 'repository: ducompsoc/durhack\npaths: ["server/**"]\n')
    assert api.match("push", push("refs/heads/main", changed=[])).matched
    assert not api.match("push", push("refs/heads/main", changed=[["client/a.ts"]] * 19)).matched
    # GitHub lists at most 20 commits: with 20, there may have been more, touching server/.
    assert api.match("push", push("refs/heads/main", changed=[["client/a.ts"]] * 20)).matched
    # Tag pushes are not filtered by paths, as in GitHub Actions.
    assert api.match("push", push("refs/tags/v1", changed=[["client/a.ts"]])).matched


# Reloading ---------------------------------------------------------------------------------------------


def _touch_later(path: Path) -> None:
    # Two writes within one clock tick can share an mtime; the test must not depend on the tick.
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_pipeline_set_follows_the_directory(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    directory = tmp_path / "pipelines"
    directory.mkdir()
    pipelines = PipelineSet(directory, tmp_path)
    assert pipelines.reload() == [] and pipelines.all() == [] and pipelines.get("api") is None

    api = write(directory, "api.yaml", SHAPE)
    assert pipelines.reload() == []
    first = pipelines.get("api")
    assert first is not None and first.timeout == 1800.0
    write(directory, "web.yml", SHAPE)
    assert pipelines.reload() == []
    assert [p.name for p in pipelines.all()] == ["api", "web"]

    # A changed valid file replaces the old version.
    api.write_text(SHAPE.replace("timeout: 30m", "timeout: 45m"))
    _touch_later(api)
    assert pipelines.reload() == []
    second = pipelines.get("api")
    assert second is not None and second.timeout == 2700.0

    # A file changed to invalid keeps its last valid version in force, and says why.
    api.write_text(SHAPE.replace("timeout: 30m", "timeout: 45 minutes"))
    _touch_later(api)
    with caplog.at_level(logging.ERROR, logger="runner.pipeline"):
        problems = pipelines.reload()
    assert [(p.path, p.line) for p in problems] == [(api, 11)]
    assert "duration" in problems[0].message
    assert pipelines.get("api") is second
    assert "last valid version stays in force" in caplog.text and str(api) in caplog.text
    # Still invalid, unchanged: the same problems, not logged again.
    caplog.clear()
    assert pipelines.reload() == problems
    assert caplog.text == ""

    # A removed file disappears.
    api.unlink()
    assert pipelines.reload() == []
    assert pipelines.get("api") is None
    assert [p.name for p in pipelines.all()] == ["web"]


def test_pipeline_set_an_invalid_new_file_is_not_loaded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "pipelines"
    broken = write(directory, "api.yaml", SHAPE.replace("steps:", "stepz:"))
    pipelines = PipelineSet(directory, tmp_path)
    with caplog.at_level(logging.ERROR, logger="runner.pipeline"):
        problems = pipelines.reload()
    assert {p.path for p in problems} == {broken}
    assert pipelines.get("api") is None
    assert "has no valid version" in caplog.text
    broken.write_text(SHAPE)
    _touch_later(broken)
    assert pipelines.reload() == []
    assert pipelines.get("api") is not None


def test_pipeline_set_keeps_one_of_two_files_with_the_same_name(tmp_path: Path) -> None:
    directory = tmp_path / "pipelines"
    write(directory, "api.yaml", SHAPE)
    second = write(directory, "api.yml", SHAPE.replace("30m", "5m"))
    pipelines = PipelineSet(directory, tmp_path)
    (problem,) = pipelines.reload()
    assert problem.path == second and "also the name of" in problem.message
    kept = pipelines.get("api")
    assert kept is not None and kept.timeout == 1800.0


@pytest.mark.parametrize(
    "step",
    [
        "certbot: {cert-name: app, domains: [-x.example.com]}",
        "certbot: {cert-name: app, domains: ['a b.example.com']}",
        "certbot: {cert-name: app, domains: ['example.com --deploy-hook id']}",
        "certbot: {cert-name: ../etc, domains: [example.com]}",
        "certbot: {cert-name: a/b, domains: [example.com]}",
        "certbot: {cert-name: app, domains-from-site: ../x}",
        "nginx: {site: ../passwd, template: static.conf.j2}",
        "nginx: {site: app, template: ../../etc/passwd}",
        "systemctl: {action: restart, unit: -H}",
        "systemctl: {action: 'restart; id', unit: nginx}",
        "systemctl: {action: restart, unit: 'nginx sshd'}",
        "pnpm: {run: '--help'}",
        "pnpm: {run: build, filter: ['--workspace-root']}",
    ],
)
def test_names_that_reach_a_command_line_are_refused_by_validation(tmp_path: Path, step: str) -> None:
    problems = problems_of(
        tmp_path,
        f"""\
        on: {{repository: acme/app}}
        workdir: srv
        steps:
          - {step}
        """,
    )
    assert problems, step
    assert all(problem.line == 4 for problem in problems), problems
