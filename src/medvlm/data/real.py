"""Real data sets into manifests: read a task's source, filter it, then decode its images once.

Every check that can fail on the source's text (missing files, bad rows, unknown labels, splits left empty
by filtering) runs in `read_task`, before a single image is decoded; `write_task` then decodes and resizes
the images in parallel and returns the manifest rows.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medvlm.data.fetch import fetch_source, source_root
from medvlm.data.images import ImageJob, prepare_images
from medvlm.data.labels import multi_finding_labels, single_labels
from medvlm.data.image_packs import PACK_SUFFIX, pack_reference, write_pack
from medvlm.data.manifest import COLUMNS, load_images
from medvlm.data.sources import ADAPTERS
from medvlm.io import DataError
from medvlm.params import DataParams
from medvlm.runtime import log

TASK_SPLITS = {"pretrain": ("train", "val"), "cls_id": ("train", "test"), "cls_ood": ("test",),
               "vqa": ("train", "test")}
"""The splits each manifest kind needs downstream; a source's other splits are not decoded."""
CLASSIFICATION = ("cls_id", "cls_ood")


@dataclass
class RealTask:
    kind: str
    source: str
    where: str
    """The local path or URL, for messages and meta.json."""
    frame: pd.DataFrame
    dropped: Counter


def locate(kind: str, data: DataParams, cache: Path) -> tuple[Path, str]:
    """The source's folder (or CSV file) on disk, fetching its archive first when it is given as a URL."""
    settings = data.sources()[kind]
    if settings.url:
        return source_root(fetch_source(settings.url, settings.sha256, cache), settings.subdir), settings.url
    path = Path(settings.path).expanduser()
    if not path.exists():
        raise DataError(f"data.{kind}.path: {path} not found ({settings.source} local copy)")
    return path, str(path)


def _drop_missing(frame: pd.DataFrame, kind: str, skip: bool, dropped: Counter) -> pd.DataFrame:
    present = {}
    for file in frame["file"].unique():
        present[file] = Path(file).is_file() and Path(file).stat().st_size > 0
    missing = frame[~frame["file"].map(present)]
    if not missing.empty and not skip:
        row = missing.iloc[0]
        raise DataError(f"{row['origin']}: image file {row['file']} is missing or empty "
                        f"({missing['file'].nunique()} such files; set data.{kind}.skip_missing: true "
                        "to leave them out)")
    if not missing.empty:
        dropped["image file missing or empty"] += len(missing)
    return frame[frame["file"].map(present)].reset_index(drop=True)


def _subsample(frame: pd.DataFrame, kind: str, limit: int, seed: int) -> pd.DataFrame:
    """At most `limit` images per split, drawn with a seeded generator per (kind, split); all rows of a kept
    image stay (several VQA questions share an image)."""
    if not limit:
        return frame
    keep = []
    for split in TASK_SPLITS[kind]:
        files = frame.loc[frame["split"] == split, "file"].unique()
        if len(files) > limit:
            rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=tuple(f"{kind}/{split}".encode())))
            files = files[np.sort(rng.choice(len(files), size=limit, replace=False))]
        keep.extend(files)
    return frame[frame["file"].isin(set(keep))].reset_index(drop=True)


def _check_splits(task: RealTask) -> None:
    for split in TASK_SPLITS[task.kind]:
        if not (task.frame["split"] == split).any():
            reasons = ", ".join(f"{count} {reason}" for reason, count in task.dropped.items()) or "none"
            raise DataError(f"{task.where}: split {split!r} of {task.kind} ({task.source}) is empty after "
                            f"filtering (rows left out: {reasons})")


def read_task(kind: str, *, data: DataParams, labels: Sequence[str], seed: int, cache: Path) -> RealTask:
    """A task's rows from its source: needed splits only, labels chosen, missing images handled, subsampled."""
    settings = data.sources()[kind]
    adapter = ADAPTERS[settings.source]
    root, where = locate(kind, data, cache)
    table = adapter.read(root, kind, data)
    dropped = Counter(table.dropped)
    frame = table.frame
    unused = ~frame["split"].isin(TASK_SPLITS[kind])
    if unused.any():
        dropped[f"split not used by {kind}"] += int(unused.sum())
        frame = frame[~unused].reset_index(drop=True)
    if kind in CLASSIFICATION:
        if adapter.multi_finding:
            frame, label_drops = multi_finding_labels(frame, policy=data.multi_finding, labels=labels)
            dropped.update(label_drops)
        else:
            frame = single_labels(frame, labels=labels)
    frame = _drop_missing(frame, kind, settings.skip_missing, dropped)
    frame = _subsample(frame, kind, settings.max_per_split, seed)
    if frame["id"].duplicated().any():
        duplicate = frame[frame["id"].duplicated()].iloc[0]
        raise DataError(f"{duplicate['origin']}: id {duplicate['id']!r} appears twice in {kind}")
    task = RealTask(kind=kind, source=settings.source, where=where, frame=frame, dropped=dropped)
    _check_splits(task)
    return task


def write_task(task: RealTask, *, out: Path, prefix: str, image_dir: str, data: DataParams) -> pd.DataFrame:
    """Decode and resize the task's images into the pack `out/<image_dir>/<kind>.safetensors`; return its manifest."""
    files = list(dict.fromkeys(task.frame["file"]))
    relative = {file: f"{image_dir}/{task.kind}/{number:06d}.png" for number, file in enumerate(files)}
    jobs = [ImageJob(source=Path(file), target=out / relative[file]) for file in files]
    prepare_images(jobs, size=data.image_size, mode=data.resize, workers=data.workers,
                   what=f"{task.kind} ({task.source})")
    # The workers write one PNG each (in parallel); they become the kind's one pack (medvlm.data.image_packs).
    pack = f"{image_dir}/{task.kind}{PACK_SUFFIX}"
    write_pack(out / pack, load_images(out, [relative[file] for file in files]).numpy())
    shutil.rmtree(out / image_dir / task.kind)
    position = {file: number for number, file in enumerate(files)}
    manifest = task.frame.assign(image=[pack_reference(f"{prefix}/{pack}", position[file])
                                        for file in task.frame["file"]])
    if task.dropped:
        log.info("%s (%s): rows left out: %s", task.kind, task.source, dict(task.dropped))
    return manifest[list(COLUMNS[task.kind])]
