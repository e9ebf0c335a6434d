"""Decode a real data set's images once, in parallel, into the project's one stored format.

In: 8-bit or 16-bit PNG, JPEG (any colour mode) and DICOM. Out: 8-bit grayscale PNGs of
`data.image_size`² px, pre-resized so nothing downstream decodes a large original again.
- 16-bit (and other high-depth) images are scaled linearly from their own min..max to 0..255, since a
  12-bit radiograph stored in a 16-bit container would otherwise come out nearly black.
- DICOM: the modality LUT (rescale slope/intercept), then the VOI LUT or window centre/width when the file
  has one (pydicom), then min..max to 0..255; MONOCHROME1 (bright = low value) is inverted so bone is white.
- Colour images are converted to luminance (the project's models take grayscale radiographs).
- Non-square images follow `data.resize`: `crop` (short side to size, centre crop; open_clip's default
  preprocessing), `pad` (long side to size, black borders; nothing is cut off) or `squash`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from medvlm.data.manifest import save_png
from medvlm.io import DataError
from medvlm.runtime import log

RESAMPLING = Image.Resampling.BICUBIC
_DICOM_MAGIC_OFFSET = 128


@dataclass(frozen=True)
class ImageJob:
    """Decode `source` and write it pre-resized to `target`."""

    source: Path
    target: Path


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Linear min..max scaling of any numeric array to 0..255 (a flat image becomes black)."""
    low, high = float(array.min()), float(array.max())
    if high <= low:
        return np.zeros(array.shape, dtype=np.uint8)
    scaled = (array.astype(np.float32) - np.float32(low)) * np.float32(255.0 / (high - low))
    return np.rint(scaled, out=scaled).astype(np.uint8)


def is_dicom(path: Path) -> bool:
    """DICOM Part 10 files carry "DICM" after a 128-byte preamble, whatever their file name."""
    with open(path, "rb") as handle:
        handle.seek(_DICOM_MAGIC_OFFSET)
        return handle.read(4) == b"DICM"


def _read_dicom(path: Path) -> np.ndarray:
    import pydicom  # imported here: only DICOM sources need it
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        dataset = pydicom.dcmread(path)
        pixels = dataset.pixel_array
    except (InvalidDicomError, AttributeError, ValueError, RuntimeError, OSError, EOFError) as exc:
        raise DataError(f"{path}: unreadable DICOM ({exc})") from None
    if int(getattr(dataset, "NumberOfFrames", 1) or 1) > 1:
        raise DataError(f"{path}: multi-frame DICOM ({dataset.NumberOfFrames} frames); expected one radiograph")
    if int(getattr(dataset, "SamplesPerPixel", 1)) > 1:
        return _to_uint8(pixels.astype(np.float64).mean(axis=-1))
    values = apply_modality_lut(pixels, dataset)
    if "WindowCenter" in dataset or "VOILUTSequence" in dataset:
        values = apply_voi_lut(values, dataset)
    image = _to_uint8(values)
    if str(getattr(dataset, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        image = 255 - image
    return image


def _read_raster(path: Path, min_side: int | None) -> np.ndarray:
    with Image.open(path) as image:
        if min_side and image.format == "JPEG":
            # The JPEG decoder can scale by 1/2, 1/4 or 1/8 while decoding (keeping both sides >= min_side):
            # a 2000 px radiograph stored at 224 px then decodes several times faster.
            image.draft("L", (min_side, min_side))
        image.load()  # decode now, so a truncated file fails here with the file's name
        if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            return _to_uint8(np.asarray(image))
        return np.asarray(image.convert("L"))


def read_grayscale(path: str | Path, min_side: int | None = None) -> np.ndarray:
    """An image file as an 8-bit grayscale array; DataError naming the file if it is missing or unreadable.

    `min_side`: the image is only needed down to this size (lets JPEG decode at a reduced scale)."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise DataError(f"{path}: empty image file")
        return _read_dicom(path) if is_dicom(path) else _read_raster(path, min_side)
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{path}: unreadable or truncated image ({exc})") from None


def resize_square(image: np.ndarray, size: int, mode: str) -> np.ndarray:
    """`image` (uint8 H×W) as size×size, by centre crop, black padding or squashing."""
    picture = Image.fromarray(image, mode="L")
    if mode == "crop":
        picture = ImageOps.fit(picture, (size, size), method=RESAMPLING)
    elif mode == "pad":
        picture = ImageOps.pad(picture, (size, size), method=RESAMPLING, color=0)
    elif mode == "squash":
        picture = picture.resize((size, size), RESAMPLING)
    else:
        raise ValueError(f"unknown resize mode {mode!r}; allowed: crop, pad, squash")
    return np.asarray(picture)


def _prepare(job: ImageJob, size: int, mode: str) -> None:
    save_png(resize_square(read_grayscale(job.source, min_side=size), size, mode), job.target)


def _prepare_chunk(jobs: Sequence[ImageJob], size: int, mode: str) -> int:
    for job in jobs:
        _prepare(job, size, mode)
    return len(jobs)


def prepare_images(jobs: Sequence[ImageJob], *, size: int, mode: str, workers: int, what: str) -> float:
    """Decode, resize and store every job's image, in `workers` processes (0: one per CPU); return images/s.

    The result does not depend on `workers`: each image is processed on its own. Work goes out in chunks
    so a process decodes many small images per round trip.
    """
    workers = workers or os.cpu_count() or 1
    started = time.perf_counter()
    with tqdm(total=len(jobs), desc=f"decode+resize {what}", unit="img", dynamic_ncols=True) as progress:
        if workers == 1 or len(jobs) < 2:
            for job in jobs:
                _prepare(job, size, mode)
                progress.update(1)
        else:
            chunk = max(1, min(64, len(jobs) // (workers * 4)))
            chunks = [jobs[start:start + chunk] for start in range(0, len(jobs), chunk)]
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futures = [pool.submit(_prepare_chunk, part, size, mode) for part in chunks]
                try:
                    for future in futures:  # in order, so the first failing file is the one reported
                        progress.update(future.result())
                except BaseException:
                    for future in futures:
                        future.cancel()
                    raise
    seconds = max(time.perf_counter() - started, 1e-9)
    rate = len(jobs) / seconds
    log.info("%s: decoded and resized %d images in %.1f s (%.0f images/s, %d worker(s))",
             what, len(jobs), seconds, rate, workers)
    return rate
