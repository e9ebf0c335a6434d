"""Contrastive CLIP training on in-memory image-caption pairs: the loop the `surrogate` and `pretrain` stages share.

Both stages run the same loop (open_clip's ClipLoss, AdamW, linear warm-up then cosine decay, logit-scale
clamp), differing only in their data folder and their `TrainParams` section. Held-out retrieval recall on
the clean `val` split is measured after every epoch. With `nproc` > 1 the loop runs as torchrun workers
(distributed.py); batches come from the in-memory uint8 images (device_input.py).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from dvclive import Live
from open_clip.loss import ClipLoss
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR
from tqdm import tqdm

from medvlm.data.manifest import to_pixels
from medvlm.data.pairs import ImageCaptionPairs
from medvlm.engine.checkpoint import TrainingCheckpoints, TrainingPosition
from medvlm.engine.device_input import device_batches
from medvlm.engine.distributed import Workers
from medvlm.io import DataError
from medvlm.eval.retrieval import retrieval_recall
from medvlm.models.clip import MedClip
from medvlm.params import TrainParams
from medvlm.runtime import check_finite, log

LOGIT_SCALE_MAX = math.log(100)
"""open_clip's trainer clamps the learned temperature at ln(100), as the original CLIP paper does."""


@dataclass(frozen=True)
class TrainingResult:
    step_losses: list[float]
    epoch_losses: list[float]
    """Mean training loss of each epoch."""
    val_retrieval: dict[str, float]
    """Retrieval recall on the validation pairs after the last epoch."""
    samples_per_second: list[float]
    """Training throughput of each epoch (pairs of the global batch per second, validation excluded)."""


def _skips_weight_decay(name: str, param: nn.Parameter) -> bool:
    # open_clip's trainer rule (gains, biases, logit_scale), extended to the token/positional/class
    # embeddings, which are 2-D but are lookup tables, not weights to shrink.
    return param.ndim < 2 or "bias" in name or "logit_scale" in name or "embedding" in name


def build_optimizer(model: nn.Module, train: TrainParams) -> torch.optim.AdamW:
    """AdamW with weight decay only on the weight matrices."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    no_decay = [p for name, p in named if _skips_weight_decay(name, p)]
    decay = [p for name, p in named if not _skips_weight_decay(name, p)]
    return torch.optim.AdamW(
        [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": train.weight_decay}],
        lr=train.lr,
        fused=True,  # one kernel over all tensors: the CPU optimiser step is ~8x faster than the per-tensor loop
    )


def build_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> LRScheduler:
    """Linear warm-up from lr/warmup to lr over `warmup_steps` steps, then cosine decay towards 0.

    Warm-up is cut short so at least one step is left for the cosine phase.
    """
    warmup = min(warmup_steps, total_steps - 1)
    cosine = CosineAnnealingLR(optimizer, T_max=total_steps - warmup)
    if warmup < 2:  # a one-step warm-up starts at lr/1, i.e. is no warm-up at all
        return cosine
    linear = LinearLR(optimizer, start_factor=1.0 / warmup, end_factor=1.0, total_iters=warmup - 1)
    return SequentialLR(optimizer, [linear, cosine], milestones=[warmup])


def epoch_batches(n: int, batch_size: int, generator: torch.Generator, processes: int = 1) -> list[torch.Tensor]:
    """A seeded shuffle of range(n) cut into batches; a last batch of one pair is dropped (no negatives).

    With several `processes` the last batch is cut to a multiple of their number (each takes an equal slice).
    """
    order = torch.randperm(n, generator=generator)
    batches = list(order.split(batch_size))
    if batches:
        batches[-1] = batches[-1][:len(batches[-1]) - len(batches[-1]) % processes]
        if len(batches[-1]) < max(2, processes):
            batches.pop()
    return batches


def steps_per_epoch(n: int, batch_size: int, processes: int = 1) -> int:
    full, rest = divmod(n, batch_size)
    return full + (1 if rest - rest % processes >= max(2, processes) else 0)


def _autocast(device: torch.device) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def embed_pairs(clip: MedClip, pairs: ImageCaptionPairs, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised float32 image and text embeddings of every pair, on the CPU."""
    was_training = clip.training
    clip.eval()
    device = clip.device
    tokens = clip.tokenize(pairs.captions)
    image_chunks, text_chunks = [], []
    for start in range(0, len(pairs), batch_size):
        pixels = to_pixels(pairs.images[start:start + batch_size].to(device, non_blocking=True))
        with _autocast(device):
            image_chunks.append(clip.encode_pixels(pixels).float().cpu())
            text_chunks.append(clip.encode_tokens(tokens[start:start + batch_size]).float().cpu())
    clip.train(was_training)
    return torch.cat(image_chunks), torch.cat(text_chunks)


