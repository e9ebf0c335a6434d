"""Evaluate paired contrasts on the per-item tables: pair items within each seed, then `stats.paired_estimate`;
Holm-adjust within each claim and give the verdict."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from medvlm.report.claims import ROBUST, Claim, Contrast
from medvlm.report.collect import ReportError
from medvlm.report.stats import PairedEstimate, TaskItems, holm, paired_estimate, verdict


@dataclass(frozen=True)
class Row:
    claim: str
    contrast: Contrast
    result: PairedEstimate | None
    p_adjusted: float | None
    verdict: str
    items: tuple[int, ...]
    """Paired items in each seed used (summed over the contrast's tasks)."""
    dropped: int
    """Items scored in some term but not in all of them (left out of the pairing), over all seeds."""
    problem: str = ""
    """Why the contrast could not be computed, if it could not."""


def paired_items(*, contrast: Contrast, robust_metric: str) -> tuple[list[list[TaskItems]], list[int], int]:
    """Per seed shared by every term's condition, per task: the per-item d_i = Σ_k w_k c_k,i over the items every
    term of that task scores (inner join on item id), with their groups; the paired item counts; the drops."""
    seeds = sorted(set.intersection(*(set(term.condition.seeds) for term in contrast.terms)))
    if not seeds:
        raise ReportError("its conditions share no seed")
    per_seed, counts, dropped = [], [], 0
    for seed in seeds:
        tasks: list[TaskItems] = []
        for task in dict.fromkeys(term.task for term in contrast.terms):
            scored = [(term.weight, term.condition.run_at(seed).scores(
                method=term.method, task=task, metric=robust_metric if term.metric == ROBUST else term.metric))
                for term in contrast.terms if term.task == task]
            common = scored[0][1].index
            for _, frame in scored[1:]:
                common = common.intersection(frame.index, sort=False)
            if common.empty:
                raise ReportError(f"seed {seed}, {task}: no item is scored in every term")
            dropped += sum(len(frame) - len(common) for _, frame in scored)
            d = np.sum([weight * frame.loc[common, "correct"].to_numpy() for weight, frame in scored], axis=0)
            tasks.append((d, scored[0][1].loc[common, "group"].to_numpy()))
        per_seed.append(tasks)
        counts.append(sum(len(d) for d, _ in tasks))
    return per_seed, counts, dropped


def evaluate(*, claim: str, contrast: Contrast, robust_metric: str) -> Row:
    """One contrast's estimate (unadjusted; `evaluate_claims` adds Holm and the verdict)."""
    try:
        per_seed, counts, dropped = paired_items(contrast=contrast, robust_metric=robust_metric)
        result = paired_estimate(seeds=per_seed)
    except (ReportError, ValueError) as exc:
        return Row(claim, contrast, None, None, "not computed", (), 0, str(exc))
    return Row(claim, contrast, result, None, "", tuple(counts), dropped)


def evaluate_claims(*, claims: Sequence[Claim], robust_metric: str) -> list[Row]:
    """Every claim's contrasts with Holm-adjusted p-values (the family: one claim's computed contrasts)."""
    rows: list[Row] = []
    for claim in claims:
        family = [evaluate(claim=claim.key, contrast=contrast, robust_metric=robust_metric)
                  for contrast in claim.contrasts]
        computed = [row for row in family if row.result is not None]
        adjusted = dict(zip(map(id, computed), holm([row.result.p for row in computed])))
        for row in family:
            if row.result is None:
                rows.append(row)
                continue
            p = float(adjusted[id(row)])
            rows.append(replace(row, p_adjusted=p, verdict=verdict(p_adjusted=p, estimate=row.result.estimate,
                                                                   sign=row.contrast.sign)))
    return rows
