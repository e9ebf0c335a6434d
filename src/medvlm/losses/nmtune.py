"""NMTune's objective (Chen et al., ICLR 2024), with the semantics of its public reference code.

Two augmented views per sample go through the head as one stacked batch [view1; view2] (so BatchNorm
normalises over both, as in the reference), and with z that stacked batch of transformed features:
  L = CE(logits of both views)
      + w_mse · MSE(n(z_view2), sg(n(u_view1)))
      + w_cov · (1/D) Σ_{j≠k} C_jk²        (C: covariance of the centred z, N−1 denominator)
      − w_svd · mean(top-5 of σ/Σσ)        (σ: singular values of the uncentred z)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medvlm.losses.base import HeadLoss, LossResult
from medvlm.losses.regularizers import normalized_mse, off_diagonal_covariance, top_singular_value_share
from medvlm.models.heads import Head


class NMTuneLoss(HeadLoss):
    """Terms: ce, mse, cov, svd (the svd term is negative: it is a reward)."""

    inputs = ("x_view1", "x_view2", "y")

    def __init__(self, *, w_mse: float, w_cov: float, w_svd: float):
        super().__init__()
        self.w_mse, self.w_cov, self.w_svd = w_mse, w_cov, w_svd

    def forward(self, head: Head, batch: dict[str, torch.Tensor]) -> LossResult:
        first_view, labels = batch["x_view1"], batch["y"]
        output = head.outputs(torch.cat([first_view, batch["x_view2"]]))
        transformed = output.transformed
        terms = {"ce": F.cross_entropy(output.logits, labels.repeat(2))}
        if self.w_mse:
            terms["mse"] = self.w_mse * normalized_mse(transformed[len(first_view):], first_view)
        if self.w_cov:
            terms["cov"] = self.w_cov * off_diagonal_covariance(transformed)
        if self.w_svd:
            terms["svd"] = -self.w_svd * top_singular_value_share(transformed)
        return LossResult(terms=terms, logits=output.logits)
