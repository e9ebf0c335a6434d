"""Choosing a head's settings on a validation split carved from the training data, never on test items.

A seeded quarter of each head task's training images (VQA: whole images, so that no image has questions on
both sides) is held out. Every variant trains on the rest with the same batch order and is scored on the
held-out items, clean and under the evaluation's own pixel PGD at its main radius through the frozen encoder
(`eval.robustness.robust_correct`). Variants are then compared with the study's paired contrasts
(`report.stats`): per seed, the per-item differences against a reference variant; across seeds, the
random-effects standard error; Holm within the family. `benchmarks/tune_ran.py` runs it for RAN.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medvlm.data.cached_features import load_feature_split, read_feature_shifts, read_features_meta
from medvlm.data.manifest import load_images, read_manifest, to_pixels
from medvlm.engine.fit_head import fit_head, task_seed
from medvlm.eval.robustness import batched_robust_correct, encoder_head_classifier
from medvlm.losses import build_loss
from medvlm.methods import HeadTrainingParams
from medvlm.models.clip import MedClip
from medvlm.models.heads import build_head
from medvlm.params import RobustnessParams
from medvlm.report.stats import holm, paired_estimate, verdict
from medvlm.runtime import seed_everything
from medvlm.tasks import TASKS, head_tasks

VALIDATION_SHARE = 0.25


@dataclass(frozen=True)
class Split:
    """One head task's training split cut into fit and validation rows; `groups` are the validation rows'
    image ids (VQA clusters)."""
    task: str
    fit: torch.Tensor
    validation: torch.Tensor
    groups: np.ndarray


def carve_validation(images: Sequence[str], *, seed: int, task: str, share: float = VALIDATION_SHARE) -> Split:
    """A seeded `share` of the distinct images (all their rows) for validation, the rest to fit on."""
    distinct = list(dict.fromkeys(images))
    if len(distinct) < 2:
        raise ValueError(f"{task}: {len(distinct)} training image(s); a validation split needs two or more")
    generator = torch.Generator().manual_seed(zlib.crc32(f"{seed}/{task}/val".encode()))
    order = torch.randperm(len(distinct), generator=generator)
    held = {distinct[i] for i in order[:max(1, round(share * len(distinct)))].tolist()}
    in_validation = torch.tensor([image in held for image in images])
    validation = in_validation.nonzero().squeeze(1)
    image_id = {image: index for index, image in enumerate(distinct)}
    return Split(task=task, fit=(~in_validation).nonzero().squeeze(1), validation=validation,
                 groups=np.array([image_id[images[i]] for i in validation.tolist()]))


@dataclass
class TaskData:
    split: Split
    tensors: dict[str, torch.Tensor]
    pixels: torch.Tensor
    """Validation images, [0, 1]."""
    questions: torch.Tensor | None
    n_classes: int
    measured_adv_eps: float | None


def load_task_data(*, features: Path, data: Path, data_root: Path, seed: int, device: torch.device) -> list[TaskData]:
    """Every head task's cached training features, split, with the validation rows' pixels and questions."""
    meta = read_features_meta(features)
    shifts = read_feature_shifts(features)
    tasks = []
    for task_name, split_name in head_tasks().items():
        task = TASKS[task_name]
        tensors = load_feature_split(features, split_name)
        frame = read_manifest(data, task.manifest, data_root, split="train")
        images = list(frame["image"])
        if len(images) != len(tensors["y"]):
            raise ValueError(f"{split_name}: {len(images)} manifest rows but {len(tensors['y'])} cached features")
        split = carve_validation(images, seed=seed, task=task_name)
        rows = split.validation.tolist()
        pixels = to_pixels(load_images(data_root, [images[i] for i in rows])).to(device)
        dim = meta["dims"][task_name] // (3 if task.kind == "vqa" else 1)
        questions = tensors["x"][split.validation, dim:2 * dim].to(device) if task.kind == "vqa" else None
        tasks.append(TaskData(split=split, tensors=tensors, pixels=pixels, questions=questions,
                              n_classes=len(meta[task.classes]),
                              measured_adv_eps=shifts.get(task_name, {}).get("adv_eps")))
    return tasks


def score_variant(*, method: str, settings: HeadTrainingParams, clip: MedClip, task_data: TaskData,
                  robust: RobustnessParams, seed: int, device: torch.device) -> dict[str, np.ndarray]:
    """Fit one head on the fit rows and score the validation rows: per-item clean and robust correctness."""
    split, tensors = task_data.split, task_data.tensors
    generator = seed_everything(task_seed(seed, split.task))  # the same initial head and batch order for every variant
    head = build_head(method, tensors["x"].shape[1], task_data.n_classes).to(device)
    loss = build_loss(method, **settings.loss_options(measured_adv_eps=task_data.measured_adv_eps)).to(device)
    fit_head(head, loss, {key: value[split.fit].to(device) for key, value in tensors.items() if key in loss.inputs},
             epochs=settings.epochs, batch_size=settings.batch_size, lr=settings.lr,
             weight_decay=settings.weight_decay, generator=generator, task=split.task)
    labels = tensors["y"][split.validation].to(device)
    with torch.no_grad():
        clean = (head(tensors["x"][split.validation].to(device)).argmax(dim=1) == labels).cpu().numpy()
    classify = encoder_head_classifier(clip, head, vqa=TASKS[split.task].kind == "vqa")
    robust_flags = batched_robust_correct(classify, task_data.pixels, labels, task_data.questions,
                                          eps=robust.main_eps_255, steps=robust.steps, robust=robust,
                                          generator=torch.Generator().manual_seed(seed)).cpu().numpy()
    return {"clean": clean.astype(float), "robust": robust_flags.astype(float)}


Scores = Mapping[str, Mapping[int, Mapping[str, Mapping[str, np.ndarray]]]]
"""variant -> seed -> task -> metric -> per-item correctness on that seed's validation rows."""


def contrast_rows(*, scores: Scores, reference: str, groups: Mapping[int, Mapping[str, np.ndarray]],
                  metrics: Sequence[str] = ("clean", "robust"), sign: int = 1) -> list[dict[str, Any]]:
    """Each variant minus `reference`, per metric, on the mean over tasks of the validation accuracy; one
    Holm family per metric. `sign`: the direction a variant is hoped to move it (for the verdict)."""
    rows = []
    for metric in metrics:
        family = []
        for variant in scores:
            if variant == reference:
                continue
            seeds = []
            for seed, tasks in scores[variant].items():
                n_tasks = len(tasks)
                seeds.append([((tasks[task][metric] - scores[reference][seed][task][metric]) / n_tasks,
                               groups[seed][task]) for task in tasks])
            family.append((variant, paired_estimate(seeds=seeds)))
        adjusted = holm([estimate.p for _, estimate in family])
        for (variant, estimate), p_holm in zip(family, adjusted, strict=True):
            rows.append({"variant": variant, "metric": metric, "estimate": estimate.estimate, "low": estimate.low,
                         "high": estimate.high, "p": estimate.p, "p_holm": float(p_holm), "mdd": estimate.mdd,
                         "seeds": estimate.seeds,
                         "verdict": verdict(p_adjusted=float(p_holm), estimate=estimate.estimate, sign=sign)})
    return rows


def mean_accuracy(scores: Scores, variant: str, metric: str) -> tuple[float, float]:
    """Mean over seeds of the mean over tasks, and its SD over seeds."""
    per_seed = [np.mean([tasks[task][metric].mean() for task in tasks]) for tasks in scores[variant].values()]
    return float(np.mean(per_seed)), float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0
