"""Image packs: the pre-resized 8-bit grayscale images of one manifest kind in one safetensors file
(`images/<kind>.safetensors`, one uint8 tensor "images" of N×H×W), instead of thousands of PNGs.

DVC hashes, caches and checks out one file per kind instead of one per image, and a stage reads a kind's
images in one go. A manifest row names its image as `<pack path>#<index>` (relative to the data root, like
every manifest path); plain PNG paths keep working, so hand-made manifests and fixtures need no pack.
`python -m medvlm.data.export_images` writes a pack's images back out as PNGs to look at.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from medvlm.io import DataError, atomic_file

SEPARATOR = "#"
PACK_SUFFIX = ".safetensors"
KEY = "images"


def pack_reference(pack: str, index: int) -> str:
    """The manifest entry of image `index` of the pack at `pack` (relative to the data root)."""
    return f"{pack}{SEPARATOR}{index}"


def split_reference(entry: str) -> tuple[str, int | None]:
    """(file path, index in its pack) of a manifest image entry; index None for a plain image file."""
    path, separator, index = entry.rpartition(SEPARATOR)
    if not separator or not path.endswith(PACK_SUFFIX):
        return entry, None
    if not index.isdigit():
        raise DataError(f"image entry {entry!r}: the index after {SEPARATOR!r} must be a whole number")
    return path, int(index)


def write_pack(path: str | Path, images: np.ndarray) -> None:
    """Store N×H×W uint8 images as one pack, atomically."""
    from safetensors.numpy import save_file  # noqa: PLC0415  (only the writers need it)

    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"expected N×H×W uint8 images, got {images.dtype} with shape {images.shape}")
    with atomic_file(path) as tmp:
        save_file({KEY: np.ascontiguousarray(images)}, str(tmp))


@functools.lru_cache(maxsize=8)
def _read(path: str, mtime_ns: int, size: int) -> np.ndarray:  # noqa: ARG001  (the cache key: a changed file is re-read)
    from safetensors import SafetensorError  # noqa: PLC0415
    from safetensors.numpy import load_file  # noqa: PLC0415

    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable image pack ({exc})") from None
    images = tensors.get(KEY)
    if images is None or images.dtype != np.uint8 or images.ndim != 3:
        found = {name: (str(t.dtype), t.shape) for name, t in tensors.items()}
        raise DataError(f"{path}: an image pack holds one uint8 N×H×W tensor {KEY!r}, found {found}")
    images.setflags(write=False)  # shared by every caller through the cache
    return images


def read_pack(path: str | Path) -> np.ndarray:
    """All images of a pack (read once per file version, then served from memory)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image pack not found")
    stat = path.stat()
    return _read(str(path), stat.st_mtime_ns, stat.st_size)
