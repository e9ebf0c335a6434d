"""How far a test-time pixel attack moves the frozen feature u: the measured budget of RAN's adversarial margin.

RAN's feature-space attack perturbs u within ‖δ‖∞ ≤ adv_eps·std(u) (losses/feature_attack.py). With
`heads.ran.adv_eps: measured` that ratio is not a guess but the shift a pixel attack at the evaluation radius
actually causes. The measurement involves no head, so it cannot be tuned by the head it sets the budget of:
L∞ PGD on the pixels (the evaluation's ε, steps, step size and random start) maximises ‖u(x + δ) − u(x)‖₂²,
the displacement of the task's head input itself (VQA: the fused [v; q; v⊙q] with the question held fixed).
The shift is then read in the feature attack's norm, ‖Δu‖∞ / std(u), with std(u) over every entry of the task's
cached training features (the feature attack takes it over a batch of them). The budget is the median over a
seeded subset of training images: a typical item's shift, not the worst one.

The RMS ratio ‖Δu‖₂ / (√D · std(u)) is recorded beside it: an L∞ ball of radius ε moves every coordinate by
up to ε, while a pixel attack's shift peaks on a few coordinates, so the same L∞ budget is a much larger
perturbation in L2 than the pixel attack causes (docs/method.md).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from tqdm import tqdm

from medvlm.attacks.pgd import linf_ball, random_start_in
from medvlm.runtime import log

Embed = Callable[[torch.Tensor, slice], torch.Tensor]
"""Maps pixels (and the rows of the batch they are, for per-item context such as VQA questions) to u."""


def displacement_pgd(embed: Callable[[torch.Tensor], torch.Tensor], pixels: torch.Tensor, *, eps: float, step: float,
                     steps: int, random_start: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """Δu = u(x + δ) − u(x) (N×D, detached) of the largest-L2 shift over every PGD iterate, with δ in the L∞
    ball of radius `eps` (inside [0, 1]); PGD ascends ‖Δu‖₂² summed over the batch (each image's gradient
    is its own). A smooth objective: the L∞ of Δu would give gradient to one coordinate per image only."""
    with torch.no_grad():
        clean = embed(pixels)
    lower, upper = linf_ball(pixels, eps)
    adversarial = random_start_in(pixels, eps, lower, upper, generator) if random_start else pixels.clone()
    best = torch.zeros_like(clean)
    best_norm = torch.full((len(pixels),), -1.0, device=clean.device)
    for iteration in range(steps + 1):
        adversarial.requires_grad_(iteration < steps)
        with torch.set_grad_enabled(iteration < steps):
            shift = embed(adversarial) - clean
        norms = shift.detach().norm(dim=1)
        better = norms > best_norm
        best[better], best_norm[better] = shift.detach()[better], norms[better]
        if iteration == steps:
            break
        (gradient,) = torch.autograd.grad(shift.pow(2).sum(), adversarial)
        adversarial = torch.clamp(adversarial.detach() + step * gradient.sign(), lower, upper)
    return best


def _quantiles(values: torch.Tensor) -> dict[str, float]:
    points = torch.quantile(values, torch.tensor([0.1, 0.5, 0.9], dtype=values.dtype))
    return {"mean": float(values.mean()), "p10": float(points[0]), "median": float(points[1]),
            "p90": float(points[2])}


def measure_shift(*, embed: Embed, load_pixels: Callable[[Sequence[int]], torch.Tensor], n_items: int,
                  features: torch.Tensor, n_images: int, eps_255: float, steps: int, step_fraction: float,
                  random_start: bool, batch_size: int, seed: int, what: str) -> dict[str, Any]:
    """The shift of u under pixel PGD at `eps_255` on the first `n_images` of a seeded order of the `n_items`
    training items, in units of std(`features`) (the task's cached training features)."""
    if n_items == 0:
        raise ValueError(f"{what}: no training items to measure the feature shift on")
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randperm(n_items, generator=generator)[:n_images].sort().values.tolist()
    eps = eps_255 / 255
    shifts = []
    started = time.perf_counter()
    for start in tqdm(range(0, len(rows), batch_size), desc=f"feature shift {what}", unit="batch"):
        batch_rows = rows[start:start + batch_size]
        pixels = load_pixels(batch_rows)
        shifts.append(displacement_pgd(lambda x: embed(x, batch_rows), pixels, eps=eps, step=step_fraction * eps,
                                       steps=steps, random_start=random_start, generator=generator).float().cpu())
    shift = torch.cat(shifts)
    std = float(features.float().std())
    if not math.isfinite(std) or std <= 0:
        raise ValueError(f"{what}: the training features have std {std}; cannot express the shift in its units")
    linf = shift.abs().amax(dim=1) / std
    rms = shift.norm(dim=1) / (math.sqrt(shift.shape[1]) * std)
    result = {"eps_255": eps_255, "steps": steps, "n": len(rows), "std_u": std, "dims": int(shift.shape[1]),
              "linf_ratio": _quantiles(linf), "rms_ratio": _quantiles(rms)}
    result["adv_eps"] = result["linf_ratio"]["median"]
    log.info("feature shift %s at eps %g/255 over %d images (%.1f s): |du|_inf = %.3f std(u) (median; "
             "p90 %.3f), rms %.3f std(u)", what, eps_255, len(rows), time.perf_counter() - started,
             result["linf_ratio"]["median"], result["linf_ratio"]["p90"], result["rms_ratio"]["median"])
    return result
