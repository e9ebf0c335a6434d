"""The noisy pre-training set: which pairs are perturbed, the image attack on them, storage and stats.

Selection is nested: one seeded permutation of the train pairs, of which the first ⌊noise_ratio·N⌋ are
perturbed, so the 5 % set is a subset of the 10 % set. Targets and success-rate candidates are drawn row by
row in that same order, so a pair shared by two ratios gets the same target and candidates in both.
The val split is never perturbed. Perturbed images are projected onto the 1/255 grid inside the ε-ball of
the original 8-bit image and stored as PNG; every statistic is measured on the reloaded PNGs.
"""

from __future__ import annotations

import math
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from medvlm.attacks.pgd import pgd_linf, targeted_objective, untargeted_objective
from medvlm.data.manifest import (
    META_FILE,
    load_images,
    manifest_path,
    read_manifest,
    save_png,
    to_pixels,
    write_manifest,
)
from medvlm.io import DataError, atomic_dir, write_json
from medvlm.models.clip import MedClip, load_clip
from medvlm.params import Params
from medvlm.runtime import log, resolve_device, seed_everything

# Independent random streams derived from params.seed (numpy SeedSequence([seed, stream]) keeps streams
# of different seeds uncorrelated, unlike seed + offset).
_SELECTION, _TARGETS, _CANDIDATES, _RANDOM_START = range(4)
_SAFE_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")
_TEXT_BATCH = 512


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream])


def select_perturbed(n_train: int, noise_ratio: float, seed: int) -> np.ndarray:
    """Positions (into the train rows) of the pairs to perturb, in perturbation order.

    The permutation depends only on `seed` and `n_train`, so a smaller ratio selects a prefix of a larger one.
    """
    if not 0 <= noise_ratio < 1:
        raise ValueError(f"noise_ratio must lie in [0, 1), got {noise_ratio}")
    order = _rng(seed, _SELECTION).permutation(n_train)
    # The small tolerance keeps e.g. 0.29 * 100 = 28.999999999999996 from flooring to 28.
    return order[: math.floor(noise_ratio * n_train + 1e-9)]


def draw_targets(rows: np.ndarray, n_train: int, findings: np.ndarray | None, seed: int) -> np.ndarray:
    """One target position per row: a train image with a different finding, drawn uniformly (seeded).

    Without a `finding` column any other train image is drawn. Draws go row by row, so the targets of a
    prefix of `rows` do not depend on the rows after it.
    """
    rng = _rng(seed, _TARGETS)
    targets = np.empty(len(rows), dtype=np.int64)
    pools: dict[Any, np.ndarray] = {}
    for k, row in enumerate(rows):
        if findings is None:
            if n_train < 2:
                raise DataError("the targeted attack needs at least two train images")
            pick = int(rng.integers(n_train - 1))
            targets[k] = pick + (pick >= row)
            continue
        finding = findings[row]
        if finding not in pools:
            pools[finding] = np.flatnonzero(findings != finding)
        pool = pools[finding]
        if pool.size == 0:
            raise DataError(f"every train pair has finding {finding!r}; the targeted attack needs another finding "
                            "to draw targets from (use attack.image.objective=untargeted)")
        targets[k] = pool[rng.integers(pool.size)]
    return targets


def draw_candidates(own_captions: np.ndarray, n_captions: int, k: int, seed: int) -> np.ndarray:
    """For each row, min(k, n_captions) - 1 distinct caption indices other than its own (seeded, row by row).

    Candidates are distinct caption *texts*: a second copy of the own caption would tie with it.
    """
    if n_captions < 2:
        raise DataError("all train captions are identical; the attack success rate needs at least two")
    rng = _rng(seed, _CANDIDATES)
    others = min(k, n_captions) - 1
    candidates = np.empty((len(own_captions), others), dtype=np.int64)
    for row, own in enumerate(own_captions):
        picks = rng.choice(n_captions - 1, size=others, replace=False)
        candidates[row] = picks + (picks >= own)
    return candidates


def quantize_to_ball(adversarial: torch.Tensor, original: torch.Tensor, eps_255: float) -> torch.Tensor:
    """Round float pixels N×1×H×W in [0, 1] to uint8 N×H×W, at most ⌊eps_255⌋ levels from `original` (uint8)."""
    levels = math.floor(eps_255)
    reference = original.to(torch.float32)
    delta = (adversarial.detach().squeeze(1).cpu() * 255.0).round() - reference
    return (reference + delta.clamp(-levels, levels)).clamp(0, 255).to(torch.uint8)


