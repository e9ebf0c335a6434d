"""Pre-training throughput: the project's CLIP loop against open_clip's own trainer (`open_clip_train`).

Same model (an open_clip config shipped in src/medvlm/model_configs/, default medvlm-tiny-rn), same data
(the synthetic pre-training pairs of the download stage, written once as PNGs), same batch, optimiser
(AdamW, lr 1e-3, wd 0.1, 50 warm-up steps, cosine) and precision (float32 on CPU, bf16 autocast on CUDA).

- ours: `train_clip` on the pairs decoded once into a uint8 tensor, as the pretrain stage runs it;
  throughput from its own per-epoch count (training steps only; the per-epoch validation is excluded).
- open_clip_train: its `main` in this process with `--dataset-type csv` on the same PNGs (decoded and
  transformed per sample by its DataLoader, as its users run it), timed around each `train_one_epoch`.
  It runs once per `--their-workers` value and the best is kept: the strongest reference.

Runs alternate (ours, then open_clip_train with each --workers value) for `--rounds` rounds, and the first
epoch of every run is a warm-up. Each loop's throughput is its best later epoch over all rounds: on a machine
shared with other jobs, the least disturbed epoch is the closest to what the loop itself can do, and
alternating gives both loops the same chances. Prints every epoch, the best of each and the ratio
(ours / open_clip_train's best; >= 1 means ours is at least as fast), and writes them as JSON with `--json`.

    python benchmarks/bench_pretrain.py                      # CPU, or CUDA when PyTorch sees a GPU
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import typer
from dvclive import Live

from medvlm.pipeline.download import download_stage
from medvlm.data.export_images import export_images
from medvlm.data.manifest import read_manifest
from medvlm.data.pairs import load_pairs
from medvlm.engine.clip_training import train_clip
from medvlm.models.clip import create_clip, register_model_configs
from medvlm.params import TrainParams, parse_params
from medvlm.runtime import enable_fast_cuda_math, resolve_device, seed_everything

LR, WEIGHT_DECAY, WARMUP = 1e-3, 0.1, 50


def synthetic_pairs(root: Path, n_pairs: int, image_size: int, seed: int) -> Path:
    """The download stage's synthetic data with `n_pairs` pre-training pairs (other tasks at their minimum)."""
    minimum = {key: 8 for key in ("pretrain_val", "cls_train", "cls_test", "ood_test", "vqa_train", "vqa_test")}
    params = parse_params({"seed": seed, "data": {"image_size": image_size, "pretrain_train": n_pairs, **minimum}})
    download_stage(params=params, out=root / "raw", data_root=root)
    return root / "raw"


def open_clip_csv(raw: Path, data_root: Path, target: Path) -> Path:
    """The train pairs as open_clip_train's CSV data set: absolute path of a PNG, caption (tab-separated). The
    download stage packs images into one file, so they are exported as PNGs for it (named by row id)."""
    frame = read_manifest(raw, "pretrain", data_root, split="train")
    pngs = target.parent / "open_clip_train_images"
    export_images(data=raw, kind="pretrain", out=pngs, data_root=data_root, split="train")
    table = pd.DataFrame({"filepath": [str((pngs / f"{row_id}.png").resolve()) for row_id in frame["id"]],
                          "title": frame["caption"]})
    table.to_csv(target, sep="\t", index=False)
    return target


def ours(raw: Path, data_root: Path, model: str, batch: int, epochs: int, device: torch.device, seed: int,
         work: Path) -> list[float]:
    """samples/s of each epoch of the project's loop."""
    enable_fast_cuda_math(device)
    generator = seed_everything(seed)
    train_pairs, val_pairs = load_pairs(raw, data_root, "train"), load_pairs(raw, data_root, "val")
    clip = create_clip(model, int(train_pairs.images.shape[-1]), device)
    settings = TrainParams(epochs=epochs, batch_size=batch, lr=LR, weight_decay=WEIGHT_DECAY, warmup_steps=WARMUP)
    with Live(dir=str(work / "live"), dvcyaml=False, save_dvc_exp=False) as live:
        result = train_clip(clip=clip, train_pairs=train_pairs, val_pairs=val_pairs, train=settings,
                            generator=generator, live=live, name="bench ours")
    return result.samples_per_second


