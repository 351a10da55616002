"""The structure rules of scripts/structure.py hold for the tree, and catch what breaks them."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "structure.py"


def check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(root)], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "runner", tmp_path / "runner", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def test_the_tree_keeps_the_rules() -> None:
    done = check(ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def test_a_module_importing_its_caller_is_refused(tree: Path) -> None:
    queue = tree / "runner" / "queue.py"
    late = "\n\ndef _late() -> None:\n    from runner.cli import main  # noqa\n"
    queue.write_text(queue.read_text() + late)
    done = check(tree)
    assert done.returncode == 1
    assert "runner/queue.py" in done.stderr
    assert "runner.queue may not import runner.cli" in done.stderr


def test_from_runner_import_a_module_counts_as_that_module(tree: Path) -> None:
    store = tree / "runner" / "store.py"
    store.write_text(store.read_text() + "\nfrom runner import worker  # noqa\n")
    done = check(tree)
    assert done.returncode == 1
    assert "runner.store may not import runner.worker" in done.stderr


def test_the_steps_may_not_import_the_web_endpoint(tree: Path) -> None:
    git = tree / "runner" / "steps" / "git.py"
    git.write_text(git.read_text() + "\nfrom ..web import WebhookApp  # noqa\n")
    done = check(tree)
    assert done.returncode == 1
    assert "runner.steps.git may not import runner.web" in done.stderr


def test_a_module_missing_from_the_table_is_named(tree: Path) -> None:
    (tree / "runner" / "gadget.py").write_text('"""A module nobody placed."""\n')
    done = check(tree)
    assert done.returncode == 1
    assert "runner.gadget is not in the import table" in done.stderr


def test_long_functions_and_modules_are_named(tree: Path) -> None:
    body = "".join(f"    x{n} = {n}\n" for n in range(70))
    padding = "".join(f"# line {n}\n" for n in range(400))
    (tree / "runner" / "events.py").write_text(f'"""Events."""\n\n\ndef long() -> None:\n{body}\n{padding}')
    done = check(tree)
    assert done.returncode == 1
    assert "runner/events.py:4: long is 71 lines" in done.stderr
    assert "runner/events.py: 475 lines" in done.stderr


def test_a_table_that_allows_a_cycle_is_refused() -> None:
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import structure
    finally:
        sys.path.remove(str(SCRIPT.parent))
    assert structure.cycles(structure.ALLOWED) == []
    looped = dict(structure.ALLOWED, **{"runner.queue": {"runner.files", "runner.worker"}})
    found = structure.cycles(looped)
    assert any("runner.queue" in line for line in found)
    assert any("runner.worker" in line for line in found)


def test_the_readme_maps_every_module_and_only_modules_that_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Where things are", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`(runner/[\w/]+\.py)`", section))
    files = {
        str(path.relative_to(ROOT))
        for path in (ROOT / "runner").rglob("*.py")
        if path.name != "__main__.py" and "_shipped" not in path.parts and path != ROOT / "runner/__init__.py"
    }
    assert files - named == set(), "modules the README's map does not name"
    assert named - files == set(), "the README's map names files that do not exist"
