"""What every adapter returns, and the checks they share (required files, paths that stay inside)."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from medvlm.io import DataError

TEXT_COLUMNS: dict[str, tuple[str, ...]] = {
    "pretrain": ("caption",),
    "cls_id": ("findings",),
    "cls_ood": ("findings",),
    "vqa": ("question", "answer", "answer_type"),
}
"""Columns an adapter fills per manifest kind, beside `id`, `file`, `split` and `origin`."""

MANIFEST_SPLITS = ("train", "val", "test")


@dataclass
class SourceTable:
    frame: pd.DataFrame
    """Columns: id, file (absolute path of the original image), split, origin ("file, row N" for messages),
    and the kind's TEXT_COLUMNS."""
    dropped: Counter = field(default_factory=Counter)
    """Rows the adapter left out, by reason (e.g. "lateral view")."""


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    return path


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{path}: {what} not found")
    return path


def inside(root: Path, relative: str, where: str) -> Path:
    """`root/relative`, refusing absolute paths and `..` that leave `root` (checked on the text, not through
    symlinks, so a copy whose image folder is a link to another disk still works)."""
    text = str(relative).strip()
    if not text or os.path.isabs(text) or os.path.normpath(text).split(os.sep)[0] == "..":
        raise DataError(f"{where}: image path {relative!r} is empty or points outside {root}")
    return root / os.path.normpath(text)


def table(rows: list[dict], kind: str, dropped: Counter | None = None) -> SourceTable:
    columns = ["id", "file", "split", "origin", *TEXT_COLUMNS[kind]]
    return SourceTable(pd.DataFrame(rows, columns=columns), dropped or Counter())