def _relative_to_root(out: Path, data: Path, data_root: Path) -> str:
    """The output folder as written in manifests: relative to the data root, with its final name."""
    out_resolved, root = out.resolve(), data_root.resolve()
    if not out_resolved.is_relative_to(root) or out_resolved == root:
        raise DataError(f"output folder {out} must lie inside the data root {data_root}: "
                        "manifest image paths are relative to it")
    if out_resolved == data.resolve():
        raise DataError(f"output folder {out} is the input folder; the attack never overwrites its input")
    return out_resolved.relative_to(root).as_posix()


def _check_ids(ids: pd.Series, source: Path) -> None:
    bad = [i for i in ids if not _SAFE_ID.match(i)]
    if bad:
        raise DataError(f"{source}: ids {bad[:5]} cannot be used as file names "
                        "(letters, digits, '.', '_', '-' only)")
    duplicated = ids[ids.duplicated()].unique().tolist()
    if duplicated:
        raise DataError(f"{source}: duplicate train ids {duplicated[:5]}")


@torch.no_grad()
def _embed_images(clip: MedClip, images: torch.Tensor) -> torch.Tensor:
    return clip.encode_pixels(to_pixels(images).to(clip.device))


@torch.no_grad()
def _embed_captions(clip: MedClip, captions: list[str]) -> torch.Tensor:
    chunks = range(0, len(captions), _TEXT_BATCH)
    return torch.cat([clip.encode_texts(captions[i : i + _TEXT_BATCH]) for i in chunks])


