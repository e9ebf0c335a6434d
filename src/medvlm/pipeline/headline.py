"""Stage `headline`: the small metrics file `dvc exp show` and `dvc metrics diff` lead with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medvlm.eval.headline import write_headline
from medvlm.params import Params


def headline_stage(*, params: Params, evaluate: Path, robustness: Path, pretrain: Path, attack: Path,
                   out: Path) -> dict[str, Any]:
    return write_headline(out=out, methods=params.heads.methods, main_eps_255=params.evaluate.robust.main_eps_255,
                          evaluate=evaluate, robustness=robustness, pretrain=pretrain, attack=attack)
