"""Bootstrap confidence intervals for test-set metrics (scipy's percentile bootstrap over test items).

Every metric here is a function of the whole test set (macro-F1 and AUROC are not per-item means), so the
resampling is over item indices and the statistic indexes the captured arrays: one scipy call per
(method, task) computes the intervals of all of that task's metrics from the same resamples.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
from scipy.stats import DegenerateDataWarning, bootstrap

from medvlm.params import BootstrapParams

Statistic = Callable[[np.ndarray], list[float]]
"""Maps an index array into the test set to the values of one or more metrics on those items."""


def bootstrap_intervals(statistic: Statistic, n_items: int, names: list[str], *, params: BootstrapParams,
                        seed: int) -> dict[str, list[float]]:
    """`{name: [low, high]}` percentile intervals of each metric `statistic` returns, over `n_items` items.

    A metric undefined on some resample (e.g. AUROC with one class drawn) must be returned as NaN by
    `statistic`; its interval is then taken over the resamples where it is defined (nan-percentiles).
    """
    if n_items < 2:
        raise ValueError(f"a bootstrap interval needs at least 2 test items, got {n_items}")
    rng = np.random.default_rng(seed)
    with warnings.catch_warnings():
        # NaN resamples are handled below; scipy would only warn that its interval is then NaN.
        warnings.simplefilter("ignore", DegenerateDataWarning)
        result = bootstrap(
            (np.arange(n_items),),
            lambda index: np.asarray(statistic(index), dtype=np.float64),
            vectorized=False,
            n_resamples=params.samples,
            confidence_level=params.confidence,
            method="percentile",
            random_state=rng,
        )
    distribution = np.atleast_2d(result.bootstrap_distribution)
    tail = 100 * (1 - params.confidence) / 2
    intervals = {}
    for name, low, high, values in zip(names, np.atleast_1d(result.confidence_interval.low),
                                       np.atleast_1d(result.confidence_interval.high), distribution, strict=True):
        defined = values[~np.isnan(values)]
        if len(defined) < len(values):  # scipy's percentile is NaN then: take the resamples where it is defined
            low, high = (np.percentile(defined, [tail, 100 - tail]) if len(defined) else (np.nan, np.nan))
        intervals[name] = [float(low), float(high)]
    return intervals


def accuracy_interval(correct: np.ndarray, *, params: BootstrapParams, seed: int) -> list[float]:
    """Interval of the mean of a per-item correctness vector (robust accuracy)."""
    correct = np.asarray(correct, dtype=np.float64)
    return bootstrap_intervals(lambda index: [correct[index].mean()], len(correct), ["accuracy"],
                               params=params, seed=seed)["accuracy"]
