"""The paper's two claims, checked against the measured numbers (never assumed).

1. Moderate upstream noise (0 < ratio ≤ 0.1) helps in-domain accuracy; high noise hurts, most of all
   out-of-domain.
2. Among the light-weight heads, RAN ≥ NMTune ≥ MLP ≥ LP.
"Clearly" means the two 95 % bootstrap intervals do not overlap; otherwise a difference is within noise.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medvlm.eval.tasks import TEST_TASKS
from medvlm.report.collect import Run
from medvlm.report.tables import TASK_TITLES, Cell, clean_cell, robust_cell

MODERATE_MAX = 0.1
"""Noise ratios in (0, MODERATE_MAX] count as moderate; larger ones as high."""
PAPER_ORDER = ("ran", "nmtune", "mlp", "lp")


def _difference(new: Cell, old: Cell) -> str:
    if new.value is None or old.value is None:
        return "n/a"
    delta = new.value - old.value
    clear = (new.interval and old.interval and (new.interval[0] > old.interval[1] or new.interval[1] < old.interval[0]))
    return f"{delta:+.3f} ({'clearly' if clear else 'within noise'})"


def noise_claim(runs: Sequence[Run], methods: Sequence[str]) -> list[str]:
    by_ratio = {run.noise_ratio: run for run in runs}
    if 0.0 not in by_ratio:
        return ["No noise-free run (noise_ratio 0) among the runs: the noise claim cannot be checked."]
    clean_run = by_ratio[0.0]
    moderate = [run for run in runs if 0 < run.noise_ratio <= MODERATE_MAX]
    high = [run for run in runs if run.noise_ratio > MODERATE_MAX]
    lines = []
    if moderate:
        helped = 0
        for method in methods:
            base = clean_cell(clean_run, method, "cls_id")
            best = max(moderate, key=lambda run: clean_cell(run, method, "cls_id").value or -1.0)
            cell = clean_cell(best, method, "cls_id")
            helped += int(cell.value is not None and base.value is not None and cell.value > base.value)
            lines.append(f"{method}: best moderate in-domain accuracy (ratio {best.noise_ratio:g}) vs noise-free: "
                         f"{_difference(cell, base)}")
        lines.insert(0, f"**Moderate noise helps in-domain?** Higher than noise-free for {helped} of {len(methods)} "
                        f"methods (best of ratios {', '.join(f'{r.noise_ratio:g}' for r in moderate)}).")
    if high:
        worst = max(high, key=lambda run: run.noise_ratio)
        hurt_more_ood = 0
        for method in methods:
            deltas = {task: (clean_cell(worst, method, task), clean_cell(clean_run, method, task))
                      for task in ("cls_id", "cls_ood")}
            ood_new, ood_old = deltas["cls_ood"]
            id_new, id_old = deltas["cls_id"]
            if None not in (ood_new.value, ood_old.value, id_new.value, id_old.value):
                ood_change, id_change = ood_new.value - ood_old.value, id_new.value - id_old.value
                hurt_more_ood += int(ood_change < 0 and ood_change < id_change)
            lines.append(f"{method}: at ratio {worst.noise_ratio:g} vs noise-free, in-domain "
                         f"{_difference(id_new, id_old)}, out-of-domain {_difference(ood_new, ood_old)}")
        lines.insert(len(lines) - len(methods), f"**High noise hurts, most out-of-domain?** Out-of-domain accuracy "
                     f"falls, and by more than in-domain, for {hurt_more_ood} of {len(methods)} methods at ratio "
                     f"{worst.noise_ratio:g}.")
    return lines


def ordering_claim(runs: Sequence[Run], methods: Sequence[str], eps_255: float) -> list[str]:
    order = [method for method in PAPER_ORDER if method in methods]
    if len(order) < 2:
        return ["Fewer than two of the paper's methods were run: the ordering claim cannot be checked."]
    lines = [f"**{' ≥ '.join(order).upper()}?** Counted per run and task on point estimates (ties, e.g. all "
             "at 0, count as holding); mean rank (1 = best) over all of them."]
    for label, cell_of in (("clean", lambda run, m, t: clean_cell(run, m, t)),
                           (f"PGD ε={eps_255:g}/255", lambda run, m, t: robust_cell(run, m, t, eps_255))):
        holds, total = 0, 0
        ranks = {method: [] for method in order}
        per_task = {task: 0 for task in TEST_TASKS}
        for run in runs:
            for task in TEST_TASKS:
                values = [cell_of(run, method, task).value for method in order]
                if None in values:
                    continue
                total += 1
                ordered = all(a >= b for a, b in zip(values, values[1:]))
                holds += int(ordered)
                per_task[task] += int(ordered)
                for method, rank in zip(order, (-np.asarray(values)).argsort().argsort() + 1):
                    ranks[method].append(int(rank))
        mean_ranks = ", ".join(f"{m} {np.mean(r):.2f}" for m, r in ranks.items() if r)
        by_task = ", ".join(f"{TASK_TITLES[t]} {n}/{len(runs)}" for t, n in per_task.items())
        lines.append(f"{label}: the full order holds in {holds} of {total} (run, task) cases ({by_task}); "
                     f"mean rank: {mean_ranks}.")
    return lines
