"""The built-in synthetic chest-radiograph data set: which splits exist, and how each is generated.

Every split draws from its own random streams, derived from (params.seed, kind, split) with numpy's
SeedSequence, so different tasks and splits never share images, a split does not change when another
split's size changes, and the same seed gives the same bytes. Images are rendered in fixed-size chunks,
each chunk with its own spawned seed, so the result does not depend on how the work is scheduled.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from medvlm.data.synthetic_cases import Case, sample_cases
from medvlm.data.synthetic_images import IN_DOMAIN, OUT_OF_DOMAIN, Acquisition, render_images
from medvlm.data.synthetic_text import Question, write_caption, write_questions
from medvlm.params import DataParams

CHUNK_SIZE = 256
"""Images rendered per batch (part of the definition of the data: changing it changes the pixels)."""


@dataclass(frozen=True)
class SplitSpec:
    """One split of one manifest kind: how many images, which "hospital", and which texts it carries."""

    kind: str
    split: str
    count: int
    acquisition: Acquisition
    captions: bool = False
    questions: bool = False

    def seed_sequence(self, seed: int) -> np.random.SeedSequence:
        # The split's name is part of the key, so every (kind, split) gets an independent stream.
        return np.random.SeedSequence(entropy=seed, spawn_key=tuple(f"{self.kind}/{self.split}".encode()))


@dataclass(frozen=True)
class SyntheticBatch:
    cases: list[Case]
    images: np.ndarray  # uint8 N×S×S
    captions: list[str] | None
    questions: list[list[Question]] | None


def split_specs(data: DataParams) -> tuple[SplitSpec, ...]:
    """Every split the download stage writes, in writing order, with sizes from params.data."""
    return (
        SplitSpec("pretrain", "train", data.pretrain_train, IN_DOMAIN, captions=True),
        SplitSpec("pretrain", "val", data.pretrain_val, IN_DOMAIN, captions=True),
        SplitSpec("cls_id", "train", data.cls_train, IN_DOMAIN),
        SplitSpec("cls_id", "test", data.cls_test, IN_DOMAIN),
        SplitSpec("cls_ood", "test", data.ood_test, OUT_OF_DOMAIN),
        SplitSpec("vqa", "train", data.vqa_train, IN_DOMAIN, questions=True),
        SplitSpec("vqa", "test", data.vqa_test, IN_DOMAIN, questions=True),
    )


def generate_split(spec: SplitSpec, seed: int, image_size: int) -> Iterator[SyntheticBatch]:
    """Yield the split's cases, images and texts chunk by chunk (deterministic in `seed`)."""
    case_stream, image_stream, caption_stream, question_stream = spec.seed_sequence(seed).spawn(4)
    cases = sample_cases(spec.count, np.random.default_rng(case_stream))
    caption_rng = np.random.default_rng(caption_stream)
    question_rng = np.random.default_rng(question_stream)
    starts = range(0, spec.count, CHUNK_SIZE)
    for start, chunk_stream in zip(starts, image_stream.spawn(len(starts)), strict=True):
        chunk = cases[start:start + CHUNK_SIZE]
        yield SyntheticBatch(
            cases=chunk,
            images=render_images(chunk, spec.acquisition, image_size, np.random.default_rng(chunk_stream)),
            captions=[write_caption(case, caption_rng) for case in chunk] if spec.captions else None,
            questions=[write_questions(case, question_rng) for case in chunk] if spec.questions else None,
        )
