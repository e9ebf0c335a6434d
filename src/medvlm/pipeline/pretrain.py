"""Stage `pretrain`: contrastive CLIP pre-training on the noisy pairs with `params.pretrain` (resumable from
`checkpoints`)."""

from __future__ import annotations

from pathlib import Path

from medvlm.engine.clip_job import train_clip_to_files
from medvlm.params import Params
from medvlm.pipeline.code_files import stage_code_files
from medvlm.runtime import resolve_device


def pretrain_stage(*, params: Params, data: Path, out: Path, live: Path, metrics: Path,
                   data_root: Path = Path("data"), checkpoints: Path | None = None) -> dict:
    return train_clip_to_files(model=params.model, train=params.pretrain, seed=params.seed,
                               device=resolve_device(params.device), name="pretrain", data=data, out=out, live=live,
                               metrics=metrics, data_root=data_root, checkpoints=checkpoints,
                               code=stage_code_files("pretrain"))
