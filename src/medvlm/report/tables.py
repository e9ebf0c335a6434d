"""The report's numbers as tables: rows noise ratio × method, columns task × (clean, robust), with intervals."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medvlm.eval.tasks import TEST_TASKS, eps_key
from medvlm.report.collect import ReportError, Run

TASK_TITLES = {"cls_id": "in-domain", "cls_ood": "out-of-domain", "vqa": "VQA"}


@dataclass(frozen=True)
class Cell:
    value: float | None
    interval: tuple[float, float] | None = None

    def text(self) -> str:
        if self.value is None:
            return "–"
        if self.interval is None:
            return f"{self.value:.3f}"
        return f"{self.value:.3f} [{self.interval[0]:.3f}, {self.interval[1]:.3f}]"


def clean_cell(run: Run, method: str, task: str, metric: str = "accuracy") -> Cell:
    scores = run.evaluation().get(method, {}).get(task)
    if scores is None:
        return Cell(None)
    interval = scores.get("ci", {}).get(metric)
    return Cell(scores.get(metric), tuple(interval) if interval else None)


def robust_cell(run: Run, method: str, task: str, eps_255: float) -> Cell:
    results = run.robustness(method)
    entry = (results or {}).get(task, {}).get(eps_key(eps_255))
    if entry is None:
        return Cell(None)
    return Cell(entry["accuracy"], tuple(entry["ci"]))


def methods_of(runs: Sequence[Run]) -> list[str]:
    """Methods in the order of the first run's params (the paper's LP, MLP, NMTune, RAN by default)."""
    methods: list[str] = []
    for run in runs:
        methods += [m for m in run.params["heads"]["methods"] if m not in methods]
    return methods


def common_radii(runs: Sequence[Run]) -> list[float]:
    """Radii every run attacked with (from its params), sorted."""
    radii = [set(run.params.get("evaluate", {}).get("robust", {}).get("eps_255", [])) for run in runs]
    common = sorted(set.intersection(*radii)) if radii else []
    if not common:
        raise ReportError("the runs share no robustness radius (evaluate.robust.eps_255)")
    return common


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    # Four lines of our own rather than DataFrame.to_markdown, which needs the `tabulate` package.
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main_table(runs: Sequence[Run], methods: Sequence[str], eps_255: float) -> str:
    """Accuracy per task, clean and under PGD at `eps_255`, each with its 95 % interval."""
    header = ["noise ratio", "method"]
    header += [f"{TASK_TITLES[task]} clean" for task in TEST_TASKS]
    header += [f"{TASK_TITLES[task]} PGD ε={eps_255:g}/255" for task in TEST_TASKS]
    rows = []
    for run in runs:
        for method in methods:
            cells = [clean_cell(run, method, task) for task in TEST_TASKS]
            cells += [robust_cell(run, method, task, eps_255) for task in TEST_TASKS]
            rows.append([f"{run.noise_ratio:g}", method, *(cell.text() for cell in cells)])
    return markdown_table(header, rows)


def detail_table(runs: Sequence[Run], methods: Sequence[str]) -> str:
    """Macro-F1 and macro-AUROC (classification) and closed/open VQA accuracy, point estimates."""
    header = ["noise ratio", "method", "in-domain F1", "in-domain AUROC", "out-of-domain F1",
              "out-of-domain AUROC", "VQA closed", "VQA open"]
    rows = []
    for run in runs:
        for method in methods:
            cells = [clean_cell(run, method, task, metric) for task in ("cls_id", "cls_ood")
                     for metric in ("macro_f1", "macro_auroc")]
            cells += [clean_cell(run, method, "vqa", metric) for metric in ("closed_accuracy", "open_accuracy")]
            rows.append([f"{run.noise_ratio:g}", method, *(Cell(cell.value).text() for cell in cells)])
    return markdown_table(header, rows)


def robustness_table(runs: Sequence[Run], methods: Sequence[str], radii: Sequence[float]) -> str:
    """Robust accuracy at every radius, and the convergence check (PGD-steps vs PGD-steps then the stronger PGD)."""
    header = ["noise ratio", "method"]
    header += [f"{TASK_TITLES[task]} ε={eps:g}" for task in TEST_TASKS for eps in radii]
    header += [f"{TASK_TITLES[task]} check" for task in TEST_TASKS]
    rows = []
    for run in runs:
        for method in methods:
            cells = [robust_cell(run, method, task, eps).value for task in TEST_TASKS for eps in radii]
            results = run.robustness(method) or {}
            checks = []
            for task in TEST_TASKS:
                check = results.get(task, {}).get("convergence")
                checks.append("–" if check is None else
                              f"{check['accuracy']:.3f} → {check['strong_accuracy']:.3f}")
            rows.append([f"{run.noise_ratio:g}", method, *(Cell(v).text() for v in cells), *checks])
    return markdown_table(header, rows)


def spectrum_table(runs: Sequence[Run]) -> str:
    header = ["noise ratio", "SV entropy (ID train)", "top SV ratio (ID train)", "SV entropy (OOD test)",
              "top SV ratio (OOD test)"]
    rows = []
    for run in runs:
        spectrum = run.evaluation().get("spectrum", {})
        values = [spectrum.get(split, {}).get(key) for split in ("cls_id_train", "cls_ood_test")
                  for key in ("sv_entropy", "top_sv_ratio")]
        rows.append([f"{run.noise_ratio:g}", *(Cell(v).text() for v in values)])
    return markdown_table(header, rows)


def series(runs: Sequence[Run], method: str, task: str, eps_255: float | None = None) -> tuple:
    """(noise ratios, values, 2×N interval) of one method's accuracy on one task across the runs."""
    cells = [clean_cell(run, method, task) if eps_255 is None else robust_cell(run, method, task, eps_255)
             for run in runs]
    keep = [i for i, cell in enumerate(cells) if cell.value is not None]
    ratios = np.array([runs[i].noise_ratio for i in keep])
    values = np.array([cells[i].value for i in keep])
    intervals = np.array([cells[i].interval or (cells[i].value, cells[i].value) for i in keep]).T
    return ratios, values, intervals.reshape(2, len(keep))
