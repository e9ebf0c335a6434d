"""Cross-entropy on a head's logits: the whole objective of linear probing and MLP-tuning."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medvlm.models.heads import Head, HeadOutput


class CrossEntropyTerm(nn.Module):
    """{"ce": CE(logits, y)} (weight 1); the head argument is part of the shared loss signature."""

    def forward(self, head: Head, output: HeadOutput, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"ce": F.cross_entropy(output.logits, labels)}
