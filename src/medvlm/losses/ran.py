"""RAN's objective (Han et al., EMNLP Findings 2024): the paper names the three terms, the equations are
this project's documented reconstruction (docs/method.md).

  L = CE + w_con · MSE(n(z), sg(n(u))) + w_cov · (1/D) Σ_{j≠k} C_jk² + w_adv · L_adv
  L_adv = sample margin of z against the head's learned class centroids + centroid separation
With `adv_eps > 0` the sample margin is taken on the transformed features of feature-space adversarial
inputs u + δ (`feature_attack`) instead of on the clean z.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medvlm.losses.base import HeadLoss, LossResult
from medvlm.losses.centroid_margin import centroid_separation, sample_margin
from medvlm.losses.feature_attack import feature_space_perturbation, kept_batchnorm_statistics
from medvlm.losses.regularizers import normalized_mse, off_diagonal_covariance
from medvlm.models.heads import Head, RanHead


class RanLoss(HeadLoss):
    """Terms: ce, con, cov, adv."""

    inputs = ("x", "y")

    def __init__(self, *, w_con: float, w_cov: float, w_adv: float, margin: float, centroid_margin: float,
                 adv_eps: float, adv_steps: int):
        super().__init__()
        self.w_con, self.w_cov, self.w_adv = w_con, w_cov, w_adv
        self.margin, self.centroid_margin = margin, centroid_margin
        self.adv_eps, self.adv_steps = adv_eps, adv_steps

    def forward(self, head: Head, batch: dict[str, torch.Tensor]) -> LossResult:
        if not isinstance(head, RanHead):
            raise TypeError(f"the RAN loss needs a head with class centroids (RanHead), got {type(head).__name__}")
        features, labels = batch["x"], batch["y"]
        output = head.outputs(features)
        transformed = output.transformed
        terms = {"ce": F.cross_entropy(output.logits, labels)}
        if self.w_con:
            terms["con"] = self.w_con * normalized_mse(transformed, features)
        if self.w_cov:
            terms["cov"] = self.w_cov * off_diagonal_covariance(transformed)
        if self.w_adv:
            terms["adv"] = self.w_adv * self._margin_term(head, features, labels, transformed)
        return LossResult(terms=terms, logits=output.logits)

    def _margin_term(self, head: RanHead, features: torch.Tensor, labels: torch.Tensor,
                     transformed: torch.Tensor) -> torch.Tensor:
        if self.adv_eps > 0:
            delta = feature_space_perturbation(head, features, labels, eps_ratio=self.adv_eps, steps=self.adv_steps)
            with kept_batchnorm_statistics(head):  # the clean pass already updated the statistics
                transformed = head.transform(features + delta)
        return (sample_margin(transformed, labels, head.centroids, self.margin)
                + centroid_separation(head.centroids, self.centroid_margin))
