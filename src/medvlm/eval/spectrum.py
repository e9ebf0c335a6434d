"""Singular-value spectrum of frozen features, the diagnostic NMTune uses to see pre-training noise.

NMTune (Chen et al., 2024) reads noisy pre-training as reshaping the feature space: the singular values of
the N×D feature matrix spread or concentrate. With s the singular values and p = s / Σs,
- `sv_entropy` = −Σ p log p (natural log; at most log D, reached when all directions carry equal weight),
- `top_sv_ratio` = s₁ / Σs (how much one direction dominates).
Computed on the features as cached (L2-normalised embeddings, not centred), as NMTune does.
"""

from __future__ import annotations

import math

import torch


def feature_spectrum(features: torch.Tensor) -> dict[str, float | int]:
    """Spectrum summary of an N×D feature matrix (float64 SVD)."""
    if features.ndim != 2 or min(features.shape) < 2:
        raise ValueError(f"expected an N×D feature matrix with N, D >= 2, got shape {tuple(features.shape)}")
    singular_values = torch.linalg.svdvals(features.to(torch.float64))
    total = singular_values.sum()
    if not torch.isfinite(total) or total <= 0:
        raise ValueError("the feature matrix has non-finite or all-zero singular values")
    weights = singular_values / total
    weights = weights[weights > 0]  # 0·log 0 = 0
    return {
        "sv_entropy": float(-(weights * weights.log()).sum()),
        "sv_entropy_max": math.log(len(singular_values)),
        "top_sv_ratio": float(singular_values[0] / total),
        "n": int(features.shape[0]),
        "dim": int(features.shape[1]),
    }
