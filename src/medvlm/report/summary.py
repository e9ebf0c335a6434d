"""Per-condition numbers: accuracy per seed, mean and SD over seeds with the two-level bootstrap interval, and
condition-level metrics (pre-training recall, attack success) read from the runs' metrics files."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from medvlm.report.collect import ReportError
from medvlm.report.conditions import Condition
from medvlm.report.stats import two_level_interval


@dataclass(frozen=True)
class Summary:
    per_seed: tuple[float, ...]
    items: tuple[int, ...]
    mean: float
    sd: float | None
    """Across seeds (ddof 1); None with one seed."""
    interval: tuple[float, float] | None
    """Two-level bootstrap (seeds, then clusters within a seed); items only with one seed."""


def summarize(*, condition: Condition, method: str, task: str, metric: str, interval: bool = True,
              resamples: int = 2000) -> Summary | None:
    """Accuracy of one cell over the condition's seeds that scored it; None where none did."""
    seeds = []
    for run in condition.runs:
        try:
            frame = run.scores(method=method, task=task, metric=metric)
        except ReportError:
            continue
        seeds.append((frame["correct"].to_numpy(), frame["group"].to_numpy()))
    if not seeds:
        return None
    accuracies = np.array([correct.mean() for correct, _ in seeds])
    return Summary(per_seed=tuple(accuracies.tolist()), items=tuple(len(correct) for correct, _ in seeds),
                   mean=float(accuracies.mean()), sd=float(accuracies.std(ddof=1)) if len(seeds) > 1 else None,
                   interval=two_level_interval(seeds=seeds, resamples=resamples) if interval else None)


def _find(tree: Any, name: str) -> float | None:
    """The first number stored under key `name` anywhere in a metrics JSON (files differ in nesting over time)."""
    if isinstance(tree, Mapping):
        value = tree.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        for child in tree.values():
            found = _find(child, name)
            if found is not None:
                return found
    return None


def condition_metric(*, condition: Condition, path: str, name: str) -> tuple[float, float | None] | None:
    """(mean, SD or None) over seeds of one metric of the condition's runs; None where no run has it."""
    values = [v for v in (_find(run.metrics.get(path), name) for run in condition.runs) if v is not None]
    if not values:
        return None
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else None
