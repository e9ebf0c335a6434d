"""Write a manifest's images out as PNG files, to look at them: the data folders store them as image packs.

    python -m medvlm.data.export_images --data data/raw --kind cls_id --split test --limit 20 --out exported/
    python -m medvlm.data.export_images --data data/noisy --kind pretrain --perturbed --out exported/noisy

Each image is written once, named after the manifest row id that first names it (`<id>.png`).
"""

from __future__ import annotations

from pathlib import Path

import typer

from medvlm.data.manifest import COLUMNS, load_images, read_manifest, save_png
from medvlm.io import DataError

BATCH = 256


def export_images(*, data: Path, kind: str, out: Path, data_root: Path | None = None, split: str | None = None,
                  perturbed: bool = False, limit: int = 0) -> int:
    """Write the images of `kind` in the manifest folder `data` (optionally one split, only perturbed rows, the
    first `limit`) to `out` as PNGs; return how many were written."""
    if kind not in COLUMNS:
        raise DataError(f"--kind {kind!r}: one of {sorted(COLUMNS)}")
    frame = read_manifest(data, kind, data_root or Path(data).parent, split=split)
    if perturbed:
        if "perturbed" not in frame.columns:
            raise DataError(f"{data}: the {kind} manifest has no 'perturbed' column (not a noisy set)")
        frame = frame[frame["perturbed"] == 1]
    first = frame.drop_duplicates("image")
    if limit:
        first = first.head(limit)
    images, ids = first["image"].tolist(), first["id"].tolist()
    out.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(images), BATCH):
        for image, name in zip(load_images(data_root or Path(data).parent, images[start:start + BATCH]).numpy(),
                               ids[start:start + BATCH]):
            save_png(image, out / f"{name}.png")
    return len(images)


def main(
    data: Path = typer.Option(..., help="manifest folder, e.g. data/raw or data/noisy"),
    kind: str = typer.Option(..., help="manifest kind: pretrain, cls_id, cls_ood or vqa"),
    out: Path = typer.Option(..., help="folder for the PNG files"),
    data_root: Path = typer.Option(None, help="folder manifest paths are relative to [default: DATA's parent]"),
    split: str = typer.Option(None, help="only this split"),
    perturbed: bool = typer.Option(False, help="only the perturbed rows (a noisy set)"),
    limit: int = typer.Option(0, min=0, help="at most this many images (0: all)"),
) -> None:
    try:
        written = export_images(data=data, kind=kind, out=out, data_root=data_root, split=split, perturbed=perturbed,
                                limit=limit)
    except DataError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"wrote {written} images to {out}")


if __name__ == "__main__":
    typer.run(main)
