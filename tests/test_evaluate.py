"""Clean metrics against hand-computed values, and the evaluate stage on tiny cached features and heads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medvlm.data.cached_features import load_feature_split
from medvlm.data.manifest import write_manifest
from medvlm.engine.fit_head import fit_head
from medvlm.eval.evaluate import predict_probabilities
from medvlm.pipeline.evaluate import evaluate_stage
from medvlm.eval.metrics import classification_chance, classification_metrics, macro_auroc, vqa_chance, vqa_metrics
from medvlm.io import DataError, read_items, read_json, save_tensors, write_json
from medvlm.losses import build_loss
from medvlm.models.heads import build_head, load_head, save_head
from medvlm.params import Params
from test_heads import write_features  # the cached-features builder shared by the head tests

# Four classes; class 3 never occurs in the labels but is predicted once (row 3).
LABELS = np.array([0, 0, 1, 1, 2, 2])
PROBABILITIES = np.array([
    [0.7, 0.1, 0.1, 0.1],  # pred 0, right
    [0.2, 0.5, 0.2, 0.1],  # pred 1, wrong
    [0.1, 0.6, 0.2, 0.1],  # pred 1, right
    [0.1, 0.2, 0.3, 0.4],  # pred 3, wrong
    [0.1, 0.1, 0.7, 0.1],  # pred 2, right
    [0.3, 0.1, 0.5, 0.1],  # pred 2, right
])


def test_classification_metrics_match_hand_computed_values():
    metrics = classification_metrics(LABELS, PROBABILITIES)
    # F1 per class in labels ∪ predictions: 0 -> P 1, R 1/2 -> 2/3; 1 -> P 1/2, R 1/2 -> 1/2; 2 -> 1; 3 -> 0
    # AUROC (present classes only): class 0 -> 7/8, class 1 -> 7/8, class 2 -> 8/8 (positive-negative pairs won)
    assert metrics == pytest.approx({"accuracy": 4 / 6, "macro_f1": (2 / 3 + 1 / 2 + 1 + 0) / 4,
                                     "macro_auroc": (7 / 8 + 7 / 8 + 1) / 3, "n": 6})
    assert isinstance(metrics["n"], int)


def test_auroc_ignores_absent_classes_but_needs_two_present():
    # The absent class's probability column does not enter the average: dropping it changes nothing.
    assert macro_auroc(LABELS, PROBABILITIES[:, :3]) == pytest.approx(macro_auroc(LABELS, PROBABILITIES))
    with pytest.raises(DataError, match="at least two classes"):
        macro_auroc(np.array([1, 1]), PROBABILITIES[:2])


def test_vqa_metrics_count_out_of_vocabulary_answers_as_wrong():
    labels = np.array([0, 1, -1, 2, -1])
    predictions = np.array([0, 2, 0, 2, 1])
    closed = np.array([1, 1, 1, 0, 0], dtype=np.uint8)
    assert vqa_metrics(labels, predictions, closed) == pytest.approx(
        {"accuracy": 2 / 5, "closed_accuracy": 1 / 3, "open_accuracy": 1 / 2, "n": 5})
    all_closed = vqa_metrics(labels, predictions, np.ones(5, dtype=np.uint8))
    assert all_closed["open_accuracy"] is None and all_closed["closed_accuracy"] == pytest.approx(2 / 5)


def test_chance_baselines_match_hand_computed_values():
    assert classification_chance(np.array([0, 0, 1, 2, 2, 2]), np.array([2, 0, 1, 2]), n_classes=4) == {
        "uniform": 0.25, "majority": 0.5}
    train = np.array([3, 3, 3, 1, 0, 0, 2])
    train_closed = np.array([1, 1, 1, 1, 0, 0, 0])
    test = np.array([3, 1, 0, -1, 2])
    test_closed = np.array([1, 1, 0, 0, 0])
    # overall and closed majority: answer 3; open majority: answer 0
    assert vqa_chance(train, train_closed, test, test_closed) == pytest.approx(
        {"majority": 1 / 5, "majority_closed": 1 / 2, "majority_open": 1 / 3})


def _train_heads(features: Path, heads: Path, method: str = "lp") -> None:
    for task, split in (("cls_id", "cls_id_train"), ("vqa", "vqa_train")):
        data = load_feature_split(features, split)
        torch.manual_seed(0)
        head = build_head(method, data["x"].shape[1], int(data["y"].max()) + 1)
        loss = build_loss(method, **getattr(Params().heads, method).loss_options())
        fit_head(head, loss, data, epochs=20, batch_size=8, lr=0.05 if method == "lp" else 0.01,
                 weight_decay=0.0, generator=torch.Generator().manual_seed(0), task=task)
        save_head(head, heads / method, task)


def _params(batch_size: int = 5, methods: tuple[str, ...] = ("lp",)) -> Params:
    return Params.model_validate({"device": "cpu", "heads": {"methods": list(methods)},
                                  "evaluate": {"batch_size": batch_size, "bootstrap": {"samples": 200}}})


def write_test_manifests(raw: Path, n_test: int = 12) -> None:
    """Test-split manifests with as many rows as write_features' test splits (item ids; VQA: 3 questions per
    image). The images are never read by evaluate, so none are written."""
    for kind in ("cls_id", "cls_ood"):
        write_manifest(pd.DataFrame({"id": [f"{kind}-{i}" for i in range(n_test)],
                                     "image": [f"raw/images/{kind}/{i}.png" for i in range(n_test)],
                                     "label": "normal", "split": "test"}), raw, kind)
    write_manifest(pd.DataFrame({"id": [f"q{i}" for i in range(n_test)],
                                 "image": [f"raw/images/vqa/{i // 3}.png" for i in range(n_test)],
                                 "question": "?", "answer": "yes", "answer_type": "closed", "split": "test"}), raw, "vqa")


def write_stage_inputs(root: Path, methods: tuple[str, ...] = ("lp",)) -> dict[str, Path]:
    """What evaluate reads besides features and heads: test manifests, robustness metrics (made-up numbers in
    the robustness stage's layout) and DVCLive curves of every training run; and where its items go."""
    write_test_manifests(root / "raw")
    robustness, live = root / "robustness", root / "dvclive"
    entry = {"accuracy": 0.5, "ci": [0.4, 0.6]}
    for method in methods:
        write_json(robustness / f"{method}.json", {task: {"n": 4, "clean": entry, "eps_1": entry, "eps_2": entry,
                                                          "eps_4": entry} for task in ("cls_id", "cls_ood", "vqa")})
    for run in ("surrogate", "pretrain", *(f"finetune/{method}" for method in methods)):
        curve = live / run / "plots" / "metrics" / "train" / "loss.tsv"
        curve.parent.mkdir(parents=True, exist_ok=True)
        curve.write_text("step\tloss\n0\t2.0\n1\t1.5\n")
    return {"robustness": robustness, "live": live, "plots": root / "evaluation", "data": root / "raw",
            "data_root": root, "items": root / "items" / "clean.parquet"}


def test_evaluate_stage_writes_method_task_metric_json(tmp_path):
    features, heads = write_features(tmp_path / "features"), tmp_path / "heads"
    _train_heads(features, heads)
    out = tmp_path / "metrics" / "evaluate.json"
    inputs = write_stage_inputs(tmp_path)
    result = evaluate_stage(params=_params(), features=features, heads=heads, out=out, **inputs)

    assert read_json(out) == result
    assert set(result) == {"lp", "chance", "spectrum"}
    assert set(result["lp"]) == {"cls_id", "cls_ood", "vqa"}
    for task in ("cls_id", "cls_ood"):
        assert set(result["lp"][task]) == {"accuracy", "macro_f1", "macro_auroc", "n", "ci"}
        assert set(result["lp"][task]["ci"]) == {"accuracy", "macro_f1", "macro_auroc"}
        assert result["lp"][task]["n"] == 12
        assert result["lp"][task]["accuracy"] == 1.0  # separable features
    assert set(result["lp"]["vqa"]) == {"accuracy", "closed_accuracy", "open_accuracy", "n", "ci"}
    assert set(result["spectrum"]) == {"cls_id_train", "cls_ood_test"}

    # The stored numbers are the metrics of the saved heads' own predictions, and each lies in its interval.
    head = load_head(heads / "lp", "vqa")
    vqa_test = load_feature_split(features, "vqa_test")
    predictions = predict_probabilities(head, vqa_test["x"], batch_size=64).argmax(axis=1)
    vqa = dict(result["lp"]["vqa"])
    intervals = vqa.pop("ci")
    assert vqa == vqa_metrics(vqa_test["y"].numpy(), predictions, vqa_test["closed"].numpy())
    for task in ("cls_id", "cls_ood", "vqa"):
        for name, (low, high) in result["lp"][task]["ci"].items():
            assert low <= result["lp"][task][name] <= high, (task, name)

    # Per item: every test item once per task, keyed by its manifest id, grouped by image, with the head's own
    # prediction; the accuracies are the items' means.
    items = read_items(inputs["items"])
    assert list(items.columns) == ["method", "task", "item", "group", "label", "prediction", "correct"]
    assert items.groupby("task").size().to_dict() == {"cls_id": 12, "cls_ood": 12, "vqa": 12}
    vqa_items = items[items["task"] == "vqa"]
    assert vqa_items["prediction"].tolist() == predictions.tolist()
    assert vqa_items["label"].tolist() == vqa_test["y"].tolist()
    assert vqa_items["group"].nunique() == 4 and vqa_items["item"].iloc[5] == "q5"
    for task in ("cls_id", "cls_ood", "vqa"):
        assert items[items["task"] == task]["correct"].mean() == pytest.approx(result["lp"][task]["accuracy"])

    figures = {path.name for path in (inputs["plots"] / "figures").iterdir()}
    assert figures == {"confusion_lp_cls_id.png", "confusion_lp_cls_ood.png", "robust_accuracy.png",
                       "training_surrogate.png", "training_pretrain.png", "training_finetune_lp.png"}
    robust_csv = (inputs["plots"] / "robustness" / "lp.csv").read_text().splitlines()
    assert robust_csv[0] == "eps_255,cls_id,cls_ood,vqa" and len(robust_csv) == 5
    confusion = (inputs["plots"] / "confusion" / "lp_cls_id.csv").read_text().splitlines()
    assert confusion[0] == "actual,predicted" and len(confusion) == 13

    # write_features: labels cycle through the classes (ties -> smallest index); closed answers are 1 and 3.
    expected_chance = {
        "cls_id": {"uniform": 1 / 3, "majority": 1 / 3},
        "cls_ood": {"uniform": 1 / 3, "majority": 1 / 3},
        "vqa": {"majority": 1 / 4, "majority_closed": 1 / 2, "majority_open": 1 / 2},
    }
    assert set(result["chance"]) == set(expected_chance)
    for task, expected in expected_chance.items():
        assert result["chance"][task] == pytest.approx(expected), task


def test_evaluate_stage_scores_every_head_method_in_eval_mode(tmp_path):
    methods = ("lp", "mlp", "nmtune", "ran")
    features, heads = write_features(tmp_path / "features"), tmp_path / "heads"
    for method in methods:
        _train_heads(features, heads, method)
    # evaluate in batches of 5: with BatchNorm in training mode the scores would depend on the batching
    result = evaluate_stage(params=_params(batch_size=5, methods=methods), features=features, heads=heads,
                            out=tmp_path / "evaluate.json", **write_stage_inputs(tmp_path, methods))
    assert set(result) == {*methods, "chance", "spectrum"}
    cls_test = load_feature_split(features, "cls_id_test")
    for method in methods:
        assert set(result[method]) == {"cls_id", "cls_ood", "vqa"}
        head = load_head(heads / method, "cls_id")
        assert not head.training
        with torch.no_grad():
            whole_batch = head(cls_test["x"]).softmax(dim=1).double().numpy()
        scores = {key: value for key, value in result[method]["cls_id"].items() if key != "ci"}
        assert scores == classification_metrics(cls_test["y"].numpy(), whole_batch), method
        assert result[method]["cls_id"]["accuracy"] == 1.0, method  # separable features


def test_probabilities_do_not_depend_on_the_batch_size(tmp_path):
    torch.manual_seed(0)
    head = build_head("lp", 6, 3).eval()
    features = torch.randn(11, 6)
    whole = predict_probabilities(head, features, batch_size=64)
    # float32 matmuls of different shapes may take different BLAS kernels: equal to float32 rounding, not bits
    np.testing.assert_allclose(predict_probabilities(head, features, batch_size=4), whole, rtol=1e-6)
    np.testing.assert_allclose(whole.sum(axis=1), np.ones(11))


def test_heads_that_do_not_fit_the_features_are_refused(tmp_path):
    features, heads = write_features(tmp_path / "features"), tmp_path / "heads"
    _train_heads(features, heads)
    save_tensors(features / "cls_id_test.safetensors", {"x": torch.zeros(12, 10), "y": torch.zeros(12, dtype=torch.long)})
    out = tmp_path / "evaluate.json"
    inputs = write_stage_inputs(tmp_path)
    with pytest.raises(DataError, match="cls_id_test.safetensors has 10-dim features but the head expects 8"):
        evaluate_stage(params=_params(), features=features, heads=heads, out=out, **inputs)
    assert not out.exists() and not inputs["plots"].exists() and not inputs["items"].exists()


def test_a_manifest_that_does_not_match_the_features_is_refused(tmp_path):
    features, heads = write_features(tmp_path / "features"), tmp_path / "heads"
    _train_heads(features, heads)
    inputs = write_stage_inputs(tmp_path)
    write_test_manifests(inputs["data"], n_test=11)
    out = tmp_path / "evaluate.json"
    with pytest.raises(DataError, match="test split has 11 rows but .*cls_id_test.safetensors has 12"):
        evaluate_stage(params=_params(), features=features, heads=heads, out=out, **inputs)
    assert not out.exists() and not inputs["items"].exists()


def test_missing_robustness_metrics_are_a_clear_error_and_nothing_is_written(tmp_path):
    features, heads = write_features(tmp_path / "features"), tmp_path / "heads"
    _train_heads(features, heads)
    inputs = write_stage_inputs(tmp_path)
    (inputs["robustness"] / "lp.json").unlink()
    out = tmp_path / "evaluate.json"
    with pytest.raises(DataError, match=r"robustness/lp.json: file not found"):
        evaluate_stage(params=_params(), features=features, heads=heads, out=out, **inputs)
    assert not out.exists() and not inputs["plots"].exists()


def test_missing_heads_are_a_clear_error(tmp_path):
    features = write_features(tmp_path / "features")
    with pytest.raises(DataError, match=r"lp/cls_id.json: file not found"):
        evaluate_stage(params=_params(), features=features, heads=tmp_path / "heads", out=tmp_path / "evaluate.json",
                       **write_stage_inputs(tmp_path))
