"""Seeding, device choice and logging shared by every stage."""

from __future__ import annotations

import contextlib
import logging
import os
import random
from collections.abc import Iterator

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

log = logging.getLogger("medvlm")


def setup_logging() -> None:
    # Our own progress at INFO; libraries (open_clip logs every model build at INFO) only when they warn.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    log.setLevel(logging.INFO)


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch from the one `seed` param; return a torch generator for explicit use."""
    import numpy as np  # noqa: PLC0415  (imported where used: a stage that never computes need not load torch)
    import torch  # noqa: PLC0415

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def resolve_device(name: str) -> torch.device:
    """Map the `device` param (auto|cpu|cuda) to a torch device; `cuda` without a GPU is an error."""
    import torch  # noqa: PLC0415

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: 'cuda' was asked for but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


def enable_fast_cuda_math(device: torch.device) -> None:
    """On CUDA: TF32 for float32 matmuls and convolutions, and cuDNN's autotuner (inputs have one size).

    TF32 keeps float32 range with a 10-bit mantissa (what bf16 autocast leaves in float32: losses, norms);
    open_clip's own trainer turns on the same flags. Nothing changes on the CPU, the default.
    """
    if device.type != "cuda":
        return
    import torch  # noqa: PLC0415

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True


class TrainingError(RuntimeError):
    """A computation went wrong in a way the user must hear about (a NaN or infinite loss or feature, say)."""


class TrainingInterrupted(TrainingError):
    """SIGINT or SIGTERM stopped training after a checkpoint was saved; the stage exits with 128 + signal."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


def check_finite(value: torch.Tensor, what: str, step: int) -> None:
    """Stop training at the first non-finite loss, naming the term and the step."""
    import torch  # noqa: PLC0415

    if not torch.isfinite(value).all():
        raise TrainingError(f"{what} became {value.item() if value.numel() == 1 else 'non-finite'} at step {step}; "
                            "lower the learning rate or check the inputs")


@contextlib.contextmanager
def single_intra_op_thread() -> Iterator[None]:
    """Run the enclosed block with one intra-op CPU thread, then restore the previous count.

    For loops of small tensor ops (a head's training step, per-image augmentation) a second thread only
    adds fork/join spinning. Measured on a shared 2-core machine: LP training 2-20x slower with two
    threads (1.9 s vs 4-38 s), a residual-MLP step (D = 512, batch 64) 4x slower (19 vs 79 ms), and one
    augmented 64×64 view 6-24x slower (1.0 vs 6-24 ms).
    """
    import torch  # noqa: PLC0415

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
