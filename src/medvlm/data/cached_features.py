"""The cached-feature files the `features` stage writes and the heads train and evaluate on.

Each split (`SPLITS`, derived from `medvlm.tasks`) is one safetensors file `<task>_<split>.safetensors` with
- `x`: float32 N×D. Classification: the L2-normalised image embedding v. VQA: [v; q; v⊙q] with q the
  L2-normalised question embedding (layout fixed by `fuse_vqa`).
- `y`: int64 N. Classification: index into meta.json "labels". VQA: index into the answer vocabulary of
  the train split; a test answer outside it is -1 and can never be predicted.
- `closed` (VQA only): uint8 N, 1 for closed (yes/no) questions.
- `x_view1`, `x_view2` (training splits only): like `x`, but of two augmented views of each image
  (`medvlm.data.augment`); VQA views fuse the augmented image with the same question feature.
`meta.json` beside them: {"labels", "answers", "dims", "counts", "vqa_test_out_of_vocab"}.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from medvlm.io import DataError, load_tensors, read_json
from medvlm.tasks import feature_splits, head_tasks

FEATURES_META = "meta.json"
SPLITS = feature_splits()
"""Every cached split -> (its task, the manifest split it embeds), from the task registry."""
SHIFT_FILE = "feature_shift.json"
"""Per task, how far the evaluation's pixel PGD moves the cached u (medvlm.engine.feature_shift)."""


def read_feature_shifts(features: Path) -> dict[str, Any]:
    """The features' measured shifts by task ({} for features written before the shift was measured)."""
    path = Path(features) / SHIFT_FILE
    return read_json(path) if path.is_file() else {}
TRAINING_SPLITS = tuple(head_tasks().values())
"""The splits heads train on; only these carry the augmented views."""
VIEW_KEYS = ("x_view1", "x_view2")


def fuse_vqa(image: torch.Tensor, question: torch.Tensor) -> torch.Tensor:
    """The VQA feature [v; q; v⊙q] of normalised image and question embeddings (N×D each -> N×3D)."""
    return torch.cat([image, question, image * question], dim=1)


def read_features_meta(features: Path) -> dict[str, Any]:
    meta = read_json(Path(features) / FEATURES_META)
    missing = [key for key in ("labels", "answers", "dims", "counts") if key not in meta]
    if missing:
        raise DataError(f"{Path(features) / FEATURES_META}: lacks keys {missing}; re-run the features stage")
    return meta


def load_feature_split(features: Path, name: str) -> dict[str, torch.Tensor]:
    """Load one cached split and check its tensors agree in length and type."""
    path = Path(features) / f"{name}.safetensors"
    tensors = load_tensors(path)
    vqa = name in SPLITS and SPLITS[name][0].kind == "vqa"
    required = ("x", "y", "closed") if vqa else ("x", "y")
    missing = [key for key in required if key not in tensors]
    if missing:
        raise DataError(f"{path}: lacks tensors {missing}")
    x, y = tensors["x"], tensors["y"]
    if x.ndim != 2 or x.dtype != torch.float32 or y.ndim != 1 or y.dtype != torch.int64:
        raise DataError(f"{path}: expected float32 x (N×D) and int64 y (N), got {x.dtype} {tuple(x.shape)} "
                        f"and {y.dtype} {tuple(y.shape)}")
    if any(t.shape[0] != x.shape[0] for t in tensors.values()):
        raise DataError(f"{path}: tensors have different lengths {({k: t.shape[0] for k, t in tensors.items()})}")
    bad_views = {key: (tensors[key].dtype, tuple(tensors[key].shape)) for key in VIEW_KEYS
                 if key in tensors and (tensors[key].dtype != x.dtype or tensors[key].shape != x.shape)}
    if bad_views:
        raise DataError(f"{path}: augmented views must match x ({x.dtype} {tuple(x.shape)}), got {bad_views}")
    return tensors
