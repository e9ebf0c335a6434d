"""The `download` stage: turn each task's data source into manifests plus pre-resized images under `data/raw/`.

Each manifest kind (pretrain, cls_id, cls_ood, vqa) comes from the built-in synthetic generator or from a
real data set (`params.data.<kind>.source`; `medvlm.data.real`). Real sources are read and checked first,
all of them, before any image is decoded. Everything is written into a temporary folder that replaces `out`
only when the whole set is complete.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from medvlm.data.image_packs import PACK_SUFFIX, pack_reference, write_pack
from medvlm.data.manifest import COLUMNS, META_FILE, write_manifest
from medvlm.data.real import CLASSIFICATION, RealTask, read_task, write_task
from medvlm.data.synthetic import SyntheticBatch, generate_split, split_specs
from medvlm.data.synthetic_cases import LABELS
from medvlm.data.synthetic_images import IN_DOMAIN
from medvlm.io import DataError, atomic_dir, write_json
from medvlm.params import DataParams
from medvlm.runtime import log

IMAGE_DIR = "images"
DOWNLOAD_CACHE = Path("downloads")
"""Where archives of sources given by URL are fetched and extracted (outside data/, git-ignored)."""
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
    return [{**base, "label": batch.labels[index]}]


def _synthetic(data: DataParams, seed: int, kinds: set[str], tmp: Path, prefix: str,
               rows: dict[str, list[dict[str, str]]], counts: dict[str, dict[str, int]]) -> dict[str, int]:
    """Render the synthetic splits of `kinds` into `tmp`, adding their manifest rows and counts; return how many
    labels label noise replaced in each split that has it ("kind/split")."""
    specs = [spec for spec in split_specs(data) if spec.kind in kinds]
    images_per_kind: dict[str, int] = defaultdict(int)
    for spec in split_specs(data):  # all kinds: the id width must not depend on which are synthetic
        images_per_kind[spec.kind] += spec.count
    id_width = max(6, len(str(max(images_per_kind.values()) - 1)))
    next_id: dict[str, int] = defaultdict(int)
    relabelled = {f"{spec.kind}/{spec.split}": 0 for spec in specs if spec.label_noise > 0}
    total = sum(spec.count for spec in specs)
    started = time.perf_counter()
    images: dict[str, list[np.ndarray]] = defaultdict(list)  # one pack per kind, in id order
    with tqdm(total=total, unit="img", desc="download (synthetic)") as progress:
        for spec in specs:
            rows_before = len(rows[spec.kind])
            pack = f"{IMAGE_DIR}/{spec.kind}{PACK_SUFFIX}"
            for batch in generate_split(spec, seed, data.image_size):
                for index, image in enumerate(batch.images):
                    image_id = f"{next_id[spec.kind]:0{id_width}d}"
                    next_id[spec.kind] += 1
                    base = {"id": image_id, "image": pack_reference(f"{prefix}/{pack}", len(images[spec.kind])),
                            "split": spec.split}
                    images[spec.kind].append(image)
                    rows[spec.kind].extend(_rows(batch, index, base))
                if spec.label_noise > 0:
                    relabelled[f"{spec.kind}/{spec.split}"] += sum(
                        label != case.finding for label, case in zip(batch.labels, batch.cases, strict=True))
                progress.update(len(batch.cases))
            counts[spec.kind][spec.split] = spec.count
            if spec.questions:
                counts["vqa_questions"][spec.split] = len(rows[spec.kind]) - rows_before
    for kind, arrays in images.items():
        write_pack(tmp / IMAGE_DIR / f"{kind}{PACK_SUFFIX}", np.stack(arrays))
    elapsed = max(time.perf_counter() - started, 1e-9)
    log.info("download: %d synthetic images in %.1f s (%.0f images/s)", total, elapsed, total / elapsed)
    return relabelled


def _read_real(data: DataParams, seed: int, real: list[str], cache: Path) -> tuple[dict[str, RealTask], list[str]]:
    """Read and check every real task; return them and the class names of cls_id/cls_ood."""
    labels = list(data.labels)
    if not labels and data.cls_id.source == "synthetic":
        labels = list(LABELS)
    tasks = {}
    for kind in real:  # in COLUMNS order: cls_id, whose labels may set the class list, before cls_ood
        tasks[kind] = read_task(kind, data=data, labels=labels, seed=seed, cache=cache)
        if kind == "cls_id" and not labels:
            labels = sorted(set(tasks[kind].frame["label"]))
            if len(labels) < 2:
                raise DataError(f"{tasks[kind].where}: cls_id has {len(labels)} class(es) {labels}; a classifier "
                                "needs two or more")
    return tasks, labels


def write_data_sets(*, data: DataParams, seed: int, out: Path, data_root: Path | None = None,
                    cache: Path = DOWNLOAD_CACHE) -> dict[str, Any]:
    """Write every task's manifest and images into `out` (default data root: `out.parent`); return meta.json's
    content. Sources given by URL are fetched into `cache` first."""
    out = Path(out)
    data_root = Path(data_root) if data_root is not None else out.parent
    prefix = _prefix_inside(out, data_root)
    sources = {kind: settings.source for kind, settings in data.sources().items()}
    synthetic = {kind for kind, source in sources.items() if source == "synthetic"}
    real = [kind for kind in COLUMNS if kind not in synthetic]
    tasks, labels = _read_real(data, seed, real, Path(cache))
    rows: dict[str, list[dict[str, str]]] = defaultdict(list)
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    with atomic_dir(out) as tmp:
        frames: dict[str, pd.DataFrame] = {}
        relabelled: dict[str, int] = {}
        if synthetic:
            relabelled = _synthetic(data, seed, synthetic, tmp, prefix, rows, counts)
            frames = {kind: pd.DataFrame(kind_rows) for kind, kind_rows in rows.items()}
            for kind in synthetic & set(CLASSIFICATION):
                _check_known_labels(frames[kind], labels, kind)
        for kind, task in tasks.items():
            frames[kind] = write_task(task, out=tmp, prefix=prefix, image_dir=IMAGE_DIR, data=data)
            counts[kind] = {split: int(task.frame.loc[task.frame["split"] == split, "file"].nunique())
                            for split in sorted(set(task.frame["split"]))}
            if kind == "vqa":
                counts["vqa_questions"] = frames[kind].groupby("split").size().to_dict()
        for kind in (kind for kind in COLUMNS if kind in frames):
            frame = frames[kind]
            extra = [column for column in frame.columns if column not in COLUMNS[kind]]
            write_manifest(frame[[*COLUMNS[kind], *extra]], tmp, kind)
        meta = {
            "source": "synthetic" if not tasks else sources,
            "seed": seed,
            "image_size": data.image_size,
            "labels": labels,
            "counts": dict(counts),
            "laterality": LATERALITY_NOTE,
        }
        if synthetic:
            ood = next(spec.acquisition for spec in split_specs(data) if spec.kind == "cls_ood")
            meta["acquisition"] = {"in_domain": IN_DOMAIN.describe(), "out_of_domain": ood.describe()}
            meta["synthetic"] = {**data.synthetic.model_dump(), "relabelled": relabelled}
        if tasks:
            meta["real"] = {kind: {"source": task.source, "from": task.where, "resize": data.resize,
                                   "left_out": dict(task.dropped)} for kind, task in tasks.items()}
        write_json(tmp / META_FILE, meta)
    log.info("download: wrote %s to %s", ", ".join(f"{kind} ({source})" for kind, source in sources.items()), out)
    return meta


def _check_known_labels(frame: pd.DataFrame, labels: list[str], kind: str) -> None:
    unknown = sorted(set(frame["label"]) - set(labels))
    if unknown:
        raise DataError(f"data.labels {labels} lacks the synthetic {kind} classes {unknown}")
