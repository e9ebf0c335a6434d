"""VQA-RAD and SLAKE: medical visual question answering from their JSON files.

VQA-RAD, either layout:
- the OSF release: `VQA_RAD Dataset Public.json` and `VQA_RAD Image Folder/` (spaces in both names);
  records whose `phrase_type` contains "test" form the test split, the rest train;
- the MEVF re-pack used by most VQA code: `trainset.json`, `testset.json` and `images/`.
SLAKE 1.0: `train.json`, `validate.json` (or `validation.json`), `test.json` and `imgs/xmlab<N>/source.jpg`;
English questions only (`q_lang` "en").

Both: `answer_type` CLOSED/OPEN (stray spaces stripped) -> closed/open; answers are text (some VQA-RAD
answers are JSON numbers), stripped and lower-cased so "Yes" and "yes" are one answer.
"""

from __future__ import annotations

import json
from pathlib import Path

from medvlm.data.sources.table import SourceTable, inside, require_dir, require_file, table
from medvlm.io import DataError
from medvlm.params import DataParams

VQA_RAD_OSF_JSON = "VQA_RAD Dataset Public.json"
VQA_RAD_OSF_IMAGES = "VQA_RAD Image Folder"
VQA_RAD_MEVF = {"trainset.json": "train", "testset.json": "test"}
SLAKE_FILES = {"train.json": "train", "validate.json": "val", "validation.json": "val", "test.json": "test"}
ANSWER_TYPES = {"CLOSED": "closed", "OPEN": "open"}


def _records(path: Path) -> list[dict]:
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a JSON array of question records")
    return records


def _row(record: dict, *, path: Path, number: int, images: Path, image_key: str, split: str, qid: str) -> dict:
    where = f"{path}, record {number}"
    missing = [key for key in (image_key, "question", "answer", "answer_type") if key not in record]
    if missing:
        raise DataError(f"{where}: lacks keys {missing}")
    answer_type = str(record["answer_type"]).strip().upper()
    if answer_type not in ANSWER_TYPES:
        raise DataError(f"{where}: answer_type {record['answer_type']!r}; expected CLOSED or OPEN")
    question, answer = str(record["question"]).strip(), str(record["answer"]).strip().lower()
    if not question or not answer:
        raise DataError(f"{where}: empty question or answer")
    return {"id": qid, "file": inside(images, str(record[image_key]), where), "split": split, "origin": where,
            "question": question, "answer": answer, "answer_type": ANSWER_TYPES[answer_type]}


def read_vqa_rad(root: Path, kind: str, data: DataParams) -> SourceTable:
    rows = []
    if (root / VQA_RAD_OSF_JSON).is_file():
        path = root / VQA_RAD_OSF_JSON
        images = require_dir(root / VQA_RAD_OSF_IMAGES, "VQA-RAD image folder")
        for number, record in enumerate(_records(path)):
            split = "test" if "test" in str(record.get("phrase_type", "")) else "train"
            rows.append(_row(record, path=path, number=number, images=images, image_key="image_name", split=split,
                             qid=str(record.get("qid", number)).strip()))
    elif (root / "trainset.json").is_file():
        images = require_dir(root / "images", "VQA-RAD image folder")
        for name, split in VQA_RAD_MEVF.items():
            path = require_file(root / name, "VQA-RAD question file")
            # The re-pack numbers questions per file, so the split keeps ids unique.
            rows.extend(_row(record, path=path, number=number, images=images, image_key="image_name", split=split,
                             qid=f"{split}-{record.get('qid', number)}")
                        for number, record in enumerate(_records(path)))
    else:
        raise DataError(f"{root}: neither {VQA_RAD_OSF_JSON!r} (OSF release) nor trainset.json (MEVF re-pack) found")
    return table(rows, kind)


def read_slake(root: Path, kind: str, data: DataParams) -> SourceTable:
    images = require_dir(root / "imgs", "SLAKE image folder")
    rows = []
    found = [name for name in SLAKE_FILES if (root / name).is_file()]
    for required in ("train.json", "test.json"):
        if required not in found:
            raise DataError(f"{root / required}: SLAKE question file not found")
    for name in found:
        path = root / name
        rows.extend(_row(record, path=path, number=number, images=images, image_key="img_name",
                         split=SLAKE_FILES[name], qid=str(record.get("qid", f"{name}-{number}")))
                    for number, record in enumerate(_records(path)) if record.get("q_lang") == "en")
    return table(rows, kind)
