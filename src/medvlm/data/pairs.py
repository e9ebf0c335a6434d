"""Image-caption pairs of a `pretrain` manifest, loaded once into memory for contrastive training."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from medvlm.data.manifest import META_FILE, load_images, manifest_path, read_manifest
from medvlm.io import DataError, read_json


@dataclass(frozen=True)
class ImageCaptionPairs:
    """One split of a `pretrain` manifest: decoded images, their captions, and which pairs are perturbed."""

    ids: list[str]
    images: torch.Tensor
    """uint8 N×H×W, pre-resized by the download stage."""
    captions: list[str]
    perturbed: torch.Tensor
    """bool N; all False when the manifest has no `perturbed` column (clean data)."""

    def __len__(self) -> int:
        return len(self.ids)


def load_pairs(folder: str | Path, data_root: str | Path, split: str) -> ImageCaptionPairs:
    """Read `<folder>/pretrain.csv`, keep `split`, and decode its images into one uint8 tensor."""
    frame = read_manifest(folder, "pretrain", data_root, split=split)
    path = manifest_path(folder, "pretrain")
    captions = [str(caption) for caption in frame["caption"]]
    empty_rows = [row for row, caption in zip(frame["id"], captions) if not caption.strip()]
    if empty_rows:
        raise DataError(f"{path}: empty caption for id(s) {empty_rows[:5]} in split {split!r}")
    if "perturbed" in frame.columns:
        perturbed = _perturbed_flags(frame["perturbed"], path)
    else:
        perturbed = torch.zeros(len(frame), dtype=torch.bool)
    images = load_images(data_root, list(frame["image"]))
    return ImageCaptionPairs(ids=list(frame["id"]), images=images, captions=captions, perturbed=perturbed)


def _perturbed_flags(column: pd.Series, path: Path) -> torch.Tensor:
    """The attack's `perturbed` column as a bool tensor (True/False or 0/1 in the CSV)."""
    if column.dtype == bool or (pd.api.types.is_integer_dtype(column) and column.isin([0, 1]).all()):
        return torch.from_numpy(column.to_numpy(dtype=bool, copy=True))
    seen = sorted(set(map(str, column)))[:5]
    raise DataError(f"{path}: column 'perturbed' must hold True/False (or 0/1), got {seen}")


def pairs_image_size(folder: str | Path, pairs: ImageCaptionPairs) -> int:
    """The model's input size: `image_size` from `<folder>/meta.json` when present, else the images' size.

    Images must be square and match the declared size: the model is built for exactly one input size.
    """
    height, width = pairs.images.shape[-2:]
    if height != width:
        raise DataError(f"{folder}: images are {height}×{width}; expected square, pre-resized images")
    meta_path = Path(folder) / META_FILE
    if not meta_path.is_file():
        return int(height)
    meta = read_json(meta_path)
    if not isinstance(meta, dict) or "image_size" not in meta:
        raise DataError(f"{meta_path}: no 'image_size' entry")
    declared = meta["image_size"]
    if declared != height:
        raise DataError(f"{meta_path}: image_size {declared!r} disagrees with the stored images ({height}×{width})")
    return int(declared)
