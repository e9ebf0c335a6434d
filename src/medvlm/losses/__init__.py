"""Loss modules of the light-weight heads, one per head method (the contract is in `losses.base`)."""

from __future__ import annotations

from typing import Any

from medvlm.losses.base import HeadLoss, LossResult
from medvlm.losses.classification import CrossEntropyLoss
from medvlm.losses.nmtune import NMTuneLoss
from medvlm.losses.ran import RanLoss

LOSSES: dict[str, type[HeadLoss]] = {"lp": CrossEntropyLoss, "mlp": CrossEntropyLoss, "nmtune": NMTuneLoss,
                                     "ran": RanLoss}
"""Loss module by head method name."""

__all__ = ["LOSSES", "HeadLoss", "LossResult", "build_loss"]


def build_loss(method: str, **options: Any) -> HeadLoss:
    """The loss module of `method`, built from its options (params.heads.<method>.loss_options())."""
    if method not in LOSSES:
        raise ValueError(f"no loss for head method {method!r}; known methods: {sorted(LOSSES)}")
    try:
        return LOSSES[method](**options)
    except TypeError as exc:
        raise ValueError(f"the {method!r} loss does not take these options {sorted(options)}: {exc}") from None
