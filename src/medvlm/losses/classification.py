"""Cross-entropy on a head's logits: the whole objective of linear probing and MLP-tuning."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medvlm.losses.base import HeadLoss, LossResult
from medvlm.models.heads import Head


class CrossEntropyLoss(HeadLoss):
    """{"ce": CE(logits(x), y)} with weight 1."""

    inputs = ("x", "y")

    def forward(self, head: Head, batch: dict[str, torch.Tensor]) -> LossResult:
        output = head.outputs(batch["x"])
        return LossResult(terms={"ce": F.cross_entropy(output.logits, batch["y"])}, logits=output.logits)
