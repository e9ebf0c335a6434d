"""The report's checks on its robust accuracies: AutoAttack, Square and a large radius beside PGD.

The robustness stage attacks the first items of each seed's main subset harder (eval/robustness.py): the worst
case per item over PGD and AutoAttack (`worst_case`), over PGD and the black-box Square attack (`square`), and
PGD at a large radius (`large_eps`). This module tabulates them per condition, method and task against PGD and
clean accuracy on the same items, and states where claim (e) survives all of them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medvlm.report.claims import ROBUST_CHECKS
from medvlm.report.conditions import Condition
from medvlm.report.contrasts import Row
from medvlm.report.study import StudyRun
from medvlm.report.tables import TASK_TITLES, markdown_table
from medvlm.tasks import TASKS

CHECK_COLUMNS = ("worst_case", "square", "large_eps")


def has_checks(*, runs: Sequence[StudyRun]) -> bool:
    return any("worst_case" in table.columns for run in runs for table in run.robust.values())


def _cell(values: Sequence[float]) -> str:
    if not values:
        return "–"
    return f"{np.mean(values):.3f}" + (f" ± {np.std(values, ddof=1):.3f}" if len(values) > 1 else "")


def checks_table(*, conditions: Sequence[Condition], methods: Sequence[str], main: str) -> str:
    """Per condition × method × task, on the items the stronger attacks attacked (mean ± SD over seeds): clean,
    PGD at the main radius, the worst cases with AutoAttack and with Square, PGD at the large radius."""
    rows = []
    for condition in conditions:
        for method in methods:
            for task in TASKS:
                per_column: dict[str, list[float]] = {name: [] for name in ("clean", main, *CHECK_COLUMNS)}
                counts = []
                for run in condition.runs:
                    table = run.robust.get(method)
                    if table is None or "worst_case" not in table.columns:
                        continue
                    items = table[(table["task"] == task) & table["worst_case"].notna()]
                    if items.empty:
                        continue
                    counts.append(len(items))
                    for name, values in per_column.items():
                        if name in items.columns and items[name].notna().all():
                            values.append(float(items[name].astype(float).mean()))
                if counts:
                    rows.append([condition.name, method, TASK_TITLES[task], f"{min(counts)}–{max(counts)}"
                                 if min(counts) != max(counts) else str(counts[0]),
                                 *(_cell(per_column[name]) for name in ("clean", main, *CHECK_COLUMNS))])
    return markdown_table(["condition", "method", "task", "items / seed", "clean", "PGD (main radius)",
                           "worst with AutoAttack", "worst with Square", "PGD at the large radius"], rows)


def survival_text(*, rows: Sequence[Row]) -> str:
    """Which (method, task) cells of claim (e) hold under PGD and under every stronger check."""
    keys = ["e", *(key for key, _ in ROBUST_CHECKS.values())]
    holds = {key: {(row.contrast.method, row.contrast.task, row.contrast.what) for row in rows
                   if row.claim == key and row.verdict == "holds"} for key in keys}
    tested = {(row.contrast.method, row.contrast.task, row.contrast.what) for row in rows
              if row.claim == keys[1] and row.result is not None}
    surviving = sorted(holds["e"].intersection(*(holds[key] for key in keys[1:])))
    if not tested:
        return ("Claim (e) could not be re-tested on the stronger attacks: none of its contrasts could be computed "
                "(the claims table says why, e.g. no noise-free baseline for the 0.3 condition).")
    if not surviving:
        under_pgd = len(holds["e"])
        return (f"**Claim (e) is not established.** It holds under PGD for {under_pgd} of the method × task "
                f"cells, and survives AutoAttack and Square together for none of them, so this report does not "
                "state that robust accuracy rises with the noise ratio.")
    cells = ", ".join(f"{method} on {TASK_TITLES[task]}" for method, task, _ in surviving)
    return (f"**Claim (e) survives AutoAttack and Square** (holds under PGD, under the worst case with "
            f"AutoAttack and under the worst case with Square) for: {cells}; elsewhere it is not established.")
