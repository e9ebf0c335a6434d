"""The `surrogate` stage: the CLIP the upstream attacks target.

With `surrogate.epochs` >= 1 it is trained on the clean pairs (`medvlm.engine.clip_training`). With 0 the
initial model (`model.init`: pretrained weights) is the surrogate as it is, the way an attacker would use a
public pretrained model; its held-out retrieval recall is still measured and reported.
"""

from __future__ import annotations

from pathlib import Path

from dvclive import Live

from medvlm.data.pairs import load_pairs, pairs_image_size
from medvlm.engine.clip_training import embed_pairs, surrogate_stage as train_surrogate_stage
from medvlm.eval.retrieval import chance_recall, retrieval_recall
from medvlm.io import atomic_dir, write_json
from medvlm.models.clip import save_clip
from medvlm.models.pretrained import initial_clip
from medvlm.params import Params
from medvlm.runtime import log, resolve_device, seed_everything


def keep_initial_model(*, params: Params, data: Path, out: Path, live: Path, metrics: Path, data_root: Path) -> dict:
    """Write the initial (pretrained) model as the surrogate, with its retrieval recall on the val pairs."""
    device = resolve_device(params.device)
    seed_everything(params.seed)
    val_pairs = load_pairs(data, data_root, "val")
    clip = initial_clip(params.model, pairs_image_size(data, val_pairs), device)
    with atomic_dir(out) as model_dir, atomic_dir(live) as live_dir:
        with Live(dir=str(live_dir), dvcyaml=False, save_dvc_exp=False) as logger:
            retrieval = retrieval_recall(*embed_pairs(clip, val_pairs, params.surrogate.batch_size))
            for key, value in retrieval.items():
                logger.log_metric(f"val/{key}", value)
        save_clip(clip, model_dir)
    log.info("surrogate: the initial model (model.init %s) as it is; val %s", params.model.init,
             ", ".join(f"{k} {v:.3f}" for k, v in retrieval.items()))
    summary = {"retrieval": retrieval, "chance": chance_recall(len(val_pairs)), "n_val": len(val_pairs),
               "epochs": 0, "init": params.model.init}
    write_json(metrics, summary)
    return summary


def surrogate_stage(*, params: Params, data: Path, out: Path, live: Path, metrics: Path,
                    data_root: Path = Path("data")) -> dict:
    """DVC stage `surrogate`: trained on the clean pairs, or (epochs 0) the pretrained initial model."""
    stage = keep_initial_model if params.surrogate.epochs == 0 else train_surrogate_stage
    return stage(params=params, data=data, out=out, live=live, metrics=metrics, data_root=data_root)
