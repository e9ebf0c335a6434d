"""The features stage on a tiny CLIP and tiny manifests built in tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medvlm.data.augment import ViewAugmentation
from medvlm.data.manifest import load_images, save_png, to_pixels, write_manifest
from medvlm.data.cached_features import TRAINING_SPLITS, VIEW_KEYS, load_feature_split
from medvlm.pipeline.features import features_stage
from medvlm.io import DataError, load_tensors, read_json, write_json
from medvlm.models.clip import load_clip
from medvlm.params import Params

IMAGE_SIZE = 32
LABELS = ["normal", "effusion", "nodule"]
SPLIT_FILES = ["cls_id_test", "cls_id_train", "cls_ood_test", "vqa_test", "vqa_train"]


def _images(data_root: Path, folder: str, count: int, rng: np.random.Generator) -> list[str]:
    paths = []
    for i in range(count):
        rel = f"raw/images/{folder}/{i:03d}.png"
        save_png(rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8), data_root / rel)
        paths.append(rel)
    return paths


def build_raw_data(data_root: Path, seed: int = 0) -> Path:
    """data_root/raw with meta.json and the cls_id, cls_ood and vqa manifests over random PNGs.
    VQA: every image has a closed and an open question; one test answer ("both") is not a train answer."""
    rng = np.random.default_rng(seed)
    raw = data_root / "raw"
    write_json(raw / "meta.json", {"source": "test", "image_size": IMAGE_SIZE, "labels": LABELS})
    cls_paths = _images(data_root, "cls_id", 10, rng)
    write_manifest(pd.DataFrame({"id": [f"c{i}" for i in range(10)], "image": cls_paths,
                                 "label": [LABELS[i % 3] for i in range(10)], "split": ["train"] * 6 + ["test"] * 4}),
                   raw, "cls_id")
    ood_paths = _images(data_root, "cls_ood", 3, rng)
    write_manifest(pd.DataFrame({"id": ["o0", "o1", "o2"], "image": ood_paths, "label": LABELS, "split": "test"}),
                   raw, "cls_ood")
    vqa_paths = _images(data_root, "vqa", 5, rng)
    rows = []
    for i, path in enumerate(vqa_paths):
        split = "train" if i < 3 else "test"
        side = "both" if i == 4 else ("left" if i % 2 else "right")
        rows.append((f"q{i}a", path, "Is there a pleural effusion?", "yes" if i % 2 else "no", "closed", split))
        rows.append((f"q{i}b", path, "Which side is the effusion on?", side, "open", split))
    write_manifest(pd.DataFrame(rows, columns=["id", "image", "question", "answer", "answer_type", "split"]), raw, "vqa")
    return raw


@pytest.fixture(scope="module")
def clip_dir(tiny_clip_dir) -> Path:
    assert IMAGE_SIZE == 32  # the shared tiny CLIP's image size
    return tiny_clip_dir


@pytest.fixture(scope="module")
def stage_run(tmp_path_factory, clip_dir) -> tuple[Path, Path]:
    """(data root, features folder) of one features-stage run, shared by the read-only tests below."""
    data_root = tmp_path_factory.mktemp("data")
    raw = build_raw_data(data_root)
    out = data_root / "features"
    features_stage(params=_params(), clip=clip_dir, data=raw, out=out, data_root=data_root)
    return data_root, out


def _params(batch_size: int = 4, seed: int = 0) -> Params:
    return Params.model_validate({"seed": seed, "device": "cpu", "features": {"batch_size": batch_size}})


def test_outputs_have_the_documented_shapes_and_meta(stage_run):
    _, out = stage_run
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{n}.safetensors" for n in SPLIT_FILES]
                                                          + ["meta.json", "feature_shift.json"])
    meta = read_json(out / "meta.json")
    dim = meta["dims"]["cls_id"]
    assert meta["labels"] == LABELS
    assert meta["answers"] == ["left", "no", "right", "yes"]  # sorted train answers; "both" is test-only
    assert meta["dims"] == {"cls_id": dim, "cls_ood": dim, "vqa": 3 * dim}
    assert meta["counts"] == {"cls_id_train": 6, "cls_id_test": 4, "cls_ood_test": 3, "vqa_train": 6, "vqa_test": 4}
    assert meta["vqa_test_out_of_vocab"] == 1
    for name in SPLIT_FILES:
        tensors = load_feature_split(out, name)
        assert tensors["x"].shape == (meta["counts"][name], meta["dims"][name.rsplit("_", 1)[0]])
        assert tensors["x"].dtype == torch.float32 and tensors["y"].dtype == torch.int64
        views = {key for key in tensors if key.startswith("x_view")}
        assert views == (set(VIEW_KEYS) if name in TRAINING_SPLITS else set()), name
        for key in views:
            assert tensors[key].shape == tensors["x"].shape and tensors[key].dtype == torch.float32
    assert load_tensors(out / "cls_id_train.safetensors")["y"].tolist() == [0, 1, 2, 0, 1, 2]
    assert load_tensors(out / "cls_ood_test.safetensors")["y"].tolist() == [0, 1, 2]
    vqa_test = load_tensors(out / "vqa_test.safetensors")
    # image 3: closed "yes" (3), open "left" (0); image 4: closed "no" (1), open "both" (out of vocabulary)
    assert vqa_test["y"].tolist() == [3, 0, 1, -1]
    assert vqa_test["closed"].dtype == torch.uint8 and vqa_test["closed"].tolist() == [1, 0, 1, 0]


def test_features_are_normalised_embeddings_of_their_own_rows(stage_run, clip_dir):
    data_root, out = stage_run
    clip = load_clip(clip_dir)
    cls = load_tensors(out / "cls_id_test.safetensors")["x"]
    torch.testing.assert_close(cls.norm(dim=1), torch.ones(len(cls)))
    manifest = pd.read_csv(data_root / "raw" / "cls_id.csv")
    test_paths = manifest[manifest["split"] == "test"]["image"].tolist()
    with torch.no_grad():
        expected = clip.encode_pixels(to_pixels(load_images(data_root, test_paths)))
    torch.testing.assert_close(cls, expected, atol=1e-5, rtol=1e-5)

    vqa = load_tensors(out / "vqa_train.safetensors")["x"]
    dim = vqa.shape[1] // 3
    image, question, product = vqa[:, :dim], vqa[:, dim:2 * dim], vqa[:, 2 * dim:]
    torch.testing.assert_close(image.norm(dim=1), torch.ones(len(vqa)))
    torch.testing.assert_close(question.norm(dim=1), torch.ones(len(vqa)))
    torch.testing.assert_close(product, image * question)
    # rows (q0a, q0b) share an image, rows (q0a, q1a) share a question
    torch.testing.assert_close(image[0], image[1])
    torch.testing.assert_close(question[0], question[2])
    assert not torch.allclose(image[0], image[2]) and not torch.allclose(question[0], question[1])
    with torch.no_grad():
        expected_question = clip.encode_texts(["Which side is the effusion on?"])[0]
    torch.testing.assert_close(question[1], expected_question, atol=1e-5, rtol=1e-5)


def test_views_are_embeddings_of_the_seeded_augmented_images(stage_run, clip_dir):
    data_root, out = stage_run
    clip = load_clip(clip_dir)
    manifest = pd.read_csv(data_root / "raw" / "cls_id.csv")
    train_paths = manifest[manifest["split"] == "train"]["image"].tolist()
    cls = load_tensors(out / "cls_id_train.safetensors")
    pixels = to_pixels(load_images(data_root, train_paths))
    for view, key in enumerate(VIEW_KEYS, start=1):
        augmented = ViewAugmentation(_params().features.augment, seed=0, view=view)(pixels, train_paths)
        with torch.no_grad():
            torch.testing.assert_close(cls[key], clip.encode_pixels(augmented), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(cls["x_view1"], cls["x"]) and not torch.allclose(cls["x_view1"], cls["x_view2"])

    # VQA views: the augmented image beside the very same question feature; rows sharing an image share its view.
    vqa = load_tensors(out / "vqa_train.safetensors")
    dim = vqa["x"].shape[1] // 3
    for key in VIEW_KEYS:
        image, question = vqa[key][:, :dim], vqa[key][:, dim:2 * dim]
        torch.testing.assert_close(question, vqa["x"][:, dim:2 * dim], rtol=0, atol=0)
        torch.testing.assert_close(vqa[key][:, 2 * dim:], image * question)
        torch.testing.assert_close(image[0], image[1])  # q0a and q0b ask about one image
        assert not torch.allclose(image, vqa["x"][:, :dim])


def test_views_follow_the_seed_param(stage_run, clip_dir, tmp_path):
    data_root, out = stage_run
    again = tmp_path / "features"
    features_stage(params=_params(seed=1), clip=clip_dir, data=data_root / "raw", out=again, data_root=data_root)
    first, second = load_tensors(out / "cls_id_train.safetensors"), load_tensors(again / "cls_id_train.safetensors")
    assert torch.equal(first["x"], second["x"])
    assert not torch.allclose(first["x_view1"], second["x_view1"])


def test_features_stage_is_deterministic_and_batch_size_independent(stage_run, clip_dir, tmp_path):
    data_root, out = stage_run
    again = tmp_path / "features"
    features_stage(params=_params(batch_size=3), clip=clip_dir, data=data_root / "raw", out=again, data_root=data_root)
    for name in SPLIT_FILES:
        first, second = load_tensors(out / f"{name}.safetensors"), load_tensors(again / f"{name}.safetensors")
        assert first.keys() == second.keys()
        for key in first:
            torch.testing.assert_close(first[key], second[key], atol=1e-6, rtol=0)
    assert read_json(out / "meta.json") == read_json(again / "meta.json")


def test_same_params_give_identical_files(stage_run, clip_dir, tmp_path):
    data_root, out = stage_run
    again = tmp_path / "features"
    features_stage(params=_params(), clip=clip_dir, data=data_root / "raw", out=again, data_root=data_root)
    for name in SPLIT_FILES:
        assert (out / f"{name}.safetensors").read_bytes() == (again / f"{name}.safetensors").read_bytes()


def test_unknown_label_names_the_row_and_writes_nothing(tmp_path, clip_dir):
    raw = build_raw_data(tmp_path)
    manifest = pd.read_csv(raw / "cls_ood.csv")
    manifest.loc[1, "label"] = "fracture"
    manifest.to_csv(raw / "cls_ood.csv", index=False)
    out = tmp_path / "features"
    with pytest.raises(DataError, match=r"cls_ood.csv: row with id 'o1' has label 'fracture'"):
        features_stage(params=_params(), clip=clip_dir, data=raw, out=out, data_root=tmp_path)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".features")]


def test_bad_answer_type_is_refused(tmp_path, clip_dir):
    raw = build_raw_data(tmp_path)
    manifest = pd.read_csv(raw / "vqa.csv")
    manifest.loc[0, "answer_type"] = "multiple"
    manifest.to_csv(raw / "vqa.csv", index=False)
    with pytest.raises(DataError, match=r"vqa.csv: row with id 'q0a' has answer_type 'multiple'"):
        features_stage(params=_params(), clip=clip_dir, data=raw, out=tmp_path / "features", data_root=tmp_path)


def test_the_feature_shift_is_measured_per_training_task(stage_run):
    _, out = stage_run
    shifts = read_json(out / "feature_shift.json")
    assert set(shifts) == {"cls_id", "vqa"}
    for task, shift in shifts.items():
        assert shift["n"] == {"cls_id": 6, "vqa": 6}[task]  # fewer training items than features.shift_images
        assert shift["eps_255"] == 1.0 and shift["steps"] == 10
        assert shift["adv_eps"] == shift["linf_ratio"]["median"] > 0
        assert shift["linf_ratio"]["p10"] <= shift["linf_ratio"]["median"] <= shift["linf_ratio"]["p90"]
        assert 0 < shift["rms_ratio"]["median"] <= shift["linf_ratio"]["median"]  # RMS never exceeds the max
        x = load_feature_split(out, f"{task}_train")["x"]
        assert shift["std_u"] == pytest.approx(float(x.std()))
