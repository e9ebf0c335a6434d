"""Stage `attack`: the noisy pre-training set (image, caption or both; adversarial or random) on the first
`noise_ratio` of a seeded permutation of the train pairs, its statistics and a gallery PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medvlm.attacks.noisy_set import NoiseSpec, write_noisy_set
from medvlm.params import Params
from medvlm.runtime import resolve_device


def attack_stage(*, params: Params, surrogate: Path, data: Path, out: Path, metrics: Path,
                 data_root: Path = Path("data")) -> dict[str, Any]:
    spec = NoiseSpec(seed=params.seed, noise_ratio=params.noise_ratio, noise_type=params.noise_type,
                     noise_kind=params.noise_kind, attack=params.attack)
    return write_noisy_set(spec=spec, surrogate=surrogate, data=data, out=out, metrics=metrics, data_root=data_root,
                           device=resolve_device(params.device))
