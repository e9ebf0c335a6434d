"""Contrastive CLIP training (surrogate/pretrain stages), in-memory pairs and retrieval recall."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from dvclive import Live
from typer.testing import CliRunner

from medvlm.data.manifest import save_png, write_manifest
from medvlm.data.pairs import load_pairs, pairs_image_size
from medvlm.engine import clip_training
from medvlm.engine.clip_training import (
    build_optimizer,
    build_scheduler,
    epoch_batches,
    steps_per_epoch,
    train_clip,
)
from medvlm.eval.retrieval import chance_recall, retrieval_recall
from medvlm.pipeline.pretrain import pretrain_stage
from medvlm.pipeline.surrogate import surrogate_stage
from medvlm.io import DataError, load_tensors, read_json
from medvlm.models.clip import WEIGHTS_FILE, create_clip, load_clip
from medvlm.params import Params, TrainParams, parse_params
from medvlm.runtime import TrainingError, seed_everything
from stage_scripts import stage_app

REPO = Path(__file__).resolve().parents[1]
SIZE = 32
METRIC_KEYS = {"retrieval", "chance", "final_train_loss", "n_train", "n_train_perturbed", "n_val", "epochs"}


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    # DVCLive inspects the git/DVC repo around the working directory (and fails in a repo with no commits:
    # treeverse/dvclive#522); tests run from their own temporary folder so the checkout never matters.
    monkeypatch.chdir(tmp_path)
    # 32 px models are too small to gain from a second thread, and one thread cannot be slowed down by
    # oversubscription when other processes share the two cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- tiny data: a learnable toy
ROWS, COLUMNS = ("upper", "middle", "lower"), ("left", "central", "right")


def _toy_image(rng: np.random.Generator, row: int, column: int) -> np.ndarray:
    """Dark noisy square with one bright blob in one cell of a 3×3 grid."""
    image = rng.normal(40, 8, size=(SIZE, SIZE)).clip(0, 255)
    top, left = 2 + row * 10, 2 + column * 10
    image[top:top + 8, left:left + 8] = 220
    return image.astype(np.uint8)


def build_pairs(root: Path, folder: str, n_train: int = 32, n_val: int = 16, *, seed: int = 0,
                perturbed: list[bool] | list[int] | None = None, meta: dict | None = None) -> Path:
    """Write `<root>/<folder>/pretrain.csv` + PNGs; the caption says in which grid cell the blob is."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_train + n_val):
        row, column = divmod(i % 9, 3)
        rel = f"{folder}/images/pretrain/{i:04d}.png"
        save_png(_toy_image(rng, row, column), root / rel)
        caption = f"bright spot in the {ROWS[row]} {COLUMNS[column]} field"
        rows.append({"id": f"{i:04d}", "image": rel, "caption": caption, "split": "train" if i < n_train else "val"})
    frame = pd.DataFrame(rows)
    if perturbed is not None:
        frame["perturbed"] = perturbed
    write_manifest(frame, root / folder, "pretrain")
    if meta is not None:
        (root / folder / "meta.json").write_text(json.dumps(meta))
    return root / folder


def tiny_params(**train: object) -> Params:
    section = {"epochs": 2, "batch_size": 16, "lr": 1e-3, "warmup_steps": 2, **train}
    return parse_params({"seed": 0, "device": "cpu", "data": {"image_size": SIZE},
                         "surrogate": section, "pretrain": section})


def run_surrogate(tmp_path: Path, name: str, params: Params | None = None) -> dict[str, Path]:
    data_root = tmp_path / "data"
    if not (data_root / "raw" / "pretrain.csv").exists():
        build_pairs(data_root, "raw", meta={"source": "toy", "image_size": SIZE, "labels": []})
    paths = {"out": tmp_path / name / "model", "live": tmp_path / name / "live",
             "metrics": tmp_path / name / "metrics.json"}
    surrogate_stage(params=params or tiny_params(), data=data_root / "raw", data_root=data_root, **paths)
    return paths


