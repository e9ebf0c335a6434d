"""The claims the study tests, fixed in advance: each a family of paired contrasts (Holm within a family).

A contrast is a weighted sum of cells Σ_k w_k · acc(condition_k, method_k, task_k, metric_k). Noisy
conditions are compared with the noise-free condition that matches them in every other param
(`conditions.baseline_of`); where none does, the claim records what it cannot compare instead of guessing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from medvlm.tasks import TASKS
from medvlm.report.conditions import ADVERSARIAL, RANDOM, Condition, Incomparable, baseline_of, matching, series
from medvlm.report.study import CLEAN

ROBUST = "robust"
"""Robust accuracy at the study's main radius."""
METRICS = (CLEAN, ROBUST)
MODERATE = (0.05, 0.1)
HIGH = 0.3
RAN = "ran"


@dataclass(frozen=True)
class Term:
    condition: Condition
    method: str
    task: str
    metric: str
    weight: float


@dataclass(frozen=True)
class Contrast:
    method: str
    task: str
    metric: str
    what: str
    """The conditions compared, in words."""
    sign: int
    """The claimed sign: +1, -1, or 0 for a two-sided claim."""
    terms: tuple[Term, ...]


@dataclass(frozen=True)
class Claim:
    key: str
    statement: str
    contrasts: tuple[Contrast, ...]
    notes: tuple[str, ...]
    """What was compared (e.g. the moderate ratios present) and what could not be."""


def _at(members: Sequence[Condition], ratio: float) -> list[Condition]:
    return [c for c in members if math.isclose(c.ratio, ratio)]


def _label(condition: Condition) -> str:
    rest = condition.describe(without=("noise_ratio", "noise_kind"))  # what tells one adversarial series from another
    return f" ({rest})" if rest else ""


def _change(high: Condition, low: Condition, method: str, task: str, metric: str, weight: float = 1.0) -> list[Term]:
    return [Term(high, method, task, metric, weight), Term(low, method, task, metric, -weight)]


def high_noise_pairs(*, conditions: Sequence[Condition]) -> tuple[list[tuple[Condition, Condition]], list[str]]:
    """(ratio-0.3 condition, its noise-free baseline) of each adversarial series, and what could not be paired."""
    pairs, notes = [], []
    for members in series(conditions=conditions):
        for high in _at(members, HIGH):
            try:
                pairs.append((high, baseline_of(condition=high, conditions=conditions)))
            except Incomparable as exc:
                notes.append(f"cannot compare: {exc}")
    if not pairs and not notes:
        notes.append(f"cannot compare: no adversarial condition at noise_ratio={HIGH:g}")
    return pairs, notes


def moderate_helps(*, conditions: Sequence[Condition], methods: Sequence[str]) -> Claim:
    contrasts, notes = [], []
    for members in series(conditions=conditions):
        moderate = [c for ratio in MODERATE for c in _at(members, ratio)]
        if not moderate:
            notes.append(f"cannot compare{_label(members[0])}: no condition at noise_ratio 0.05 or 0.1")
            continue
        try:
            base = baseline_of(condition=moderate[0], conditions=conditions)
        except Incomparable as exc:
            notes.append(f"cannot compare: {exc}")
            continue
        ratios = ", ".join(f"{c.ratio:g}" for c in moderate)
        notes.append(f"moderate ratios present{_label(moderate[0])}: {ratios}")
        for method in methods:
            for metric in METRICS:
                terms = [Term(c, method, "cls_id", metric, 1 / len(moderate)) for c in moderate]
                terms.append(Term(base, method, "cls_id", metric, -1.0))
                contrasts.append(Contrast(method, "cls_id", metric, f"mean of {ratios} − 0{_label(moderate[0])}", +1,
                                          tuple(terms)))
    return Claim("a", "Moderate adversarial noise (ratio 0.05, 0.1) raises in-domain accuracy, clean and robust "
                      "(claimed +).", tuple(contrasts),
                 tuple(notes or ["cannot compare: no adversarial noisy condition"]))


def high_noise_hurts(*, conditions: Sequence[Condition], methods: Sequence[str]) -> Claim:
    contrasts = []
    pairs, notes = high_noise_pairs(conditions=conditions)
    for high, base in pairs:
        what = f"{HIGH:g} − 0{_label(high)}"
        for method in methods:
            for task in ("cls_id", "cls_ood"):
                contrasts.append(Contrast(method, task, CLEAN, what, -1,
                                          tuple(_change(high, base, method, task, CLEAN))))
            interaction = (*_change(high, base, method, "cls_ood", CLEAN),
                           *_change(high, base, method, "cls_id", CLEAN, -1.0))
            contrasts.append(Contrast(method, "cls_ood − cls_id", CLEAN, f"drop difference, {what}", -1, interaction))
    return Claim("b", f"High noise (ratio {HIGH:g}) lowers clean accuracy, out-of-domain more than in-domain "
                      "(claimed −, also for the out-of-domain minus in-domain change).",
                 tuple(contrasts), tuple(notes))


