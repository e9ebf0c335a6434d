"""Frozen-encoder features for every downstream task and split, cached to disk.

Heads train and evaluate on these tensors only, so the CLIP runs once per image and question (and, for
the training splits, once more per augmented view of each image); the file layout is documented in
`medvlm.data.cached_features`.
"""

from __future__ import annotations

import time
from functools import partial
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm import tqdm

from medvlm.data.augment import ViewAugmentation
from medvlm.data.manifest import META_FILE, load_images, manifest_path, read_manifest, to_pixels
from medvlm.data.cached_features import FEATURES_META, SHIFT_FILE, SPLITS, TRAINING_SPLITS, VIEW_KEYS, fuse_vqa
from medvlm.engine.feature_shift import measure_shift
from medvlm.io import DataError, atomic_dir, read_json, save_tensors, write_json
from medvlm.models.clip import MedClip, load_clip
from medvlm.params import AugmentParams, RobustnessParams
from medvlm.runtime import TrainingError, log
from medvlm.tasks import TASKS

ANSWER_TYPES = ("closed", "open")


@torch.inference_mode()
def embed_images(clip: MedClip, data_root: Path, paths: Sequence[str], batch_size: int, what: str,
                 augmentation: ViewAugmentation | None = None) -> torch.Tensor:
    """Normalised image embeddings (float32, CPU), decoding one batch of PNGs at a time; of an augmented
    view of each image when `augmentation` is given."""
    chunks = []
    start_time = time.perf_counter()
    with tqdm(total=len(paths), desc=f"embed {what}", unit="img") as bar:
        for start in range(0, len(paths), batch_size):
            batch = paths[start:start + batch_size]
            pixels = to_pixels(load_images(data_root, batch))
            if augmentation is not None:
                pixels = augmentation(pixels, batch)
            chunks.append(clip.encode_pixels(pixels.to(clip.device), normalize=True).float().cpu())
            bar.update(len(batch))
    seconds = time.perf_counter() - start_time
    log.info("embedded %d %s images in %.1f s (%.0f images/s)", len(paths), what, seconds,
             len(paths) / max(seconds, 1e-9))
    return torch.cat(chunks)


@torch.inference_mode()
def embed_texts(clip: MedClip, texts: Sequence[str], batch_size: int) -> torch.Tensor:
    """Normalised text embeddings (float32, CPU)."""
    chunks = [clip.encode_texts(list(texts[start:start + batch_size]), normalize=True).float().cpu()
              for start in range(0, len(texts), batch_size)]
    return torch.cat(chunks)


def _embed_deduplicated(values: Sequence[str], embed: Callable[[list[str]], torch.Tensor]) -> torch.Tensor:
    """One embedding row per value, but each distinct value (image path, question) is embedded only once."""
    unique = list(dict.fromkeys(values))
    position = {value: i for i, value in enumerate(unique)}
    return embed(unique)[torch.tensor([position[value] for value in values], dtype=torch.long)]


def _label_indices(frame: pd.DataFrame, labels: list[str], source: Path) -> torch.Tensor:
    index = {label: i for i, label in enumerate(labels)}
    unknown = frame[~frame["label"].isin(index)]
    if not unknown.empty:
        row = unknown.iloc[0]
        raise DataError(f"{source}: row with id {row['id']!r} has label {row['label']!r}, "
                        f"which is not among the labels in meta.json {labels}")
    return torch.tensor([index[label] for label in frame["label"]], dtype=torch.long)


def _closed_flags(frame: pd.DataFrame, source: Path) -> torch.Tensor:
    bad = frame[~frame["answer_type"].isin(ANSWER_TYPES)]
    if not bad.empty:
        row = bad.iloc[0]
        raise DataError(f"{source}: row with id {row['id']!r} has answer_type {row['answer_type']!r}; "
                        f"allowed: {list(ANSWER_TYPES)}")
    return torch.tensor((frame["answer_type"] == "closed").to_numpy(), dtype=torch.uint8)


def _read_labels(data: Path) -> list[str]:
    meta = read_json(data / META_FILE)
    labels = meta.get("labels") if isinstance(meta, dict) else None
    if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(label, str) for label in labels):
        raise DataError(f"{data / META_FILE}: 'labels' must be a list of at least two class names")
    if len(set(labels)) != len(labels):
        raise DataError(f"{data / META_FILE}: 'labels' has duplicates: {labels}")
    return labels


def _targets(
    frames: dict[str, pd.DataFrame], labels: list[str], data: Path
) -> tuple[dict[str, dict[str, torch.Tensor]], list[str]]:
    """Per split: `y` (and VQA's `closed`); plus the answer vocabulary of the VQA train split(s) (sorted)."""
    vqa_train = [name for name, (task, split) in SPLITS.items() if task.kind == "vqa" and split == "train"]
    answers = sorted(set().union(*(frames[name]["answer"] for name in vqa_train)))
    if vqa_train and len(answers) < 2:
        raise DataError(f"{manifest_path(data, SPLITS[vqa_train[0]][0].manifest)}: the train split has "
                        f"{len(answers)} distinct answer(s); a VQA head needs two or more")
    answer_index = {answer: i for i, answer in enumerate(answers)}
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    for name, (task, _) in SPLITS.items():
        source = manifest_path(data, task.manifest)
        if task.kind == "vqa":
            y = [answer_index.get(answer, -1) for answer in frames[name]["answer"]]  # -1: not in the train vocabulary
            tensors[name] = {"y": torch.tensor(y, dtype=torch.long), "closed": _closed_flags(frames[name], source)}
        else:
            tensors[name] = {"y": _label_indices(frames[name], labels, source)}
    return tensors, answers


