"""Sources for any other data set: a CSV file, or one folder per class.

`csv`: `path` is the CSV file. Columns: `image` (path relative to the CSV's folder; one that leaves the
folder is refused), `split` (train, val or test), an optional `id`, and the task's text:
`caption` (pretrain), `label` (cls_id, cls_ood), or `question`, `answer`, `answer_type` (closed|open; vqa).

`image_folder` (classification only): `path/<split>/<class>/<image>`, with split folders train, val or test
and one folder per class, named as the class; image files end in .png, .jpg, .jpeg, .dcm or .dicom.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from medvlm.data.sources.table import MANIFEST_SPLITS, TEXT_COLUMNS, SourceTable, inside, require_dir, table
from medvlm.io import DataError
from medvlm.params import DataParams

CSV_TEXT = {"pretrain": ("caption",), "cls_id": ("label",), "cls_ood": ("label",),
            "vqa": ("question", "answer", "answer_type")}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")


def read_csv(path: Path, kind: str, data: DataParams) -> SourceTable:
    if not path.is_file():
        raise DataError(f"{path}: CSV file not found")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: unreadable CSV ({exc})") from None
    required = ["image", "split", *CSV_TEXT[kind]]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: lacks columns {missing}; a {kind} CSV needs {required}")
    rows = []
    for number, record in enumerate(frame.to_dict("records"), start=2):  # row 1 is the header
        where = f"{path}, row {number}"
        split = record["split"].strip()
        if split not in MANIFEST_SPLITS:
            raise DataError(f"{where}: split {split!r}; allowed: {list(MANIFEST_SPLITS)}")
        texts = {column: record[column].strip() for column in CSV_TEXT[kind]}
        empty = [column for column, text in texts.items() if not text]
        if empty:
            raise DataError(f"{where}: empty {empty[0]!r}")
        if kind == "vqa" and texts["answer_type"] not in ("closed", "open"):
            raise DataError(f"{where}: answer_type {texts['answer_type']!r}; allowed: closed, open")
        if "label" in texts:
            texts = {"findings": (texts.pop("label"),)}
        rows.append({"id": record.get("id", "").strip() or str(number - 1),
                     "file": inside(path.parent, record["image"], where), "split": split, "origin": where,
                     **texts})
    return table(rows, kind)


def read_image_folder(root: Path, kind: str, data: DataParams) -> SourceTable:
    if TEXT_COLUMNS[kind] != ("findings",):
        raise DataError(f"source image_folder holds classification data only, not {kind}")
    require_dir(root, "image folder")
    rows = []
    for split in MANIFEST_SPLITS:
        for class_dir in sorted(p for p in (root / split).glob("*") if p.is_dir()):
            for file in sorted(class_dir.iterdir()):
                if file.suffix.lower() in IMAGE_SUFFIXES:
                    relative = file.relative_to(root).as_posix()
                    rows.append({"id": relative, "file": file, "split": split, "origin": str(file),
                                 "findings": (class_dir.name,)})
    if not rows:
        raise DataError(f"{root}: no images in {root}/<train|val|test>/<class>/ (suffixes {list(IMAGE_SUFFIXES)})")
    return table(rows, kind)
