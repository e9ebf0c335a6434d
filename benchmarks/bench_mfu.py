"""Model FLOP utilisation (MFU) of a ViT-B/16-sized CLIP pre-training step on one GPU (`make bench`).

The project's own loop (`train_clip`: bf16 autocast, TF32, pinned uint8 batches copied one step ahead) trains
open_clip's ViT-B-16 CLIP from random init on 224 px images (random pixels, synthetic captions: the
throughput does not depend on what the pixels show). FLOPs of one training step (forward + backward,
under the same autocast) are counted with torch.utils.flop_counter.FlopCounterMode; MFU is
FLOPs per sample × measured samples/s over the card's dense bf16 peak, looked up by the device name
(or given with --peak-tflops). The first epoch is a warm-up (cuDNN autotuning, allocator). Without a GPU
the script says so and exits 0.

    python benchmarks/bench_mfu.py --batch 256
"""

from __future__ import annotations

import json
import logging
import statistics
import tempfile
from pathlib import Path

import torch
import typer
from dvclive import Live
from open_clip.loss import ClipLoss
from torch.utils.flop_counter import FlopCounterMode

from medvlm.data.manifest import to_pixels
from medvlm.data.pairs import ImageCaptionPairs
from medvlm.engine.clip_training import train_clip
from medvlm.models.clip import create_clip
from medvlm.params import TrainParams
from medvlm.runtime import enable_fast_cuda_math, seed_everything

DENSE_BF16_TFLOPS = (
    # (substring of torch.cuda.get_device_name(), dense bf16 tensor-core peak in TFLOP/s, vendor data sheets);
    # the first match wins, so more specific names come first.
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM
    ("H200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
)

FINDINGS = ("no acute abnormality", "moderate cardiomegaly", "small left pleural effusion",
            "right upper zone nodule", "large left pneumothorax", "right lower zone consolidation")


def peak_tflops(device_name: str) -> float | None:
    for fragment, tflops in DENSE_BF16_TFLOPS:
        if fragment in device_name:
            return tflops
    return None


def random_pairs(n: int, size: int, generator: torch.Generator) -> ImageCaptionPairs:
    images = torch.randint(0, 256, (n, size, size), dtype=torch.uint8, generator=generator)
    captions = [f"frontal chest radiograph {i}: {FINDINGS[i % len(FINDINGS)]}." for i in range(n)]
    return ImageCaptionPairs(ids=[str(i) for i in range(n)], images=images, captions=captions,
                             perturbed=torch.zeros(n, dtype=torch.bool))


def step_flops(clip, pairs: ImageCaptionPairs, batch: int) -> int:
    """FLOPs of one training step (forward, loss, backward) on `batch` pairs, under bf16 autocast."""
    pixels = to_pixels(pairs.images[:batch].to(clip.device))
    tokens = clip.tokenize(pairs.captions[:batch])
    counter = FlopCounterMode(display=False)
    with counter:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = ClipLoss()(*clip(pixels, tokens))
        loss.backward()
    clip.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def main(
    model: str = typer.Option("ViT-B-16", help="open_clip model config"),
    image_size: int = typer.Option(224, help="image size in pixels"),
    batch: int = typer.Option(256, help="batch size"),
    steps: int = typer.Option(20, min=2, help="training steps per epoch"),
    epochs: int = typer.Option(3, min=2, help="epochs; the first is a warm-up"),
    peak: float = typer.Option(None, "--peak-tflops", help="the card's dense bf16 peak, if not in the table"),
    json_out: Path = typer.Option(None, "--json", help="write the results here as JSON"),
) -> None:
    if not torch.cuda.is_available():
        print("skipped: MFU needs a CUDA GPU (PyTorch sees none); run `make bench` on a GPU machine")
        if json_out is not None:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps({"benchmark": "mfu", "skipped": "no CUDA GPU"}))
        raise typer.Exit(0)
    logging.basicConfig(level=logging.WARNING)
    device = torch.device("cuda")
    enable_fast_cuda_math(device)
    name = torch.cuda.get_device_name(device)
    peak = peak or peak_tflops(name)
    generator = seed_everything(0)
    train_pairs = random_pairs(batch * steps, image_size, generator)
    val_pairs = random_pairs(batch, image_size, generator)
    clip = create_clip(model, image_size, device)
    flops_per_sample = step_flops(clip, train_pairs, batch) / batch
    settings = TrainParams(epochs=epochs, batch_size=batch, lr=1e-4, weight_decay=0.1, warmup_steps=steps)
    torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory(prefix="bench-mfu-") as tmp, \
            Live(dir=tmp, dvcyaml=False, save_dvc_exp=False) as live:
        result = train_clip(clip=clip, train_pairs=train_pairs, val_pairs=val_pairs, train=settings,
                            generator=generator, live=live, name="bench mfu")
    samples_per_s = statistics.median(result.samples_per_second[1:])
    achieved_tflops = flops_per_sample * samples_per_s / 1e12
    mfu = achieved_tflops / peak if peak else None
    print(f"\nMFU: {model} CLIP, {image_size} px, batch {batch}, bf16 autocast, random init, on {name} "
          f"(torch {torch.__version__})")
    print(f"training FLOPs per sample {flops_per_sample / 1e9:.1f} GFLOP; {samples_per_s:.1f} samples/s "
          f"(epochs: {', '.join(f'{r:.1f}' for r in result.samples_per_second)}); peak GPU memory "
          f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")
    print(f"achieved {achieved_tflops:.1f} TFLOP/s; dense bf16 peak "
          f"{f'{peak:.0f} TFLOP/s' if peak else 'unknown (pass --peak-tflops)'}; "
          f"MFU {f'{mfu:.3f}' if mfu is not None else 'n/a'}")
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps({
            "benchmark": "mfu", "device_name": name, "model": model, "image_size": image_size, "batch": batch,
            "flops_per_sample": flops_per_sample, "samples_per_s": samples_per_s,
            "achieved_tflops": achieved_tflops, "peak_tflops": peak, "mfu": mfu,
        }, indent=2))


if __name__ == "__main__":
    typer.run(main)
