"""The one trainer for every light-weight head, and `train_heads`, which runs it once per task.

Heads train on cached features held in memory: no DataLoader and no workers, just a seeded permutation
split into batches each epoch. Each batch is a dict of the cached tensors the loss names (`loss.inputs`:
"x", "y", or the augmented views "x_view1", "x_view2"); the loss returns already-weighted terms (see
`medvlm.losses.base`), and the trainer sums them, checks each for NaN/inf, and logs each one (epoch mean),
its share of the summed magnitudes (`<task>/share_<term>`) and the train accuracy to DVCLive as
`<task>/<term>`, so new loss terms appear in the curves without a trainer change.
"""

from __future__ import annotations

import contextlib
import functools
import operator
import time
import zlib
from collections.abc import Mapping
from pathlib import Path

import torch
from dvclive import Live
from tqdm import tqdm

from medvlm.data.cached_features import SHIFT_FILE, load_feature_split, read_feature_shifts, read_features_meta
from medvlm.io import DataError, atomic_dir
from medvlm.losses import HeadLoss, build_loss
from medvlm.models.heads import Head, build_head, save_head
from medvlm.methods import HeadTrainingParams
from medvlm.runtime import check_finite, log, seed_everything, single_intra_op_thread
from medvlm.tasks import TASKS, head_tasks



def task_seed(seed: int, task: str) -> int:
    """A per-task seed derived from params.seed; independent of the method, so every method sees the same
    batch order and the comparison between methods is paired."""
    return zlib.crc32(f"{seed}/{task}".encode())


def epoch_batches(n: int, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """A seeded permutation of range(n) split into batches. A trailing batch of one sample joins the
    batch before it: BatchNorm cannot normalise a single sample in training mode."""
    batches = torch.randperm(n, generator=generator).split(batch_size)
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches = (*batches[:-2], torch.cat(batches[-2:]))
    return batches


def _train_one_epoch(
    head: Head,
    loss: HeadLoss,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    data: Mapping[str, torch.Tensor],
    batches: tuple[torch.Tensor, ...],
    *,
    task: str,
    first_step: int,
) -> dict[str, float]:
    """One pass over `batches` (index tensors); returns the sample-weighted mean of every loss term and
    the train accuracy (over every view the loss classified). Per-step values are only collected and
    reduced once at the end: the batches are tiny, so every extra per-step tensor op would show in the
    run time."""
    batch_terms: list[dict[str, torch.Tensor]] = []
    predictions: list[torch.Tensor] = []
    for step, batch in enumerate(batches, start=first_step):
        result = loss(head, {key: data[key][batch] for key in loss.inputs})
        for name, value in result.terms.items():
            check_finite(value, f"finetune {head.method}: {task}/{name} loss", step)
        optimizer.zero_grad(set_to_none=True)
        functools.reduce(operator.add, result.terms.values()).backward()  # no extra op for a single term
        optimizer.step()
        scheduler.step()
        batch_terms.append({name: value.detach() for name, value in result.terms.items()})
        predictions.append(result.logits.detach().argmax(dim=1).view(-1, len(batch)))  # views × batch
    sizes = torch.tensor([len(batch) for batch in batches], dtype=torch.float32)
    n = float(sizes.sum())
    record = {name: float(torch.stack([terms[name] for terms in batch_terms]).float().cpu() @ sizes) / n
              for name in batch_terms[0]}
    # Each term's share of the total magnitude, so that a term stuck near 0 shows in the curves.
    total = sum(abs(value) for value in record.values())
    record |= {f"share_{name}": abs(value) / total if total else 0.0 for name, value in list(record.items())}
    predicted = torch.cat(predictions, dim=1)
    record["train_acc"] = float((predicted == data["y"][torch.cat(batches)]).sum()) / predicted.numel()
    return record


def fit_head(
    head: Head,
    loss: HeadLoss,
    data: Mapping[str, torch.Tensor],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    generator: torch.Generator,
    task: str,
    live: Live | None = None,
) -> list[dict[str, float]]:
    """Train `head` in place on the cached tensors `data` (N rows each; "y" the labels, plus whatever
    `loss.inputs` names) with AdamW and a per-step cosine schedule; return one record per epoch
    ({term: epoch mean, ..., "train_acc": ...}) and leave the head in eval mode. `generator` (CPU)
    drives the shuffling."""
    missing = [key for key in loss.inputs if key not in data]
    if missing:
        raise DataError(f"{task}: the {head.method} loss needs cached tensors {missing}, which the features "
                        f"lack (it has {sorted(data)}); re-run the features stage")
    labels = data["y"]
    n = labels.shape[0]
    bad = {key: tuple(data[key].shape) for key in loss.inputs if data[key].shape[0] != n}
    if n < 2 or labels.ndim != 1 or bad:
        raise DataError(f"{task}: need two or more samples and N rows in every tensor, got {n} labels "
                        f"{tuple(labels.shape)} and mismatched tensors {bad}")
    steps_per_epoch = len(epoch_batches(n, batch_size, torch.Generator()))  # the same rule, any order
    # fused: one kernel per step instead of a dozen small ones, ~20 % faster on these tiny batches.
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay, fused=True)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    history: list[dict[str, float]] = []
    head.train()
    start = time.perf_counter()
    with single_intra_op_thread() if _is_small(head) else contextlib.nullcontext():
        progress = tqdm(range(epochs), desc=f"fit {task}", unit="epoch")
        for epoch in progress:
            batches = tuple(b.to(labels.device) for b in epoch_batches(n, batch_size, generator))
            record = _train_one_epoch(head, loss, optimizer, scheduler, data, batches,
                                      task=task, first_step=epoch * steps_per_epoch)
            history.append(record)
            if live is not None:
                live.step = epoch  # one curve per task over epochs, even with several tasks in one Live
                for name, value in record.items():
                    live.log_metric(f"{task}/{name}", value)
            epoch_loss = sum(value for name, value in record.items()
                             if name != "train_acc" and not name.startswith("share_"))
            progress.set_postfix(acc=f"{record['train_acc']:.3f}", loss=f"{epoch_loss:.4f}")
    seconds = time.perf_counter() - start
    log.info("%s: %d epochs over %d samples in %.2f s (%.0f samples/s)", task, epochs, n, seconds,
             epochs * n / max(seconds, 1e-9))
    head.eval()
    return history


