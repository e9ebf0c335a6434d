"""Bad real data: each case stops with a message naming the file or row, and nothing is left in data/."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import real_fixtures as fx
from medvlm.pipeline.download import download_stage
from medvlm.io import DataError
from medvlm.params import parse_params

TINY = {key: 8 for key in ("pretrain_train", "pretrain_val", "cls_train", "cls_test", "ood_test", "vqa_train",
                           "vqa_test")}


def fails(tmp_path: Path, sources: dict, *fragments: str, **data) -> str:
    params = parse_params({"data": {"image_size": 16, "workers": 1, **TINY, **sources, **data}})
    with pytest.raises(DataError) as excinfo:
        download_stage(params=params, out=tmp_path / "data" / "raw", cache=tmp_path / "downloads")
    message = str(excinfo.value)
    for fragment in fragments:
        assert fragment in message, message
    data = tmp_path / "data"
    assert not data.exists() or not any(data.iterdir()), list(data.iterdir())  # nothing half-written
    return message


def both(source: str, path: Path, **extra) -> dict:
    settings = {"source": source, "path": str(path), **extra}
    return {"cls_id": settings, "cls_ood": settings}


def test_missing_folder_and_missing_file(tmp_path):
    fails(tmp_path, both("chestxray14", tmp_path / "nowhere"), "data.cls_id.path", "nowhere", "not found")
    nih = fx.chestxray14(tmp_path / "nih")
    (nih / "test_list.txt").unlink()
    fails(tmp_path, both("chestxray14", nih), "test_list.txt", "not found")
    roco = fx.roco(tmp_path / "roco")
    (roco / "validation" / "radiology" / "captions.txt").unlink()
    fails(tmp_path, {"pretrain": {"source": "roco", "path": str(roco)}}, "validation/radiology/captions.txt")


def test_missing_image_names_file_and_row_unless_skipped(tmp_path):
    nih = fx.chestxray14(tmp_path / "nih")
    (nih / "images_001" / "images" / "00001000_000.png").unlink()
    fails(tmp_path, both("chestxray14", nih), "Data_Entry_2017_v2020.csv, row 2", "00001000_000.png",
          "skip_missing", labels=["normal", "cardiomegaly", "pleural effusion"])
    meta = download_stage(params=parse_params({"data": {"image_size": 16, "workers": 1, **TINY,
                                                        "labels": ["normal", "cardiomegaly", "pleural effusion"],
                                                        **both("chestxray14", nih, skip_missing=True)}}),
                          out=tmp_path / "ok" / "raw")
    assert meta["real"]["cls_id"]["left_out"]["image file missing or empty"] == 1


def test_truncated_image_names_the_file(tmp_path):
    csv = fx.csv_source(tmp_path / "set", "cls_id")
    image = tmp_path / "set" / "images" / "cls_id_3.png"
    image.write_bytes(image.read_bytes()[:40])
    fails(tmp_path, both("csv", csv), "cls_id_3.png", "truncated")


def test_row_escaping_the_source_folder(tmp_path):
    csv = fx.csv_source(tmp_path / "set", "cls_id")
    shutil.copy(tmp_path / "set" / "images" / "cls_id_0.png", tmp_path / "outside.png")
    csv.write_text(csv.read_text().replace("images/cls_id_2.png", "../outside.png"))
    fails(tmp_path, both("csv", csv), "cls_id.csv, row 4", "'../outside.png'", "outside")
    csv.write_text(csv.read_text().replace("../outside.png", "/etc/hostname"))
    fails(tmp_path, both("csv", csv), "cls_id.csv, row 4", "/etc/hostname")


def test_empty_split_after_filtering(tmp_path):
    chexpert = fx.chexpert(tmp_path / "chexpert")
    valid = chexpert / "valid.csv"
    valid.write_text(valid.read_text().replace(",Frontal,", ",Lateral,"))
    fails(tmp_path, both("chexpert", chexpert), "split 'test' of cls_id (chexpert) is empty after filtering",
          "9 lateral view", str(chexpert))  # all 8 of valid.csv, 1 of train.csv


def test_unknown_labels(tmp_path):
    csv = fx.csv_source(tmp_path / "set", "cls_id")
    fails(tmp_path, both("csv", csv), "cls_id.csv, row 4", "unknown label 'effusion'", labels=["normal", "nodule"])
    nih = fx.chestxray14(tmp_path / "nih")
    entries = nih / "Data_Entry_2017_v2020.csv"
    entries.write_text(entries.read_text().replace("Effusion|Mass", "Effusion|Unicorn"))
    fails(tmp_path, both("chestxray14", nih), "Data_Entry_2017_v2020.csv, row 5", "unknown finding 'Unicorn'")
