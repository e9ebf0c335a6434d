"""Loss modules of the light-weight heads; which loss a method trains with is its entry in `medvlm.methods`
(the contract between trainer and loss is in `losses.base`)."""

from __future__ import annotations

from typing import Any

from medvlm.losses.base import HeadLoss, LossResult
from medvlm.methods import get_method

__all__ = ["HeadLoss", "LossResult", "build_loss"]


def build_loss(method: str, **options: Any) -> HeadLoss:
    """The loss module of `method`, built from its options (`heads.<method>` minus the trainer's fields)."""
    loss_class = get_method(method).loss_class()
    try:
        return loss_class(**options)
    except TypeError as exc:
        raise ValueError(f"the {method!r} loss does not take these options {sorted(options)}: {exc}") from None
