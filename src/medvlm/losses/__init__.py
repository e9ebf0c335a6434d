"""Loss modules of the light-weight heads, one per head method.

Contract: `loss(head, output, labels) -> dict[str, Tensor]` where `output` is the head's `HeadOutput`
for the batch and every value is a scalar term ALREADY multiplied by its weight. The trainer sums the
terms and logs each one by name, so a new term (consistency, covariance, margin) shows up in the training
curves without touching the trainer, and an ablation is a weight set to 0.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from medvlm.losses.classification import CrossEntropyTerm

LOSSES: dict[str, type[nn.Module]] = {"lp": CrossEntropyTerm}
"""Loss module by head method name."""


def build_loss(method: str, **weights: Any) -> nn.Module:
    if method not in LOSSES:
        raise ValueError(f"no loss for head method {method!r}; known methods: {sorted(LOSSES)}")
    return LOSSES[method](**weights)
