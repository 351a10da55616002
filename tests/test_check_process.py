"""The worker's pipeline checks in a child process: the same problems as in-process checking, in one child
for all the files, and a file that cannot be checked is never taken as valid."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from runner import check_process
from runner.loading import load_files
from runner.validation import Problem

VALID = "on: {repository: acme/site}\nworkdir: site\nsteps:\n  - run: echo {{ commit }}\n"
FILES = {
    "site.yaml": VALID,
    # The schema's findings, a check the schema cannot make (a template's unknown name), a YAML error.
    "bad-schema.yaml": "on: {repository: acme/site, events: [pull]}\nworkdir: 3\nsteps: []\nextra: 1\n",
    "bad-template.yaml": "on: {repository: acme/site}\nworkdir: site\nsteps:\n  - run: echo {{ comit }}\n",
    "bad-yaml.yaml": "on: {repository: acme/site\nworkdir: site\n",
    "Bad_Name.yaml": VALID,
}


def write(tmp_path: Path) -> list[Path]:
    directory = tmp_path / "pipelines"
    directory.mkdir()
    for name, text in FILES.items():
        (directory / name).write_text(text)
    return [directory / name for name in FILES]


def test_the_child_finds_what_the_checks_in_process_find(tmp_path: Path) -> None:
    paths = write(tmp_path)
    here = load_files(paths, tmp_path, in_child=False)
    child = load_files(paths, tmp_path, in_child=True)
    assert [problems for problems, _ in child.values()] == [problems for problems, _ in here.values()]
    assert child[paths[0]][1] == here[paths[0]][1] is not None
    assert [step.line for step in child[paths[0]][1].steps] == [4]
    assert all(problems for path, (problems, _) in child.items() if path != paths[0])
    said = " ".join(problem.message for problems, _ in child.values() for problem in problems)
    assert "event 'pull' is not supported" in said
    assert "comit" in said
    assert "YAML syntax error" in said
    assert "not a valid pipeline name" in said


def test_a_child_that_fails_leaves_every_file_invalid_saying_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = write(tmp_path)
    texts = {path: path.read_text() for path in paths}
    # A real child, given less time than Python takes to start: it is killed, and nothing is taken as valid.
    monkeypatch.setattr(check_process, "TIMEOUT", 0.001)
    found = check_process.check_in_child(texts, tmp_path)
    for path in paths:
        (problem,), checked = found[path]
        assert checked is None
        assert problem.path == path and (problem.line, problem.column) == (1, 1)
        assert problem.message.startswith("cannot check the file: the checking process")
        assert "did not answer within" in problem.message
    assert check_process.check_in_child({}, tmp_path) == {}
    assert isinstance(found[paths[0]][0][0], Problem)


def test_a_valid_file_whose_data_json_cannot_carry_is_built_from_its_yaml(tmp_path: Path) -> None:
    # An nginx step's vars may be any values: a date among them is valid, and reaches the worker as a date.
    (tmp_path / "templates" / "nginx").mkdir(parents=True)
    (tmp_path / "templates" / "nginx" / "site.conf.j2").write_text("server { listen {{ port }}; }\n")
    path = tmp_path / "dated.yaml"
    path.write_text(
        "on: {repository: acme/site}\nworkdir: site\nsteps:\n  - run: make\n"
        "  - nginx: {site: dated, template: site.conf.j2, vars: {port: 8080, since: 2024-01-02}}\n"
    )
    (child_problems, child), (here_problems, here) = (
        load_files([path], tmp_path, in_child=in_child)[path] for in_child in (True, False)
    )
    assert child_problems == here_problems == [], child_problems
    assert child == here is not None
    assert child.steps[1].args["vars"]["since"] == datetime.date(2024, 1, 2)
    assert [step.line for step in child.steps] == [4, 5]
