"""`save`: copy finished runs into a study folder, one `runs/<run>/` each, written atomically.

Params come from the run's commit (git). The metrics files (those its dvc.lock lists under metrics/) and the
per-item tables are read through DVC at that commit: metrics/headline.json from git, the rest from the cache.
The folder accumulates: a run whose commit is already saved is skipped, so a sweep can be collected over
several queue runs.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import yaml

from medvlm.io import atomic_dir, write_items
from medvlm.report.collect import EVALUATE_METRICS, ReportError, RunRef, git_files, git_show
from medvlm.report.study import CLEAN_ITEMS, RUNS_DIR, robust_items
from medvlm.runtime import log


def _compact(table: pd.DataFrame) -> pd.DataFrame:
    """Repeated strings as categories and small integers: a study folder is committed, so it should be small."""
    table = table.copy()
    for column in ("method", "task", "group"):
        if column in table:
            table[column] = table[column].astype("category")
    for column in ("label", "prediction"):
        if column in table:
            table[column] = table[column].astype("int32")
    return table


def _read_at(repo: Path, run: RunRef, path: str) -> bytes:
    """The bytes of `path` at the run's commit, from git or (an output DVC caches) from the DVC cache."""
    import dvc.api  # noqa: PLC0415  (slow to import; only `save` needs it)
    from dvc.exceptions import DvcException  # noqa: PLC0415

    try:
        return dvc.api.read(path, repo=str(repo), rev=run.rev, mode="rb")
    except (DvcException, OSError) as exc:
        raise ReportError(f"run {run.name} ({run.rev[:7]}): cannot read {path} at its commit "
                          f"({type(exc).__name__}: {exc}); re-run the experiment or pull its outputs") from None


def _cached_table(repo: Path, run: RunRef, path: str) -> pd.DataFrame:
    try:
        return pd.read_parquet(io.BytesIO(_read_at(repo, run, path)))
    except ValueError as exc:
        raise ReportError(f"run {run.name} ({run.rev[:7]}): {path} is not a parquet table ({exc})") from None


def _metrics_files(repo: Path, run: RunRef) -> list[str]:
    """The JSON files under metrics/ at the run's commit: those in git (the headline; every one in runs made
    before the details became DVC-cached outputs) and the outputs its dvc.lock records there."""
    lock = yaml.safe_load(git_show(repo, run.rev, "dvc.lock") or "") or {}
    outputs = {out["path"] for stage in (lock.get("stages") or {}).values() for out in stage.get("outs", [])}
    return sorted(path for path in outputs | set(git_files(repo, run.rev, "metrics"))
                  if path.startswith("metrics/") and path.endswith(".json"))


def _write_run(repo: Path, run: RunRef, folder: Path) -> None:
    params_text = git_show(repo, run.rev, "params.yaml")
    if params_text is None:
        raise ReportError(f"run {run.name} ({run.rev[:7]}) has no params.yaml")
    (folder / "params.yaml").write_text(params_text)
    (folder / "rev.txt").write_text(run.rev + "\n")
    metrics = _metrics_files(repo, run)
    if EVALUATE_METRICS not in metrics:
        raise ReportError(f"run {run.name} ({run.rev[:7]}) has no {EVALUATE_METRICS}")
    for path in metrics:
        text = _read_at(repo, run, path).decode()
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            raise ReportError(f"run {run.name} ({run.rev[:7]}): {path} is not valid JSON ({exc})") from None
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_text(text)
    methods = (yaml.safe_load(params_text) or {}).get("heads", {}).get("methods") or []
    for path in (CLEAN_ITEMS, *(robust_items(method) for method in methods)):
        write_items(folder / path, _compact(_cached_table(repo, run, path)))


def _saved_revs(runs_dir: Path) -> dict[str, str]:
    """Commit sha -> run folder name of the runs already in the study."""
    return {(path / "rev.txt").read_text().strip(): path.name
            for path in runs_dir.glob("*") if (path / "rev.txt").is_file() and not path.name.startswith(".")}


def save_runs(*, repo: Path, study: Path, runs: Sequence[RunRef]) -> list[Path]:
    """Write each run not yet in the study to `study/runs/<run>/`; return the folders written."""
    runs_dir = Path(study) / RUNS_DIR
    saved = _saved_revs(runs_dir) if runs_dir.is_dir() else {}
    written = []
    for run in runs:
        if run.rev in saved:
            log.info("%s (%s) is already in %s as %s: skipped", run.name, run.rev[:7], study, saved[run.rev])
            continue
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", run.name).strip("-.") or run.rev[:7]
        if (runs_dir / name).exists() or name in saved.values():  # the name is taken by another commit's run
            name = f"{name}-{run.rev[:7]}"
        with atomic_dir(runs_dir / name) as folder:
            _write_run(repo, run, folder)
        saved[run.rev] = name
        written.append(runs_dir / name)
    return written
