"""Single labels for the classification heads, from images that may show several findings.

The heads are single-label (one class per image), while ChestX-ray14 and CheXpert list every finding an
image shows. `data.multi_finding` decides:
- `single` (default): keep images with exactly one finding, or none ("normal"); leave multi-finding
  images out, so no image is labelled with one of its findings while showing another;
- `priority`: label an image with the first class of `data.labels` it shows (the order of `labels` is the
  priority), keeping multi-finding images.
Then, when `data.labels` is set, images whose label is not among them are left out (for these sources a
finding outside the chosen classes is expected). Single-label sources (csv, image_folder, synthetic) must
use only known labels: an unknown one stops with its file and row.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import pandas as pd

from medvlm.io import DataError


def multi_finding_labels(frame: pd.DataFrame, *, policy: str, labels: Sequence[str]) -> tuple[pd.DataFrame, Counter]:
    """`frame` with a `label` column from its `findings`, rows without a usable label left out."""
    dropped: Counter = Counter()
    chosen = []
    for findings in frame["findings"]:
        if policy == "priority":
            label = next((name for name in labels if name in findings), None)
            if label is None:
                dropped["no finding among data.labels"] += 1
        elif len(findings) != 1:
            label = None
            dropped["several findings (data.multi_finding: single)"] += 1
        else:
            label = findings[0]
            if labels and label not in labels:
                label = None
                dropped["finding not among data.labels"] += 1
        chosen.append(label)
    frame = frame.assign(label=chosen)
    return frame[frame["label"].notna()].reset_index(drop=True), dropped


def single_labels(frame: pd.DataFrame, *, labels: Sequence[str]) -> pd.DataFrame:
    """`frame` with a `label` column; every label must be one of `labels` (when given)."""
    frame = frame.assign(label=[findings[0] for findings in frame["findings"]])
    if labels:
        unknown = frame[~frame["label"].isin(labels)]
        if not unknown.empty:
            row = unknown.iloc[0]
            raise DataError(f"{row['origin']}: unknown label {row['label']!r}; data.labels allows {list(labels)}")
    return frame
