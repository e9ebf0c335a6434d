"""Seeding, device choice and logging shared by every stage."""

from __future__ import annotations

import logging
import os
import random

import numpy as np
import torch

log = logging.getLogger("medvlm")


def setup_logging() -> None:
    # Our own progress at INFO; libraries (open_clip logs every model build at INFO) only when they warn.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    log.setLevel(logging.INFO)


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch from the one `seed` param; return a torch generator for explicit use."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def resolve_device(name: str) -> torch.device:
    """Map the `device` param (auto|cpu|cuda) to a torch device; `cuda` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: 'cuda' was asked for but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


class TrainingError(RuntimeError):
    """Training went wrong in a way the user must hear about (a NaN or infinite loss, say)."""


def check_finite(value: torch.Tensor, what: str, step: int) -> None:
    """Stop training at the first non-finite loss, naming the term and the step."""
    if not torch.isfinite(value).all():
        raise TrainingError(f"{what} became {value.item() if value.numel() == 1 else 'non-finite'} at step {step}; "
                            "lower the learning rate or check the inputs")
