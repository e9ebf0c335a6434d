"""Clean test metrics of every trained head with bootstrap intervals, chance
baselines and the frozen features' spectrum in one JSON; figures and plot data in one folder.

Layout of the metrics: method -> task -> metric, e.g.
{"lp": {"cls_id": {"accuracy", "macro_f1", "macro_auroc", "n", "ci": {"accuracy": [low, high], ...}},
        "cls_ood": {...}, "vqa": {"accuracy", "closed_accuracy", "open_accuracy", "n", "ci": {...}}},
 "chance": {"cls_id": {"uniform", "majority"}, "cls_ood": {...},
            "vqa": {"majority", "majority_closed", "majority_open"}},
 "spectrum": {"cls_id_train": {"sv_entropy", "top_sv_ratio", ...}, "cls_ood_test": {...}}}
The out-of-domain set is scored with the in-domain (cls_id) head: same label set, shifted acquisition.
Robust accuracy is the `robustness` stage's (metrics/robustness/<method>.json); this stage draws it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medvlm.data.cached_features import SPLITS, load_feature_split, read_features_meta
from medvlm.eval.bootstrap import bootstrap_intervals
from medvlm.eval.metrics import (
    classification_chance,
    classification_metrics,
    ResampledClassification,
    vqa_chance,
    vqa_metrics,
)
from medvlm.eval.plot_data import write_plot_data
from medvlm.eval.spectrum import feature_spectrum
from medvlm.tasks import TASKS, Task, head_tasks, read_test_manifest
from medvlm.io import DataError, atomic_dir, write_items, write_json
from medvlm.models.heads import Head, head_paths, load_head
from medvlm.params import BootstrapParams, RobustnessParams
from medvlm.runtime import log

SPECTRUM_SPLITS = ("cls_id_train", "cls_ood_test")
"""Image-feature splits whose spectrum is reported: what the heads train on, and the shifted test set."""


@torch.inference_mode()
def predict_probabilities(head: Head, features: torch.Tensor, batch_size: int) -> np.ndarray:
    """Softmax probabilities (N×C, float64 NumPy) of `head` on `features`, batch by batch."""
    device = head.classifier.weight.device
    chunks = [torch.softmax(head(features[start:start + batch_size].to(device)).double(), dim=1).cpu()
              for start in range(0, features.shape[0], batch_size)]
    return torch.cat(chunks).numpy()


def _load_checked_head(directory: Path, task: str, n_classes: int, device: torch.device) -> Head:
    """Load a head and make sure it was trained for this label set / answer vocabulary."""
    head = load_head(directory, task, device)
    if head.n_classes != n_classes:
        raise DataError(f"{head_paths(directory, task)[1]}: head has {head.n_classes} classes but the features "
                        f"have {n_classes}; re-run finetune after features")
    return head


def _split_probabilities(head: Head, features: Path, split: dict[str, torch.Tensor], name: str,
                         batch_size: int) -> np.ndarray:
    if split["x"].shape[1] != head.in_dim:
        raise DataError(f"{Path(features) / name}.safetensors has {split['x'].shape[1]}-dim features but the "
                        f"head expects {head.in_dim}; re-run finetune after features")
    return predict_probabilities(head, split["x"], batch_size)


def scored_classification(labels: np.ndarray, probabilities: np.ndarray, bootstrap: BootstrapParams,
                          seed: int) -> dict[str, Any]:
    """Classification metrics plus bootstrap intervals of accuracy, macro-F1 and macro-AUROC."""
    names = ["accuracy", "macro_f1", "macro_auroc"]

    metrics = classification_metrics(labels, probabilities)
    metrics["ci"] = bootstrap_intervals(ResampledClassification(labels, probabilities),
                                        len(labels), names, params=bootstrap, seed=seed)
    return metrics


def scored_vqa(labels: np.ndarray, predictions: np.ndarray, closed: np.ndarray, bootstrap: BootstrapParams,
               seed: int) -> dict[str, Any]:
    """VQA accuracies (overall, closed, open) plus their bootstrap intervals."""
    names = ["accuracy", "closed_accuracy", "open_accuracy"]

    correct = (predictions == labels).astype(np.float64)
    is_closed = closed.astype(bool)

    def mean_or_nan(values: np.ndarray) -> float:
        return float(values.mean()) if len(values) else np.nan

    def statistic(index: np.ndarray) -> list[float]:  # plain means: vqa_metrics' sklearn calls are ~1 ms each
        hits, kinds = correct[index], is_closed[index]
        return [float(hits.mean()), mean_or_nan(hits[kinds]), mean_or_nan(hits[~kinds])]

    metrics = vqa_metrics(labels, predictions, closed)
    present = [name for name in names if metrics[name] is not None]
    intervals = bootstrap_intervals(statistic, len(labels), names, params=bootstrap, seed=seed)
    metrics["ci"] = {name: intervals[name] for name in present}
    return metrics


def item_keys(data: Path, data_root: Path, features: Path, splits: dict[str, dict[str, torch.Tensor]],
               ) -> dict[str, pd.DataFrame]:
    """Per task, the test items' ids and groups (the image path: VQA questions on one image form a group), in
    the cached features' row order."""
    items = {}
    for task_name, task in TASKS.items():
        frame = read_test_manifest(task_name, data=data, data_root=data_root, features=features,
                                   n_rows=len(splits[task.test_split]["y"]))
        items[task_name] = pd.DataFrame({"item": frame["id"].to_numpy(), "group": frame["image"].to_numpy()})
    return items