# ---------------------------------------------------------------- retrieval recall
def test_recall_perfect_and_reversed_matches():
    n = 8
    eye = torch.eye(n)
    assert retrieval_recall(eye, eye) == {"i2t_r1": 1.0, "i2t_r5": 1.0, "t2i_r1": 1.0, "t2i_r5": 1.0}
    # Every text points away from its own image: the match scores -1, all others 0, so it ranks last.
    assert retrieval_recall(eye, -eye) == {"i2t_r1": 0.0, "i2t_r5": 0.0, "t2i_r1": 0.0, "t2i_r5": 0.0}
    assert retrieval_recall(eye, -eye, ks=(8,)) == {"i2t_r8": 1.0, "t2i_r8": 1.0}


def test_recall_matches_hand_computed_case():
    def unit(degrees: list[float]) -> torch.Tensor:
        radians = torch.tensor(degrees) * math.pi / 180
        return torch.stack([radians.cos(), radians.sin()], dim=1)

    images, texts = unit([0, 90, 180]), unit([10, 130, 100])
    # i2t: image0 ranks text0 first; image1 ranks text2 (10°) above text1 (40°); image2 ranks text1 above text2.
    # t2i: text0 -> image0 first; text1 -> image1 (40°) first; text2 -> image1 (10°) above image2 (80°).
    recall = retrieval_recall(images, texts, ks=(1, 2), chunk_size=2)
    assert recall == pytest.approx({"i2t_r1": 1 / 3, "i2t_r2": 1.0, "t2i_r1": 2 / 3, "t2i_r2": 1.0})


def test_recall_chunking_agrees_with_full_ranking():
    generator = torch.Generator().manual_seed(1)
    images = torch.nn.functional.normalize(torch.randn(50, 16, generator=generator), dim=1)
    texts = torch.nn.functional.normalize(images + 0.8 * torch.randn(50, 16, generator=generator), dim=1)
    full_scores = images @ texts.T
    own_rank = (full_scores > full_scores.diag().unsqueeze(1)).sum(1)  # no ties in random floats
    expected_r5 = (own_rank < 5).float().mean().item()
    chunked = retrieval_recall(images, texts, chunk_size=7)
    assert chunked == retrieval_recall(images, texts, chunk_size=1000)
    assert chunked["i2t_r5"] == pytest.approx(expected_r5)
    assert 0 < chunked["i2t_r1"] < chunked["i2t_r5"] < 1


def test_ties_are_broken_at_random_in_expectation():
    same = torch.nn.functional.normalize(torch.ones(6, 4), dim=1)
    collapsed = retrieval_recall(same, same)  # a collapsed model ranks at exactly chance level
    assert collapsed == pytest.approx({"i2t_r1": 1 / 6, "i2t_r5": 5 / 6, "t2i_r1": 1 / 6, "t2i_r5": 5 / 6})
    images = torch.eye(3)
    texts = torch.stack([images[0], images[0], images[2]])  # captions 0 and 1 are identical
    recall = retrieval_recall(images, texts, ks=(1,))
    # image0: its text ties with text1 -> 1/2; image1 is orthogonal to every text, a three-way tie -> 1/3;
    # image2: a clear hit.
    assert recall["i2t_r1"] == pytest.approx((1 / 2 + 1 / 3 + 1) / 3)
    # text0 -> image0 first; text1 (= image0's direction) -> image0 above image1 -> miss; text2 -> hit.
    assert recall["t2i_r1"] == pytest.approx(2 / 3)


def test_chance_is_k_over_n_and_shapes_are_checked():
    assert chance_recall(10) == {"r1": 0.1, "r5": 0.5}
    assert chance_recall(3) == {"r1": pytest.approx(1 / 3), "r5": 1.0}
    with pytest.raises(ValueError, match="equal shape"):
        retrieval_recall(torch.eye(4), torch.eye(5))


# ---------------------------------------------------------------- optimiser, schedule, batching
def test_weight_decay_skips_biases_norms_embeddings_and_logit_scale():
    clip = create_clip("medvlm-tiny-vit", image_size=SIZE)
    optimizer = build_optimizer(clip, TrainParams(epochs=1, weight_decay=0.1))
    names = {id(p): n for n, p in clip.named_parameters()}
    no_decay, decay = ({names[id(p)] for p in group["params"]} for group in optimizer.param_groups)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.0, 0.1]
    assert {"clip.logit_scale", "clip.token_embedding.weight", "clip.positional_embedding",
            "clip.visual.class_embedding", "clip.ln_final.weight", "clip.visual.ln_pre.bias"} <= no_decay
    assert {"clip.text_projection", "clip.visual.proj", "clip.visual.conv1.weight"} <= decay
    assert all("bias" not in n and "ln_" not in n for n in decay)
    assert len(no_decay) + len(decay) == len(names)


