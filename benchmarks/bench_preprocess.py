"""Pre-processing benchmark: decode-and-resize throughput of real-data images (`make bench`).

Writes `--count` random 512×512 radiograph-like images per format (16-bit PNG and 8-bit JPEG) into a
temporary folder, then times `medvlm.data.images.prepare_images` (decode, 16-bit scaling, centre-crop
resize to `--size`, 8-bit PNG out: what the download stage does for every real image) with each worker
count, and prints images/s. Measured, never asserted: a shared machine varies from run to run.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import typer
from PIL import Image

from medvlm.data.images import ImageJob, prepare_images

FORMATS = {"png16": ".png", "jpeg": ".jpg"}


def write_sources(folder: Path, fmt: str, count: int, side: int, seed: int) -> list[Path]:
    """Smooth random images (a blurred-looking gradient plus noise), so codecs work as on real radiographs."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.0, 1.0, side, dtype=np.float32)
    base = np.outer(ramp, ramp[::-1])
    paths = []
    for index in range(count):
        image = np.clip(base + 0.05 * rng.standard_normal((side, side), dtype=np.float32), 0, 1)
        path = folder / f"{fmt}_{index:05d}{FORMATS[fmt]}"
        if fmt == "png16":
            Image.fromarray((image * 4095).astype(np.uint16)).save(path)  # 12-bit data in a 16-bit PNG
        else:
            Image.fromarray((image * 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def main(
    count: int = typer.Option(2000, help="images per format"),
    side: int = typer.Option(512, help="source image side in pixels"),
    size: int = typer.Option(64, help="stored image size (data.image_size)"),
    workers: str = typer.Option("1,2", help="comma-separated worker counts to time"),
) -> None:
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-preprocess-") as tmp:
        folder = Path(tmp)
        print(f"decode+resize, {count} {side}x{side} images per format -> {size}x{size} 8-bit PNG")
        for fmt in FORMATS:
            started = time.perf_counter()
            sources = write_sources(folder, fmt, count, side, seed=0)
            print(f"  wrote {count} {fmt} sources in {time.perf_counter() - started:.1f} s")
            for worker_count in (int(w) for w in workers.split(",")):
                jobs = [ImageJob(path, folder / f"out{worker_count}" / f"{path.stem}.png") for path in sources]
                rate = prepare_images(jobs, size=size, mode="crop", workers=worker_count, what=fmt)
                print(f"  {fmt:6s} workers={worker_count}: {rate:7.1f} images/s")


if __name__ == "__main__":
    typer.run(main)
