"""Which pairs are perturbed, and the seeded draws made for them (targets, success-rate candidates).

Selection is nested: one seeded permutation of the train pairs, of which the first ⌊noise_ratio·N⌋ are
perturbed, so the 5 % set is a subset of the 10 % set. It depends on nothing but the seed and N, so
adversarial and random noise, and every noise type, perturb exactly the same pairs. Targets and candidates
are drawn row by row in that same order, so a pair shared by two ratios gets the same draws in both.
"""

from __future__ import annotations

import math
from enum import IntEnum
from typing import Any

import numpy as np
import torch

from medvlm.io import DataError


class Stream(IntEnum):
    """Independent random streams derived from params.seed.

    numpy SeedSequence([seed, stream]) keeps streams (and seeds) uncorrelated, unlike seed + offset.
    """

    SELECTION = 0
    TARGETS = 1
    CANDIDATES = 2
    RANDOM_START = 3
    RANDOM_IMAGE = 4
    RANDOM_CAPTION = 5


def seeded_rng(seed: int, stream: Stream) -> np.random.Generator:
    return np.random.default_rng([seed, stream])


def seeded_generator(seed: int, stream: Stream) -> torch.Generator:
    """A CPU torch generator for one stream."""
    state = int(np.random.SeedSequence([seed, stream]).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(state)


def select_perturbed(n_train: int, noise_ratio: float, seed: int) -> np.ndarray:
    """Positions (into the train rows) of the pairs to perturb, in perturbation order.

    The permutation depends only on `seed` and `n_train`, so a smaller ratio selects a prefix of a larger one.
    """
    if not 0 <= noise_ratio < 1:
        raise ValueError(f"noise_ratio must lie in [0, 1), got {noise_ratio}")
    order = seeded_rng(seed, Stream.SELECTION).permutation(n_train)
    # The small tolerance keeps e.g. 0.29 * 100 = 28.999999999999996 from flooring to 28.
    return order[: math.floor(noise_ratio * n_train + 1e-9)]


def draw_targets(rows: np.ndarray, n_train: int, findings: np.ndarray | None, seed: int) -> np.ndarray:
    """One target position per row: a train image with a different finding, drawn uniformly (seeded).

    Without a `finding` column any other train image is drawn. Draws go row by row, so the targets of a
    prefix of `rows` do not depend on the rows after it.
    """
    rng = seeded_rng(seed, Stream.TARGETS)
    targets = np.empty(len(rows), dtype=np.int64)
    pools: dict[Any, np.ndarray] = {}
    for k, row in enumerate(rows):
        if findings is None:
            if n_train < 2:
                raise DataError("the targeted attack needs at least two train images")
            pick = int(rng.integers(n_train - 1))
            targets[k] = pick + (pick >= row)
            continue
        finding = findings[row]
        if finding not in pools:
            pools[finding] = np.flatnonzero(findings != finding)
        pool = pools[finding]
        if pool.size == 0:
            raise DataError(f"every train pair has finding {finding!r}; the targeted attack needs another finding "
                            "to draw targets from (use attack.image.objective=untargeted)")
        targets[k] = pool[rng.integers(pool.size)]
    return targets


def draw_candidates(own_captions: np.ndarray, n_captions: int, k: int, seed: int) -> np.ndarray:
    """For each row, min(k, n_captions) - 1 distinct caption indices other than its own (seeded, row by row).

    Candidates are distinct caption *texts*: a second copy of the own caption would tie with it.
    """
    if n_captions < 2:
        raise DataError("all train captions are identical; the attack success rate needs at least two")
    rng = seeded_rng(seed, Stream.CANDIDATES)
    others = min(k, n_captions) - 1
    candidates = np.empty((len(own_captions), others), dtype=np.int64)
    for row, own in enumerate(own_captions):
        picks = rng.choice(n_captions - 1, size=others, replace=False)
        candidates[row] = picks + (picks >= own)
    return candidates
