"""model.init: scratch, a local safetensors checkpoint (strict), pretrained tags; surrogate.epochs 0."""

from __future__ import annotations

import copy
import json
import logging

import pytest
import torch

from medvlm.pipeline.surrogate import surrogate_stage
from medvlm.io import DataError, load_tensors, read_json
from medvlm.models.clip import CONFIG_FILE, WEIGHTS_FILE, create_clip, load_clip, save_clip
from medvlm.models.pretrained import init_kind, initial_clip
from medvlm.params import ModelParams, ParamsError, parse_params
from test_clip_training import SIZE, build_pairs


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # DVCLive looks for a git/DVC repo around the working directory


def test_init_kinds_and_the_epochs_0_rule():
    assert [init_kind(v) for v in ("scratch", "openai", "hf-hub:org/model", "models/clip/model.safetensors")] == [
        "scratch", "tag", "hf-hub", "checkpoint"]
    with pytest.raises(ParamsError, match="surrogate.epochs: 0 keeps the initial model") as excinfo:
        parse_params({"surrogate": {"epochs": 0}})
    assert "model.init is 'scratch'" in str(excinfo.value)
    assert parse_params({"surrogate": {"epochs": 0}, "model": {"init": "w.safetensors"}}).surrogate.epochs == 0
    with pytest.raises(ParamsError, match="pretrain.epochs"):
        parse_params({"pretrain": {"epochs": 0}, "model": {"init": "w.safetensors"}})


def test_scratch_is_the_seeded_random_model():
    torch.manual_seed(3)
    expected = create_clip("medvlm-tiny-rn", SIZE).clip.state_dict()
    torch.manual_seed(3)
    got = initial_clip(ModelParams(), SIZE).clip.state_dict()
    assert all(torch.equal(expected[key], got[key]) for key in expected)
    with pytest.raises(ParamsError, match="model.name: unknown open_clip model config 'nope'"):
        initial_clip(ModelParams(name="nope"), SIZE)


def test_local_checkpoint_loads_strictly(tiny_clip_dir, tmp_path):
    checkpoint = tiny_clip_dir / WEIGHTS_FILE
    clip = initial_clip(ModelParams(name="medvlm-tiny-vit", init=str(checkpoint)), 32)
    saved = load_tensors(checkpoint)
    assert all(torch.equal(saved[key], value) for key, value in clip.clip.state_dict().items())
    with pytest.raises(DataError, match="does not fit model.name 'medvlm-tiny-rn'") as excinfo:
        initial_clip(ModelParams(name="medvlm-tiny-rn", init=str(checkpoint)), 32)
    assert str(checkpoint) in str(excinfo.value) and "Missing key" in str(excinfo.value)
    with pytest.raises(DataError, match="at 48 px: .*size mismatch"):
        initial_clip(ModelParams(name="medvlm-tiny-vit", init=str(checkpoint)), 48)  # another image size
    with pytest.raises(DataError, match="file not found"):
        initial_clip(ModelParams(name="medvlm-tiny-vit", init=str(tmp_path / "gone.safetensors")), 32)


def test_unknown_pretrained_tag_lists_the_known_ones():
    with pytest.raises(ParamsError, match="not a pretrained tag of model.name 'ViT-B-32'") as excinfo:
        initial_clip(ModelParams(name="ViT-B-32", init="no-such-tag"), 224)
    assert "openai" in str(excinfo.value)
    with pytest.raises(ParamsError, match="set model.name: ViT-B-16-quickgelu"):
        initial_clip(ModelParams(name="ViT-B-16", init="openai"), 224)


def test_saved_pixel_statistics_are_restored(tiny_clip_dir, tmp_path):
    folder = tmp_path / "clip"
    folder.mkdir()
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        (folder / name).write_bytes((tiny_clip_dir / name).read_bytes())
    config = read_json(folder / CONFIG_FILE)
    config["pixel_mean"], config["pixel_std"] = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    clip = load_clip(folder)
    assert torch.allclose(clip.pixel_mean.flatten(), torch.tensor([0.5] * 3))
    assert torch.allclose(clip.pixel_std.flatten(), torch.tensor([0.25] * 3))


def test_surrogate_epochs_0_keeps_the_initial_model(tiny_clip_dir, tmp_path):
    data_root = tmp_path / "data"
    build_pairs(data_root, "raw", meta={"source": "toy", "image_size": SIZE, "labels": []})
    checkpoint = str(tiny_clip_dir / WEIGHTS_FILE)
    params = parse_params({"device": "cpu", "model": {"name": "medvlm-tiny-vit", "init": checkpoint},
                           "surrogate": {"epochs": 0, "batch_size": 16}})
    paths = {"out": tmp_path / "surrogate", "live": tmp_path / "live", "metrics": tmp_path / "surrogate.json"}
    summary = surrogate_stage(params=params, data=data_root / "raw", data_root=data_root, **paths)
    assert summary["epochs"] == 0 and summary["init"] == checkpoint and summary["n_val"] == 16
    n_val = summary["n_val"]  # recall is a whole number of the val pairs
    assert all(v * n_val == pytest.approx(round(v * n_val)) for v in summary["retrieval"].values())
    assert read_json(paths["metrics"]) == summary
    kept = load_tensors(paths["out"] / WEIGHTS_FILE)
    initial = load_tensors(tiny_clip_dir / WEIGHTS_FILE)
    assert kept.keys() == initial.keys() and all(torch.equal(kept[k], initial[k]) for k in kept)
    assert (paths["live"] / "plots" / "metrics" / "val").is_dir()

    trained = copy.deepcopy(params.model_dump())
    trained["surrogate"]["epochs"] = 1
    trained_summary = surrogate_stage(params=parse_params(trained), data=data_root / "raw", data_root=data_root,
                                      out=tmp_path / "trained", live=tmp_path / "live2", metrics=tmp_path / "t.json")
    assert trained_summary["epochs"] == 1  # epochs >= 1: trained from the checkpoint, as before
    assert not all(torch.equal(v, initial[k]) for k, v in load_tensors(tmp_path / "trained" / WEIGHTS_FILE).items())


def test_creating_a_model_to_load_weights_into_does_not_warn_of_random_initialisation(caplog):
    # Every stage rebuilds its CLIP and then loads trained weights: open_clip's warning would mislead its log.
    with caplog.at_level(logging.WARNING):
        create_clip("medvlm-tiny-rn", image_size=32)
    assert not [record for record in caplog.records if "initialized randomly" in record.getMessage()]
    logging.getLogger().warning("No pretrained weights loaded for model 'x'. Model initialized randomly.")
    assert caplog.records  # the filter is gone once the model is built
