"""`build`: write `<out>/<study>.md` and `<study>/figures/*.png` from a study folder alone (no git, no DVC)."""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from pathlib import Path

from medvlm.tasks import TASKS, eps_key
from medvlm.io import atomic_dir, atomic_file
from medvlm.report.claims import ROBUST_CHECKS, mdd_contrasts, robust_rises, study_claims
from medvlm.report.collect import ReportError
from medvlm.report.conditions import Condition, group_conditions
from medvlm.report.contrasts import evaluate, evaluate_claims
from medvlm.report.figures import accuracy_figure
from medvlm.report.robust_checks import checks_table, has_checks, survival_text
from medvlm.report.setup import setup_lines
from medvlm.report.study import CLEAN, RUNS_DIR, StudyRun, load_study, radius_of
from medvlm.report.summary import summarize
from medvlm.report.tables import (
    ONE_SEED,
    Summaries,
    accuracy_table,
    claims_table,
    condition_table,
    item_counts,
    mdd_table,
    radius_title,
    radius_table,
    runs_table,
)

HOW_TO_READ = (
    "A *replicate* is a seed (one seed redraws the data, the training and the attack); runs that differ only in "
    "`seed` form one *condition*. Accuracies are mean ± SD across seeds with a 95 % two-level bootstrap interval "
    "(seeds, then image clusters within a seed). Claims are tested with *paired contrasts*: the same test items, "
    "within a seed, scored in every compared cell; the standard error is the larger of the spread across seeds and "
    "the within-seed item noise (cluster-robust). The *MDD* (minimum detectable difference, 2.80 × SE) is the true "
    "effect a contrast finds with 80 % power at α = 0.05: an effect smaller than it may well exist unseen. p-values "
    "are Holm-adjusted within each claim's family of contrasts. A claim *holds* where the adjusted p < 0.05 with "
    "the claimed sign, is *contradicted* where it is < 0.05 with the other sign, and is otherwise *not detectable "
    f"at this power*. {ONE_SEED}: one seed, so the interval (and the sign-flip permutation test) covers item "
    "noise only, not training variance. docs/statistics.md states every rule in full.")


def methods_of(*, runs: Sequence[StudyRun]) -> list[str]:
    methods: list[str] = []
    for run in runs:
        methods += [method for method in run.methods if method not in methods]
    return methods


def robust_metric(*, runs: Sequence[StudyRun], eps_255: float | None) -> str:
    """The main radius's eps column: `eps_255`, else the runs' own main radius (they must agree)."""
    if eps_255 is None:
        mains = {run.main_eps() for run in runs}
        if len(mains) != 1 or None in mains:
            raise ReportError(f"the runs' main radii differ or are missing ({sorted(map(str, mains))}): pass --eps")
        eps_255 = mains.pop()
    metric = eps_key(eps_255)
    for run in runs:
        lacking = [method for method, table in run.robust.items() if metric not in table.columns]
        if lacking or not run.robust:
            raise ReportError(f"run {run.name} has no robust items at ε={eps_255:g}/255 "
                              f"({', '.join(lacking) or 'no robust tables'}); pick one its tables have with --eps")
    return metric


def _relative(path: Path, root: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), Path(root).resolve())).as_posix()


def _chance(runs: Sequence[StudyRun]) -> dict[str, float]:
    chance = runs[0].metrics.get("metrics/evaluate.json", {}).get("chance", {})
    levels = {name: chance.get(name, {}).get(task.chance) for name, task in TASKS.items()}
    return {task: level for task, level in levels.items() if level is not None}


def _summaries(conditions: Sequence[Condition], methods: Sequence[str], main: str, radii: Sequence[str],
               checked: Sequence[str], resamples: int) -> Summaries:
    summaries = {}
    for condition in conditions:
        for method in methods:
            for task in TASKS:
                for metric in dict.fromkeys((CLEAN, main, *checked, *radii)):
                    summaries[(condition, method, task, metric)] = summarize(
                        condition=condition, method=method, task=task, metric=metric,
                        interval=metric in (CLEAN, main, *checked), resamples=resamples)
    return summaries


