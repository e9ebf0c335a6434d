"""Head-training benchmark: `fit_head` for every head method on synthetic cached features (`make bench`).

The twin of the finetune stage's training call, minus the files: the same trainer, heads, losses and
default params (params.yaml's heads.<method>: 30 epochs, batch 64, AdamW + cosine), on N×D synthetic
features shaped like the cached ones (L2-normalised class directions plus noise, and two augmented
views for NMTune). Prints one row per method with the best and median wall time of `--repeats` runs and
the ratio to its budget (docs/benchmarks.md: LP <= 2 s, RAN <= 10 s; the others have none), after one untimed
warm-up epoch per method. The numbers are measured, never asserted: on a shared machine they vary from
run to run, hence the repeats.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from pathlib import Path

import torch
import typer
import torch.nn.functional as F

from medvlm.engine.fit_head import fit_head
from medvlm.losses import build_loss
from medvlm.methods import METHODS
from medvlm.models.heads import build_head
from medvlm.params import load_params
from medvlm.runtime import seed_everything

BUDGET_SECONDS = {"lp": 2.0, "ran": 10.0}
"""The budgeted case: head training on cached features (10k × 512, 30 epochs, CPU)."""


def synthetic_features(n: int, dim: int, n_classes: int, seed: int) -> dict[str, torch.Tensor]:
    """Cached-feature tensors like the features stage writes: x, two views of it, labels."""
    generator = seed_everything(seed)
    labels = torch.arange(n) % n_classes
    centres = F.normalize(torch.randn(n_classes, dim, generator=generator), dim=1)
    features = F.normalize(centres[labels] + 0.5 * torch.randn(n, dim, generator=generator) / dim ** 0.5, dim=1)

    def view() -> torch.Tensor:
        return F.normalize(features + 0.1 * torch.randn(n, dim, generator=generator) / dim ** 0.5, dim=1)

    return {"x": features, "x_view1": view(), "x_view2": view(), "y": labels}


def time_method(method: str, data: dict[str, torch.Tensor], n_classes: int, params_path: Path, seed: int,
                *, epochs: int | None = None) -> float:
    """Wall time of one `fit_head` run with the method's params (`epochs` overrides theirs)."""
    settings = getattr(load_params(params_path).heads, method)
    generator = seed_everything(seed)
    head = build_head(method, data["x"].shape[1], n_classes)
    loss = build_loss(method, **settings.loss_options())
    start = time.perf_counter()
    fit_head(head, loss, {key: data[key] for key in loss.inputs}, epochs=epochs or settings.epochs,
             batch_size=settings.batch_size, lr=settings.lr, weight_decay=settings.weight_decay,
             generator=generator, task=f"bench {method}")
    return time.perf_counter() - start


def main(
    methods: list[str] = typer.Option(list(METHODS), "--method", help="head methods to time (repeat the option)"),
    n: int = typer.Option(10_000, help="training samples"),
    dim: int = typer.Option(512, help="feature dimension D"),
    n_classes: int = typer.Option(6, help="classes"),
    repeats: int = typer.Option(1, min=1, help="timed runs per method (best and median are reported)"),
    params: Path = typer.Option(Path("params.yaml"), help="params file with the heads.<method> settings"),
    seed: int = typer.Option(0, help="seed of the synthetic data and the heads"),
    json_out: Path = typer.Option(None, "--json", help="write the results here as JSON"),
) -> None:
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise typer.BadParameter(f"unknown methods {unknown}; known: {sorted(METHODS)}")
    logging.basicConfig(level=logging.WARNING)
    data = synthetic_features(n, dim, n_classes, seed)
    rows = []
    for method in methods:
        # Warm-up (untimed): the first run in a process pays one-off costs (kernel selection, allocations).
        warm_up = {key: tensor[:256] for key, tensor in data.items()}
        time_method(method, warm_up, n_classes, params, seed, epochs=1)
        seconds = [time_method(method, data, n_classes, params, seed) for _ in range(repeats)]
        rows.append((method, min(seconds), statistics.median(seconds)))
    settings = load_params(params).heads
    print(f"\nhead training on synthetic cached features: {n} x {dim}, {n_classes} classes, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads available (one for LP, all for the residual-MLP heads)")
    print(f"{'method':<8} {'epochs':>6} {'batch':>5} {'best s':>8} {'median s':>9} {'budget s':>9} {'best/budget':>12}")
    for method, best, median in rows:
        section = getattr(settings, method)
        budget = BUDGET_SECONDS.get(method)
        ratio = f"{best / budget:.2f}" if budget else "-"
        print(f"{method:<8} {section.epochs:>6} {section.batch_size:>5} {best:>8.2f} {median:>9.2f} "
              f"{budget if budget else '-':>9} {ratio:>12}")
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps({
            "benchmark": "heads", "n": n, "dim": dim,
            "methods": {method: {"best_s": best, "median_s": median, "budget_s": BUDGET_SECONDS.get(method)}
                        for method, best, median in rows},
        }, indent=2))


if __name__ == "__main__":
    typer.run(main)
