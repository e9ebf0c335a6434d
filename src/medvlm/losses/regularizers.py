"""Feature-space terms shared by NMTune and RAN, each on a batch of transformed features z (N×D).

Each returns the UNWEIGHTED value; the loss modules multiply by their weight and skip a term whose
weight is 0. docs/method.md gives the equations and where each comes from.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

TOP_SINGULAR_VALUES = 5
"""NMTune's singular-value term averages the top-5 normalised singular values (its reference code)."""


def normalized_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE(n(prediction), sg(n(target))): the mean over all N·D entries of the squared difference of the
    L2-normalised rows, with no gradient into the target (the frozen feature)."""
    return F.mse_loss(F.normalize(prediction, dim=1), F.normalize(target.detach(), dim=1))


def off_diagonal_covariance(features: torch.Tensor) -> torch.Tensor:
    """(1/D) Σ_{j≠k} C_jk², C the covariance of the centred batch (N−1 denominator).

    Σ_{j,k} C_jk² is ‖ZᵀZ‖_F²/(N−1)² for the centred Z, and ‖ZᵀZ‖_F = ‖ZZᵀ‖_F, so the smaller of the two
    Gram matrices gives it: with a batch of 64 and D = 512 that is 8x fewer multiply-adds than the D×D
    covariance (written by hand for that reason). The diagonal C_jj is the per-column variance."""
    n, dim = features.shape
    if n < 2:
        raise ValueError(f"the covariance term needs a batch of two or more samples, got {n}")
    centred = features - features.mean(dim=0)
    gram = centred @ centred.T if n <= dim else centred.T @ centred
    all_squared = gram.square().sum() / (n - 1) ** 2
    diagonal_squared = (centred.square().sum(dim=0) / (n - 1)).square().sum()
    return (all_squared - diagonal_squared) / dim


def top_singular_value_share(features: torch.Tensor, k: int = TOP_SINGULAR_VALUES) -> torch.Tensor:
    """mean(top-k of σ/Σσ), σ the singular values of the UNCENTRED batch (fewer than k if min(N, D) < k).
    NMTune subtracts this (times its weight): a larger share of the leading directions is rewarded."""
    singular_values = torch.linalg.svdvals(features)  # descending
    return (singular_values / singular_values.sum())[:k].mean()
