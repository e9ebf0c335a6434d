"""Stage `surrogate`: the clean CLIP the upstream attacks target. Trained on the clean pairs with
`params.surrogate` (resumable from `checkpoints`), or with `epochs: 0` the pretrained initial model as it is."""

from __future__ import annotations

from pathlib import Path

from medvlm.engine.clip_job import keep_initial_model, train_clip_to_files
from medvlm.params import Params
from medvlm.pipeline.code_files import stage_code_files
from medvlm.runtime import resolve_device


def surrogate_stage(*, params: Params, data: Path, out: Path, live: Path, metrics: Path,
                    data_root: Path = Path("data"), checkpoints: Path | None = None) -> dict:
    device = resolve_device(params.device)
    if params.surrogate.epochs == 0:
        return keep_initial_model(model=params.model, seed=params.seed, device=device,
                                  batch_size=params.surrogate.batch_size, data=data, out=out, live=live,
                                  metrics=metrics, data_root=data_root)
    return train_clip_to_files(model=params.model, train=params.surrogate, seed=params.seed, device=device,
                               name="surrogate", data=data, out=out, live=live, metrics=metrics,
                               data_root=data_root, checkpoints=checkpoints, code=stage_code_files("surrogate"))
