"""A study folder: `runs/<run>/` with each run's params.yaml, rev.txt, metrics/**.json and per-item tables.

`save` writes it from a repository; `build` reads nothing else, so a committed study can be re-reported
without git history or the DVC cache.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from medvlm.io import read_items
from medvlm.report.collect import ReportError

RUNS_DIR = "runs"
CLEAN_ITEMS = "items/clean.parquet"
CLEAN = "clean"
"""The metric name of clean accuracy (items/clean.parquet's `correct`); robust metrics are eps columns."""


def robust_items(method: str) -> str:
    return f"items/robust/{method}.parquet"


def radius_of(metric: str) -> float:
    """'eps_0p5' -> 0.5 (the inverse of medvlm.tasks.eps_key)."""
    return float(metric[4:].replace("p", "."))


@dataclass(frozen=True, eq=False)
class StudyRun:
    name: str
    rev: str
    params: dict[str, Any]
    metrics: dict[str, Any]
    """Metrics file path (relative to the run folder, e.g. metrics/attack.json) -> its JSON content."""
    clean: pd.DataFrame
    robust: dict[str, pd.DataFrame]
    _scores: dict[tuple[str, str, str], pd.DataFrame] = field(default_factory=dict, repr=False)

    @property
    def seed(self) -> int:
        return int(self.params.get("seed", 0))

    @property
    def methods(self) -> list[str]:
        return list(self.params.get("heads", {}).get("methods") or self.robust)

    def main_eps(self) -> float | None:
        robust = self.params.get("evaluate", {}).get("robust", {})
        main = robust.get("main_eps_255", robust.get("check_eps_255"))  # older runs named it check_eps_255
        return None if main is None else float(main)

    def radii(self) -> list[str]:
        """The eps columns of every robust table, in a stable order."""
        columns = {column for table in self.robust.values() for column in table.columns if column.startswith("eps_")}
        return sorted(columns, key=radius_of)

    def scores(self, *, method: str, task: str, metric: str) -> pd.DataFrame:
        """Per-item correctness (float, indexed by item, with its group) of one method on one task: clean, or
        at one radius (`eps_2`), leaving out items that radius did not attack."""
        key = (method, task, metric)
        if key not in self._scores:
            if metric == CLEAN:
                table = self.clean[(self.clean["method"] == method) & (self.clean["task"] == task)]
                column = "correct"
            else:
                table = self.robust.get(method)
                if table is None or metric not in table.columns:
                    raise ReportError(f"run {self.name}: no robust items for {method} at {metric}")
                table = table[table["task"] == task]
                column = metric
            table = table[table[column].notna()]
            if table.empty:
                raise ReportError(f"run {self.name}: no items for {method} on {task} ({metric})")
            if table["item"].duplicated().any():
                raise ReportError(f"run {self.name}: duplicate item ids for {method} on {task} ({metric})")
            self._scores[key] = pd.DataFrame({"group": table["group"].astype(str).to_numpy(),
                                              "correct": table[column].astype(float).to_numpy()},
                                             index=table["item"].astype(str).to_numpy())
        return self._scores[key]


def _load_run(folder: Path) -> StudyRun:
    for required in ("params.yaml", "rev.txt", CLEAN_ITEMS):
        if not (folder / required).is_file():
            raise ReportError(f"{folder}: no {required} (write the run with `python -m medvlm.report save`)")
    params = yaml.safe_load((folder / "params.yaml").read_text()) or {}
    metrics = {}
    for path in sorted((folder / "metrics").rglob("*.json")):
        try:
            metrics[path.relative_to(folder).as_posix()] = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ReportError(f"{path}: not valid JSON ({exc})") from None
    robust = {path.stem: read_items(path) for path in sorted((folder / "items" / "robust").glob("*.parquet"))}
    return StudyRun(name=folder.name, rev=(folder / "rev.txt").read_text().strip(), params=params, metrics=metrics,
                    clean=read_items(folder / CLEAN_ITEMS), robust=robust)


def load_study(*, study: Path) -> list[StudyRun]:
    """Every run folder of the study, by name."""
    folder = Path(study) / RUNS_DIR
    runs = [_load_run(path) for path in sorted(folder.iterdir()) if path.is_dir() and not path.name.startswith(".")] \
        if folder.is_dir() else []
    if not runs:
        raise ReportError(f"{folder}: no runs (write them with `python -m medvlm.report save --study {study}`)")
    return runs
