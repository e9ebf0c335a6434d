"""ROCO (razorx89/roco-dataset): radiology image-caption pairs for pre-training.

Layout (the repo's `data/` folder after `scripts/fetch.py`): `{train,validation,test}/radiology/`
with `captions.txt` (`ROCO_ID<TAB> caption`, one leading space) and `images/`. Images are named
`<ROCO_ID>.jpg`, or in copies fetched before 2022 `<PMCID>_<name>.jpg` as listed in `licences.txt`.
train -> train, validation -> val; the non-radiology folders and the test folder are not used.
"""

from __future__ import annotations

import csv
from pathlib import Path

from medvlm.data.sources.table import SourceTable, require_dir, require_file, table
from medvlm.io import DataError
from medvlm.params import DataParams

SPLIT_FOLDERS = {"train": "train", "validation": "val"}


def _older_names(folder: Path) -> dict[str, str]:
    """ROCO_ID -> image file name of copies fetched before the images were renamed to their ROCO_ID."""
    licences = folder / "licences.txt"
    if not licences.is_file():
        return {}
    with open(licences, newline="", encoding="utf-8") as handle:
        return {row["ROCO_ID"]: row["PMC_ID"] for row in csv.DictReader(handle) if row.get("ROCO_ID")}


def read(root: Path, kind: str, data: DataParams) -> SourceTable:
    rows = []
    for folder_name, split in SPLIT_FOLDERS.items():
        folder = require_dir(root / folder_name / "radiology", f"ROCO {folder_name} radiology folder")
        captions = require_file(folder / "captions.txt", "ROCO captions file")
        images = folder / "images"
        older = _older_names(folder)
        # Plain split on TAB: captions contain quote characters that a CSV reader would misparse.
        for number, line in enumerate(captions.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.split("\t", 1)
            if len(parts) != 2 or not parts[1].strip():
                raise DataError(f"{captions}, line {number}: expected 'ROCO_ID<TAB>caption', got {line[:80]!r}")
            roco_id, caption = parts[0].strip(), parts[1].strip()
            image = images / f"{roco_id}.jpg"
            if not image.exists() and roco_id in older:
                image = images / older[roco_id]
            rows.append({"id": roco_id, "file": image, "split": split, "origin": f"{captions}, line {number}",
                         "caption": caption})
    return table(rows, kind)
