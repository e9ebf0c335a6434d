"""Which caption words the caption noise may change, and into what.

A caption attack rewrites the *crucial* words of a report: anatomy and condition keywords (docs/attacks.md).
`KEYWORD_GROUPS` is the documented list of such words for chest radiograph reports, in groups (a side,
a zone, a finding, a size or severity adjective, a degree adverb, an anatomical structure). For a given
corpus the substitution vocabulary is the part of that list that actually occurs in its captions, so it
works on any corpus: a word the corpus never uses is never introduced. Option `tokenizer`: substitutes
may be any whole word of the tokenizer's vocabulary (positions are still the keywords). Negation words
are neither positions nor substitutes, so a substitution never inserts or removes a negation.

Captions are edited word for word (a word is a run of letters), so word ordinals stay stable across
edits and every change is one whole word, however many BPE tokens it spans.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from medvlm.io import DataError

KEYWORD_GROUPS: dict[str, tuple[str, ...]] = {
    "laterality": ("left", "right", "bilateral"),
    "zone": ("upper", "middle", "mid", "lower", "apical", "basal", "basilar", "hilar", "perihilar"),
    "finding": ("cardiomegaly", "effusion", "effusions", "nodule", "nodules", "mass", "masses", "pneumothorax",
                "consolidation", "atelectasis", "edema", "oedema", "opacity", "opacities", "infiltrate",
                "pneumonia", "fracture", "emphysema", "fibrosis", "hernia"),
    "size": ("small", "moderate", "large", "tiny", "trace", "mild", "marked", "severe", "focal", "extensive",
             "massive", "minimal", "medium"),
    "degree": ("mildly", "moderately", "markedly", "severely", "slightly"),
    "anatomy": ("heart", "cardiac", "lung", "lungs", "pleural", "pulmonary", "costophrenic", "mediastinal",
                "mediastinum", "diaphragm", "airspace", "apex", "base", "chest"),
}
"""Anatomy and condition keywords of chest radiograph reports, by group (lowercase, letters only)."""

NEGATION_WORDS = frozenset({"no", "not", "without", "none", "nor", "neither", "never", "negative", "absent",
                            "free", "nothing", "cannot", "unremarkable", "normal", "clear"})
"""Words that negate or deny a finding ("the lungs are clear"); caption noise never writes or erases one.
No keyword is one of them (tested), so substituting keywords never touches a negation."""

_WORD = re.compile(r"[^\W\d_]+")  # a run of letters: what the CLIP tokenizer also splits words on


@dataclass(frozen=True)
class Occurrence:
    """One changeable word of a caption."""

    ordinal: int  # index among the caption's words
    start: int  # character span in the caption
    end: int
    word: str  # lowercase
    row: int  # the word's index in `SubstitutionVocabulary.keywords`


@dataclass(frozen=True)
class SubstitutionVocabulary:
    """Changeable words (keyword -> row index) and, per keyword, the substitutes it may become."""

    keywords: dict[str, int]
    substitutes: tuple[str, ...]
    options: dict[str, np.ndarray]  # keyword -> indices into `substitutes` (never itself; its group if grouped)

    def option_mask(self) -> np.ndarray:
        """Bool matrix keywords × substitutes (rows in `keywords` order) of the allowed substitutions."""
        mask = np.zeros((len(self.keywords), len(self.substitutes)), dtype=bool)
        for word, row in self.keywords.items():
            mask[row, self.options[word]] = True
        return mask


def words(caption: str) -> list[str]:
    """The caption's words, lowercase, in order."""
    return [match.group().lower() for match in _WORD.finditer(caption)]


def corpus_words(captions: Iterable[str]) -> set[str]:
    return {word for caption in captions for word in words(caption)}


def keyword_vocabulary(captions: Iterable[str], *, source: str, same_group: bool,
                       tokenizer_words: Iterable[str] | None = None) -> SubstitutionVocabulary:
    """The keywords that occur in `captions`; substitutes are those keywords, or `tokenizer_words` when given.

    Raises DataError when the corpus offers no possible substitution at all.
    """
    present = corpus_words(captions)
    group_ids = {name: number for number, name in enumerate(KEYWORD_GROUPS)}
    group_of = {word: group_ids[name] for name, group in KEYWORD_GROUPS.items() for word in group if word in present}
    keywords = {word: row for row, word in enumerate(group_of)}
    if tokenizer_words is None:
        substitutes = tuple(group_of)
        groups = np.array([group_of[word] for word in substitutes], dtype=np.int64)
    else:
        substitutes = tuple(sorted({w for w in tokenizer_words if w not in NEGATION_WORDS and _WORD.fullmatch(w)}))
        same_group = False  # tokenizer words carry no keyword group
        groups = np.full(len(substitutes), -1, dtype=np.int64)
    names = np.array(substitutes, dtype=object)
    options = {word: np.flatnonzero((names != word) & ((groups == group) if same_group else True))
               for word, group in group_of.items()}
    if not any(len(choice) for choice in options.values()):
        raise DataError(f"{source}: the captions contain too few anatomy/condition keywords to substitute "
                        f"(found {sorted(keywords) or 'none'}); the caption noise needs at least two of one kind, "
                        f"e.g. 'left' and 'right' (see medvlm.attacks.keywords.KEYWORD_GROUPS)")
    return SubstitutionVocabulary(keywords, substitutes, options)


def tokenizer_whole_words(encoder: dict[str, int]) -> list[str]:
    """Whole-word entries of a CLIP BPE vocabulary (`word</w>`), letters only."""
    suffix = "</w>"
    return [token[: -len(suffix)] for token in encoder
            if token.endswith(suffix) and token[: -len(suffix)].isascii() and token[: -len(suffix)].isalpha()]


def occurrences(caption: str, vocabulary: SubstitutionVocabulary, exclude: Iterable[int] = ()) -> list[Occurrence]:
    """Keyword words of `caption` that have a substitute and may still change (not in `exclude` ordinals)."""
    skip = set(exclude)
    found = []
    for ordinal, match in enumerate(_WORD.finditer(caption)):
        word = match.group().lower()
        if word in vocabulary.keywords and ordinal not in skip and len(vocabulary.options[word]):
            found.append(Occurrence(ordinal, match.start(), match.end(), word, vocabulary.keywords[word]))
    return found


def substitute(caption: str, occurrence: Occurrence, replacement: str) -> str:
    """`caption` with one word replaced, keeping its capitalisation."""
    original = caption[occurrence.start : occurrence.end]
    if original.isupper() and len(original) > 1:
        replacement = replacement.upper()
    elif original[:1].isupper():
        replacement = replacement[:1].upper() + replacement[1:]
    return caption[: occurrence.start] + replacement + caption[occurrence.end :]


def words_changed(before: str, after: str) -> int:
    """How many words differ between a caption and its word-for-word edit."""
    old, new = words(before), words(after)
    if len(old) != len(new):
        raise ValueError(f"not a word-for-word edit: {before!r} -> {after!r}")
    return sum(a != b for a, b in zip(old, new))

