"""Stage `finetune@<method>`: one light-weight head of a registered method per task, on the cached features."""

from __future__ import annotations

from pathlib import Path

from medvlm.engine.fit_head import train_heads
from medvlm.params import Params, ParamsError
from medvlm.runtime import resolve_device


def finetune_stage(*, params: Params, method: str, features: Path, out: Path, live: Path) -> None:
    if method not in params.heads.methods:
        raise ParamsError(f"--method {method!r} is not one of heads.methods {params.heads.methods}")
    train_heads(method=method, settings=params.heads.settings(method), features=features, out=out, live=live,
                seed=params.seed, device=resolve_device(params.device))
