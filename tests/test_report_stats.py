"""The report's statistics on hand-made arrays: cluster-robust variance, paired contrasts, bootstrap, Holm, verdicts."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm
from statsmodels.stats.multitest import multipletests

from medvlm.report.stats import (
    cluster_mean_variance,
    holm,
    mdd,
    paired_estimate,
    two_level_interval,
    verdict,
)


def test_cluster_robust_variance_matches_a_hand_computation():
    # N = 5 items in G = 3 clusters; D = 1/5; residuals per cluster: 1 - 0.4, 1 - 0.2, -1 - 0.4.
    mean, variance = cluster_mean_variance(values=np.array([1, 0, 1, -1, 0]), groups=np.array(list("aabcc")))
    assert mean == pytest.approx(0.2)
    assert variance == pytest.approx(3 / 2 * (0.6**2 + 0.8**2 + 1.4**2) / 25)
    with pytest.raises(ValueError, match="two or more clusters"):
        cluster_mean_variance(values=np.array([1.0, 0.0]), groups=np.array(["a", "a"]))


def _seed(rng: np.random.Generator, shift: float, n: int = 400) -> list[tuple[np.ndarray, np.ndarray]]:
    """One task's per-item differences in {-1, 0, 1} with mean about `shift`, in clusters of two items."""
    d = rng.choice([-1.0, 0.0, 1.0], size=n, p=[0.2, 0.6, 0.2]) + (rng.random(n) < abs(shift)) * np.sign(shift)
    return [(np.clip(d, -1, 1), np.repeat(np.arange(n // 2), 2))]


def test_se_includes_the_spread_across_seeds():
    rng = np.random.default_rng(0)
    shifts = (0.25, 0.0, -0.25)  # training variance: the seeds disagree
    seeds = [_seed(rng, shift) for shift in shifts]
    result = paired_estimate(seeds=seeds)
    per_seed = [cluster_mean_variance(values=d, groups=g) for ((d, g),) in seeds]
    item_only = np.sqrt(np.mean([v for _, v in per_seed]) / 3)
    spread = np.std([m for m, _ in per_seed], ddof=1) / np.sqrt(3)
    assert result.seeds == 3 and result.test == "z"
    assert result.se == pytest.approx(spread) and result.se > 2 * item_only
    assert result.p == pytest.approx(2 * norm.sf(abs(result.estimate) / result.se))
    assert result.high - result.low == pytest.approx(2 * norm.ppf(0.975) * result.se)
    assert result.mdd == pytest.approx((norm.ppf(0.975) + norm.ppf(0.8)) * result.se)

    agreeing = [_seed(rng, 0.1) for _ in range(3)]  # the seeds agree: the item noise floors the SE
    floored = paired_estimate(seeds=agreeing)
    parts = [cluster_mean_variance(values=d, groups=g) for ((d, g),) in agreeing]
    assert floored.se >= np.sqrt(np.mean([v for _, v in parts]) / 3) - 1e-12


def test_terms_on_two_tasks_add_their_means_and_variances():
    rng = np.random.default_rng(1)
    (ood,), (in_domain,) = _seed(rng, 0.3), _seed(rng, -0.1)
    result = paired_estimate(seeds=[[ood, in_domain]])
    (m1, v1), (m2, v2) = (cluster_mean_variance(values=d, groups=g) for d, g in (ood, in_domain))
    assert result.estimate == pytest.approx(m1 + m2)
    assert result.se == pytest.approx(np.sqrt(v1 + v2))


def test_one_seed_uses_a_sign_flip_permutation_test():
    rng = np.random.default_rng(2)
    strong = paired_estimate(seeds=[_seed(rng, 0.4)])
    assert strong.test == "sign-flip" and strong.seeds == 1 and strong.p < 0.001
    null = paired_estimate(seeds=[[(np.zeros(10), np.arange(10))]])
    assert null.p == 1.0 and null.estimate == 0.0
    # Six clusters all positive: the exact sign-flip p-value is 2 / 2^6 (the two all-same-sign patterns).
    exact = paired_estimate(seeds=[[(np.array([1.0, 0, 1, 1, 0, 1, 1, 1, 1, 1, 1, 0]), np.repeat(np.arange(6), 2))]])
    assert exact.p == pytest.approx(2 / 64)


def _accuracy_seeds(rng: np.random.Generator, means: tuple[float, ...], n: int):
    return [((rng.random(n) < mean).astype(float), np.arange(n) // 3) for mean in means]


def test_two_level_interval_contains_the_mean_and_narrows_with_more_items():
    rng = np.random.default_rng(3)
    small = _accuracy_seeds(rng, (0.6, 0.65, 0.7), 90)
    large = _accuracy_seeds(rng, (0.6, 0.65, 0.7), 3000)
    for seeds in (small, large):
        mean = np.mean([c.mean() for c, _ in seeds])
        low, high = two_level_interval(seeds=seeds)
        assert low < mean < high
    width = {name: np.diff(two_level_interval(seeds=s))[0] for name, s in (("small", small), ("large", large))}
    assert width["large"] < 0.7 * width["small"]
    # The seed level counts: the same items with seeds far apart give a wider interval than seeds that agree.
    apart = _accuracy_seeds(rng, (0.4, 0.65, 0.9), 3000)
    assert np.diff(two_level_interval(seeds=apart))[0] > 2 * width["large"]
    # One seed: clusters only, centred on that seed's accuracy.
    (one,) = _accuracy_seeds(rng, (0.5,), 600)
    low, high = two_level_interval(seeds=[one])
    assert low < one[0].mean() < high and high - low < 0.15


def test_holm_and_verdicts():
    p = [0.001, 0.02, 0.04, 0.3]
    assert np.allclose(holm(p), multipletests(p, method="holm")[1])
    assert holm(p)[1] == pytest.approx(0.06)  # 3 x 0.02: significant raw, not after Holm
    assert verdict(p_adjusted=0.01, estimate=0.1, sign=+1) == "holds"
    assert verdict(p_adjusted=0.01, estimate=0.1, sign=-1) == "contradicted"
    assert verdict(p_adjusted=0.01, estimate=-0.1, sign=0) == "holds"
    assert verdict(p_adjusted=0.2, estimate=0.1, sign=+1) == "not detectable at this power"
    assert mdd(se=0.01) == pytest.approx(0.0280, abs=1e-4)
