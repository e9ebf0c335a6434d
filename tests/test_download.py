"""The download stage: manifests, images and meta.json under data/raw, reproducible and all-or-nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import medvlm.data.download as download_module
from medvlm.pipeline.download import download_stage
from medvlm.data.image_packs import read_pack
from medvlm.data.manifest import COLUMNS, load_images, read_manifest
from medvlm.data.synthetic_cases import LABELS
from medvlm.io import DataError, read_json
from medvlm.params import Params, parse_params

REPO = Path(__file__).resolve().parents[1]
SPLITS = {"pretrain": ("train", "val"), "cls_id": ("train", "test"), "cls_ood": ("test",), "vqa": ("train", "test")}


def tiny_params(seed: int = 0) -> Params:
    """Params with a handful of 32 px images per split."""
    data = dict(image_size=32, pretrain_train=16, pretrain_val=8, cls_train=12, cls_test=8, ood_test=8,
                vqa_train=10, vqa_test=8)
    return parse_params({"seed": seed, "data": data})


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_writes_readable_manifests_images_and_meta(tmp_path):
    params = tiny_params()
    out = tmp_path / "data" / "raw"
    meta = download_stage(params=params, out=out)
    data_root = tmp_path / "data"

    assert read_json(out / "meta.json") == meta
    assert meta["source"] == "synthetic" and meta["image_size"] == 32 and meta["labels"] == list(LABELS)
    data = params.data
    assert meta["counts"]["pretrain"] == {"train": data.pretrain_train, "val": data.pretrain_val}
    assert meta["counts"]["cls_ood"] == {"test": data.ood_test}
    for kind, splits in SPLITS.items():
        frame = read_manifest(out, kind, data_root)
        assert list(frame.columns[: len(COLUMNS[kind])]) == list(COLUMNS[kind])
        assert set(frame["split"]) == set(splits)
        assert frame["image"].str.startswith(f"raw/images/{kind}.safetensors#").all()  # one image pack per kind
        images = load_images(data_root, sorted(set(frame["image"])))
        assert images.shape[1:] == (32, 32) and images.dtype == torch.uint8
        for split in splits:
            assert frame.loc[frame["split"] == split, "image"].nunique() == meta["counts"][kind][split]
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(f"{kind}.safetensors" for kind in SPLITS)
    assert sum(len(read_pack(out / "images" / f"{kind}.safetensors")) for kind in SPLITS) == sum(
        sum(meta["counts"][k].values()) for k in SPLITS)

    pretrain = read_manifest(out, "pretrain", data_root)
    assert pretrain["id"].is_unique and set(pretrain["finding"]) <= set(LABELS)
    for kind in ("cls_id", "cls_ood"):
        assert set(read_manifest(out, kind, data_root)["label"]) <= set(LABELS)
    vqa = read_manifest(out, "vqa", data_root)
    assert vqa["id"].is_unique and set(vqa["answer_type"]) == {"closed", "open"}
    per_image = vqa.groupby("image").size()
    assert per_image.between(2, 4).all()
    assert meta["counts"]["vqa_questions"] == vqa.groupby("split").size().to_dict()


def test_same_params_give_byte_identical_outputs_and_another_seed_does_not(tmp_path):
    first = tmp_path / "a" / "raw"
    again = tmp_path / "b" / "raw"
    other = tmp_path / "c" / "raw"
    download_stage(params=tiny_params(seed=5), out=first)
    download_stage(params=tiny_params(seed=5), out=again)
    download_stage(params=tiny_params(seed=6), out=other)
    assert folder_bytes(first) == folder_bytes(again)
    changed = folder_bytes(other)
    for name in ("pretrain.csv", "cls_id.csv", "vqa.csv", "images/cls_ood.safetensors"):
        assert changed[name] != folder_bytes(first)[name], name


def test_splits_are_disjoint_in_the_written_files(tmp_path):
    out = tmp_path / "data" / "raw"
    download_stage(params=tiny_params(), out=out)
    images = np.concatenate([read_pack(path) for path in sorted((out / "images").glob("*.safetensors"))])
    assert len(np.unique(images.reshape(len(images), -1), axis=0)) == len(images)


def test_a_failure_midway_leaves_nothing_behind(tmp_path, monkeypatch):
    real_generate = download_module.generate_split
    calls = []

    def failing_generate(spec, seed, image_size):
        calls.append(spec.kind)
        if len(calls) == 3:  # two splits already written to the temporary folder
            raise RuntimeError("generator broke")
        yield from real_generate(spec, seed, image_size)

    monkeypatch.setattr(download_module, "generate_split", failing_generate)
    out = tmp_path / "data" / "raw"
    with pytest.raises(RuntimeError, match="generator broke"):
        download_stage(params=tiny_params(), out=out)
    assert len(calls) == 3
    assert list((tmp_path / "data").iterdir()) == []


def test_a_failed_rerun_keeps_the_previous_output(tmp_path, monkeypatch):
    out = tmp_path / "data" / "raw"
    download_stage(params=tiny_params(), out=out)
    before = folder_bytes(out)

    def broken_generate(spec, seed, image_size):
        raise RuntimeError("generator broke")
        yield  # a generator function, like the real one

    monkeypatch.setattr(download_module, "generate_split", broken_generate)
    with pytest.raises(RuntimeError):
        download_stage(params=tiny_params(seed=9), out=out)
    assert folder_bytes(out) == before
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["raw"]


def test_out_must_lie_inside_the_data_root(tmp_path):
    with pytest.raises(DataError, match="inside the data root"):
        download_stage(params=tiny_params(), out=tmp_path / "elsewhere" / "raw", data_root=tmp_path / "data")
    assert not (tmp_path / "elsewhere").exists()


def test_stage_script_runs_from_the_command_line(tmp_path):
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(tiny_params().model_dump(mode="json")))
    out = tmp_path / "data" / "raw"
    result = subprocess.run(
        [sys.executable, str(REPO / "stages" / "download.py"), "--params", str(params_file), "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "images/s" in result.stderr
    assert read_json(out / "meta.json")["image_size"] == 32