def evaluate_heads(*, methods: Sequence[str], data: Path, features: Path, heads: Path, robustness: Path, live: Path,
                   out: Path, plots: Path, items: Path, data_root: Path, batch_size: int, bootstrap: BootstrapParams,
                   robust: RobustnessParams, seed: int, device: torch.device) -> dict[str, Any]:
    """Score `heads/<method>/<head task>` for every method on the cached test features of every task; write the
    metrics JSON to `out`, each test item's label, prediction and correctness to the parquet table `items`,
    and figures + plot data (with the robustness metrics in `robustness/<method>.json` and the DVCLive curves
    under `live`) to the folder `plots`."""
    meta = read_features_meta(features)
    splits = {name: load_feature_split(features, name) for name in SPLITS}
    labels = {name: split["y"].numpy() for name, split in splits.items()}
    identities = item_keys(data, data_root, features, splits)

    results: dict[str, Any] = {}
    tables = []
    predictions: dict[str, dict[str, np.ndarray]] = {}
    for method in methods:
        directory = Path(heads) / method
        loaded = {task: _load_checked_head(directory, task, len(meta[TASKS[task].classes]), device)
                  for task in head_tasks()}
        results[method], predictions[method] = {}, {}
        for task_name, task in TASKS.items():
            split = task.test_split
            probabilities = _split_probabilities(loaded[task.head], features, splits[split], split, batch_size)
            predictions[method][task_name] = probabilities.argmax(axis=1)
            tables.append(identities[task_name].assign(
                method=method, task=task_name, label=labels[split], prediction=predictions[method][task_name],
                correct=predictions[method][task_name] == labels[split]))
            results[method][task_name] = (
                scored_vqa(labels[split], predictions[method][task_name], splits[split]["closed"].numpy(),
                           bootstrap, seed)
                if task.kind == "vqa" else
                scored_classification(labels[split], probabilities, bootstrap, seed))
        log.info("%s: %s", method, ", ".join(f"{task} acc {results[method][task]['accuracy']:.3f}" for task in TASKS))

    results["chance"] = {name: _chance(task, splits, len(meta[task.classes])) for name, task in TASKS.items()}
    results["spectrum"] = {name: feature_spectrum(splits[name]["x"]) for name in SPECTRUM_SPLITS}

    with atomic_dir(plots) as plots_dir:
        write_plot_data(plots_dir, methods=methods, class_names=meta["labels"],
                        labels={task_name: labels[task.test_split] for task_name, task in TASKS.items()},
                        predictions=predictions, chance=results["chance"],
                        robustness=Path(robustness), robust=robust, live=Path(live))
        write_items(items, pd.concat(tables, ignore_index=True)[
            ["method", "task", "item", "group", "label", "prediction", "correct"]])
        write_json(out, results)
    log.info("wrote metrics for %s to %s and figures to %s", ", ".join(methods), out, plots)
    return results


def _chance(task: Task, splits: dict[str, dict[str, torch.Tensor]], n_classes: int) -> dict[str, Any]:
    """Chance levels of a task, with the majority class (answer) of the split its head trains on."""
    train, test = splits[TASKS[task.head].train_split], splits[task.test_split]
    if task.kind == "vqa":
        return vqa_chance(train["y"].numpy(), train["closed"].numpy(), test["y"].numpy(), test["closed"].numpy())
    return classification_chance(train["y"].numpy(), test["y"].numpy(), n_classes)
