"""Heads, their losses, the shared trainer and the finetune stage, on tiny synthetic cached features."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from medvlm.engine.fit_head import epoch_batches, fit_head
from medvlm.pipeline.finetune import finetune_stage
from medvlm.io import DataError, read_json, save_tensors, write_json
from medvlm.losses import HeadLoss, LossResult, build_loss
from medvlm.methods import METHODS
from medvlm.models.heads import build_head, load_head, save_head
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
    each class is a fixed random direction plus a little noise (VQA uses 3·dim like [v; q; v⊙q]); the
    training splits carry two "augmented views", the same points with a little more noise."""
    generator = torch.Generator().manual_seed(seed)
    root.mkdir(parents=True, exist_ok=True)

    def split(n: int, d: int, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % n_classes
        centres = torch.nn.functional.normalize(torch.randn(n_classes, d, generator=torch.Generator().manual_seed(d)), dim=1)
        x = torch.nn.functional.normalize(centres[y] + 0.1 * torch.randn(n, d, generator=generator), dim=1)
        return x, y

    def views(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {key: torch.nn.functional.normalize(x + 0.05 * torch.randn(x.shape, generator=generator), dim=1)
                for key in ("x_view1", "x_view2")}

    counts = {}
    for name, n in (("cls_id_train", n_train), ("cls_id_test", n_test), ("cls_ood_test", n_test)):
        x, y = split(n, dim, len(LABELS))
        save_tensors(root / f"{name}.safetensors", {"x": x, "y": y} | (views(x) if name.endswith("train") else {}))
        counts[name] = n
    for name, n in (("vqa_train", n_train), ("vqa_test", n_test)):
        x, y = split(n, 3 * dim, len(ANSWERS))
        closed = ((y == 1) | (y == 3)).to(torch.uint8)  # "no"/"yes" answer closed questions
        tensors = {"x": x, "y": y, "closed": closed} | (views(x) if name.endswith("train") else {})
        save_tensors(root / f"{name}.safetensors", tensors)
        counts[name] = n
    write_json(root / "meta.json", {"labels": LABELS, "answers": ANSWERS, "dims": {"cls_id": dim, "cls_ood": dim,
               "vqa": 3 * dim}, "counts": counts, "vqa_test_out_of_vocab": 0})
    return root


def tiny_params(method: str = "lp", **settings: float | int) -> Params:
    defaults = {"epochs": 5, "batch_size": 8, "lr": 0.05 if method == "lp" else 0.01, "weight_decay": 1e-4}
    return Params.model_validate({"device": "cpu", "heads": {"methods": [method], method: defaults | settings}})


def default_loss(method: str) -> HeadLoss:
    """The method's loss with the shipped default options."""
    return build_loss(method, **getattr(Params().heads, method).loss_options())


def toy_batch(n: int = 10, dim: int = 6, n_classes: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """Every cached tensor any loss reads: x, its two views, y (each class present)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=generator)
    return {"x": x, "x_view1": x + 0.1 * torch.randn(n, dim, generator=generator),
            "x_view2": x + 0.1 * torch.randn(n, dim, generator=generator), "y": torch.arange(n) % n_classes}


def test_lp_loss_equals_hand_computed_cross_entropy():
    head = build_head("lp", in_dim=2, n_classes=3)
    with torch.no_grad():
        head.classifier.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        head.classifier.bias.copy_(torch.tensor([0.0, 0.5, -1.0]))
    features = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    result = build_loss("lp")(head, {"x": features, "y": torch.tensor([2, 0])})
    # logits row 0: [1, 2.5, 2]; row 1: [0, -0.5, -2]
    expected = (-math.log(math.exp(2) / (math.exp(1) + math.exp(2.5) + math.exp(2)))
                - math.log(math.exp(0) / (math.exp(0) + math.exp(-0.5) + math.exp(-2)))) / 2
    assert set(result.terms) == {"ce"}
    assert result.terms["ce"].item() == pytest.approx(expected, rel=1e-6)
    torch.testing.assert_close(result.logits, torch.tensor([[1.0, 2.5, 2.0], [0.0, -0.5, -2.0]]))


def test_residual_mlp_head_is_the_identity_plus_a_scaled_mlp():
    torch.manual_seed(0)
    head = build_head("mlp", in_dim=5, n_classes=3)
    assert [type(layer).__name__ for layer in head.mlp] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert (head.mlp[0].in_features, head.mlp[0].out_features, head.mlp[3].out_features) == (5, 20, 5)
    assert torch.equal(head.alpha, torch.ones(5))
    features = torch.randn(7, 5)
    with torch.no_grad():
        head.alpha.copy_(torch.arange(5.0))
        expected = features + torch.arange(5.0) * head.mlp(features)
        torch.testing.assert_close(head.transform(features), expected)
        head.alpha.zero_()  # α = 0: the head is linear probing on u
        torch.testing.assert_close(head.outputs(features).transformed, features)
    assert build_head("ran", 5, 3).centroids.shape == (3, 5)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_head_parameter_receives_a_gradient(method):
    torch.manual_seed(0)
    head = build_head(method, in_dim=6, n_classes=4)
    result = default_loss(method)(head, toy_batch())
    sum(result.terms.values()).backward()
    names = {name for name, _ in head.named_parameters()}
    assert {"alpha", "centroids"} & names == ({"alpha", "centroids"} if method == "ran" else
                                            {"alpha"} if method in ("mlp", "nmtune") else set())
    for name, parameter in head.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("method", sorted(METHODS))
def test_head_overfits_one_small_batch(method):
    torch.manual_seed(0)
    batch = toy_batch(n=8, dim=16)
    head = build_head(method, in_dim=16, n_classes=4)
    history = fit_head(head, default_loss(method), batch, epochs=60, batch_size=8,
                       lr=0.05 if method == "lp" else 0.01, weight_decay=0.0,
                       generator=torch.Generator().manual_seed(0), task="toy")
    assert history[-1]["train_acc"] == 1.0
    assert history[-1]["ce"] < 0.1 * history[0]["ce"]
    assert not head.training  # inference with BatchNorm's running statistics
    for key in ("x", "x_view1", "x_view2"):
        assert (head(batch[key]).argmax(dim=1) == batch["y"]).all(), key


@pytest.mark.parametrize("method", ["mlp", "nmtune", "ran"])
def test_batchnorm_heads_infer_in_eval_mode_independent_of_the_batch(method, tmp_path):
    torch.manual_seed(0)
    batch = toy_batch(n=20, dim=6)
    head = build_head(method, in_dim=6, n_classes=4)
    fit_head(head, default_loss(method), batch, epochs=2, batch_size=8, lr=0.01, weight_decay=0.0,
             generator=torch.Generator().manual_seed(0), task="toy")
    save_head(head, tmp_path, "task")
    loaded = load_head(tmp_path, "task")
    assert not head.training and not loaded.training
    features = torch.randn(5, 6)
    with torch.no_grad():
        whole = loaded(features)
        torch.testing.assert_close(whole, head(features), rtol=0, atol=0)
        one_by_one = torch.cat([loaded(features[i:i + 1]) for i in range(5)])
        torch.testing.assert_close(one_by_one, whole)
        # In training mode the same rows would be normalised with their batch's statistics instead.
        assert not torch.allclose(loaded.train()(features), whole)


def test_epoch_batches_cover_every_sample_once_and_never_leave_a_single_sample():
    generator = torch.Generator().manual_seed(0)
    for n, batch_size, sizes in ((10, 4, [4, 4, 2]), (9, 4, [4, 5]), (8, 4, [4, 4]), (3, 8, [3])):
        batches = epoch_batches(n, batch_size, generator)
        assert [len(b) for b in batches] == sizes
        assert sorted(torch.cat(batches).tolist()) == list(range(n))


def test_trainer_counts_every_view_in_the_train_accuracy():
    # A loss whose logits are fixed: view 1 always right, view 2 always wrong -> accuracy 1/2.
    class FixedViews(HeadLoss):
        inputs = ("x", "y")

        def forward(self, head, batch):
            logits = head(batch["x"])
            right = torch.nn.functional.one_hot(batch["y"], 3).float() * 10
            return LossResult(terms={"ce": logits.square().mean()}, logits=torch.cat([right, -right]))

    head = build_head("lp", in_dim=2, n_classes=3)
    data = {"x": torch.randn(12, 2), "y": torch.arange(12) % 3}
    history = fit_head(head, FixedViews(), data, epochs=1, batch_size=5, lr=0.01, weight_decay=0.0,
                       generator=torch.Generator().manual_seed(0), task="toy")
    assert history[0]["train_acc"] == 0.5


def _fit_once(seed: int, method: str = "lp") -> tuple[dict[str, torch.Tensor], list[dict[str, float]]]:
    torch.manual_seed(seed)
    data = toy_batch(n=40, dim=6, n_classes=3, seed=seed)
    head = build_head(method, in_dim=6, n_classes=3)
    history = fit_head(head, default_loss(method), data, epochs=3, batch_size=16, lr=0.01,
                       weight_decay=1e-4, generator=torch.Generator().manual_seed(seed), task="toy")
    return head.state_dict(), history


@pytest.mark.parametrize("method", ["lp", "ran"])
def test_trainer_is_deterministic_for_a_seed(method):
    state_a, history_a = _fit_once(1, method)
    state_b, history_b = _fit_once(1, method)
    state_c, _ = _fit_once(2, method)
    assert history_a == history_b
    assert all(torch.equal(state_a[key], state_b[key]) for key in state_a)
    assert not all(torch.equal(state_a[key], state_c[key]) for key in state_a)


EXPECTED_TERMS = {"lp": {"ce"}, "mlp": {"ce"}, "nmtune": {"ce", "mse", "cov", "svd"}, "ran": {"ce", "con", "cov", "adv"}}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_finetune_stage_writes_heads_and_a_curve_per_term(tmp_path, method):
    assert set(EXPECTED_TERMS) == set(METHODS)
    features = write_features(tmp_path / "features")
    out, live = tmp_path / "heads" / method, tmp_path / "dvclive" / method
    finetune_stage(params=tiny_params(method, epochs=4), method=method, features=features, out=out, live=live)

    assert sorted(p.name for p in out.iterdir()) == ["cls_id.json", "cls_id.safetensors", "vqa.json", "vqa.safetensors"]
    assert read_json(out / "vqa.json") == {"method": method, "in_dim": 24, "n_classes": 4, "hyper": {}}
    head = load_head(out, "cls_id")
    assert (head.method, head.in_dim, head.n_classes) == (method, 8, 3)
    for task in ("cls_id", "vqa"):
        curves = {p.stem for p in (live / "plots" / "metrics" / task).iterdir()}
        terms = EXPECTED_TERMS[method]
        assert curves == terms | {f"share_{term}" for term in terms} | {"train_acc"}, task
        last = {}
        for metric in curves:
            rows = (live / "plots" / "metrics" / task / f"{metric}.tsv").read_text().strip().splitlines()
            assert len(rows) == 1 + 4, (task, metric)  # header + one row per epoch
            last[metric] = float(rows[-1].split("\t")[-1])
        # each term's share of the summed magnitudes: they add up to one
        assert sum(last[f"share_{term}"] for term in terms) == pytest.approx(1.0)
        assert all(last[f"share_{term}"] == pytest.approx(abs(last[term]) / sum(abs(last[t]) for t in terms), rel=1e-4)
                   for term in terms)


def test_finetune_stage_passes_the_loss_options_from_params(tmp_path):
    features = write_features(tmp_path / "features")
    live = tmp_path / "live"
    finetune_stage(params=tiny_params("ran", epochs=1, w_cov=0.0, w_adv=0.0), method="ran", features=features,
                   out=tmp_path / "heads", live=live)
    assert {p.stem for p in (live / "plots" / "metrics" / "cls_id").iterdir()} == {
        "ce", "con", "share_ce", "share_con", "train_acc"}


def test_finetune_lp_separates_separable_classes(tmp_path):
    features = write_features(tmp_path / "features")
    live = tmp_path / "live"
    finetune_stage(params=tiny_params(epochs=4), method="lp", features=features, out=tmp_path / "lp", live=live)
    assert read_json(live / "metrics.json")["cls_id"]["train_acc"] == 1.0


@pytest.mark.parametrize("method", ["lp", "nmtune"])
def test_finetune_stage_is_reproducible(tmp_path, method):
    features = write_features(tmp_path / "features")
    for run in ("a", "b"):
        finetune_stage(params=tiny_params(method), method=method, features=features, out=tmp_path / run,
                       live=tmp_path / f"live_{run}")
    for task in ("cls_id", "vqa"):
        assert (tmp_path / "a" / f"{task}.safetensors").read_bytes() == (tmp_path / "b" / f"{task}.safetensors").read_bytes()


def test_nan_features_stop_training_and_write_nothing(tmp_path):
    features = write_features(tmp_path / "features")
    poisoned = {"x": torch.full((24, 8), float("nan")), "y": torch.arange(24) % 3}
    save_tensors(features / "cls_id_train.safetensors", poisoned)
    out, live = tmp_path / "heads" / "lp", tmp_path / "dvclive" / "lp"
    with pytest.raises(TrainingError, match=r"finetune lp: cls_id/ce loss .* at step 0"):
        finetune_stage(params=tiny_params(), method="lp", features=features, out=out, live=live)
    assert not out.exists() and not live.exists()
    assert list((tmp_path / "heads").iterdir()) == [] and list((tmp_path / "dvclive").iterdir()) == []


def test_features_without_views_are_refused_for_nmtune_only(tmp_path):
    features = write_features(tmp_path / "features")
    x, y = torch.randn(24, 8), torch.arange(24) % 3
    save_tensors(features / "cls_id_train.safetensors", {"x": x, "y": y})
    with pytest.raises(DataError, match=r"cls_id: the nmtune loss needs cached tensors \['x_view1', 'x_view2'\].*"
                                        r"re-run the features stage"):
        finetune_stage(params=tiny_params("nmtune"), method="nmtune", features=features, out=tmp_path / "o",
                       live=tmp_path / "l")
    assert not (tmp_path / "o").exists()
    finetune_stage(params=tiny_params("ran", epochs=1), method="ran", features=features, out=tmp_path / "o",
                   live=tmp_path / "l")


def test_views_that_do_not_match_x_are_refused(tmp_path):
    features = write_features(tmp_path / "features")
    save_tensors(features / "cls_id_train.safetensors", {"x": torch.randn(24, 8), "y": torch.arange(24) % 3,
                                                         "x_view1": torch.randn(24, 7), "x_view2": torch.randn(24, 8)})
    with pytest.raises(DataError, match=r"cls_id_train.safetensors: augmented views must match x"):
        finetune_stage(params=tiny_params("nmtune"), method="nmtune", features=features, out=tmp_path / "o",
                       live=tmp_path / "l")


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


@pytest.mark.parametrize("method", sorted(METHODS))
def test_head_save_load_round_trip(tmp_path, method):
    torch.manual_seed(0)
    head = build_head(method, in_dim=5, n_classes=3)
    head(torch.randn(6, 5))  # moves BatchNorm's running statistics away from their initial values
    head.eval()
    save_head(head, tmp_path, "task")
    loaded = load_head(tmp_path, "task")
    assert type(loaded) is type(head) and not loaded.training
    for key, value in head.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    features = torch.randn(4, 5)
    assert torch.equal(loaded(features), head(features))


def test_head_load_refuses_mismatched_configs(tmp_path):
    save_head(build_head("lp", in_dim=5, n_classes=3), tmp_path, "task")
    write_json(tmp_path / "task.json", {"method": "lp", "in_dim": 6, "n_classes": 3, "hyper": {}})
    with pytest.raises(DataError, match="weights do not match"):
        load_head(tmp_path, "task")
    write_json(tmp_path / "task.json", {"method": "ran", "in_dim": 5, "n_classes": 3, "hyper": {}})
    with pytest.raises(DataError, match="weights do not match"):
        load_head(tmp_path, "task")
    write_json(tmp_path / "task.json", {"method": "nope", "in_dim": 5, "n_classes": 3, "hyper": {}})
    with pytest.raises(DataError, match="unknown head method 'nope'"):
        load_head(tmp_path, "task")
