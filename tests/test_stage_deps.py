"""Every module of the package that a stage script imports, directly or through other modules, is one of that
stage's `deps` in dvc.yaml: otherwise DVC would not re-run the stage when that code changes, and its
outputs would silently describe old code."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "src"
PACKAGE = "medvlm"
PLUMBING = {SOURCE / PACKAGE / name for name in ("params.py", "params_base.py", "eval_params.py", "cli.py")}
"""Left out of deps on purpose (dvc.yaml's header says why): validation and error reporting, which cannot
change a result, and which would otherwise re-run every stage whenever a param is added. Their own imports
are not followed: a module a stage reaches only through validation does not shape its outputs."""


def _module_file(name: str) -> Path | None:
    base = SOURCE / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(path: Path) -> set[str]:
    """Package modules named by the import statements of one file (function-level imports included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return {name for name in names if name.split(".")[0] == PACKAGE and _module_file(name) is not None}


def package_files_imported_by(script: Path) -> set[Path]:
    """Files of the package that `script` imports, transitively, with the __init__ of every package passed."""
    seen: set[Path] = set()
    pending = [script]
    while pending:
        current = pending.pop()
        if current in PLUMBING:
            continue
        for name in _imported_modules(current):
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ too
                found = _module_file(".".join(parts[:depth]))
                if found is not None and found not in seen:
                    seen.add(found)
                    pending.append(found)
    return seen


def _has_code(path: Path) -> bool:
    """False for a file holding at most a docstring (most package __init__ files): it cannot change a result."""
    body = ast.parse(path.read_text()).body
    return any(not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)) for node in body)


def _stages() -> list[tuple[str, Path, list[str]]]:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    found = []
    for name, stage in stages.items():
        body = stage.get("do", stage)
        script = re.search(r"python (stages/\S+\.py)", body["cmd"])
        assert script, f"{name}: no stage script in its cmd"
        found.append((name, REPO / script.group(1), [str(dep) for dep in body.get("deps", [])]))
    return found


STAGES = _stages()


@pytest.mark.parametrize("name,script,deps", STAGES, ids=[stage[0] for stage in STAGES])
def test_every_imported_package_module_is_a_stage_dependency(name, script, deps):
    declared = {(REPO / dep).resolve() for dep in deps}

    def covered(path: Path) -> bool:  # listed itself, or a folder above it is
        return any(path == dep or dep in path.parents for dep in declared)

    assert covered(script.resolve()), f"{name}: its script {script.relative_to(REPO)} is not in deps"
    missing = sorted(str(path.relative_to(REPO)) for path in package_files_imported_by(script)
                     if _has_code(path) and path not in PLUMBING and not covered(path.resolve()))
    assert not missing, f"dvc.yaml stage {name} imports these but does not depend on them: {missing}"


def test_the_import_walker_follows_imports_through_modules():
    # robustness -> eval.robustness -> models.clip -> models.text_tower: found two modules deep
    found = {path.relative_to(SOURCE).as_posix() for path in package_files_imported_by(REPO / "stages/robustness.py")}
    assert {"medvlm/eval/robustness.py", "medvlm/models/clip.py", "medvlm/models/text_tower.py"} <= found
