"""Real data set adapters: fixtures in each data set's own layout, through the download stage to manifests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import real_fixtures as fx
from medvlm.pipeline.download import download_stage
from medvlm.data.manifest import COLUMNS, load_images, read_manifest
from medvlm.io import DataError, read_json
from medvlm.params import parse_params

SPLITS = {"pretrain": {"train", "val"}, "cls_id": {"train", "test"}, "cls_ood": {"test"}, "vqa": {"train", "test"}}


SYNTHETIC_TINY = {key: 8 for key in ("pretrain_train", "pretrain_val", "cls_train", "cls_test", "ood_test",
                                      "vqa_train", "vqa_test")}


def params_for(sources: dict, **data):
    return parse_params({"seed": 0, "data": {"image_size": 16, "workers": 1, **SYNTHETIC_TINY, **sources, **data}})


def run(tmp_path: Path, params) -> tuple[dict, Path]:
    out = tmp_path / "data" / "raw"
    meta = download_stage(params=params, out=out, cache=tmp_path / "downloads")
    return meta, out


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sets")
    return {"roco": fx.roco(root / "roco" / "data"), "chestxray14": fx.chestxray14(root / "nih"),
            "chexpert": fx.chexpert(root / "chexpert"), "vqa_rad": fx.vqa_rad(root / "vqa_rad"),
            "slake": fx.slake(root / "Slake1.0"), "image_folder": fx.image_folder(root / "folders"),
            **{f"csv_{kind}": fx.csv_source(root / "csv", kind) for kind in SPLITS}}


def test_roco_chestxray14_chexpert_vqa_rad(tmp_path, sets):
    labels = ["normal", "cardiomegaly", "pleural effusion"]
    params = params_for({"pretrain": {"source": "roco", "path": str(sets["roco"])},
                         "cls_id": {"source": "chestxray14", "path": str(sets["chestxray14"])},
                         "cls_ood": {"source": "chexpert", "path": str(sets["chexpert"])},
                         "vqa": {"source": "vqa_rad", "path": str(sets["vqa_rad"])}}, labels=labels)
    meta, out = run(tmp_path, params)
    data_root = out.parent
    assert meta["labels"] == labels and meta["source"]["cls_ood"] == "chexpert"
    for kind, splits in SPLITS.items():
        frame = read_manifest(out, kind, data_root)
        assert list(frame.columns) == list(COLUMNS[kind]) and set(frame["split"]) == splits, kind
        images = load_images(data_root, list(frame["image"]))
        assert images.shape[1:] == (16, 16) and images.dtype == torch.uint8

    roco = read_manifest(out, "pretrain", data_root)
    assert len(roco) == 12 and roco["caption"].str.startswith("CT of the \"chest\"").all()  # leading space gone
    assert set(roco.loc[roco["split"] == "val", "id"]) == {f"ROCO_{i:05d}" for i in range(100, 106)}

    nih = read_manifest(out, "cls_id", data_root)
    # Single-finding policy: Effusion|Mass and Cardiomegaly|Effusion go, Pleural_Thickening is not a chosen class.
    assert dict(zip(nih["id"], nih["label"])) == {
        "00001000_000.png": "normal", "00001001_000.png": "pleural effusion", "00001002_000.png": "cardiomegaly",
        "00001004_000.png": "normal", "00001005_000.png": "cardiomegaly", "00001006_000.png": "pleural effusion",
        "00001008_000.png": "normal", "00001010_000.png": "pleural effusion", "00001011_000.png": "cardiomegaly"}
    assert set(nih.loc[nih["split"] == "test", "id"]) == {"00001008_000.png", "00001010_000.png", "00001011_000.png"}
    left_out = meta["real"]["cls_id"]["left_out"]
    assert left_out == {"several findings (data.multi_finding: single)": 2, "finding not among data.labels": 1}

    chexpert = read_manifest(out, "cls_ood", data_root)  # valid.csv -> test; frontal, no uncertain finding
    assert list(chexpert["label"]) == ["normal", "cardiomegaly", "pleural effusion", "normal"]
    assert chexpert["id"].str.startswith("CheXpert-v1.0-small/valid/").all()
    assert meta["real"]["cls_ood"]["left_out"]["lateral view"] == 2  # one per CSV

    vqa = read_manifest(out, "vqa", data_root)
    assert len(vqa) == 10 and set(vqa["answer_type"]) == {"closed", "open"}
    assert {"yes", "no", "3", "left"} == set(vqa["answer"]) and (vqa["split"] == "test").sum() == 3
    assert vqa["question"].str.startswith("Is there").all()
    assert meta["counts"]["vqa"] == {"test": 3, "train": 4} and meta["counts"]["vqa_questions"] == {"test": 3, "train": 7}


def test_csv_image_folder_slake_and_priority_policy(tmp_path, sets):
    params = params_for({"pretrain": {"source": "csv", "path": str(sets["csv_pretrain"])},
                         "cls_id": {"source": "image_folder", "path": str(sets["image_folder"])},
                         "cls_ood": {"source": "csv", "path": str(sets["csv_cls_ood"])},
                         "vqa": {"source": "slake", "path": str(sets["slake"])}}, resize="pad")
    meta, out = run(tmp_path, params)
    assert meta["labels"] == ["effusion", "normal"]  # taken from cls_id
    assert set(read_manifest(out, "cls_id", out.parent)["label"]) == {"effusion", "normal"}
    vqa = read_manifest(out, "vqa", out.parent)
    assert vqa["question"].str.startswith("Which organ").all() and len(vqa) == 8  # English only; val not used
    assert set(vqa["answer"]) == {"yes", "left lung"}

    # Priority: a multi-finding image takes the first of data.labels it shows.
    nih = {"source": "chestxray14", "path": str(sets["chestxray14"])}
    priority = params_for({"cls_id": nih, "cls_ood": nih},
                          labels=["pleural effusion", "cardiomegaly", "normal", "nodule", "consolidation",
                                  "pneumothorax"], multi_finding="priority")
    meta, out = run(tmp_path / "priority", priority)
    nih = read_manifest(out, "cls_id", out.parent)
    labels = dict(zip(nih["id"], nih["label"]))
    assert labels["00001003_000.png"] == "pleural effusion" and labels["00001009_000.png"] == "pleural effusion"
    assert "00001007_000.png" not in labels  # pleural thickening is not among the labels
    assert meta["source"]["pretrain"] == "synthetic"


def test_uncertain_policy_and_subsample(tmp_path, sets):
    base = {"cls_id": {"source": "chexpert", "path": str(sets["chexpert"])},
            "cls_ood": {"source": "chexpert", "path": str(sets["chexpert"])}}
    labels = ["normal", "cardiomegaly", "pleural effusion"]
    counts = {}
    for policy in ("exclude", "negative", "positive"):
        meta, out = run(tmp_path / policy, params_for(base, labels=labels, uncertain=policy))
        frame = read_manifest(out, "cls_id", out.parent)
        counts[policy] = sorted(frame.loc[frame["split"] == "train", "label"])
    # The -1.0 Cardiomegaly + 1.0 Effusion image: left out / an effusion / two findings (left out by "single").
    assert counts["exclude"] == ["cardiomegaly", "normal", "normal", "pleural effusion"]
    assert counts["negative"] == ["cardiomegaly", "normal", "normal", "pleural effusion", "pleural effusion"]
    assert counts["positive"] == counts["exclude"]

    limited = {**base, "cls_id": {**base["cls_id"], "max_per_split": 2}}
    _, first = run(tmp_path / "a", params_for(limited, labels=labels))
    _, again = run(tmp_path / "b", params_for(limited, labels=labels))
    frame = read_manifest(first, "cls_id", first.parent)
    assert frame.groupby("split").size().to_dict() == {"test": 2, "train": 2}
    assert frame.equals(read_manifest(again, "cls_id", again.parent))


def test_parallel_decoding_matches_one_worker(tmp_path, sets):
    nih = {"source": "chestxray14", "path": str(sets["chestxray14"])}
    sources = {"cls_id": nih, "cls_ood": nih}
    _, one = run(tmp_path / "one", params_for(sources, labels=["normal", "cardiomegaly", "pleural effusion"]))
    _, two = run(tmp_path / "two", params_for(sources, labels=["normal", "cardiomegaly", "pleural effusion"], workers=2))
    files = sorted(p.relative_to(one).as_posix() for p in (one / "images").rglob("*.safetensors"))
    assert files and all((one / f).read_bytes() == (two / f).read_bytes() for f in files)
    assert read_json(one / "meta.json")["counts"] == read_json(two / "meta.json")["counts"]


def test_vqa_rad_mevf_layout_and_dicom_in_an_image_folder(tmp_path):
    import json

    import numpy as np
    from test_images import write_dicom

    root = tmp_path / "data_RAD"
    records = {"trainset.json": [], "testset.json": []}
    for name, split_records in records.items():
        for qid in range(3):  # the re-pack numbers each file from 0, and has int answers
            split_records.append({"qid": qid, "image_name": f"synpic{qid}.jpg", "image_organ": "CHEST",
                                  "answer": 2 if qid == 0 else "Yes", "answer_type": "CLOSED" if qid else "OPEN",
                                  "question_type": "COUNT", "question": f"How many {qid}?", "phrase_type": "freeform"})
            fx.image(root / "images" / f"synpic{qid}.jpg", qid)
        (root / name).write_text(json.dumps(split_records))
    folders = fx.image_folder(tmp_path / "folders")
    write_dicom(folders / "test" / "normal" / "scan.dcm", np.full((12, 12), 700, dtype=np.uint16))
    params = params_for({"vqa": {"source": "vqa_rad", "path": str(root)},
                         "cls_id": {"source": "image_folder", "path": str(folders)},
                         "cls_ood": {"source": "image_folder", "path": str(folders)}})
    meta, out = run(tmp_path, params)
    vqa = read_manifest(out, "vqa", out.parent)
    assert sorted(vqa["id"]) == ["test-0", "test-1", "test-2", "train-0", "train-1", "train-2"]
    assert set(vqa["answer"]) == {"2", "yes"}
    assert meta["counts"]["cls_id"] == {"test": 5, "train": 4}  # the DICOM is one more test image