def build_report(*, study: Path, out: Path, notes: Path | None = None, eps_255: float | None = None,
                 root: Path | None = None, resamples: int = 2000) -> Path:
    """Write the report and its figures; return the markdown path. Paths in the markdown are relative to `root`
    (default: the working directory, the repository)."""
    study, out, root = Path(study), Path(out), Path.cwd() if root is None else Path(root)
    runs = load_study(study=study)
    conditions = group_conditions(runs=runs)
    methods = methods_of(runs=runs)
    main = robust_metric(runs=runs, eps_255=eps_255)
    radii = sorted({r for run in runs for r in run.radii()}, key=radius_of)
    checked = ("worst_case",) if has_checks(runs=runs) else ()
    summaries = _summaries(conditions, methods, main, radii, checked, resamples)
    claims = study_claims(conditions=conditions, methods=methods)
    if checked:
        claims += [robust_rises(conditions=conditions, methods=methods, metric=metric) for metric in ROBUST_CHECKS]
    rows = evaluate_claims(claims=claims, robust_metric=main)
    detectable, mdd_notes = mdd_contrasts(conditions=conditions, methods=methods)
    mdd_rows = [evaluate(claim="mdd", contrast=contrast, robust_metric=main) for contrast in detectable]
    single = [condition for condition in conditions if len(condition.seeds) == 1]
    counts = item_counts(conditions=conditions, methods=methods, summaries=summaries, metrics=[CLEAN, *radii])

    figures = {"clean_vs_noise.png": "clean accuracy",
               "robust_vs_noise.png": f"accuracy under PGD {radius_title(main)}"}
    if checked:
        figures["worst_case_vs_noise.png"] = f"worst case over PGD and AutoAttack {radius_title(main)}"
    with atomic_dir(study / "figures") as folder:
        for (name, title), metric in zip(figures.items(), (CLEAN, main, *checked)):
            accuracy_figure(conditions=conditions, methods=methods, summaries=summaries, metric=metric,
                            ylabel=title, chance=_chance(runs), path=folder / name)

    command = ["python", "-m", "medvlm.report", "build", "--study", _relative(study, root)]
    command += ["--notes", _relative(notes, root)] if notes else []
    command += ["--eps", f"{eps_255:g}"] if eps_255 is not None else []
    command += ["--out", _relative(out, root)]
    claim_lines = [f"- **({claim.key})** {claim.statement}" + "".join(f"\n  - {note}" for note in claim.notes)
                   for claim in claims]
    sections = [
        f"# Study report: {study.name}",
        f"Generated by `{shlex.join(command)}` from the {len(runs)} runs saved in "
        f"`{_relative(study / RUNS_DIR, root)}` "
        "(params, metrics and per-item tables, written by `python -m medvlm.report save`). Every number below is "
        "computed from those files; none is typed in by hand.",
        "## How to read this", HOW_TO_READ,
        "## Runs", runs_table(conditions=conditions),
        "## Setup", "\n".join(setup_lines(runs=runs, conditions=conditions, main=main, radii=radii, counts=counts)),
        "## Claims", "\n".join(claim_lines), claims_table(rows=rows),
        *(["## Robust accuracy checked: AutoAttack, Square and a large radius",
            "PGD's robust accuracy is an upper bound. On the first items of each main subset the robustness stage "
            "also runs AutoAttack (APGD-CE + APGD-T) and the black-box Square attack, each counted as the worst "
            f"case per item together with PGD, and PGD at a large radius, which must fool about every item (a "
            "figure near clean accuracy there, or Square finding what the gradient attacks miss, would point to "
            "gradient masking). Claims (e-AA) and (e-Square) re-test (e) on those worst cases.",
            checks_table(conditions=conditions, methods=methods, main=main), survival_text(rows=rows)]
          if checked else []),
        "## Minimum detectable differences",
        f"Paired MDD of the 0.3 − 0 contrast per method (clean, and robust at {radius_title(main)}), and the median "
        "over methods: smaller true effects are likely to go undetected at this number of seeds and items. The "
        "last column is the median MDD the item noise alone would allow: where it is much smaller than the MDD, "
        "the spread across seeds dominates, and only more seeds, not more test items, would lower it.",
        *([mdd_table(rows=mdd_rows, methods=methods)] if any(row.result for row in mdd_rows) else []),
        *(["\n".join(f"- {note}" for note in mdd_notes)] if mdd_notes else []),
    ]
    if notes:
        sections += ["## Discussion", Path(notes).read_text().strip()]
    sections += [
        "## Conditions",
        *([f"{'; '.join(c.name for c in single)}: one seed, so {'its' if len(single) == 1 else 'their'} "
           f"intervals ({ONE_SEED}) cover item noise only, not training variance."] if single else []),
        condition_table(conditions=conditions),
        accuracy_table(conditions=conditions, methods=methods, summaries=summaries, robust_metric=main),
        *(f"![{title}]({_relative(study / 'figures' / name, out)})" for name, title in figures.items()),
        "## Robust accuracy at every radius (mean ± SD over seeds)",
        radius_table(conditions=conditions, methods=methods, summaries=summaries, radii=radii),
    ]
    path = out / f"{study.name}.md"
    with atomic_file(path) as tmp:
        tmp.write_text("\n\n".join(sections) + "\n")
    return path
