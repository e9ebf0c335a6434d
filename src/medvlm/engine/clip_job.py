"""The two ways the `surrogate` and `pretrain` stages produce a CLIP: train one into a model folder, DVCLive
curves and a metrics file (resumable, optionally as torchrun workers), or keep the initial pretrained
model as it is (the surrogate with `epochs: 0`, the way an attacker would use a public model).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

import torch
from dvclive import Live

from medvlm.data.pairs import load_pairs, pairs_image_size
from medvlm.engine.checkpoint import TrainingCheckpoints, training_fingerprint
from medvlm.engine.clip_training import embed_pairs, train_clip
from medvlm.engine.distributed import (
    Workers,
    join_workers,
    launched_by_torchrun,
    leave_workers,
    main_rank_dirs,
    main_rank_live,
    relaunch_under_torchrun,
)
from medvlm.eval.retrieval import chance_recall, retrieval_recall
from medvlm.io import DataError, atomic_dir, read_json, write_json
from medvlm.models.clip import save_clip
from medvlm.models.pretrained import initial_clip
from medvlm.params import ModelParams, TrainParams
from medvlm.runtime import enable_fast_cuda_math, log, seed_everything


def keep_initial_model(*, model: ModelParams, seed: int, device: torch.device, batch_size: int, data: Path,
                       out: Path, live: Path, metrics: Path, data_root: Path) -> dict:
    """Write the initial (pretrained) model as it is, with its retrieval recall on the val pairs."""
    seed_everything(seed)
    val_pairs = load_pairs(data, data_root, "val")
    clip = initial_clip(model, pairs_image_size(data, val_pairs), device)
    with atomic_dir(out) as model_dir, atomic_dir(live) as live_dir:
        with Live(dir=str(live_dir), dvcyaml=False, save_dvc_exp=False) as logger:
            retrieval = retrieval_recall(*embed_pairs(clip, val_pairs, batch_size))
            for key, value in retrieval.items():
                logger.log_metric(f"val/{key}", value)
        save_clip(clip, model_dir)
        summary = {"retrieval": retrieval, "chance": chance_recall(len(val_pairs)), "n_val": len(val_pairs),
                   "epochs": 0, "init": model.init}
        write_json(metrics, summary)  # inside the block: metrics that cannot be written leave the model as it was
    log.info("the initial model (model.init %s) as it is; val %s", model.init,
             ", ".join(f"{k} {v:.3f}" for k, v in retrieval.items()))
    return summary


def train_clip_to_files(
    *, model: ModelParams, train: TrainParams, seed: int, device: torch.device, name: str, data: Path, out: Path,
    live: Path, metrics: Path, data_root: Path, checkpoints: Path | None, code: Sequence[Path],
) -> dict:
    """Load pairs from `data`, train a fresh CLIP (or continue from the checkpoint in `checkpoints`), write
    the model folder, the DVCLive folder and metrics.

    With `nproc` > 1 outside torchrun, re-runs the stage script as that many torchrun workers instead; with
    `nnodes` > 1, as this machine's workers of a run that the same command on every machine joins (one
    machine writes the outputs: `medvlm.engine.distributed`).
    """
    if train.world_size > 1 and not launched_by_torchrun():
        relaunch_under_torchrun(train.nproc, nnodes=train.nnodes, rdzv_endpoint=train.rdzv_endpoint,
                                rdzv_id=f"medvlm-{name}")
        if train.nnodes > 1 and not metrics.is_file():
            log.info("%s: no outputs written on this machine: the machine DVC runs the stage on writes them", name)
            return {}
        return read_json(metrics)
    workers, device = join_workers(device, batch_size=train.batch_size, section=name)
    try:
        return _train_and_write(model=model, train=train, seed=seed, name=name, data=data, out=out, live=live,
                                metrics=metrics, data_root=data_root, checkpoints=checkpoints, code=code,
                                workers=workers, device=device)
    finally:
        leave_workers(workers)


def _train_and_write(
    *, model: ModelParams, train: TrainParams, seed: int, name: str, data: Path, out: Path, live: Path,
    metrics: Path, data_root: Path, checkpoints: Path | None, code: Sequence[Path], workers: Workers,
    device: torch.device,
) -> dict:
    enable_fast_cuda_math(device)
    generator = seed_everything(seed)
    train_pairs = load_pairs(data, data_root, "train")
    val_pairs = load_pairs(data, data_root, "val")
    if bool(val_pairs.perturbed.any()):
        raise DataError(f"{data}: {int(val_pairs.perturbed.sum())} val pairs are marked perturbed; "
                        "retrieval is measured on clean held-out pairs only")
    image_size = pairs_image_size(data, train_pairs)
    if val_pairs.images.shape[-2:] != train_pairs.images.shape[-2:]:
        raise DataError(f"{data}: val images are {tuple(val_pairs.images.shape[-2:])}, "
                        f"train images {tuple(train_pairs.images.shape[-2:])}; expected one size")
    clip = initial_clip(model, image_size, device)

    saver = None
    if checkpoints is not None or workers.distributed:
        fingerprint = training_fingerprint(
            stage=name, seed=seed, model=model.model_dump(mode="json"), image_size=image_size,
            train=train, device_type=device.type, pairs=(train_pairs, val_pairs), code=tuple(code))
        workers.require_same(fingerprint, section=name)
    if checkpoints is not None and workers.distributed:
        log.info("%s: resumable checkpoints are written by single-process training only; the %d torchrun "
                 "processes run without them", name, workers.world_size)
    elif checkpoints is not None:
        saver = TrainingCheckpoints(checkpoints, every=train.checkpoint_every, fingerprint=fingerprint, stage=name)
    with contextlib.nullcontext() if saver is None else saver, \
            main_rank_dirs(workers, out, live) as (model_dir, live_dir):
        if saver is not None:
            saver.restore_live(live_dir)
        with main_rank_live(live_dir) as logger:
            result = train_clip(clip=clip, train_pairs=train_pairs, val_pairs=val_pairs, train=train,
                                generator=generator, live=logger, name=name, checkpoints=saver, workers=workers)
        summary = {
            "retrieval": result.val_retrieval,
            "chance": chance_recall(len(val_pairs)),
            "final_train_loss": result.epoch_losses[-1],
            "n_train": len(train_pairs),
            "n_train_perturbed": int(train_pairs.perturbed.sum()),
            "n_val": len(val_pairs),
            "epochs": train.epochs,
        }
        if model_dir is not None:  # the writer rank alone (Workers.writer)
            save_clip(clip, model_dir)
            write_json(metrics, summary)  # inside the block: metrics that cannot be written leave the model as it was
    if saver is not None:
        saver.finish()
    return summary
