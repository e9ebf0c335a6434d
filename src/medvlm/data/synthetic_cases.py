"""What a synthetic chest radiograph shows: one primary finding (or none) and its attributes.

Laterality follows the radiological convention everywhere in the generator: sides are the PATIENT's
sides, and a frontal radiograph is viewed as if facing the patient, so the patient's left is on the
viewer's right (the heart shadow bulges to the viewer's right; a "left pleural effusion" is drawn in the
lung on the right half of the image). Nothing in the project flips images horizontally, so this holds.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    """Ground truth of one image; attributes that do not apply to the finding are None."""

    finding: str
    side: str | None = None
    zone: str | None = None
    size: str | None = None

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

    @property
    def label(self) -> int:
        return LABELS.index(self.finding)


def sample_cases(count: int, rng: np.random.Generator) -> list[Case]:
    """`count` cases with classes as balanced as the count allows, in random order, and uniform attributes."""
    labels = rng.permutation(np.arange(count) % len(LABELS))
    sides = rng.integers(len(SIDES), size=count)
    zones = rng.integers(len(ZONES), size=count)
    sizes = rng.integers(len(SIZES), size=count)
    cases = []
    for label, side, zone, size in zip(labels, sides, zones, sizes, strict=True):
        finding = LABELS[label]
        cases.append(
            Case(
                finding=finding,
                side=SIDES[side] if finding in LATERALISED else None,
                zone=ZONES[zone] if finding in ZONED else None,
                size=SIZES[size] if finding != "normal" else None,
            )
        )
    return cases
