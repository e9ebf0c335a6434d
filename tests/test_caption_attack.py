"""The caption noise: keyword vocabulary, the text tower from embeddings, HotFlip and random substitutions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attack_helpers import FINDINGS, batch_of_images, caption
from attack_helpers import clip, surrogate  # noqa: F401  (module-scoped fixtures)
from medvlm.attacks.caption import hotflip_captions, word_embeddings, word_token_span
from medvlm.attacks.keywords import (
    KEYWORD_GROUPS,
    NEGATION_WORDS,
    keyword_vocabulary,
    occurrences,
    substitute,
    tokenizer_whole_words,
    words,
    words_changed,
)
from medvlm.attacks.random_noise import random_substitutions, uniform_linf_noise
from medvlm.io import DataError

CORPUS = [caption(FINDINGS[i % 3], i) for i in range(24)] + [
    "Moderate right pneumothorax with a visible pleural line. No effusion.",
    "There is a large consolidation in the left lower zone. The heart is not enlarged.",
    "Mildly enlarged cardiac silhouette. Without pleural effusion.",
]


@pytest.fixture(scope="module")
def images(clip):
    with torch.no_grad():
        return clip.encode_pixels(batch_of_images(len(CORPUS)))


def similarity(clip, texts: list[str], image_embeddings: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return (clip.encode_texts(texts) * image_embeddings).sum(-1)


def negation_positions(text: str) -> list[tuple[int, str]]:
    return [(k, word) for k, word in enumerate(words(text)) if word in NEGATION_WORDS]


# --- vocabulary ------------------------------------------------------------------------------------------------

def test_no_keyword_is_a_negation_word():
    assert not {w for group in KEYWORD_GROUPS.values() for w in group} & NEGATION_WORDS


def test_vocabulary_is_the_keywords_the_corpus_uses_within_their_group():
    vocabulary = keyword_vocabulary(CORPUS, source="test", same_group=True)
    corpus = {w for text in CORPUS for w in words(text)}
    assert set(vocabulary.keywords) <= corpus and set(vocabulary.substitutes) <= corpus
    assert {"left", "right", "small", "large", "effusion", "nodule", "pneumothorax"} <= set(vocabulary.keywords)
    assert "bilateral" not in vocabulary.keywords  # a keyword the corpus never uses is never introduced
    group_of = {w: name for name, group in KEYWORD_GROUPS.items() for w in group}
    for word, options in vocabulary.options.items():
        chosen = {vocabulary.substitutes[i] for i in options}
        assert word not in chosen and all(group_of[c] == group_of[word] for c in chosen)
    assert {vocabulary.substitutes[i] for i in vocabulary.options["left"]} == {"right"}
    anywhere = keyword_vocabulary(CORPUS, source="test", same_group=False)
    assert "effusion" in {anywhere.substitutes[i] for i in anywhere.options["left"]}


def test_tokenizer_vocabulary_reaches_beyond_the_corpus_but_never_to_negations(clip):
    vocabulary = keyword_vocabulary(CORPUS, source="test", same_group=True,
                                    tokenizer_words=tokenizer_whole_words(clip.tokenizer.encoder))
    assert len(vocabulary.substitutes) > 10_000 and "bilateral" in vocabulary.substitutes
    assert not set(vocabulary.substitutes) & NEGATION_WORDS
    assert all(w.isalpha() for w in vocabulary.substitutes)


def test_a_corpus_without_keywords_is_refused_by_name():
    with pytest.raises(DataError, match="corpus.csv: .*too few anatomy/condition keywords"):
        keyword_vocabulary(["A photo of a cat.", "No dog here."], source="corpus.csv", same_group=True)


def test_substitution_keeps_case_and_counts_whole_words():
    text = "Small LEFT pleural effusion. No pneumothorax."
    vocabulary = keyword_vocabulary(CORPUS, source="test", same_group=True)
    found = {o.word: o for o in occurrences(text, vocabulary)}
    assert "no" not in found and set(found) >= {"small", "left", "effusion", "pneumothorax"}
    edited = substitute(substitute(text, found["left"], "right"), found["small"], "large")
    assert edited == "Large RIGHT pleural effusion. No pneumothorax."
    assert words_changed(text, edited) == 2
    assert occurrences(edited, vocabulary, exclude={found["left"].ordinal}) == [
        o for o in occurrences(edited, vocabulary) if o.ordinal != found["left"].ordinal]


# --- text tower from embeddings ---------------------------------------------------------------------------------

def test_word_token_spans_match_the_tokenized_caption(clip):
    vocabulary = keyword_vocabulary(CORPUS, source="test", same_group=True)
    for text in CORPUS:
        tokens = clip.tokenize([text])[0].tolist()
        for occurrence in occurrences(text, vocabulary):
            start, end = word_token_span(clip, text, occurrence)
            assert tokens[start:end] == clip.tokenizer.encode(occurrence.word), (text, occurrence)


# --- the attacks ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("max_words", [1, 2])
@pytest.mark.parametrize("kind", ["adversarial", "random"])
def test_at_most_max_words_change_and_no_negation_is_touched(clip, images, kind, max_words):
    vocabulary = keyword_vocabulary(CORPUS, source="test", same_group=False)
    if kind == "adversarial":
        edited = hotflip_captions(clip, CORPUS, images, vocabulary, word_embeddings(clip, vocabulary.substitutes),
                                  max_words=max_words, candidates=4)
    else:
        edited = random_substitutions(CORPUS, vocabulary, max_words=max_words, rng=np.random.default_rng(0))
    changed = [words_changed(before, after) for before, after in zip(CORPUS, edited)]
    assert max(changed) == max_words and min(changed) >= 1  # every caption here has two or more keywords
    for before, after in zip(CORPUS, edited):
        assert negation_positions(after) == negation_positions(before)
        new_words = {b for a, b in zip(words(before), words(after)) if a != b}
        assert new_words <= set(vocabulary.substitutes)


def test_exhaustive_candidates_find_the_best_single_substitution(clip, images):
    vocabulary = keyword_vocabulary(CORPUS, source="test", same_group=True)
    edited = hotflip_captions(clip, CORPUS, images, vocabulary, word_embeddings(clip, vocabulary.substitutes),
                              max_words=1, candidates=10_000)
    for n, text in enumerate(CORPUS):
        every = [substitute(text, o, vocabulary.substitutes[i]) for o in occurrences(text, vocabulary)
                 for i in vocabulary.options[o.word]]
        scores = similarity(clip, every, images[n].expand(len(every), -1))
        assert similarity(clip, [edited[n]], images[n : n + 1]).item() == pytest.approx(scores.min().item(), abs=1e-6)


def test_adversarial_captions_lower_the_similarity_far_more_than_random_ones(clip, images):
    # Tokenizer vocabulary with 4 exact re-scorings out of >30 000 substitutes per word: the first-order
    # ranking has to do the work.
    vocabulary = keyword_vocabulary(CORPUS, source="test", same_group=True,
                                    tokenizer_words=tokenizer_whole_words(clip.tokenizer.encoder))
    adversarial = hotflip_captions(clip, CORPUS, images, vocabulary, word_embeddings(clip, vocabulary.substitutes),
                                   max_words=1, candidates=4)
    random = random_substitutions(CORPUS, vocabulary, max_words=1, rng=np.random.default_rng(0))
    clean = similarity(clip, CORPUS, images)
    adversarial_drop = (clean - similarity(clip, adversarial, images)).mean().item()
    random_drop = (clean - similarity(clip, random, images)).mean().item()
    assert adversarial_drop > 0 and adversarial_drop > 3 * abs(random_drop)


def test_caption_attack_touches_neither_weights_grads_nor_mode(clip, images):
    vocabulary = keyword_vocabulary(CORPUS, source="test", same_group=True)
    weights = {name: p.detach().clone() for name, p in clip.named_parameters()}
    for training in (False, True):
        clip.train(training)
        hotflip_captions(clip, CORPUS[:4], images[:4], vocabulary, word_embeddings(clip, vocabulary.substitutes),
                         max_words=2, candidates=3)
        assert all(module.training == training for module in clip.modules())
    clip.eval()
    for name, parameter in clip.named_parameters():
        assert parameter.grad is None, name
        assert torch.equal(parameter, weights[name]), name


def test_random_image_noise_stays_in_the_box_and_the_ball_and_is_seeded():
    images, eps = batch_of_images(), 2 / 255
    noisy = uniform_linf_noise(images, eps=eps, generator=torch.Generator().manual_seed(0))
    assert noisy.min() >= 0 and noisy.max() <= 1 and (noisy - images).abs().max() <= eps + 1e-7
    assert (noisy - images).abs().mean() > eps / 4  # uniform on [-eps, eps]: mean |noise| = eps / 2 inside the box
    again = uniform_linf_noise(images, eps=eps, generator=torch.Generator().manual_seed(0))
    assert torch.equal(noisy, again)
