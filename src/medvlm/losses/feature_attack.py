"""Feature-space adversarial perturbations for RAN's `adv_eps > 0` variant.

L∞ PGD on the frozen feature u, against the head's own classification loss CE(head(u + δ), y), within
‖δ‖∞ ≤ adv_eps·std(u) (std over every entry of the batch, so the budget follows the feature scale):
start at δ = 0, step 2.5·ε/steps along sign(∇δ), clip to the ball. One step is FGSM (δ = ε·sign(∇)).
Only the input gradient is taken (torch.autograd.grad), so the head's parameter .grad stays untouched. The
head runs in eval mode during the attack, as it does when the test-time attack faces it: BatchNorm
normalises with its running statistics, not the batch's, and leaves them as they were.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from medvlm.models.heads import Head

PGD_STEP_FACTOR = 2.5
"""PGD step = 2.5·ε/steps (Madry et al.'s rule): the walk can cross the ball within the step budget."""


@contextlib.contextmanager
def kept_batchnorm_statistics(module: nn.Module) -> Iterator[None]:
    """Let training-mode forward passes inside the block update copies of the BatchNorm running
    statistics, and put the originals back after, so extra passes (the attack, the perturbed margin
    term) do not move the statistics used at inference. Written by hand: torch.func.functional_call
    swaps buffers the same way but can only call forward(), and the margin term needs transform()."""
    originals = [(norm, name, buffer) for norm in module.modules() if isinstance(norm, nn.modules.batchnorm._BatchNorm)
                 for name, buffer in norm.named_buffers(recurse=False)]
    for norm, name, buffer in originals:
        setattr(norm, name, buffer.clone())
    try:
        yield
    finally:
        for norm, name, buffer in originals:
            setattr(norm, name, buffer)


def feature_space_perturbation(head: Head, features: torch.Tensor, labels: torch.Tensor, *,
                               eps_ratio: float, steps: int) -> torch.Tensor:
    """δ (detached, same shape as `features`) with ‖δ‖∞ ≤ eps_ratio·std(features) that raises the head's
    cross-entropy on (features + δ, labels)."""
    if eps_ratio <= 0 or steps < 1:
        raise ValueError(f"a feature-space attack needs eps_ratio > 0 and steps >= 1, got {eps_ratio} and {steps}")
    features = features.detach()
    eps = eps_ratio * features.std()
    step = PGD_STEP_FACTOR * eps / steps
    delta = torch.zeros_like(features)
    training = head.training
    head.eval()
    try:
        for _ in range(steps):
            delta.requires_grad_(True)
            loss = F.cross_entropy(head(features + delta), labels)
            (gradient,) = torch.autograd.grad(loss, delta)
            delta = torch.clamp(delta.detach() + step * gradient.sign(), -eps, eps)
    finally:
        head.train(training)
    return delta
