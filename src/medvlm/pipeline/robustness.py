"""Stage `robustness@<method>`: accuracy of a method's heads under test-time L∞ PGD through the frozen image
encoder, per task, on seeded test subsets; plus a stronger-PGD convergence check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medvlm.eval.robustness import attack_heads
from medvlm.params import Params
from medvlm.runtime import resolve_device


def robustness_stage(*, params: Params, method: str, data: Path, features: Path, clip: Path, heads: Path,
                     out: Path, items: Path, data_root: Path = Path("data")) -> dict[str, Any]:
    return attack_heads(method=method, data=data, features=features, clip=clip, heads=heads, out=out, items=items,
                        data_root=data_root, robust=params.evaluate.robust, bootstrap=params.evaluate.bootstrap,
                        seed=params.seed, device=resolve_device(params.device))
