"""The built-in synthetic chest-radiograph data set: which splits exist, and how each is generated.

Every split draws from its own random streams, derived from (params.seed, kind, split) with numpy's
SeedSequence, so different tasks and splits never share images, a split does not change when another
split's size changes, and the same seed gives the same bytes. Images are rendered in fixed-size chunks,
each chunk with its own spawned seed, so the result does not depend on how the work is scheduled.

`params.data.synthetic` sets how hard the data is: how strongly findings show (`Appearance`), how many abnormal
images show a second finding, the share of noisy cls_id train labels, and how far the out-of-domain acquisition
is shifted. Its defaults reproduce the original generator's bytes: the new draws happen only when enabled, or
come from a stream of their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from medvlm.data.synthetic_cases import LABELS, Case, sample_cases
from medvlm.data.synthetic_images import IN_DOMAIN, Acquisition, Appearance, render_images, shifted_acquisition
from medvlm.data.synthetic_text import Question, write_caption, write_questions
from medvlm.params import DataParams

CHUNK_SIZE = 256
"""Images rendered per batch (part of the definition of the data: changing it changes the pixels)."""


@dataclass(frozen=True)
class SplitSpec:
    """One split of one manifest kind: how many images, which "hospital", which texts it carries, and how hard
    it is (findings' appearance, share of abnormal images with a second finding, share of noisy labels)."""

    kind: str
    split: str
    count: int
    acquisition: Acquisition
    captions: bool = False
    questions: bool = False
    appearance: Appearance = Appearance()
    second_finding_rate: float = 0.0
    label_noise: float = 0.0

    def seed_sequence(self, seed: int) -> np.random.SeedSequence:
        # The split's name is part of the key, so every (kind, split) gets an independent stream.
        return np.random.SeedSequence(entropy=seed, spawn_key=tuple(f"{self.kind}/{self.split}".encode()))


@dataclass(frozen=True)
class SyntheticBatch:
    cases: list[Case]
    """What each image shows (the truth)."""
    labels: list[str]
    """Each image's classification label: its case's finding, unless label noise replaced it."""
    images: np.ndarray  # uint8 N×S×S
    captions: list[str] | None
    questions: list[list[Question]] | None


def split_specs(data: DataParams) -> tuple[SplitSpec, ...]:
    """Every split the download stage writes, in writing order, with sizes and difficulty from params.data."""
    settings = data.synthetic
    appearance = Appearance(lesion_contrast=settings.lesion_contrast, lesion_size=settings.lesion_size,
                            effusion_height=settings.effusion_height,
                            pneumothorax_collapse=settings.pneumothorax_collapse, heart_overlap=settings.heart_overlap)
    shared = {"appearance": appearance, "second_finding_rate": settings.second_finding_rate}  # every split alike
    return (
        SplitSpec("pretrain", "train", data.pretrain_train, IN_DOMAIN, captions=True, **shared),
        SplitSpec("pretrain", "val", data.pretrain_val, IN_DOMAIN, captions=True, **shared),
        SplitSpec("cls_id", "train", data.cls_train, IN_DOMAIN, label_noise=settings.label_noise, **shared),
        SplitSpec("cls_id", "test", data.cls_test, IN_DOMAIN, **shared),
        SplitSpec("cls_ood", "test", data.ood_test, shifted_acquisition(settings.shift), **shared),
        SplitSpec("vqa", "train", data.vqa_train, IN_DOMAIN, questions=True, **shared),
        SplitSpec("vqa", "test", data.vqa_test, IN_DOMAIN, questions=True, **shared),
    )


def noisy_labels(cases: list[Case], rate: float, rng: np.random.Generator) -> list[str]:
    """The cases' findings, with round(rate × count) of them, chosen at random, replaced by a uniformly drawn
    different class."""
    labels = [case.finding for case in cases]
    chosen = rng.permutation(len(cases))[: round(rate * len(cases))]
    offsets = rng.integers(1, len(LABELS), size=len(chosen))
    for index, offset in zip(chosen, offsets, strict=True):
        labels[index] = LABELS[(cases[index].label + offset) % len(LABELS)]
    return labels


def generate_split(spec: SplitSpec, seed: int, image_size: int) -> Iterator[SyntheticBatch]:
    """Yield the split's cases, labels, images and texts chunk by chunk (deterministic in `seed`)."""
    # A fifth child for the label noise: spawn(5) begins with the same four children as spawn(4).
    case_stream, image_stream, caption_stream, question_stream, label_stream = spec.seed_sequence(seed).spawn(5)
    cases = sample_cases(spec.count, np.random.default_rng(case_stream), spec.second_finding_rate)
    labels = noisy_labels(cases, spec.label_noise, np.random.default_rng(label_stream))
    caption_rng = np.random.default_rng(caption_stream)
    question_rng = np.random.default_rng(question_stream)
    starts = range(0, spec.count, CHUNK_SIZE)
    for start, chunk_stream in zip(starts, image_stream.spawn(len(starts)), strict=True):
        chunk = cases[start:start + CHUNK_SIZE]
        yield SyntheticBatch(
            cases=chunk,
            labels=labels[start:start + CHUNK_SIZE],
            images=render_images(chunk, spec.acquisition, image_size, np.random.default_rng(chunk_stream),
                                 spec.appearance),
            captions=[write_caption(case, caption_rng) for case in chunk] if spec.captions else None,
            questions=[write_questions(case, question_rng) for case in chunk] if spec.questions else None,
        )
