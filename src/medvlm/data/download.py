"""The `download` stage: turn the data source into manifests plus pre-resized images under `data/raw/`.

The only source so far is the built-in synthetic generator (no real data set can be fetched offline).
Everything is written into a temporary folder that replaces `out` only when the whole set is complete.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from medvlm.data.manifest import COLUMNS, META_FILE, save_png, write_manifest
from medvlm.data.synthetic import SyntheticBatch, generate_split, split_specs
from medvlm.data.synthetic_cases import LABELS
from medvlm.data.synthetic_images import IN_DOMAIN, OUT_OF_DOMAIN
from medvlm.io import DataError, atomic_dir, write_json
from medvlm.params import Params
from medvlm.runtime import log

IMAGE_DIR = "images"
LATERALITY_NOTE = "sides are the patient's; the patient's left is on the viewer's right; images are never flipped"


def _prefix_inside(out: Path, data_root: Path) -> str:
    """`out` relative to the data root, as the manifests' image paths start (e.g. "raw")."""
    relative = Path(os.path.relpath(out.resolve(), data_root.resolve()))
    if relative == Path(".") or relative.parts[0] == "..":
        raise DataError(f"output folder {out} must be inside the data root {data_root} "
                        "(manifest image paths are relative to the data root)")
    return relative.as_posix()


def _rows(batch: SyntheticBatch, index: int, base: dict[str, str]) -> list[dict[str, str]]:
    """Manifest rows of one image: a captioned pair, a labelled image, or one row per VQA question."""
    case = batch.cases[index]
    if batch.captions is not None:
        return [{**base, "caption": batch.captions[index], "finding": case.finding}]
    if batch.questions is not None:
        return [
            {**base, "id": f"{base['id']}-{number}", "image_id": base["id"], "question": q.question,
             "answer": q.answer, "answer_type": q.answer_type}
            for number, q in enumerate(batch.questions[index])
        ]
    return [{**base, "label": case.finding}]


def download_stage(*, params: Params, out: Path, data_root: Path | None = None) -> dict[str, Any]:
    """Generate the synthetic data set into `out` (default data root: `out.parent`); return meta.json's content."""
    out = Path(out)
    data_root = Path(data_root) if data_root is not None else out.parent
    prefix = _prefix_inside(out, data_root)
    specs = split_specs(params.data)
    images_per_kind: dict[str, int] = defaultdict(int)
    for spec in specs:
        images_per_kind[spec.kind] += spec.count
    id_width = max(6, len(str(max(images_per_kind.values()) - 1)))
    rows: dict[str, list[dict[str, str]]] = defaultdict(list)
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    next_id: dict[str, int] = defaultdict(int)
    total = sum(images_per_kind.values())
    started = time.perf_counter()
    with atomic_dir(out) as tmp, tqdm(total=total, unit="img", desc="download (synthetic)") as progress:
        for spec in specs:
            rows_before = len(rows[spec.kind])
            for batch in generate_split(spec, params.seed, params.data.image_size):
                for index, image in enumerate(batch.images):
                    image_id = f"{next_id[spec.kind]:0{id_width}d}"
                    next_id[spec.kind] += 1
                    relative_image = f"{IMAGE_DIR}/{spec.kind}/{image_id}.png"
                    save_png(image, tmp / relative_image)
                    base = {"id": image_id, "image": f"{prefix}/{relative_image}", "split": spec.split}
                    rows[spec.kind].extend(_rows(batch, index, base))
                progress.update(len(batch.cases))
            counts[spec.kind][spec.split] = spec.count
            if spec.questions:
                counts["vqa_questions"][spec.split] = len(rows[spec.kind]) - rows_before
        for kind, kind_rows in rows.items():
            frame = pd.DataFrame(kind_rows)
            extra = [column for column in frame.columns if column not in COLUMNS[kind]]
            write_manifest(frame[[*COLUMNS[kind], *extra]], tmp, kind)
        meta = {
            "source": "synthetic",
            "seed": params.seed,
            "image_size": params.data.image_size,
            "labels": list(LABELS),
            "counts": dict(counts),
            "laterality": LATERALITY_NOTE,
            "acquisition": {"in_domain": IN_DOMAIN.describe(), "out_of_domain": OUT_OF_DOMAIN.describe()},
        }
        write_json(tmp / META_FILE, meta)
    elapsed = time.perf_counter() - started
    log.info("download: %d synthetic images in %.1f s (%.0f images/s) -> %s", total, elapsed, total / elapsed, out)
    return meta