SMALL_HEAD_PARAMETERS = 100_000
"""Below this many parameters (a linear probe: D × classes) a training step is a few small ops: two intra-op
threads gain little when the machine is idle (LP on 10k × 512: 1.75 s against 1.87 s with one) and spin badly
when it is busy (4-38 s, measured on the loaded 2-core machine), so such heads train on one thread. The
residual-MLP heads (4·D² weights, 2M at D = 512) are matrix products big enough to split: one step at D = 512,
batch 64, takes 12.1 ms on one thread and 7.6 ms on two (idle), so they use every thread, like CLIP training."""


def _is_small(head: Head) -> bool:
    return sum(parameter.numel() for parameter in head.parameters()) < SMALL_HEAD_PARAMETERS


def _check_labels(labels: torch.Tensor, n_classes: int, source: Path) -> None:
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
        raise DataError(f"{source}: labels must lie in [0, {n_classes}), found "
                        f"[{int(labels.min())}, {int(labels.max())}]")


def train_heads(*, method: str, settings: HeadTrainingParams, features: Path, out: Path, live: Path, seed: int,
                device: torch.device) -> None:
    """Train one `method` head per task that trains a head (`medvlm.tasks`) on the cached train features; write
    `<task>.safetensors` and `<task>.json` to `out` and the training curves to the DVCLive folder `live`."""
    meta = read_features_meta(features)
    shifts = read_feature_shifts(features)
    # Live closes (and flushes) before its temporary folder is renamed into place.
    with atomic_dir(out) as out_tmp, atomic_dir(live) as live_tmp, \
            Live(dir=str(live_tmp), dvcyaml=False, save_dvc_exp=False) as tracker:
        for task, split in head_tasks().items():
            n_classes = len(meta[TASKS[task].classes])
            data = load_feature_split(features, split)
            _check_labels(data["y"], n_classes, Path(features) / f"{split}.safetensors")
            generator = seed_everything(task_seed(seed, task))
            head = build_head(method, data["x"].shape[1], n_classes).to(device)
            measured = shifts.get(task, {}).get("adv_eps")
            try:
                options = settings.loss_options(measured_adv_eps=measured)
            except ValueError as error:
                raise DataError(f"{Path(features) / SHIFT_FILE}: no measured feature shift for task {task!r} "
                                f"({error}); "
                                "re-run the features stage") from error
            if measured is not None and options.get("adv_eps") == measured:
                log.info("%s %s: feature-space budget adv_eps = %.4f std(u), measured (%s)", method, task, measured,
                         SHIFT_FILE)
            loss = build_loss(method, **options).to(device)
            fit_head(head, loss, {key: tensor.to(device) for key, tensor in data.items() if key in loss.inputs},
                     epochs=settings.epochs, batch_size=settings.batch_size, lr=settings.lr,
                     weight_decay=settings.weight_decay, generator=generator, task=task, live=tracker)
            save_head(head.cpu(), out_tmp, task)
    log.info("wrote %s heads for %s to %s", method, ", ".join(head_tasks()), out)
