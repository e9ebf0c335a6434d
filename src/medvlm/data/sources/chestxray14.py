"""NIH ChestX-ray14: frontal chest radiographs with up to nine of 14 findings each.

Layout: `Data_Entry_2017_v2020.csv` (or the older `Data_Entry_2017.csv`, whose lines end in a comma),
`train_val_list.txt`, `test_list.txt` (one image name per line: the official patient-level split) and the
PNGs in `images/` (NIH's tarballs) or `images_001/images/` ... (the Kaggle mirror).
train_val_list -> train, test_list -> test; images in neither list are left out.
`Finding Labels` joins findings with "|"; "No Finding" becomes "normal", "Effusion" "pleural effusion",
and the rest are lower-cased with "_" read as a space. An unknown finding name stops with its row.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd

from medvlm.data.sources.table import SourceTable, require_file, table
from medvlm.io import DataError
from medvlm.params import DataParams

ENTRY_FILES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
SPLIT_LISTS = {"train_val_list.txt": "train", "test_list.txt": "test"}
FINDINGS = {
    "No Finding": "normal", "Atelectasis": "atelectasis", "Cardiomegaly": "cardiomegaly",
    "Consolidation": "consolidation", "Edema": "edema", "Effusion": "pleural effusion",
    "Emphysema": "emphysema", "Fibrosis": "fibrosis", "Hernia": "hernia", "Infiltration": "infiltration",
    "Mass": "mass", "Nodule": "nodule", "Pleural_Thickening": "pleural thickening", "Pneumonia": "pneumonia",
    "Pneumothorax": "pneumothorax",
}


def _image_index(root: Path) -> dict[str, Path]:
    """Image file name -> path, over both published folder layouts."""
    files = [*root.glob("images/*.png"), *root.glob("images_*/images/*.png")]
    return {path.name: path for path in files}


def read(root: Path, kind: str, data: DataParams) -> SourceTable:
    entries = next((root / name for name in ENTRY_FILES if (root / name).is_file()), None)
    if entries is None:
        raise DataError(f"{root}: no ChestX-ray14 label file ({' or '.join(ENTRY_FILES)})")
    frame = pd.read_csv(entries, dtype=str, keep_default_na=False)
    missing = [c for c in ("Image Index", "Finding Labels") if c not in frame.columns]
    if missing:
        raise DataError(f"{entries}: lacks columns {missing}; found {list(frame.columns)[:6]}")
    split_of = {}
    for list_name, split in SPLIT_LISTS.items():
        listing = require_file(root / list_name, "ChestX-ray14 split list")
        split_of.update({name.strip(): split for name in listing.read_text().splitlines() if name.strip()})
    images = _image_index(root)
    rows, dropped = [], Counter()
    for number, (name, labels) in enumerate(zip(frame["Image Index"], frame["Finding Labels"]), start=2):
        unknown = [label for label in labels.split("|") if label not in FINDINGS]
        if unknown:
            raise DataError(f"{entries}, row {number}: unknown finding {unknown[0]!r}; known: {sorted(FINDINGS)}")
        if name not in split_of:
            dropped["in neither split list"] += 1
            continue
        rows.append({"id": name, "file": images.get(name, root / "images" / name), "split": split_of[name],
                     "origin": f"{entries}, row {number}",
                     "findings": tuple(FINDINGS[label] for label in labels.split("|"))})
    return table(rows, kind, dropped)
