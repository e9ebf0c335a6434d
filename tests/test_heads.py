"""Heads, their losses, the shared trainer and the finetune stage, on tiny synthetic cached features."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from medvlm.engine.fit_head import fit_head, finetune_stage
from medvlm.io import DataError, read_json, save_tensors, write_json
from medvlm.losses import LOSSES, build_loss
from medvlm.models.heads import HEADS, build_head, load_head, save_head
from medvlm.params import Params, ParamsError
from medvlm.runtime import TrainingError

LABELS = ["normal", "effusion", "nodule"]
ANSWERS = ["left", "no", "right", "yes"]


@pytest.fixture(autouse=True)
def _outside_any_repo(tmp_path, monkeypatch):
    # DVCLive inspects the git/DVC repo around the working directory; keep it out of the project's own.
    monkeypatch.chdir(tmp_path)


def write_features(root: Path, *, dim: int = 8, n_train: int = 24, n_test: int = 12, seed: int = 0) -> Path:
    """A cached-features folder like the features stage writes, with linearly separable classes:
    each class is a fixed random direction plus a little noise (VQA uses 3·dim like [v; q; v⊙q])."""
    generator = torch.Generator().manual_seed(seed)
    root.mkdir(parents=True, exist_ok=True)

    def split(n: int, d: int, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % n_classes
        centres = torch.nn.functional.normalize(torch.randn(n_classes, d, generator=torch.Generator().manual_seed(d)), dim=1)
        x = torch.nn.functional.normalize(centres[y] + 0.1 * torch.randn(n, d, generator=generator), dim=1)
        return x, y

    counts = {}
    for name, n in (("cls_id_train", n_train), ("cls_id_test", n_test), ("cls_ood_test", n_test)):
        x, y = split(n, dim, len(LABELS))
        save_tensors(root / f"{name}.safetensors", {"x": x, "y": y})
        counts[name] = n
    for name, n in (("vqa_train", n_train), ("vqa_test", n_test)):
        x, y = split(n, 3 * dim, len(ANSWERS))
        closed = ((y == 1) | (y == 3)).to(torch.uint8)  # "no"/"yes" answer closed questions
        save_tensors(root / f"{name}.safetensors", {"x": x, "y": y, "closed": closed})
        counts[name] = n
    write_json(root / "meta.json", {"labels": LABELS, "answers": ANSWERS, "dims": {"cls_id": dim, "cls_ood": dim,
               "vqa": 3 * dim}, "counts": counts, "vqa_test_out_of_vocab": 0})
    return root


def tiny_params(**lp: float | int) -> Params:
    settings = {"epochs": 5, "batch_size": 8, "lr": 0.05, "weight_decay": 1e-4} | lp
    return Params.model_validate({"device": "cpu", "heads": {"methods": ["lp"], "lp": settings}})


def test_lp_loss_equals_hand_computed_cross_entropy():
    head = build_head("lp", in_dim=2, n_classes=3)
    with torch.no_grad():
        head.classifier.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        head.classifier.bias.copy_(torch.tensor([0.0, 0.5, -1.0]))
    features = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    labels = torch.tensor([2, 0])
    terms = build_loss("lp")(head, head.outputs(features), labels)
    # logits row 0: [1, 2.5, 2]; row 1: [0, -0.5, -2]
    expected = (-math.log(math.exp(2) / (math.exp(1) + math.exp(2.5) + math.exp(2)))
                - math.log(math.exp(0) / (math.exp(0) + math.exp(-0.5) + math.exp(-2)))) / 2
    assert set(terms) == {"ce"}
    assert terms["ce"].item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("method", sorted(HEADS))
def test_every_head_parameter_receives_a_gradient(method):
    torch.manual_seed(0)
    head = build_head(method, in_dim=6, n_classes=4)
    features = torch.randn(10, 6)
    terms = LOSSES[method]()(head, head.outputs(features), torch.arange(10) % 4)
    sum(terms.values()).backward()
    for name, parameter in head.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("method", sorted(HEADS))
def test_head_overfits_one_small_batch(method):
    torch.manual_seed(0)
    features, labels = torch.randn(8, 16), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    head = build_head(method, in_dim=16, n_classes=4)
    history = fit_head(head, build_loss(method), features, labels, epochs=60, batch_size=8, lr=0.05,
                       weight_decay=0.0, generator=torch.Generator().manual_seed(0), task="toy")
    assert history[-1]["train_acc"] == 1.0
    assert history[-1]["ce"] < history[0]["ce"]
    assert (head(features).argmax(dim=1) == labels).all()


def _fit_once(seed: int) -> tuple[dict[str, torch.Tensor], list[dict[str, float]]]:
    torch.manual_seed(seed)
    features, labels = torch.randn(40, 6), torch.arange(40) % 3
    head = build_head("lp", in_dim=6, n_classes=3)
    history = fit_head(head, build_loss("lp"), features, labels, epochs=3, batch_size=16, lr=0.01,
                       weight_decay=1e-4, generator=torch.Generator().manual_seed(seed), task="toy")
    return head.state_dict(), history


def test_trainer_is_deterministic_for_a_seed():
    state_a, history_a = _fit_once(1)
    state_b, history_b = _fit_once(1)
    state_c, _ = _fit_once(2)
    assert history_a == history_b
    assert all(torch.equal(state_a[key], state_b[key]) for key in state_a)
    assert not all(torch.equal(state_a[key], state_c[key]) for key in state_a)


def test_finetune_stage_writes_heads_and_curves(tmp_path):
    features = write_features(tmp_path / "features")
    out, live = tmp_path / "heads" / "lp", tmp_path / "dvclive" / "lp"
    finetune_stage(params=tiny_params(epochs=4), method="lp", features=features, out=out, live=live)

    assert sorted(p.name for p in out.iterdir()) == ["cls_id.json", "cls_id.safetensors", "vqa.json", "vqa.safetensors"]
    assert read_json(out / "vqa.json") == {"method": "lp", "in_dim": 24, "n_classes": 4, "hyper": {}}
    head = load_head(out, "cls_id")
    assert (head.in_dim, head.n_classes) == (8, 3)
    for task in ("cls_id", "vqa"):
        for metric in ("ce", "train_acc"):
            rows = (live / "plots" / "metrics" / task / f"{metric}.tsv").read_text().strip().splitlines()
            assert len(rows) == 1 + 4, (task, metric)  # header + one row per epoch
    summary = read_json(live / "metrics.json")
    assert summary["cls_id"]["train_acc"] == 1.0  # separable classes


def test_finetune_stage_is_reproducible(tmp_path):
    features = write_features(tmp_path / "features")
    for run in ("a", "b"):
        finetune_stage(params=tiny_params(), method="lp", features=features, out=tmp_path / run, live=tmp_path / f"live_{run}")
    for task in ("cls_id", "vqa"):
        assert (tmp_path / "a" / f"{task}.safetensors").read_bytes() == (tmp_path / "b" / f"{task}.safetensors").read_bytes()


def test_nan_features_stop_training_and_write_nothing(tmp_path):
    features = write_features(tmp_path / "features")
    poisoned = {"x": torch.full((24, 8), float("nan")), "y": torch.arange(24) % 3}
    save_tensors(features / "cls_id_train.safetensors", poisoned)
    out, live = tmp_path / "heads" / "lp", tmp_path / "dvclive" / "lp"
    with pytest.raises(TrainingError, match=r"cls_id/ce loss .* at step 0"):
        finetune_stage(params=tiny_params(), method="lp", features=features, out=out, live=live)
    assert not out.exists() and not live.exists()
    assert list((tmp_path / "heads").iterdir()) == [] and list((tmp_path / "dvclive").iterdir()) == []


def test_finetune_refuses_a_method_not_in_params(tmp_path):
    with pytest.raises(ParamsError, match="heads.methods"):
        finetune_stage(params=tiny_params(), method="ran", features=tmp_path, out=tmp_path / "o", live=tmp_path / "l")


def test_labels_outside_the_label_set_are_refused(tmp_path):
    features = write_features(tmp_path / "features")
    save_tensors(features / "vqa_train.safetensors", {"x": torch.zeros(4, 24), "y": torch.tensor([0, 1, 2, 9]),
                                                      "closed": torch.zeros(4, dtype=torch.uint8)})
    with pytest.raises(DataError, match=r"vqa_train.safetensors: labels must lie in \[0, 4\)"):
        finetune_stage(params=tiny_params(), method="lp", features=features, out=tmp_path / "o", live=tmp_path / "l")
    assert not (tmp_path / "o").exists()


def test_head_save_load_round_trip_and_mismatch(tmp_path):
    torch.manual_seed(0)
    head = build_head("lp", in_dim=5, n_classes=3)
    save_head(head, tmp_path, "task")
    loaded = load_head(tmp_path, "task")
    features = torch.randn(4, 5)
    assert torch.equal(loaded(features), head(features))
    assert not loaded.training

    write_json(tmp_path / "task.json", {"method": "lp", "in_dim": 6, "n_classes": 3, "hyper": {}})
    with pytest.raises(DataError, match="weights do not match"):
        load_head(tmp_path, "task")
    write_json(tmp_path / "task.json", {"method": "nope", "in_dim": 5, "n_classes": 3, "hyper": {}})
    with pytest.raises(DataError, match="unknown head method 'nope'"):
        load_head(tmp_path, "task")
