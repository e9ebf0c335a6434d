"""Conditions: runs that differ only in `seed` are replicates of one condition.

A condition is the set of (dotted param key, value) pairs that shape results. Conditions are compared only
when they differ in the intended params; otherwise the comparison names the keys that differ instead of
guessing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from medvlm.params import NOT_RESULT_SHAPING
from medvlm.report.collect import ReportError
from medvlm.report.study import StudyRun

NOT_SHAPING = frozenset({
    # `seed` is the replicate axis. The knobs no stage depends on, plus those that change floating-point
    # rounding or a figure but not a result in expectation: runs that differ only in them are replicates.
    "seed", *NOT_RESULT_SHAPING, "device", "features.batch_size", "evaluate.batch_size", "attack.batch_size",
    "attack.gallery_pairs",
})
NOISE_ONLY = ("noise_type", "noise_kind", "attack.", "surrogate.")
"""Keys (or prefixes) with no effect when nothing is perturbed: at noise_ratio 0 the surrogate is unused."""
ADVERSARIAL = "adversarial"
RANDOM = "random"


class Incomparable(ReportError):
    """Two conditions a claim would compare differ in more than the intended params."""


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested params as dotted keys; lists as tuples (hashable)."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = tuple(value) if isinstance(value, list) else value
    return flat


def noise_only(key: str) -> bool:
    return any(key == prefix or (prefix.endswith(".") and key.startswith(prefix)) for prefix in NOISE_ONLY)


def condition_key(params: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    flat = {key: value for key, value in flatten(params).items() if key not in NOT_SHAPING}
    if float(flat.get("noise_ratio", 0)) == 0:
        flat = {key: value for key, value in flat.items() if not noise_only(key)}
    return tuple(sorted(flat.items()))


def value_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return "[" + ", ".join(value_text(v) for v in value) + "]"
    return str(value)


@dataclass(frozen=True, eq=False)
class Condition:
    key: tuple[tuple[str, Any], ...]
    runs: tuple[StudyRun, ...]
    """Its replicates, one per seed, by seed."""
    varying: tuple[str, ...]
    """The keys that vary across the study's conditions (they name it)."""

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.key)

    @property
    def ratio(self) -> float:
        return float(self.params.get("noise_ratio", 0))

    @property
    def kind(self) -> str | None:
        return self.params.get("noise_kind")

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(run.seed for run in self.runs)

    def run_at(self, seed: int) -> StudyRun:
        return next(run for run in self.runs if run.seed == seed)

    def describe(self, *, without: Iterable[str] = ()) -> str:
        shown = [key for key in self.varying if key in self.params and key not in set(without)]
        return ", ".join(f"{key}={value_text(self.params[key])}" for key in shown)

    @property
    def name(self) -> str:
        return self.describe() or f"noise_ratio={value_text(self.ratio)}"


def group_conditions(*, runs: Sequence[StudyRun]) -> list[Condition]:
    """Runs grouped by condition, sorted by noise ratio; two runs of one condition must differ in seed."""
    groups: dict[tuple, list[StudyRun]] = {}
    for run in runs:
        members = groups.setdefault(condition_key(run.params), [])
        twin = next((other for other in members if other.seed == run.seed), None)
        if twin is not None:
            raise ReportError(f"runs {twin.name} and {run.name} are the same condition with the same seed "
                              f"({run.seed}): a replicate must be a distinct seed; remove one from the study")
        members.append(run)
    keys = [dict(key) for key in groups]
    every = sorted({name for key in keys for name in key}, key=lambda name: (name != "noise_ratio", name))
    # Names use the keys with two or more values among the conditions that have them (noise_type, present in
    # every noisy condition alike, does not name one); keys only some conditions have are added if names collide.
    varying = [name for name in every if len({value_text(key[name]) for key in keys if name in key}) > 1]
    if len({tuple((name, key.get(name)) for name in varying) for key in keys}) < len(keys):
        varying = [name for name in every if name in varying or any(name not in key for key in keys)]
    conditions = [Condition(key=key, runs=tuple(sorted(members, key=lambda run: run.seed)), varying=tuple(varying))
                  for key, members in groups.items()]
    return sorted(conditions, key=lambda c: (c.ratio, c.kind or "", c.name))


def differing(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """Keys whose values differ, or that only one of the two has."""
    return sorted(key for key in set(a) | set(b) if a.get(key, "<absent>") != b.get(key, "<absent>"))


def matching(*, conditions: Sequence[Condition], wanted: Mapping[str, Any], candidates: Sequence[Condition],
             what: str) -> Condition:
    """The condition whose params equal `wanted`; else Incomparable naming the nearest candidate's extra keys."""
    for condition in conditions:
        if condition.params == dict(wanted):
            return condition
    if not candidates:
        raise Incomparable(f"no {what} in the study")
    nearest = min(candidates, key=lambda c: len(differing(c.params, wanted)))
    keys = ", ".join(f"`{key}`" for key in differing(nearest.params, wanted))
    raise Incomparable(f"no {what} matches; the nearest, {nearest.name}, also differs in {keys}")


def baseline_of(*, condition: Condition, conditions: Sequence[Condition]) -> Condition:
    """The noise-free condition of `condition`: its params without the noise-only keys, at ratio 0."""
    wanted = {key: value for key, value in condition.params.items() if not noise_only(key)}
    wanted["noise_ratio"] = 0
    return matching(conditions=conditions, wanted=wanted, candidates=[c for c in conditions if c.ratio == 0],
                    what=f"noise-free (noise_ratio=0) condition for {condition.name}")


def series(*, conditions: Sequence[Condition]) -> list[list[Condition]]:
    """Adversarial noisy conditions grouped by everything but the ratio, each series sorted by ratio."""
    grouped: dict[tuple, list[Condition]] = {}
    for condition in conditions:
        if condition.kind == ADVERSARIAL and condition.ratio > 0:
            grouped.setdefault(tuple((k, v) for k, v in condition.key if k != "noise_ratio"), []).append(condition)
    return [sorted(members, key=lambda c: c.ratio) for members in grouped.values()]
