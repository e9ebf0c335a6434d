"""The report's statistics, as pure functions over numpy arrays (docs/statistics.md states the same rules).

A replicate is a seed: one seed redraws the data, the training and the attack, so the spread of a result
across seeds is the training variance a claim must overcome. Within a seed, test items are clustered by
image (several VQA questions share one), so within-seed variances are cluster-robust.

Paired contrasts: per seed s, per-item differences d_i = Σ_k w_k c_k,i of the same items scored in every
term, D_s = mean_i d_i, and its cluster-robust variance v_s. Across S ≥ 2 seeds the estimate is mean_s D_s
with SE² = max(s²_D, mean_s v_s) / S, and the p-value a two-sided z-test on that SE. It is not an
item-level permutation test: that would treat thousands of items scored by ONE trained model per seed as
independent replicates and ignore the training variance. Nor is it a seed-level permutation test: with 3
seeds there are only 2³ = 8 sign patterns, so no p-value could fall below 0.25. With a single seed there
is no training variance to estimate: SE² = v_1 (items only) and the p-value comes from a sign-flip
permutation test over the per-cluster contributions; the report flags such rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm, permutation_test
from statsmodels.stats.multitest import multipletests

ALPHA = 0.05
POWER = 0.8
VERDICTS = ("holds", "contradicted", "not detectable at this power")
TaskItems = tuple[np.ndarray, np.ndarray]
"""(per-item values, per-item cluster ids) of one task in one seed."""


def _clusters(values: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster sums of `values` and item counts."""
    codes = np.unique(np.asarray(groups), return_inverse=True)[1].ravel()
    return np.bincount(codes, weights=np.asarray(values, dtype=float)), np.bincount(codes)


def cluster_mean_variance(*, values: np.ndarray, groups: np.ndarray) -> tuple[float, float]:
    """Mean D of per-item values and its cluster-robust (ratio-estimator) variance over the G clusters:
    v = G/(G−1) · Σ_g (Σ_{i∈g} d_i − D n_g)² / N²."""
    sums, counts = _clusters(values, groups)
    n, g = counts.sum(), len(sums)
    if g < 2:
        raise ValueError(f"a cluster-robust variance needs two or more clusters, got {g}")
    mean = sums.sum() / n
    return float(mean), float(g / (g - 1) * np.sum((sums - mean * counts) ** 2) / n**2)


@dataclass(frozen=True)
class PairedEstimate:
    estimate: float
    se: float
    low: float
    high: float
    p: float
    mdd: float
    seeds: int
    test: str
    """'z' (across seeds, random-effects SE) or 'sign-flip' (one seed: items only)."""
    mdd_items: float
    """The MDD the item noise alone would allow (SE² = mean_s v_s / S): the floor more test items can lower,
    beside `mdd`, which only more seeds can lower once the spread across seeds dominates."""


def mdd(*, se: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """Minimum detectable difference: the true effect a two-sided level-alpha test finds with this power."""
    return float((norm.ppf(1 - alpha / 2) + norm.ppf(power)) * se)


def _sign_flip_p(contributions: np.ndarray, resamples: int, rng_seed: int) -> float:
    if not np.any(contributions):
        return 1.0  # every flip gives the same (zero) statistic
    result = permutation_test((contributions,), lambda x, axis: np.sum(x, axis=axis), permutation_type="samples",
                              vectorized=True, n_resamples=resamples, alternative="two-sided", batch=1000,
                              rng=np.random.default_rng(rng_seed))
    return float(result.pvalue)


def paired_estimate(*, seeds: Sequence[Sequence[TaskItems]], alpha: float = ALPHA, power: float = POWER,
                    resamples: int = 9999, rng_seed: int = 0) -> PairedEstimate:
    """Estimate, interval, p-value and MDD of a paired contrast; `seeds[s]` holds, per task of the contrast,
    the per-item differences d_i and their clusters. Tasks have disjoint items: D_s = Σ_t D_{s,t} and
    v_s = Σ_t v_{s,t}."""
    if not seeds:
        raise ValueError("a paired contrast needs at least one seed")
    parts = [[cluster_mean_variance(values=d, groups=g) for d, g in tasks] for tasks in seeds]
    means = np.array([sum(m for m, _ in part) for part in parts])
    variances = np.array([sum(v for _, v in part) for part in parts])
    n_seeds = len(seeds)
    estimate = float(means.mean())
    if n_seeds >= 2:
        # The seed spread carries the training variance; the item variance floors it so that a few agreeing
        # seeds cannot make the SE spuriously small.
        se = float(np.sqrt(max(means.var(ddof=1), variances.mean()) / n_seeds))
        p = float(2 * norm.sf(abs(estimate) / se)) if se > 0 else float(estimate == 0)
        test = "z"
    else:
        se = float(np.sqrt(variances[0]))
        contributions = np.concatenate([_clusters(d, g)[0] / len(d) for d, g in seeds[0]])
        p = _sign_flip_p(contributions, resamples, rng_seed)
        test = "sign-flip"
    half = float(norm.ppf(1 - alpha / 2) * se)
    item_se = float(np.sqrt(variances.mean() / n_seeds))
    return PairedEstimate(estimate=estimate, se=se, low=estimate - half, high=estimate + half, p=p,
                          mdd=mdd(se=se, alpha=alpha, power=power), seeds=n_seeds, test=test,
                          mdd_items=mdd(se=item_se, alpha=alpha, power=power))


def two_level_interval(*, seeds: Sequence[TaskItems], resamples: int = 2000, confidence: float = 0.95,
                       rng_seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the mean-over-seeds accuracy: each resample draws S seeds with replacement and,
    within each drawn seed, its clusters with replacement (accuracy = correct / items of the drawn clusters).

    Hand-written because scipy.stats.bootstrap resamples one level of independent observations and cannot
    nest items within seeds. With one seed it resamples clusters only (an items-only interval)."""
    rng = np.random.default_rng(rng_seed)
    clusters = [_clusters(correct, groups) for correct, groups in seeds]
    n_seeds = len(clusters)
    drawn = rng.integers(0, n_seeds, size=(resamples, n_seeds))
    total = np.zeros(resamples)
    for slot in range(n_seeds):
        for index, (sums, counts) in enumerate(clusters):
            rows = np.flatnonzero(drawn[:, slot] == index)
            chunk = max(1, 4_000_000 // len(sums))  # bounds the resample matrix's memory for large test sets
            for start in range(0, len(rows), chunk):
                block = rows[start:start + chunk]
                pick = rng.integers(0, len(sums), size=(len(block), len(sums)))
                total[block] += sums[pick].sum(axis=1) / counts[pick].sum(axis=1)
    low, high = np.quantile(total / n_seeds, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(low), float(high)


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm-adjusted p-values of one family (one claim's contrasts)."""
    if len(p_values) == 0:
        return np.array([])
    return multipletests(np.asarray(p_values, dtype=float), method="holm")[1]


def verdict(*, p_adjusted: float, estimate: float, sign: int, alpha: float = ALPHA) -> str:
    """'holds' when significant with the claimed sign (sign 0: a two-sided claim, either sign);
    'contradicted' when significant with the other sign; else not detectable at this power."""
    if p_adjusted >= alpha:
        return VERDICTS[2]
    return VERDICTS[0] if sign == 0 or np.sign(estimate) == sign else VERDICTS[1]