def test_schedule_warms_up_linearly_then_decays_by_cosine():
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(optimizer, warmup_steps=4, total_steps=12)
    lrs = []
    for _ in range(12):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4] == pytest.approx(1.0)
    assert all(a > b for a, b in zip(lrs[4:], lrs[5:]))
    assert lrs[8] == pytest.approx(0.5)  # cosine half-way through its 8 steps
    assert 0 < lrs[-1] < 0.05


def test_schedule_with_warmup_longer_than_training_still_runs():
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(optimizer, warmup_steps=50, total_steps=3)
    lrs = []
    for _ in range(3):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([0.5, 1.0, 1.0])


def test_batches_cover_pairs_once_and_drop_a_single_leftover():
    batches = epoch_batches(33, 8, torch.Generator().manual_seed(0))
    assert [len(b) for b in batches] == [8, 8, 8, 8]  # the 33rd pair alone has no negatives
    assert len(set(torch.cat(batches).tolist())) == 32
    assert [len(b) for b in epoch_batches(34, 8, torch.Generator().manual_seed(0))] == [8, 8, 8, 8, 2]
    assert steps_per_epoch(33, 8) == 4 and steps_per_epoch(34, 8) == 5
    again = epoch_batches(33, 8, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(batches, again))


# ---------------------------------------------------------------- pairs
def test_pairs_load_images_captions_and_image_size(tmp_path):
    folder = build_pairs(tmp_path, "noisy", n_train=6, n_val=4, perturbed=[True, False] * 5)
    train = load_pairs(folder, tmp_path, "train")
    assert train.images.shape == (6, SIZE, SIZE) and train.images.dtype == torch.uint8
    assert train.perturbed.tolist() == [True, False] * 3
    assert train.captions[5] == "bright spot in the middle right field"
    assert pairs_image_size(folder, train) == SIZE  # no meta.json: the images' own size
    (folder / "meta.json").write_text(json.dumps({"image_size": 64}))
    with pytest.raises(DataError, match="meta.json: image_size 64 disagrees"):
        pairs_image_size(folder, train)


def test_pairs_refuse_empty_captions_and_bad_perturbed_flags(tmp_path):
    folder = build_pairs(tmp_path, "raw", n_train=4, n_val=2)
    frame = pd.read_csv(folder / "pretrain.csv")
    frame.loc[1, "caption"] = " "
    write_manifest(frame, folder, "pretrain")
    with pytest.raises(DataError, match="empty caption for id"):
        load_pairs(folder, tmp_path, "train")
    frame.loc[1, "caption"] = "ok"
    frame["perturbed"] = "maybe"
    write_manifest(frame, folder, "pretrain")
    with pytest.raises(DataError, match="column 'perturbed'"):
        load_pairs(folder, tmp_path, "train")


# ---------------------------------------------------------------- training
def test_loss_decreases_and_recall_beats_chance_on_a_learnable_toy(tmp_path):
    folder = build_pairs(tmp_path, "raw", n_train=16, n_val=8)  # 8 val pairs, 8 distinct captions
    generator = seed_everything(0)
    clip = create_clip("medvlm-tiny-vit", image_size=SIZE)
    with Live(dir=str(tmp_path / "live"), dvcyaml=False, save_dvc_exp=False) as live:
        result = train_clip(clip=clip, train_pairs=load_pairs(folder, tmp_path, "train"),
                            val_pairs=load_pairs(folder, tmp_path, "val"),
                            train=TrainParams(epochs=15, batch_size=8, lr=1e-3, warmup_steps=3),
                            generator=generator, live=live)
    assert len(result.step_losses) == 30 and len(result.epoch_losses) == 15
    first, last = np.mean(result.step_losses[:5]), np.mean(result.step_losses[-5:])
    assert last < first - 0.4, result.step_losses
    chance = chance_recall(8)["r1"]
    assert result.val_retrieval["i2t_r1"] + result.val_retrieval["t2i_r1"] > 4 * chance, result.val_retrieval


