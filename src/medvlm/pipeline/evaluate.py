"""Stage `evaluate`: clean metrics of every method on every task with bootstrap intervals, chance levels and the
feature spectrum; per-item results; figures and plot data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medvlm.eval.evaluate import evaluate_heads
from medvlm.params import Params
from medvlm.runtime import resolve_device


def evaluate_stage(*, params: Params, data: Path, features: Path, heads: Path, robustness: Path, live: Path,
                   out: Path, plots: Path, items: Path, data_root: Path = Path("data")) -> dict[str, Any]:
    evaluate = params.evaluate
    return evaluate_heads(methods=params.heads.methods, data=data, features=features, heads=heads,
                          robustness=robustness, live=live, out=out, plots=plots, items=items, data_root=data_root,
                          batch_size=evaluate.batch_size, bootstrap=evaluate.bootstrap, robust=evaluate.robust,
                          seed=params.seed, device=resolve_device(params.device))