def theirs(csv: Path, model: str, image_size: int, batch: int, epochs: int, device: torch.device, workers: int,
           seed: int, work: Path) -> list[float]:
    """samples/s of each epoch of open_clip_train's loop (`train_one_epoch` timed from outside)."""
    import open_clip_train.main as trainer  # imported here: it configures the root logger on use

    register_model_configs()
    seconds: list[float] = []
    samples: list[int] = []
    train_one_epoch = trainer.train_one_epoch

    def timed(model_, data, *args, **kwargs):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        train_one_epoch(model_, data, *args, **kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
        samples.append(data["train"].dataloader.num_batches * batch)

    trainer.train_one_epoch = timed
    root_level = logging.getLogger().level
    try:
        trainer.main([
            "--train-data", str(csv), "--dataset-type", "csv", "--csv-separator", "\t",
            "--model", model, "--force-image-size", str(image_size), "--batch-size", str(batch),
            "--epochs", str(epochs), "--lr", str(LR), "--wd", str(WEIGHT_DECAY), "--warmup", str(WARMUP),
            "--workers", str(workers), "--device", str(device), "--seed", str(seed),
            "--precision", "amp_bf16" if device.type == "cuda" else "fp32",
            "--logs", str(work / "logs"), "--name", f"workers-{workers}", "--save-frequency", "0",
            "--log-every-n-steps", "1000000",
        ])
    finally:
        trainer.train_one_epoch = train_one_epoch
        logging.getLogger().setLevel(root_level)  # its main sets the root logger to INFO
    return [n / s for n, s in zip(samples, seconds)]


def main(
    model: str = typer.Option("medvlm-tiny-rn", help="open_clip model config (ours are registered)"),
    n_pairs: int = typer.Option(1024, help="pre-training pairs"),
    image_size: int = typer.Option(64, help="image size in pixels"),
    batch: int = typer.Option(128, help="batch size"),
    epochs: int = typer.Option(3, min=2, help="epochs per run; the first is a warm-up"),
    their_workers: str = typer.Option("0,1,2", help="open_clip_train --workers values to try (best kept)"),
    rounds: int = typer.Option(2, min=1, help="alternating rounds of all runs"),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    seed: int = typer.Option(0, help="seed of the data and both runs"),
    json_out: Path = typer.Option(None, "--json", help="write the results here as JSON"),
) -> None:
    logging.basicConfig(level=logging.WARNING)
    target = resolve_device(device)
    with tempfile.TemporaryDirectory(prefix="bench-pretrain-") as tmp:
        work = Path(tmp)
        raw = synthetic_pairs(work / "data", n_pairs, image_size, seed)
        csv = open_clip_csv(raw, work / "data", work / "train.tsv")
        worker_counts = [int(value) for value in their_workers.split(",")]
        ours_rates: list[list[float]] = []
        theirs_rates: dict[int, list[list[float]]] = {workers: [] for workers in worker_counts}
        for round_ in range(rounds):
            ours_rates.append(ours(raw, work / "data", model, batch, epochs, target, seed, work / f"ours-{round_}"))
            for workers in worker_counts:
                theirs_rates[workers].append(theirs(csv, model, image_size, batch, epochs, target, workers, seed,
                                                    work / f"theirs-{round_}"))
    ours_best = max(rate for run in ours_rates for rate in run[1:])
    theirs_best = {workers: max(rate for run in runs for rate in run[1:]) for workers, runs in theirs_rates.items()}
    best_workers = max(theirs_best, key=theirs_best.get)
    ratio = ours_best / theirs_best[best_workers]
    print(f"\npre-training throughput: {model}, {n_pairs} pairs, {image_size} px, batch {batch}, device {target}, "
          f"{torch.get_num_threads()} threads; best of epochs 2-{epochs} over {rounds} alternating rounds")

    def epochs_text(runs: list[list[float]]) -> str:
        return " | ".join(", ".join(f"{rate:.1f}" for rate in run) for run in runs)

    print(f"medvlm train_clip              {ours_best:8.1f} samples/s   (epochs per round: {epochs_text(ours_rates)})")
    for workers, rate in theirs_best.items():
        print(f"open_clip_train --workers {workers}    {rate:8.1f} samples/s   "
              f"(epochs per round: {epochs_text(theirs_rates[workers])})")
    print(f"throughput ratio (ours / open_clip_train, best --workers {best_workers}): {ratio:.3f}")
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps({
            "benchmark": "pretrain", "device": str(target), "model": model, "batch": batch, "n_pairs": n_pairs,
            "image_size": image_size, "ours_samples_per_s": ours_best,
            "open_clip_train_samples_per_s": theirs_best[best_workers], "open_clip_train_workers": best_workers,
            "ratio": ratio,
        }, indent=2))


if __name__ == "__main__":
    typer.run(main)
