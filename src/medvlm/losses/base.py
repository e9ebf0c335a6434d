"""The contract between the head trainer and the loss modules.

The trainer hands a loss the head and a batch dict holding exactly the cached tensors the loss names in
`inputs` (e.g. {"x", "y"} or {"x_view1", "x_view2", "y"}). The loss runs the head itself, because how
many forward passes a batch needs (one, one over two stacked views, or an extra one on perturbed
features) is part of the objective. It returns a `LossResult`: every term ALREADY multiplied by its
weight, plus the logits it classified. The trainer sums the terms and logs each one by name, so a new
term shows up in the training curves without a trainer change, and an ablation is a weight set to 0: a
term whose weight is 0 is neither computed nor returned.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from medvlm.models.heads import Head


@dataclass(frozen=True)
class LossResult:
    """Weighted terms by name, and the logits the objective classified for the train accuracy.

    `logits` has k·B rows for a batch of B labels: k stacked blocks (views) of B rows, each in the
    order of `batch["y"]`."""

    terms: dict[str, torch.Tensor]
    logits: torch.Tensor


class HeadLoss(nn.Module, ABC):
    """A head's training objective over one batch of cached features."""

    inputs: ClassVar[tuple[str, ...]]
    """The cached tensors a batch must hold for this loss (always including the labels "y")."""

    @abstractmethod
    def forward(self, head: Head, batch: dict[str, torch.Tensor]) -> LossResult:
        """Weighted terms of `head` on `batch`."""
