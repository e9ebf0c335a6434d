"""CheXpert v1.0 (and CheXpert-v1.0-small): chest radiographs with 14 observations from report text.

Layout: `train.csv`, `valid.csv` and `train/`, `valid/` patient folders; `Path` values start with the
release's root folder (`CheXpert-v1.0-small/train/...`), which is dropped. train.csv -> train,
valid.csv -> test (the official test set is hidden). Only frontal views are kept.

Labels: the five competition findings (Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural Effusion).
Each is 1.0 (present), 0.0 (absent), -1.0 (uncertain) or blank (not mentioned, read as absent).
Uncertain labels follow `data.uncertain` (the paper's U-Ignore / U-Zeros / U-Ones):
- `exclude` (default): an image with any uncertain competition finding is left out (a single-label head
  has no way to ignore one label of an image);
- `negative`: uncertain reads as absent; `positive`: uncertain reads as present.
An image with no competition finding present is "normal" when `No Finding` is 1.0, and left out otherwise
(it shows only findings outside the five).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd

from medvlm.data.sources.table import SourceTable, inside, require_file, table
from medvlm.io import DataError
from medvlm.params import DataParams

CSV_SPLITS = {"train.csv": "train", "valid.csv": "test"}
COMPETITION = {"Atelectasis": "atelectasis", "Cardiomegaly": "cardiomegaly", "Consolidation": "consolidation",
               "Edema": "edema", "Pleural Effusion": "pleural effusion"}
VALUES = {"1.0": 1, "1": 1, "0.0": 0, "0": 0, "-1.0": -1, "-1": -1, "": 0}
UNCERTAIN = {"exclude": None, "negative": 0, "positive": 1}
"""What an uncertain (-1) label becomes under each `data.uncertain` policy; None: leave the image out."""


def read(root: Path, kind: str, data: DataParams) -> SourceTable:
    rows, dropped = [], Counter()
    for csv_name, split in CSV_SPLITS.items():
        path = require_file(root / csv_name, "CheXpert label file")
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        required = ["Path", "Frontal/Lateral", "No Finding", *COMPETITION]
        missing = [c for c in required if c not in frame.columns]
        if missing:
            raise DataError(f"{path}: lacks columns {missing}")
        for number, record in enumerate(frame.to_dict("records"), start=2):
            where = f"{path}, row {number}"
            if record["Frontal/Lateral"] != "Frontal":
                dropped["lateral view"] += 1
                continue
            states = {}
            for column, finding in COMPETITION.items():
                value = record[column].strip()
                if value not in VALUES:
                    raise DataError(f"{where}: column {column!r} has {value!r}; expected 1.0, 0.0, -1.0 or blank")
                states[finding] = UNCERTAIN[data.uncertain] if VALUES[value] == -1 else VALUES[value]
            if any(state is None for state in states.values()):
                dropped["uncertain finding (data.uncertain: exclude)"] += 1
                continue
            findings = tuple(finding for finding, state in states.items() if state == 1)
            if not findings:
                if VALUES.get(record["No Finding"].strip(), 0) != 1:
                    dropped["only findings outside the five"] += 1
                    continue
                findings = ("normal",)
            parts = Path(record["Path"]).parts
            relative = Path(*parts[1:]) if parts and parts[0].startswith("CheXpert-v1.0") else Path(record["Path"])
            rows.append({"id": record["Path"], "file": inside(root, str(relative), where), "split": split,
                         "origin": where, "findings": findings})
    return table(rows, kind, dropped)
