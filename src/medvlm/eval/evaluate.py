"""The `evaluate` stage: clean test metrics of every trained head, plus chance baselines, in one JSON.

Layout of the output: method -> task -> metric, e.g.
{"lp": {"cls_id": {"accuracy", "macro_f1", "macro_auroc", "n"}, "cls_ood": {...},
        "vqa": {"accuracy", "closed_accuracy", "open_accuracy", "n"}},
 "chance": {"cls_id": {"uniform", "majority"}, "cls_ood": {...},
            "vqa": {"majority", "majority_closed", "majority_open"}}}
The out-of-domain set is scored with the in-domain (cls_id) head: same label set, shifted acquisition.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from medvlm.data.cached_features import CLASSIFICATION_SPLITS, VQA_SPLITS, load_feature_split, read_features_meta
from medvlm.eval.metrics import classification_chance, classification_metrics, vqa_chance, vqa_metrics
from medvlm.io import DataError, write_json
from medvlm.models.heads import Head, head_paths, load_head
from medvlm.params import Params
from medvlm.runtime import log, resolve_device



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


def evaluate_stage(*, params: Params, features: Path, heads: Path, out: Path) -> dict[str, Any]:
    """Score `heads/<method>/{cls_id,vqa}` for every method in params.heads.methods on the cached test
    features; write the metrics JSON to `out` and return it."""
    meta = read_features_meta(features)
    n_labels, n_answers = len(meta["labels"]), len(meta["answers"])
    splits = {name: load_feature_split(features, name) for name in (*CLASSIFICATION_SPLITS, *VQA_SPLITS)}
    labels = {name: split["y"].numpy() for name, split in splits.items()}
    batch_size = params.evaluate.batch_size
    device = resolve_device(params.device)

    def probabilities(head: Head, name: str) -> np.ndarray:
        return _split_probabilities(head, features, splits[name], name, batch_size)

    results: dict[str, Any] = {}
    for method in params.heads.methods:
        directory = Path(heads) / method
        cls_head = _load_checked_head(directory, "cls_id", n_labels, device)
        vqa_head = _load_checked_head(directory, "vqa", n_answers, device)
        results[method] = {
            "cls_id": classification_metrics(labels["cls_id_test"], probabilities(cls_head, "cls_id_test")),
            "cls_ood": classification_metrics(labels["cls_ood_test"], probabilities(cls_head, "cls_ood_test")),
            "vqa": vqa_metrics(labels["vqa_test"], probabilities(vqa_head, "vqa_test").argmax(axis=1),
                               splits["vqa_test"]["closed"].numpy()),
        }
        log.info("%s: cls_id acc %.3f, cls_ood acc %.3f, vqa acc %.3f", method,
                 results[method]["cls_id"]["accuracy"], results[method]["cls_ood"]["accuracy"],
                 results[method]["vqa"]["accuracy"])

    results["chance"] = {
        "cls_id": classification_chance(labels["cls_id_train"], labels["cls_id_test"], n_labels),
        "cls_ood": classification_chance(labels["cls_id_train"], labels["cls_ood_test"], n_labels),
        "vqa": vqa_chance(labels["vqa_train"], splits["vqa_train"]["closed"].numpy(),
                          labels["vqa_test"], splits["vqa_test"]["closed"].numpy()),
    }
    write_json(out, results)
    log.info("wrote metrics for %s to %s", ", ".join(params.heads.methods), out)
    return results
