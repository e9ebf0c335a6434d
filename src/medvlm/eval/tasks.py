"""The three downstream test tasks every method is scored on, where their data and heads live, and the metrics
key of an attack radius. Kept free of torch and open_clip, so the report and the plots import it cheaply."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class TestTask:
    split: str
    """Cached-feature split (`data/features/<split>.safetensors`)."""
    manifest: str
    """Manifest kind whose `test` split holds the same rows, in the same order (image paths)."""
    head: str
    """Head that scores it; the out-of-domain set is scored with the in-domain head (same label set)."""


TEST_TASKS = {
    "cls_id": TestTask(split="cls_id_test", manifest="cls_id", head="cls_id"),
    "cls_ood": TestTask(split="cls_ood_test", manifest="cls_ood", head="cls_id"),
    "vqa": TestTask(split="vqa_test", manifest="vqa", head="vqa"),
}


def read_test_manifest(task_name: str, *, data: Path, data_root: Path, features: Path, n_rows: int) -> pd.DataFrame:
    """The manifest rows of a task's test split, checked to match its cached features row for row."""
    # Imported here: this module stays free of torch (which the manifest and io modules import) for the report.
    from medvlm.data.manifest import read_manifest  # noqa: PLC0415
    from medvlm.io import DataError  # noqa: PLC0415

    task = TEST_TASKS[task_name]
    frame = read_manifest(data, task.manifest, data_root, split="test")
    if len(frame) != n_rows:
        raise DataError(f"{data}: the {task.manifest} test split has {len(frame)} rows but {features}/{task.split}"
                        f".safetensors has {n_rows}; re-run features after download")
    return frame


def eps_key(eps_255: float) -> str:
    """Metrics key of a radius: 'eps_2', 'eps_0p5' (no dots, which `dvc metrics show` reads as nesting)."""
    return "eps_" + f"{eps_255:g}".replace(".", "p")
