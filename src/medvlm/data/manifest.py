"""The manifest tables every data source is turned into, and the image files they reference.

Manifests are CSV files. Their `image` column holds a path relative to the data root (the repo's
`data/` folder), e.g. `raw/images/cls_id/000012.png`; a path that is absolute or escapes the data root is
refused. Images are 8-bit grayscale PNGs, pre-resized once by the download stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError

from medvlm.data.image_packs import read_pack, split_reference
from medvlm.io import DataError, atomic_file, resolve_inside

COLUMNS: dict[str, tuple[str, ...]] = {
    "pretrain": ("id", "image", "caption", "split"),
    "cls_id": ("id", "image", "label", "split"),
    "cls_ood": ("id", "image", "label", "split"),
    "vqa": ("id", "image", "question", "answer", "answer_type", "split"),
}
"""Required columns per manifest kind (extra columns, such as the attack's `perturbed`, are allowed)."""

META_FILE = "meta.json"


def manifest_path(folder: str | Path, kind: str) -> Path:
    return Path(folder) / f"{kind}.csv"


def write_manifest(frame: pd.DataFrame, folder: str | Path, kind: str) -> Path:
    """Write one manifest atomically after checking it has the columns its kind requires."""
    missing = [c for c in COLUMNS[kind] if c not in frame.columns]
    if missing:
        raise DataError(f"{kind} manifest lacks columns {missing}")
    path = manifest_path(folder, kind)
    with atomic_file(path) as tmp:
        frame.to_csv(tmp, index=False)
    return path


def read_manifest(folder: str | Path, kind: str, data_root: str | Path, split: str | None = None) -> pd.DataFrame:
    """Read and check a manifest: required columns present, every image path inside the data root,
    and (when `split` is given) that split non-empty."""
    path = manifest_path(folder, kind)
    if not path.is_file():
        raise DataError(f"{path}: manifest not found")
    try:
        frame = pd.read_csv(path, dtype={"id": str, "answer": str, "label": str}, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: unreadable manifest ({exc})") from None
    missing = [c for c in COLUMNS[kind] if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing columns {missing}; expected {list(COLUMNS[kind])}")
    checked: set = set()  # every row of a kind names the same pack: resolve each file once
    for row, rel in enumerate(frame["image"], start=2):  # row 1 is the header
        file = split_reference(rel)[0] if isinstance(rel, str) else rel
        if file in checked:
            continue
        try:
            resolve_inside(data_root, file)
        except DataError as exc:
            raise DataError(f"{path}, row {row}: {exc}") from None
        checked.add(file)
    if split is not None:
        frame = frame[frame["split"] == split].reset_index(drop=True)
        if frame.empty:
            raise DataError(f"{path}: split {split!r} is empty")
    return frame


def load_images(data_root: str | Path, relative_paths: Sequence[str]) -> torch.Tensor:
    """Pre-resized grayscale images as one uint8 tensor N×H×W (all must share a size), from image packs
    (`<pack>#<index>`, `medvlm.data.image_packs`) or PNG files."""
    arrays = []
    packs: dict[str, tuple[Path, np.ndarray]] = {}  # each pack resolved and looked up once per call
    for rel in relative_paths:
        file, index = split_reference(rel) if isinstance(rel, str) else (rel, None)
        if index is not None:
            if file not in packs:
                pack_path = resolve_inside(data_root, file)
                packs[file] = (pack_path, read_pack(pack_path))
            path, images = packs[file]
            if index >= len(images):
                raise DataError(f"{path}: image {index} asked for, but the pack holds {len(images)}")
            arrays.append(images[index])
            continue
        path = resolve_inside(data_root, file)
        try:
            with Image.open(path) as img:
                arrays.append(np.asarray(img.convert("L")))
        except FileNotFoundError:
            raise DataError(f"{path}: image file not found") from None
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"{path}: unreadable or truncated image ({exc})") from None
    if not arrays:
        raise DataError("no images to load")
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise DataError(f"images under {data_root} have mixed sizes {sorted(shapes)}; expected one pre-resized size")
    return torch.from_numpy(np.stack(arrays))


def save_png(array: np.ndarray, path: str | Path) -> None:
    """Store an 8-bit grayscale image losslessly."""
    if array.dtype != np.uint8 or array.ndim != 2:
        raise ValueError(f"expected a 2-D uint8 array, got {array.dtype} with shape {array.shape}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode="L").save(path, format="PNG", optimize=False)


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 N×H×W -> float N×1×H×W in [0, 1], the form every model call takes."""
    return images.unsqueeze(1).float().div_(255.0)
