"""The code files a stage depends on, read from its `deps` in dvc.yaml: the one list that tells DVC when to
re-run a stage also fingerprints the resumable checkpoints of a training stage, so a checkpoint written by
other code is never resumed."""

from __future__ import annotations

from pathlib import Path

import yaml

from medvlm.io import DataError

REPO = Path(__file__).resolve().parents[3]
"""The checkout this package was imported from (stages run with PYTHONPATH=src, so DVC's experiment copies
import their own code and read their own dvc.yaml)."""
CODE_ROOTS = ("src/", "stages/")


def stage_code_files(stage: str, *, repo: Path = REPO) -> list[Path]:
    """Every code file among `stage`'s deps in `repo`/dvc.yaml (folders expanded), sorted."""
    pipeline = repo / "dvc.yaml"
    if not pipeline.is_file():
        raise DataError(f"{pipeline}: not found; the stage's code list lives in the repository's dvc.yaml")
    stages = (yaml.safe_load(pipeline.read_text()) or {}).get("stages", {})
    if stage not in stages:
        raise DataError(f"{pipeline}: no stage {stage!r}")
    files: set[Path] = set()
    for dep in stages[stage].get("deps", []):
        if str(dep).startswith(CODE_ROOTS):
            path = repo / str(dep)
            files.update(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts) \
                if path.is_dir() else files.add(path)
    return sorted(files)