def train_clip(
    *,
    clip: MedClip,
    train_pairs: ImageCaptionPairs,
    val_pairs: ImageCaptionPairs,
    train: TrainParams,
    generator: torch.Generator,
    live: Live,
    name: str = "clip",
    checkpoints: TrainingCheckpoints | None = None,
    workers: Workers = Workers(),
) -> TrainingResult:
    """Train `clip` in place; log per-step loss/lr/logit scale and per-epoch val recall to `live`.

    With `checkpoints`, training continues from its checkpoint when there is one and saves new ones as it
    goes (`medvlm.engine.checkpoint`). With several `workers` (torchrun), each trains on its slice of every
    global batch (distributed.py).
    """
    if len(train_pairs) < 2:
        raise DataError(f"contrastive training needs at least 2 training pairs, got {len(train_pairs)}")
    device = clip.device
    n_train = len(train_pairs)
    total_steps = train.epochs * steps_per_epoch(n_train, train.batch_size, workers.world_size)
    tokens = clip.tokenize(train_pairs.captions)  # tokenized once, indexed per batch
    loss_fn = ClipLoss(**workers.clip_loss_options())
    model = workers.wrap(clip, device)
    optimizer = build_optimizer(clip, train)
    scheduler = build_scheduler(optimizer, train.warmup_steps, total_steps)
    log.info("%s: %d training pairs, %d epochs, %d steps, batch %d, on %s",
             name, n_train, train.epochs, total_steps, train.batch_size, device)

    position = (checkpoints.resume(model=clip, optimizer=optimizer, scheduler=scheduler, generator=generator)
                if checkpoints is not None else TrainingPosition())
    step, step_losses = position.step, position.step_losses
    live.step = step
    per_epoch = steps_per_epoch(n_train, train.batch_size, workers.world_size)
    epoch_losses = [sum(step_losses[e * per_epoch:(e + 1) * per_epoch]) / per_epoch for e in range(position.epoch - 1)]
    val_retrieval: dict[str, float] = {}
    samples_per_second: list[float] = []
    for epoch in range(position.epoch, train.epochs + 1):
        clip.train()
        if epoch == position.epoch and position.order is not None:  # resumed mid-epoch: its drawn order
            batches, first = list(position.order.split(train.batch_size)), position.next_batch
        else:
            batches, first = epoch_batches(n_train, train.batch_size, generator, workers.world_size), 0
        order = torch.cat(batches)
        epoch_start = time.perf_counter()
        seen = 0
        progress = tqdm(range(first, len(batches)), desc=f"{name} epoch {epoch}/{train.epochs}", unit="batch",
                        dynamic_ncols=True, initial=first, total=len(batches), disable=not workers.is_main)
        local_batches = device_batches(train_pairs.images, tokens, [workers.shard(b) for b in batches[first:]],
                                       device)
        for batch_number, (pixels, batch_tokens) in zip(progress, local_batches):
            with _autocast(device):
                loss = loss_fn(*model(pixels, batch_tokens))
            logged_loss = workers.mean(loss)  # the global batch's loss; a NaN on any rank stops every rank
            check_finite(logged_loss, f"{name}: contrastive loss", step)
            lr = optimizer.param_groups[0]["lr"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                clip.clip.logit_scale.clamp_(0, LOGIT_SCALE_MAX)
            loss_value = logged_loss.item()
            step_losses.append(loss_value)
            seen += len(batches[batch_number])
            live.log_metric("train/loss", loss_value)
            live.log_metric("train/lr", lr)
            live.log_metric("train/logit_scale", clip.logit_scale().item())
            live.next_step()
            step += 1
            progress.set_postfix(loss=f"{loss_value:.4f}")
            if checkpoints is not None:
                checkpoints.poll(TrainingPosition(step, epoch, batch_number + 1, order, step_losses), Path(live.dir))
        seconds = time.perf_counter() - epoch_start
        samples_per_second.append(seen / seconds)
        epoch_losses.append(sum(step_losses[-len(batches):]) / len(batches))

        val_retrieval = retrieval_recall(*embed_pairs(clip, val_pairs, train.batch_size))
        for key, value in val_retrieval.items():
            live.log_metric(f"val/{key}", value)
        log.info("%s epoch %d/%d: train loss %.4f, %.1f samples/s, val %s", name, epoch, train.epochs,
                 epoch_losses[-1], seen / seconds, ", ".join(f"{k} {v:.3f}" for k, v in val_retrieval.items()))
        if checkpoints is not None:
            checkpoints.poll(TrainingPosition(step, epoch + 1, 0, None, step_losses), Path(live.dir))
    return TrainingResult(step_losses=step_losses, epoch_losses=epoch_losses, val_retrieval=val_retrieval,
                          samples_per_second=samples_per_second)
