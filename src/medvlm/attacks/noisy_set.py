"""The noisy pre-training set (selection, image/caption noise, storage, stats, gallery).

The first ⌊noise_ratio·N⌋ pairs of a seeded permutation of the train pairs are perturbed (`selection`);
the val split never is. Per `noise_type`:
- `image`: the image is perturbed (L∞, ε = attack.image.eps_255 / 255);
- `caption`: up to attack.caption.max_words keyword words of the caption are substituted;
- `both`: the caption first, then the image (Co-Attack order). With the `untargeted` image objective the
  image is attacked against the *perturbed* caption; with `targeted` (the default) the image objective is
  the target image, which does not involve the caption.
`noise_kind: adversarial` uses PGD on the surrogate and the HotFlip caption attack; `random` uses uniform
L∞ noise and random substitutions of the same budget (the control). Perturbed images are projected onto
the 1/255 grid inside the ε-ball of the original 8-bit image and stored losslessly in one image pack
(`images.safetensors`); every statistic is measured on the stored 8-bit images and the written captions.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from medvlm.attacks.caption import hotflip_captions, word_embeddings
from medvlm.attacks.gallery import GalleryPair, write_gallery
from medvlm.attacks.keywords import SubstitutionVocabulary, keyword_vocabulary, tokenizer_whole_words, words_changed
from medvlm.attacks.noise_stats import measure_batch, summarise
from medvlm.attacks.pgd import pgd_linf, quantize_to_ball, targeted_objective, untargeted_objective
from medvlm.attacks.random_noise import random_substitutions, uniform_linf_noise
from medvlm.attacks.selection import (
    Stream,
    draw_candidates,
    draw_targets,
    seeded_generator,
    seeded_rng,
    select_perturbed,
)
from medvlm.data.image_packs import PACK_SUFFIX, pack_reference, write_pack
from medvlm.data.manifest import (
    META_FILE,
    load_images,
    manifest_path,
    read_manifest,
    to_pixels,
    write_manifest,
)
from medvlm.io import DataError, atomic_dir, write_json
from medvlm.models.clip import MedClip, load_clip
from medvlm.params import AttackParams
from medvlm.runtime import log, seed_everything

GALLERY_FILE = "gallery.png"
PACK_FILE = f"images{PACK_SUFFIX}"
"""The perturbed images, in the order of the perturbed rows (medvlm.data.image_packs)."""


@dataclass(frozen=True)
class NoiseSpec:
    """What shapes the noisy set: which pairs (seed, noise_ratio), which noise and its budget."""

    seed: int
    noise_ratio: float
    noise_type: str
    noise_kind: str
    attack: AttackParams
_SAFE_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")
_TEXT_BATCH = 512


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


@dataclass
class _NoiseMaker:
    """Everything the per-batch noise needs, prepared once for the stage."""

    clip: MedClip
    spec: NoiseSpec
    vocabulary: SubstitutionVocabulary | None = None
    substitute_embeddings: torch.Tensor | None = None
    image_noise: torch.Generator | None = None
    caption_noise: np.random.Generator | None = None

    @property
    def noises_images(self) -> bool:
        return self.spec.noise_type in ("image", "both")

    @property
    def noises_captions(self) -> bool:
        return self.spec.noise_type in ("caption", "both")

    def captions(self, captions: list[str], clean_images: torch.Tensor) -> list[str]:
        config = self.spec.attack.caption
        if self.spec.noise_kind == "random":
            return random_substitutions(captions, self.vocabulary, max_words=config.max_words, rng=self.caption_noise)
        return hotflip_captions(self.clip, captions, clean_images, self.vocabulary, self.substitute_embeddings,
                                max_words=config.max_words, candidates=config.candidates)

    def images(self, original: torch.Tensor, own_captions: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        config = self.spec.attack.image
        pixels = to_pixels(original).to(self.clip.device)
        if self.spec.noise_kind == "random":
            noisy = uniform_linf_noise(pixels, eps=config.eps_255 / 255, generator=self.image_noise)
        else:
            objective = (targeted_objective(self.clip.encode_pixels, targets) if targets is not None
                         else untargeted_objective(self.clip.encode_pixels, own_captions))
            noisy = pgd_linf(objective, pixels, eps=config.eps_255 / 255, step=config.step_255 / 255,
                             steps=config.steps, random_start=config.random_start, generator=self.image_noise,
                             autocast_bf16=config.bf16)
        return quantize_to_ball(noisy, original, config.eps_255)


def _targeted(spec: NoiseSpec) -> bool:
    """Whether the image noise has target images (reported: the similarity to them)."""
    return spec.noise_type != "caption" and spec.attack.image.objective == "targeted"


def _noise_maker(clip: MedClip, spec: NoiseSpec, captions: pd.Series, source: Path) -> _NoiseMaker:
    seed = spec.seed
    image_stream = Stream.RANDOM_IMAGE if spec.noise_kind == "random" else Stream.RANDOM_START
    maker = _NoiseMaker(clip, spec, image_noise=seeded_generator(seed, image_stream),
                        caption_noise=seeded_rng(seed, Stream.RANDOM_CAPTION))
    if maker.noises_captions:
        config = spec.attack.caption
        whole_words = tokenizer_whole_words(clip.tokenizer.encoder) if config.vocabulary == "tokenizer" else None
        maker.vocabulary = keyword_vocabulary(captions, source=str(source), same_group=config.same_group,
                                              tokenizer_words=whole_words)
        log.info("attack: %d keywords may change into %d substitutes", len(maker.vocabulary.keywords),
                 len(maker.vocabulary.substitutes))
        if spec.noise_kind == "adversarial":
            maker.substitute_embeddings = word_embeddings(clip, maker.vocabulary.substitutes)
    return maker


def _perturb_and_store(clip: MedClip, train: pd.DataFrame, chosen: np.ndarray, *, spec: NoiseSpec, data_root: Path,
                       source: Path) -> tuple[dict[str, torch.Tensor], list[str], list[np.ndarray], list[GalleryPair]]:
    """Perturb the chosen train rows batch by batch; return per-pair measurements, the stored captions and (with
    image noise) the stored images of the chosen rows, in order, and the gallery pairs."""
    seed = spec.seed
    maker = _noise_maker(clip, spec, train["caption"], source)
    caption_codes, unique_captions = pd.factorize(train["caption"])
    caption_table = _embed_captions(clip, list(unique_captions))
    candidates = draw_candidates(caption_codes[chosen], len(unique_captions), spec.attack.success_candidates, seed)
    targeted = _targeted(spec)
    if targeted:
        findings = train["finding"].to_numpy() if "finding" in train.columns else None
        target_paths = train["image"].to_numpy()[draw_targets(chosen, len(train), findings, seed)]

    measured: dict[str, list[torch.Tensor]] = {}
    stored_captions: list[str] = []
    stored_images: list[np.ndarray] = []
    gallery: list[GalleryPair] = []
    batch_size, started = spec.attack.batch_size, time.perf_counter()
    with tqdm(total=len(chosen), desc=f"attack ({spec.noise_kind} {spec.noise_type})", unit="pair") as bar:
        for begin in range(0, len(chosen), batch_size):
            batch = slice(begin, begin + batch_size)
            rows = chosen[batch]
            original = load_images(data_root, train["image"].iloc[rows].tolist())
            if original.shape[-2:] != (clip.image_size, clip.image_size):
                raise DataError(f"{source}: images are {tuple(original.shape[-2:])} pixels but the surrogate "
                                f"expects {clip.image_size}×{clip.image_size}")
            clean_images = _embed_images(clip, original)
            clean_own = caption_table[caption_codes[rows]]
            captions = train["caption"].iloc[rows].tolist()
            noisy_captions = maker.captions(captions, clean_images) if maker.noises_captions else captions
            noisy_own = _embed_captions(clip, noisy_captions) if maker.noises_captions else clean_own
            targets = _embed_images(clip, load_images(data_root, target_paths[batch].tolist())) if targeted else None
            if maker.noises_images:
                # The 8-bit images on the 1/255 grid, exactly what the pack stores (measured as stored).
                stored = maker.images(original, noisy_own, targets).cpu().to(torch.uint8).contiguous()
                stored_images.append(stored.numpy())
            else:
                stored = original
            changed = torch.tensor([words_changed(a, b) for a, b in zip(captions, noisy_captions)])
            batch_measures = measure_batch(
                clean_images=clean_images, stored_images=_embed_images(clip, stored), original=original,
                stored=stored, clean_captions=clean_own, stored_captions=noisy_own,
                candidates=caption_table[torch.from_numpy(candidates[batch])], words_changed=changed, targets=targets)
            for key, values in batch_measures.items():
                measured.setdefault(key, []).append(values)
            stored_captions.extend(noisy_captions)
            for k in range(min(len(rows), spec.attack.gallery_pairs - len(gallery))):
                gallery.append(GalleryPair(original[k].numpy(), stored[k].numpy(), captions[k], noisy_captions[k]))
            bar.update(len(rows))
    elapsed = time.perf_counter() - started
    log.info("attack: %d pairs in %.1f s (%.1f pairs/s)", len(chosen), elapsed, len(chosen) / max(elapsed, 1e-9))
    return {key: torch.cat(values) for key, values in measured.items()}, stored_captions, stored_images, gallery


def write_noisy_set(*, spec: NoiseSpec, surrogate: Path, data: Path, out: Path, metrics: Path, data_root: Path,
                    device: torch.device) -> dict[str, Any]:
    """Write the noisy pre-training set to `out` (manifest, perturbed PNGs, gallery, meta.json) and its stats
    to `metrics`."""
    seed_everything(spec.seed)
    source = manifest_path(data, "pretrain")
    out_relative = _relative_to_root(Path(out), Path(data), Path(data_root))
    frame = read_manifest(data, "pretrain", data_root)
    train_rows = np.flatnonzero(frame["split"].to_numpy() == "train")
    if train_rows.size == 0:
        raise DataError(f"{source}: no 'train' rows; the attack perturbs train pairs only")
    train = frame.iloc[train_rows].reset_index(drop=True)
    _check_ids(train["id"], source)
    chosen = select_perturbed(len(train), spec.noise_ratio, spec.seed)
    clip = load_clip(surrogate, device)
    log.info("attack: %s %s noise on %d of %d train pairs (noise_ratio=%s, image objective=%s)", spec.noise_kind,
             spec.noise_type, len(chosen), len(train), spec.noise_ratio, spec.attack.image.objective)

    with atomic_dir(out) as tmp:
        measured, captions, images, gallery = (
            _perturb_and_store(clip, train, chosen, spec=spec, data_root=Path(data_root), source=source)
            if len(chosen) else (None, [], [], []))
        noisy = frame.copy()
        noisy["perturbed"] = 0
        perturbed_rows = train_rows[chosen]
        noisy.loc[perturbed_rows, "perturbed"] = 1
        noisy.loc[perturbed_rows, "caption"] = captions
        if images:
            write_pack(tmp / PACK_FILE, np.concatenate(images))
            noisy.loc[perturbed_rows, "image"] = [pack_reference(f"{out_relative}/{PACK_FILE}", index)
                                                  for index in range(len(perturbed_rows))]
        write_manifest(noisy, tmp, "pretrain")
        if (Path(data) / META_FILE).is_file():
            shutil.copyfile(Path(data) / META_FILE, tmp / META_FILE)
        write_gallery(gallery, tmp / GALLERY_FILE, title=f"{spec.noise_kind} {spec.noise_type} noise, "
                      f"noise_ratio={spec.noise_ratio}, eps={spec.attack.image.eps_255}/255, "
                      f"max_words={spec.attack.caption.max_words}")
        summary = summarise(measured, spec=spec, n_train=len(train), pairs_perturbed=len(chosen),
                            targeted=_targeted(spec))
        write_json(metrics, summary)  # inside the block: a failure before this point leaves neither output
    return summary