def test_surrogate_stage_writes_documented_outputs_and_reruns_identically(tmp_path):
    first = run_surrogate(tmp_path, "first")
    second = run_surrogate(tmp_path, "second")

    metrics = read_json(first["metrics"])
    assert set(metrics) == METRIC_KEYS
    assert set(metrics["retrieval"]) == {"i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5"}
    assert metrics["chance"] == {"r1": 1 / 16, "r5": 5 / 16}
    assert (metrics["n_train"], metrics["n_val"], metrics["epochs"], metrics["n_train_perturbed"]) == (32, 16, 2, 0)
    # Recall over 16 val pairs: each value is a whole number of pairs out of 16.
    assert all(v * 16 == pytest.approx(round(v * 16)) for v in metrics["retrieval"].values()), metrics["retrieval"]

    clip = load_clip(first["out"])
    assert clip.image_size == SIZE
    assert clip.encode_pixels(torch.rand(2, 1, SIZE, SIZE)).shape == (2, 128)

    curves = first["live"] / "plots" / "metrics"
    losses = pd.read_csv(curves / "train" / "loss.tsv", sep="\t")
    assert len(losses) == 4 and losses["step"].tolist() == [0, 1, 2, 3]  # 2 epochs × 2 steps
    assert {"lr.tsv", "logit_scale.tsv"} <= {p.name for p in (curves / "train").iterdir()}
    assert len(pd.read_csv(curves / "val" / "i2t_r1.tsv", sep="\t")) == 2  # one row per epoch
    assert metrics["final_train_loss"] == pytest.approx(losses["loss"].tail(2).mean())

    assert first["metrics"].read_text() == second["metrics"].read_text()
    weights_a, weights_b = load_tensors(first["out"] / WEIGHTS_FILE), load_tensors(second["out"] / WEIGHTS_FILE)
    assert all(torch.equal(weights_a[name], weights_b[name]) for name in weights_a)
    assert (curves / "train" / "loss.tsv").read_text() == \
        (second["live"] / "plots" / "metrics" / "train" / "loss.tsv").read_text()
    assert sorted(p.name for p in (tmp_path / "first").iterdir()) == ["live", "metrics.json", "model"]


def test_nan_loss_stops_training_and_leaves_no_outputs(tmp_path, monkeypatch):
    class NanLoss(clip_training.ClipLoss):
        def forward(self, *args, **kwargs):
            return super().forward(*args, **kwargs) * float("nan")

    monkeypatch.setattr(clip_training, "ClipLoss", NanLoss)
    with pytest.raises(TrainingError, match="contrastive loss became nan at step 0"):
        run_surrogate(tmp_path, "nan")
    assert not (tmp_path / "nan").exists() or list((tmp_path / "nan").iterdir()) == []


def test_pretrain_stage_counts_perturbed_pairs_and_refuses_perturbed_val(tmp_path):
    root = tmp_path / "data"
    flags = [int(i < 8) for i in range(32)] + [0] * 8  # the attack stage writes 0/1
    noisy = build_pairs(root, "noisy", n_train=32, n_val=8, perturbed=flags)
    out, live, metrics = tmp_path / "clip", tmp_path / "live", tmp_path / "pretrain.json"
    pretrain_stage(params=tiny_params(epochs=1), data=noisy, out=out, live=live, metrics=metrics, data_root=root)
    summary = read_json(metrics)
    assert (summary["n_train"], summary["n_train_perturbed"], summary["epochs"]) == (32, 8, 1)

    build_pairs(root, "noisy", n_train=32, n_val=8, perturbed=[0] * 39 + [1])
    with pytest.raises(DataError, match="1 val pairs are marked perturbed"):
        pretrain_stage(params=tiny_params(epochs=1), data=noisy, out=tmp_path / "clip2", live=tmp_path / "live2",
                       metrics=tmp_path / "pretrain2.json", data_root=root)
    assert not (tmp_path / "clip2").exists() and not (tmp_path / "pretrain2.json").exists()


@pytest.mark.parametrize("stage", ["surrogate", "pretrain"])
def test_stage_script_reports_missing_manifest(tmp_path, stage):
    params = tmp_path / "params.yaml"
    params.write_text("device: cpu\n")
    result = CliRunner().invoke(stage_app(stage), [
        "--params", str(params), "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m"),
        "--live", str(tmp_path / "l"), "--metrics", str(tmp_path / "m.json"), "--data-root", str(tmp_path),
    ])
    assert result.exit_code == 2
    assert "pretrain.csv: manifest not found" in result.output
    assert not (tmp_path / "m").exists()
