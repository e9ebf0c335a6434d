"""The random-noise control (`noise_kind: random`): the same budgets as the attacks, no model in the loop.

Images get uniform random noise in the L∞ ball of radius ε (then the same 1/255 storage grid as PGD);
captions get up to `max_words` substitutions of keyword words drawn uniformly among the same vocabulary
and rules as the caption attack (never a negation word). If adversarial noise lowers the image–text
similarity more than this, the drop comes from the noise being adversarial, not from its size.
"""

from __future__ import annotations

import numpy as np
import torch

from medvlm.attacks.keywords import SubstitutionVocabulary, occurrences, substitute


def uniform_linf_noise(images: torch.Tensor, *, eps: float, generator: torch.Generator) -> torch.Tensor:
    """`images` (pixels in [0, 1]) plus noise drawn uniformly from [−eps, eps] per pixel, clamped to [0, 1].

    The noise is drawn on `generator`'s device (CPU by default), so it does not depend on where the model runs.
    """
    noise = torch.rand(images.shape, generator=generator, device=generator.device, dtype=images.dtype)
    return (images + (2 * noise.to(images.device) - 1) * eps).clamp(0.0, 1.0)


def random_substitutions(captions: list[str], vocabulary: SubstitutionVocabulary, *, max_words: int,
                         rng: np.random.Generator) -> list[str]:
    """Each caption with up to `max_words` keyword words replaced by random allowed substitutes.

    Draws go caption by caption, so the edits of a prefix of `captions` do not depend on the captions after it.
    """
    edited = []
    for caption in captions:  # string work only: there is no tensor to batch
        done: set[int] = set()
        for _ in range(max_words):
            found = occurrences(caption, vocabulary, exclude=done)
            if not found:
                break
            occurrence = found[rng.integers(len(found))]
            options = vocabulary.options[occurrence.word]
            caption = substitute(caption, occurrence, vocabulary.substitutes[options[rng.integers(len(options))]])
            done.add(occurrence.ordinal)
        edited.append(caption)
    return edited
