"""Stage `features`: frozen-encoder features of every downstream split (and two augmented views of each
training image), cached for the heads."""

from __future__ import annotations

from pathlib import Path

from medvlm.engine.features import write_features
from medvlm.params import Params
from medvlm.runtime import resolve_device


def features_stage(*, params: Params, clip: Path, data: Path, out: Path, data_root: Path = Path("data")) -> None:
    write_features(clip=clip, data=data, out=out, data_root=data_root, batch_size=params.features.batch_size,
                   augment=params.features.augment, robust=params.evaluate.robust,
                   shift_images=params.features.shift_images, seed=params.seed, device=resolve_device(params.device))