def ran_beats_others(*, conditions: Sequence[Condition], methods: Sequence[str]) -> Claim:
    noisy = [c for c in conditions if c.kind == ADVERSARIAL and c.ratio > 0]
    others = [method for method in methods if method != RAN]
    statement = "RAN beats NMTune, MLP and LP, averaged over every adversarial noisy condition (claimed +)."
    if RAN not in methods or not others or not noisy:
        why = "RAN and another method" if noisy else "an adversarial noisy condition"
        return Claim("c", statement, (), (f"cannot compare: the study needs {why}",))
    what = f"mean over {len(noisy)} condition{'s' * (len(noisy) > 1)}"
    contrasts = []
    for other in others:
        for task in TASKS:
            for metric in METRICS:
                terms = [term for c in noisy for term in (Term(c, RAN, task, metric, 1 / len(noisy)),
                                                          Term(c, other, task, metric, -1 / len(noisy)))]
                contrasts.append(Contrast(f"ran − {other}", task, metric, what, +1, tuple(terms)))
    notes = ["conditions: " + "; ".join(c.name for c in noisy)]
    return Claim("c", statement, tuple(contrasts), tuple(notes))


def adversarial_differs_from_random(*, conditions: Sequence[Condition], methods: Sequence[str]) -> Claim:
    contrasts, notes = [], []
    randoms = [c for c in conditions if c.kind == RANDOM and c.ratio > 0]
    for noise in randoms:
        try:
            adversarial = matching(conditions=conditions, wanted={**noise.params, "noise_kind": ADVERSARIAL},
                                   candidates=[c for c in conditions if c.kind == ADVERSARIAL
                                               and math.isclose(c.ratio, noise.ratio)],
                                   what=f"adversarial condition for {noise.name}")
        except Incomparable as exc:
            notes.append(f"cannot compare: {exc}")
            continue
        for method in methods:
            for task in TASKS:
                for metric in METRICS:
                    contrasts.append(Contrast(method, task, metric, f"adversarial − random at {noise.ratio:g}", 0,
                                              tuple(_change(adversarial, noise, method, task, metric))))
    if not randoms:
        notes.append("cannot compare: no random-noise condition in the study")
    return Claim("d", "Adversarial noise differs from random noise of the same budget at the same ratio "
                      "(two-sided).", tuple(contrasts), tuple(notes))


ROBUST_CHECKS = {"worst_case": ("e-AA", "the worst case per item over PGD and AutoAttack"),
                 "square": ("e-Square", "the worst case per item over PGD and the black-box Square attack")}
"""Robust item columns beside the main radius's PGD, on the first items of its subset: claim (e) is re-tested on
each (robustness stage: eval/robustness.py)."""


def robust_rises(*, conditions: Sequence[Condition], methods: Sequence[str], metric: str = ROBUST) -> Claim:
    """Claim (e) on PGD at the main radius, or (`metric` one of ROBUST_CHECKS) on a stronger attack's worst case."""
    pairs, notes = high_noise_pairs(conditions=conditions)
    contrasts = tuple(Contrast(method, task, metric, f"{HIGH:g} − 0{_label(high)}", +1,
                               tuple(_change(high, base, method, task, metric)))
                      for high, base in pairs for method in methods for task in TASKS)
    if metric == ROBUST:
        return Claim("e", f"Robust accuracy rises with the noise ratio ({HIGH:g} vs 0; found by an earlier "
                          "single-seed sweep, re-checked here; claimed +).", contrasts, tuple(notes))
    key, what = ROBUST_CHECKS[metric]
    return Claim(key, f"Claim (e) on {what}, on the items both attacked (claimed +).", contrasts, tuple(notes))


def study_claims(*, conditions: Sequence[Condition], methods: Sequence[str]) -> list[Claim]:
    return [claim(conditions=conditions, methods=methods) for claim in
            (moderate_helps, high_noise_hurts, ran_beats_others, adversarial_differs_from_random, robust_rises)]


def mdd_contrasts(*, conditions: Sequence[Condition], methods: Sequence[str]) -> tuple[list[Contrast], list[str]]:
    """The 0.3 − 0 contrast of every method, task and metric: the study's paired minimum detectable differences."""
    pairs, notes = high_noise_pairs(conditions=conditions)
    contrasts = [Contrast(method, task, metric, f"{HIGH:g} − 0{_label(high)}", 0,
                          tuple(_change(high, base, method, task, metric)))
                 for high, base in pairs for task in TASKS for metric in METRICS for method in methods]
    return contrasts, notes