def _check_finite_features(tensors: dict[str, dict[str, torch.Tensor]]) -> None:
    """Stop before writing when an embedding is NaN or infinite (a diverged CLIP), naming split, view and rows."""
    for name, split in tensors.items():
        for key in ("x", *VIEW_KEYS):
            if key in split and not bool(torch.isfinite(split[key]).all()):
                rows = torch.nonzero(~torch.isfinite(split[key]).all(dim=1)).flatten().tolist()
                raise TrainingError(f"features: {name} {key} has non-finite values in {len(rows)} row(s), first "
                                    f"{rows[:5]}; the CLIP in use gives NaN/inf embeddings (re-train it)")


def _feature_shifts(model: MedClip, frames: dict[str, pd.DataFrame], tensors: dict[str, dict[str, torch.Tensor]],
                    questions: dict[str, torch.Tensor], *, data_root: Path, robust: RobustnessParams,
                    n_images: int, batch_size: int, seed: int) -> dict[str, Any]:
    """Per task with a training split: how far pixel PGD at the evaluation's main radius moves its u
    (engine/feature_shift.py); the budget of RAN's adversarial margin when `heads.ran.adv_eps` is `measured`."""
    shifts = {}
    for task_index, name in enumerate(TRAINING_SPLITS):
        task = SPLITS[name][0]
        images, question = list(frames[name]["image"]), questions.get(name)

        def embed(pixels: torch.Tensor, rows: list[int], question: torch.Tensor | None = question) -> torch.Tensor:
            image = model.encode_pixels(pixels, normalize=True)
            return image if question is None else fuse_vqa(image, question[rows].to(image.device))

        def load(rows: list[int], images: list[str] = images) -> torch.Tensor:
            return to_pixels(load_images(data_root, [images[row] for row in rows])).to(model.device)

        shifts[task.name] = measure_shift(
            embed=embed, load_pixels=load, n_items=len(images), features=tensors[name]["x"], n_images=n_images,
            eps_255=robust.main_eps_255, steps=robust.steps, step_fraction=robust.step_fraction,
            random_start=robust.random_start, batch_size=batch_size, seed=seed * 1000 + task_index, what=name)
    return shifts


def write_features(*, clip: Path, data: Path, out: Path, data_root: Path, batch_size: int, augment: AugmentParams,
                   robust: RobustnessParams, shift_images: int, seed: int, device: torch.device) -> None:
    """Embed every downstream split with the frozen CLIP in `clip` and write the cached features to `out`,
    with the measured feature shift under the evaluation's pixel attack (`SHIFT_FILE`)."""
    labels = _read_labels(data)
    frames = {name: read_manifest(data, task.manifest, data_root, split=split)
              for name, (task, split) in SPLITS.items()}
    tensors, answers = _targets(frames, labels, data)  # checks every label before any image is embedded

    model = load_clip(clip, device=device)
    questions = {}
    for name, (task, _) in SPLITS.items():
        # The training splits also get one feature per augmented view: x, x_view1, x_view2.
        keys = ("x", *VIEW_KEYS) if name in TRAINING_SPLITS else ("x",)
        images = list(frames[name]["image"])
        # VQA: several questions per image and a few question templates, so both dedupe well.
        question = (_embed_deduplicated(list(frames[name]["question"]), partial(embed_texts, model, batch_size=batch_size))
                    if task.kind == "vqa" else None)
        if question is not None:
            questions[name] = question
        for view, key in enumerate(keys):  # view 0 is the image itself
            augmentation = ViewAugmentation(augment, seed=seed, view=view) if view else None
            embed = partial(embed_images, model, data_root, batch_size=batch_size, what=f"{name} {key}",
                            augmentation=augmentation)
            image = _embed_deduplicated(images, embed)
            # VQA views fuse the augmented image with the same question feature.
            tensors[name][key] = image if question is None else fuse_vqa(image, question)

    _check_finite_features(tensors)
    shifts = _feature_shifts(model, frames, tensors, questions, data_root=data_root, robust=robust,
                             n_images=shift_images, batch_size=batch_size, seed=seed)
    vqa_test = [name for name, (task, split) in SPLITS.items() if task.kind == "vqa" and split == "test"]
    out_of_vocab = sum(int((tensors[name]["y"] < 0).sum()) for name in vqa_test)
    if out_of_vocab:
        log.info("%d of %d VQA test answers are not in the train answer vocabulary; they count as wrong",
                 out_of_vocab, sum(len(frames[name]) for name in vqa_test))
    meta: dict[str, Any] = {
        "labels": labels,
        "answers": answers,
        "dims": {name: tensors[task.train_split or task.test_split]["x"].shape[1] for name, task in TASKS.items()},
        "counts": {name: int(t["y"].shape[0]) for name, t in tensors.items()},
        "vqa_test_out_of_vocab": out_of_vocab,
    }
    with atomic_dir(out) as tmp:
        for name, split_tensors in tensors.items():
            save_tensors(tmp / f"{name}.safetensors", split_tensors)
        write_json(tmp / FEATURES_META, meta)
        write_json(tmp / SHIFT_FILE, shifts)
    log.info("wrote features for %s to %s", ", ".join(tensors), out)
