"""What a synthetic chest radiograph shows: one primary finding (or none) and its attributes, and optionally
a second, different abnormal finding that is not the image's label (`data.synthetic.second_finding_rate`).

Laterality follows the radiological convention everywhere in the generator: sides are the PATIENT's
sides, and a frontal radiograph is viewed as if facing the patient, so the patient's left is on the
viewer's right (the heart shadow bulges to the viewer's right; a "left pleural effusion" is drawn in the
lung on the right half of the image). Nothing in the project flips images horizontally, so this holds.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

LABELS: tuple[str, ...] = ("normal", "cardiomegaly", "pleural effusion", "nodule", "pneumothorax", "consolidation")
"""Class names in label-index order (stored as meta.json "labels")."""

SIDES: tuple[str, ...] = ("right", "left")
ZONES: tuple[str, ...] = ("upper", "middle", "lower")
SIZES: tuple[str, ...] = ("small", "moderate", "large")

LATERALISED = frozenset({"pleural effusion", "nodule", "pneumothorax", "consolidation"})
"""Findings that sit in one lung, so they have a side."""
ZONED = frozenset({"nodule", "consolidation"})
"""Findings whose height in the lung varies (an effusion is always basal, a pneumothorax apical-lateral)."""


@dataclass(frozen=True)
class Case:
    """Ground truth of one image; attributes that do not apply to the finding are None. `second` is a further
    abnormal finding drawn in the image (with its own side, zone and size); the label stays `finding`."""

    finding: str
    side: str | None = None
    zone: str | None = None
    size: str | None = None
    second: Case | None = None

    def __post_init__(self) -> None:
        if self.finding not in LABELS:
            raise ValueError(f"unknown finding {self.finding!r}; known: {LABELS}")
        expected = {
            "side": self.finding in LATERALISED,
            "zone": self.finding in ZONED,
            "size": self.finding != "normal",
        }
        for name, applies in expected.items():
            if (getattr(self, name) is not None) != applies:
                raise ValueError(f"{name} {'missing' if applies else 'not allowed'} for finding {self.finding!r}")
        if self.second is not None:
            if self.finding == "normal" or self.second.finding in ("normal", self.finding) or self.second.second:
                raise ValueError(f"a second finding must be abnormal, differ from the primary {self.finding!r} "
                                 f"(itself abnormal) and have no second finding of its own; got {self.second}")

    @property
    def label(self) -> int:
        return LABELS.index(self.finding)

    @property
    def findings(self) -> tuple[Case, ...]:
        """Every finding drawn in the image, the primary (label) one first."""
        return (self,) if self.second is None else (self, self.second)


def _finding(finding: str, side: int, zone: int, size: int) -> Case:
    """A case of `finding` with the drawn attribute indices that apply to it."""
    return Case(
        finding=finding,
        side=SIDES[side] if finding in LATERALISED else None,
        zone=ZONES[zone] if finding in ZONED else None,
        size=SIZES[size] if finding != "normal" else None,
    )


def sample_cases(count: int, rng: np.random.Generator, second_finding_rate: float = 0.0) -> list[Case]:
    """`count` cases with classes as balanced as the count allows, in random order, and uniform attributes.

    round(second_finding_rate × abnormal count) of the abnormal cases, chosen at random, also get a second
    finding: uniform over the other abnormal findings, with its own uniform attributes. Its draws come after
    the primary ones, so the primary findings do not depend on the rate (and rate 0 draws nothing more)."""
    labels = rng.permutation(np.arange(count) % len(LABELS))
    sides = rng.integers(len(SIDES), size=count)
    zones = rng.integers(len(ZONES), size=count)
    sizes = rng.integers(len(SIZES), size=count)
    drawn = zip(labels, sides, zones, sizes, strict=True)
    cases = [_finding(LABELS[label], side, zone, size) for label, side, zone, size in drawn]
    if second_finding_rate > 0:
        abnormal = np.flatnonzero(labels != LABELS.index("normal"))
        chosen = rng.permutation(abnormal)[: round(second_finding_rate * len(abnormal))]
        # An offset in 1..4 over the 5 abnormal labels (1..5) picks uniformly among the other four.
        others = (labels[chosen] - 1 + rng.integers(1, len(LABELS) - 1, size=len(chosen))) % (len(LABELS) - 1) + 1
        attributes = [rng.integers(len(values), size=len(chosen)) for values in (SIDES, ZONES, SIZES)]
        for index, other, side, zone, size in zip(chosen, others, *attributes, strict=True):
            cases[index] = replace(cases[index], second=_finding(LABELS[other], side, zone, size))
    return cases