def _caption_scores(images: torch.Tensor, own: torch.Tensor,
                    candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine to the own caption, and whether it beats every candidate caption (top-1)."""
    own_similarity = (images * own).sum(dim=-1)
    best_other = torch.einsum("nd,nkd->nk", images, candidates).amax(dim=-1)
    return own_similarity, own_similarity > best_other


def _measure(clip: MedClip, original: torch.Tensor, stored: torch.Tensor, own: torch.Tensor, candidates: torch.Tensor,
             targets: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Per-pair statistics of one batch, before (original uint8) and after (stored uint8) the attack."""
    before, after = _embed_images(clip, original), _embed_images(clip, stored)
    difference = stored.to(torch.float32) - original.to(torch.float32)
    measured = dict(zip(("similarity_before", "top1_before"), _caption_scores(before, own, candidates)))
    measured.update(zip(("similarity_after", "top1_after"), _caption_scores(after, own, candidates)))
    measured["linf_255"] = difference.abs().amax(dim=(1, 2))
    measured["l2"] = (difference / 255.0).flatten(1).norm(dim=1)
    if targets is not None:
        measured["target_similarity_before"] = (before * targets).sum(dim=-1)
        measured["target_similarity_after"] = (after * targets).sum(dim=-1)
    return measured


def _attack_and_store(
    clip: MedClip, train: pd.DataFrame, chosen: np.ndarray, *, params: Params, data_root: Path, image_dir: Path,
    source: Path,
) -> dict[str, torch.Tensor]:
    """Attack the chosen train rows batch by batch, store them as PNGs, return per-pair measurements."""
    config, seed = params.attack.image, params.seed
    caption_codes, unique_captions = pd.factorize(train["caption"])
    caption_table = _embed_captions(clip, list(unique_captions))
    candidates = draw_candidates(caption_codes[chosen], len(unique_captions), params.attack.success_candidates, seed)
    if config.objective == "targeted":
        findings = train["finding"].to_numpy() if "finding" in train.columns else None
        target_paths = train["image"].to_numpy()[draw_targets(chosen, len(train), findings, seed)]
    start_seed = int(np.random.SeedSequence([seed, _RANDOM_START]).generate_state(1, dtype=np.uint64)[0] >> 1)
    random_start = torch.Generator().manual_seed(start_seed)

    measured: dict[str, list[torch.Tensor]] = {}
    batch_size, started = params.attack.batch_size, time.perf_counter()
    with tqdm(total=len(chosen), desc="attack", unit="img") as bar:
        for begin in range(0, len(chosen), batch_size):
            batch = slice(begin, begin + batch_size)
            rows = chosen[batch]
            original = load_images(data_root, train["image"].iloc[rows].tolist())
            if original.shape[-2:] != (clip.image_size, clip.image_size):
                raise DataError(f"{source}: images are {tuple(original.shape[-2:])} pixels but the surrogate "
                                f"expects {clip.image_size}×{clip.image_size}")
            own = caption_table[caption_codes[rows]]
            if config.objective == "targeted":
                targets = _embed_images(clip, load_images(data_root, target_paths[batch].tolist()))
                objective = targeted_objective(clip.encode_pixels, targets)
            else:
                targets, objective = None, untargeted_objective(clip.encode_pixels, own)
            adversarial = pgd_linf(objective, to_pixels(original).to(clip.device), eps=config.eps_255 / 255,
                                   step=config.step_255 / 255, steps=config.steps, random_start=config.random_start,
                                   generator=random_start)
            names = [f"{image_id}.png" for image_id in train["id"].iloc[rows]]
            for image, name in zip(quantize_to_ball(adversarial, original, config.eps_255).numpy(), names):
                save_png(image, image_dir / name)
            stored = load_images(image_dir, names)  # measure what was actually written, not the float iterate
            others = caption_table[torch.from_numpy(candidates[batch])]
            for key, values in _measure(clip, original, stored, own, others, targets).items():
                # float64: means and rates free of float32 rounding
                measured.setdefault(key, []).append(values.to(torch.float64).cpu())
            bar.update(len(rows))
    elapsed = time.perf_counter() - started
    log.info("attack: %d images in %.1f s (%.1f images/s, %d PGD steps)", len(chosen), elapsed,
             len(chosen) / max(elapsed, 1e-9), config.steps)
    return {key: torch.cat(values) for key, values in measured.items()}


def summarise(measured: dict[str, torch.Tensor] | None, *, params: Params, n_train: int,
              pairs_perturbed: int) -> dict[str, Any]:
    """The metrics JSON: counts always, means over perturbed pairs (null when nothing was perturbed)."""
    targeted = params.attack.image.objective == "targeted"

    def mean(key: str) -> float | None:
        return None if measured is None else float(measured[key].mean())

    before, after = mean("similarity_before"), mean("similarity_after")
    top1_after = mean("top1_after")
    summary: dict[str, Any] = {
        "noise_ratio": params.noise_ratio,
        "n_train": n_train,
        "pairs_perturbed": pairs_perturbed,
        "objective": params.attack.image.objective,
        "eps_255": params.attack.image.eps_255,
        "similarity_before": before,
        "similarity_after": after,
        "similarity_drop": None if measured is None else before - after,
        "top1_before": mean("top1_before"),
        "top1_after": top1_after,
        "success_rate": None if measured is None else 1.0 - top1_after,
        "linf_255_mean": mean("linf_255"),
        "l2_mean": mean("l2"),
    }
    if targeted:
        summary["target_similarity_before"] = mean("target_similarity_before")
        summary["target_similarity_after"] = mean("target_similarity_after")
    return summary


def attack_stage(*, params: Params, surrogate: Path, data: Path, out: Path, metrics: Path,
                 data_root: Path = Path("data")) -> dict[str, Any]:
    """Write the noisy pre-training set to `out` (manifest, perturbed PNGs, meta.json) and its stats to `metrics`."""
    seed_everything(params.seed)
    source = manifest_path(data, "pretrain")
    out_relative = _relative_to_root(Path(out), Path(data), Path(data_root))
    frame = read_manifest(data, "pretrain", data_root)
    train_rows = np.flatnonzero(frame["split"].to_numpy() == "train")
    if train_rows.size == 0:
        raise DataError(f"{source}: no 'train' rows; the attack perturbs train pairs only")
    train = frame.iloc[train_rows].reset_index(drop=True)
    _check_ids(train["id"], source)
    chosen = select_perturbed(len(train), params.noise_ratio, params.seed)
    clip = load_clip(surrogate, resolve_device(params.device))
    log.info("attack: perturbing %d of %d train pairs (noise_ratio=%s, objective=%s)", len(chosen), len(train),
             params.noise_ratio, params.attack.image.objective)

    with atomic_dir(out) as tmp:
        image_dir = tmp / "images"
        image_dir.mkdir()
        measured = (_attack_and_store(clip, train, chosen, params=params, data_root=Path(data_root),
                                      image_dir=image_dir, source=source) if len(chosen) else None)
        noisy = frame.copy()
        noisy["perturbed"] = 0
        perturbed_rows = train_rows[chosen]
        noisy.loc[perturbed_rows, "perturbed"] = 1
        noisy.loc[perturbed_rows, "image"] = [f"{out_relative}/images/{image_id}.png"
                                              for image_id in frame["id"].iloc[perturbed_rows]]
        write_manifest(noisy, tmp, "pretrain")
        if (Path(data) / META_FILE).is_file():
            shutil.copyfile(Path(data) / META_FILE, tmp / META_FILE)
        summary = summarise(measured, params=params, n_train=len(train), pairs_perturbed=len(chosen))
        write_json(metrics, summary)  # inside the block: a failure before this point leaves neither output
    return summary
