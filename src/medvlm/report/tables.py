"""The report's markdown tables: runs, claims, minimum detectable differences, conditions, radii."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from medvlm.tasks import TASKS
from medvlm.report.conditions import Condition
from medvlm.report.contrasts import Row
from medvlm.report.study import CLEAN, radius_of
from medvlm.report.summary import Summary, condition_metric

TASK_TITLES = {name: task.title for name, task in TASKS.items()}
ONE_SEED = "†"
"""Marks a number from one seed: its interval (or test) is over items only, without training variance."""
Summaries = Mapping[tuple[Condition, str, str, str], Summary | None]
"""(condition, method, task, metric) -> its summary."""


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    # A few lines of our own rather than DataFrame.to_markdown, which needs the `tabulate` package.
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def radius_title(metric: str) -> str:
    """'eps_0p5' -> 'ε=0.5/255'."""
    return f"ε={radius_of(metric):g}/255"


def _p(value: float | None) -> str:
    return "–" if value is None else "<0.001" if value < 0.001 else f"{value:.3f}"


def _spread(values: Sequence[int]) -> str:
    low, high = min(values), max(values)
    return f"{low}" if low == high else f"{low}–{high}"


def cell(summary: Summary | None, *, interval: bool = True) -> str:
    if summary is None:
        return "–"
    sd = "–" if summary.sd is None else f"{summary.sd:.3f}"
    text = f"{summary.mean:.3f} ± {sd}"
    if interval and summary.interval is not None:
        text += f" [{summary.interval[0]:.3f}, {summary.interval[1]:.3f}]"
    return text + (ONE_SEED if len(summary.per_seed) == 1 else "")


def runs_table(*, conditions: Sequence[Condition]) -> str:
    rows = [[run.name, run.rev[:7], condition.name, str(run.seed)]
            for condition in conditions for run in condition.runs]
    return markdown_table(["run", "rev", "condition", "seed"], rows)


def claims_table(*, rows: Sequence[Row]) -> str:
    header = ["claim", "method", "task", "metric", "contrast", "estimate", "95 % interval", "p", "Holm p", "verdict",
              "MDD", "seeds", "items / seed"]
    lines = []
    for row in rows:
        contrast, result = row.contrast, row.result
        start = [row.claim, contrast.method, contrast.task, contrast.metric, contrast.what]
        if result is None:
            lines.append([*start, "–", "–", "–", "–", f"not computed: {row.problem}", "–", "–", "–"])
            continue
        items = _spread(row.items) + (f" ({row.dropped} unpaired dropped)" if row.dropped else "")
        lines.append([*start, f"{result.estimate:+.3f}", f"[{result.low:+.3f}, {result.high:+.3f}]", _p(result.p),
                      _p(row.p_adjusted), f"**{row.verdict}**", f"{result.mdd:.3f}",
                      f"{result.seeds}{ONE_SEED if result.seeds == 1 else ''}", items])
    return markdown_table(header, lines)


def mdd_table(*, rows: Sequence[Row], methods: Sequence[str]) -> str:
    """Per comparison, task and metric: each method's paired MDD and their median, and beside it the median MDD
    the item noise alone would allow (what more test items could still buy)."""
    by_key: dict[tuple[str, str, str], dict[str, tuple[float, float]]] = {}
    for row in rows:
        key = (row.contrast.what, TASK_TITLES.get(row.contrast.task, row.contrast.task), row.contrast.metric)
        if row.result is not None:
            by_key.setdefault(key, {})[row.contrast.method] = (row.result.mdd, row.result.mdd_items)
    lines = []
    for (what, task, metric), mdds in by_key.items():
        values = [f"{mdds[m][0]:.3f}" if m in mdds else "–" for m in methods]
        lines.append([what, task, metric, *values, f"{np.median([v[0] for v in mdds.values()]):.3f}",
                      f"{np.median([v[1] for v in mdds.values()]):.3f}"])
    return markdown_table(["contrast", "task", "metric", *methods, "median", "median, items only"], lines)


def condition_table(*, conditions: Sequence[Condition]) -> str:
    """Seeds, pre-training retrieval recall and attack success rate per condition (mean ± SD over seeds)."""
    columns = (("pre-training i2t R@5", "metrics/pretrain.json", "i2t_r5"),
               ("pre-training t2i R@5", "metrics/pretrain.json", "t2i_r5"),
               ("attack success rate", "metrics/attack.json", "success_rate"))
    rows = []
    for condition in conditions:
        values = []
        for _, path, name in columns:
            found = condition_metric(condition=condition, path=path, name=name)
            values.append("–" if found is None else
                          f"{found[0]:.3f} ± {'–' if found[1] is None else f'{found[1]:.3f}'}")
        rows.append([condition.name, ", ".join(map(str, condition.seeds)), *values])
    return markdown_table(["condition", "seeds", *(title for title, _, _ in columns)], rows)


def accuracy_table(*, conditions: Sequence[Condition], methods: Sequence[str], summaries: Summaries,
                   robust_metric: str) -> str:
    """Clean and main-radius robust accuracy per condition × method and task: mean ± SD [two-level interval]."""
    metrics = ((CLEAN, "clean"), (robust_metric, radius_title(robust_metric)))
    header = ["condition", "method", "seeds", *(f"{TASK_TITLES[task]} {title}" for task in TASKS
                                               for _, title in metrics)]
    rows = [[condition.name, method, str(len(condition.seeds)),
             *(cell(summaries.get((condition, method, task, metric))) for task in TASKS for metric, _ in metrics)]
            for condition in conditions for method in methods]
    return markdown_table(header, rows)


def radius_table(*, conditions: Sequence[Condition], methods: Sequence[str], summaries: Summaries,
                 radii: Sequence[str]) -> str:
    """Robust accuracy at every radius (mean ± SD over seeds)."""
    header = ["condition", "method", *(f"{TASK_TITLES[task]} {radius_title(r)}" for task in TASKS for r in radii)]
    rows = [[condition.name, method, *(cell(summaries.get((condition, method, task, r)), interval=False)
                                       for task in TASKS for r in radii)]
            for condition in conditions for method in methods]
    return markdown_table(header, rows)


def item_counts(*, conditions: Sequence[Condition], methods: Sequence[str], summaries: Summaries,
                metrics: Sequence[str]) -> dict[str, dict[str, str]]:
    """Task -> metric -> items per seed scored (range over runs and methods), read from the item tables."""
    counts: dict[str, dict[str, str]] = {}
    for task in TASKS:
        for metric in metrics:
            found = [n for c in conditions for m in methods
                     if (summary := summaries.get((c, m, task, metric))) is not None for n in summary.items]
            if found:
                counts.setdefault(task, {})[metric] = _spread(found)
    return counts
