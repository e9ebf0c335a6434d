"""Report-style captions and VQA pairs for synthetic cases, from templates.

Captions vary phrasing, synonyms, sentence order and the negated findings, but always name every finding
drawn (the primary one first, then a second finding if any) with its side (the patient's side), zone and size
words, and never negate a finding present. Questions mix closed yes/no questions (balanced between the primary
finding and the others) with open questions whose answers are lowercase words: a finding name or "none",
"left"/"right", a zone or a size. The main abnormality is always the primary (label) finding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medvlm.data.synthetic_cases import LABELS, LATERALISED, ZONED, Case

ABNORMAL = LABELS[1:]
NO_FINDING_ANSWER = "none"

# Size words per finding: adjectives and, for cardiomegaly, adverbs ("mildly enlarged").
_ADJECTIVES = {
    "cardiomegaly": {"small": ("mild",), "moderate": ("moderate",), "large": ("marked", "severe")},
    "pleural effusion": {"small": ("small",), "moderate": ("moderate",), "large": ("large",)},
    "nodule": {"small": ("small",), "moderate": ("moderate-sized", "medium-sized"), "large": ("large",)},
    "pneumothorax": {"small": ("small",), "moderate": ("moderate",), "large": ("large",)},
    "consolidation": {"small": ("small", "focal"), "moderate": ("moderate",), "large": ("large", "extensive")},
}
_ADVERBS = {"small": ("mildly",), "moderate": ("moderately",), "large": ("markedly", "severely")}
_ZONE_WORDS = {"upper": ("upper",), "middle": ("middle", "mid"), "lower": ("lower",)}

_FINDING_SENTENCES = {
    "cardiomegaly": (
        "{adj} cardiomegaly.",
        "there is {adj} cardiomegaly.",
        "the heart is {adv} enlarged.",
        "{adv} enlarged cardiac silhouette.",
        "the cardiac silhouette is {adv} enlarged.",
    ),
    "pleural effusion": (
        "{adj} {side} pleural effusion.",
        "there is a {adj} {side}-sided pleural effusion.",
        "{side} pleural effusion, {adj} in size.",
        "{adj} pleural effusion on the {side}.",
        "blunting of the {side} costophrenic angle due to a {adj} effusion.",
    ),
    "nodule": (
        "{adj} {noun} in the {side} {zone} zone.",
        "there is a {adj} {noun} in the {zone} zone of the {side} lung.",
        "a {adj} {side} {zone} zone {noun} is seen.",
        "{adj} pulmonary {noun} projecting over the {side} {zone} zone.",
    ),
    "pneumothorax": (
        "{adj} {side} pneumothorax.",
        "there is a {adj} {side}-sided pneumothorax.",
        "{side} pneumothorax, {adj} in size.",
        "{adj} pneumothorax on the {side} with a visible pleural line.",
    ),
    "consolidation": (
        "{adj} consolidation in the {side} {zone} zone.",
        "{adj} airspace consolidation in the {zone} zone of the {side} lung.",
        "{adj} {side} {zone} zone consolidation.",
        "there is {adj} consolidation in the {zone} zone of the {side} lung.",
    ),
}
_NEGATIONS = {
    "cardiomegaly": ("heart size is normal.", "the cardiac silhouette is normal in size.", "no cardiomegaly."),
    "pleural effusion": ("no pleural effusion.", "there is no pleural effusion.", "no effusion."),
    "nodule": ("no nodules or masses.", "no suspicious pulmonary nodule.", "no focal mass or nodule."),
    "pneumothorax": ("no pneumothorax.", "there is no pneumothorax.", "no evidence of pneumothorax."),
    "consolidation": ("no focal consolidation.", "no airspace consolidation.", "the lungs are without consolidation."),
}
_NORMAL_SENTENCES = ("the lungs are clear.", "no acute cardiopulmonary abnormality.", "normal chest radiograph.",
                     "no acute findings.")
_OPENERS = ("Frontal chest radiograph.", "PA view of the chest.", "AP chest x-ray.", "Chest radiograph.")
_OPENER_PROBABILITY = 0.4
_FINDING_FIRST_PROBABILITY = 0.6

# Question wording: the finding as it is asked about ("is there a pleural effusion?").
_ASKED_AS = {
    "cardiomegaly": "cardiomegaly",
    "pleural effusion": "a pleural effusion",
    "nodule": "a nodule or mass",
    "pneumothorax": "a pneumothorax",
    "consolidation": "consolidation",
}
_PRESENCE_QUESTIONS = ("is there {what}?", "is {what} present?", "does the radiograph show {what}?",
                       "is there evidence of {what}?")
_HEART_QUESTIONS = ("is the heart enlarged?", "is the cardiac silhouette enlarged?")
_MAIN_QUESTIONS = ("what is the main abnormality?", "what is the primary finding?", "what abnormality is shown?")
_SIDE_QUESTIONS = ("which side is the {noun} on?", "on which side is the {noun}?",
                   "is the {noun} on the left or the right?")
_ZONE_QUESTIONS = ("which lung zone is the {noun} in?", "in which zone is the {noun}?")
_SIZE_QUESTIONS = ("how large is the {noun}?", "what is the size of the {noun}?")
_ASK_PRESENT_PROBABILITY = 0.6  # 5 of 6 cases are abnormal: 5/6 * 0.6 = 1/2 of presence answers are "yes"
_HEART_QUESTION_PROBABILITY = 0.4
MAX_QUESTIONS = 4


@dataclass(frozen=True)
class Question:
    question: str
    answer: str
    answer_type: str  # "closed" (yes/no) or "open"


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[rng.integers(len(options))]


def _capitalise(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:]


def _noun(case: Case) -> str:
    """How the finding is named in text; a large nodule is called a mass."""
    if case.finding == "nodule":
        return "mass" if case.size == "large" else "nodule"
    return case.finding


def finding_sentence(case: Case, rng: np.random.Generator) -> str:
    """One sentence stating the case's (abnormal) finding with all its attributes."""
    template = _pick(rng, _FINDING_SENTENCES[case.finding])
    return template.format(
        adj=_pick(rng, _ADJECTIVES[case.finding][case.size]),
        adv=_pick(rng, _ADVERBS[case.size]),
        side=case.side,
        zone=_pick(rng, _ZONE_WORDS[case.zone]) if case.zone else "",
        noun=_noun(case),
    )


def _present(case: Case) -> set[str]:
    return {finding.finding for finding in case.findings}


def write_caption(case: Case, rng: np.random.Generator) -> str:
    """A short radiology-report caption for `case` (one finding: <= 40 BPE tokens; two: <= 48)."""
    absent = [finding for finding in ABNORMAL if finding not in _present(case)]
    # Two stated findings leave room for one negation only within the 48-token text context.
    negations = int(rng.integers(1, 3)) if case.second is None else 1
    negated = rng.choice(len(absent), size=negations, replace=False)
    sentences = [_pick(rng, _NEGATIONS[absent[i]]) for i in negated]
    if case.finding == "normal":
        stated = [_pick(rng, _NORMAL_SENTENCES)]
    else:
        stated = [finding_sentence(finding, rng) for finding in case.findings]
    position = 0 if rng.random() < _FINDING_FIRST_PROBABILITY else int(rng.integers(1, len(sentences) + 1))
    sentences[position:position] = stated
    if len(sentences) == 2 and rng.random() < _OPENER_PROBABILITY:  # openers only on short captions: <= 40 tokens
        sentences.insert(0, _pick(rng, _OPENERS))
    return " ".join(_capitalise(sentence) for sentence in sentences)


def write_questions(case: Case, rng: np.random.Generator) -> list[Question]:
    """2 to 4 VQA pairs about `case`: a presence question, the main abnormality, and optional extras."""
    present = _present(case)
    if case.finding != "normal" and rng.random() < _ASK_PRESENT_PROBABILITY:
        asked = case.finding
    else:  # one of the other findings, which is present when it is the case's second finding
        others = [finding for finding in ABNORMAL if finding != case.finding]
        asked = others[rng.integers(len(others))]
    yes_no = "yes" if asked in present else "no"
    questions = [
        Question(_pick(rng, _PRESENCE_QUESTIONS).format(what=_ASKED_AS[asked]), yes_no, "closed"),
        Question(_pick(rng, _MAIN_QUESTIONS), case.finding if case.finding != "normal" else NO_FINDING_ANSWER, "open"),
    ]
    extras = []
    if asked != "cardiomegaly" and rng.random() < _HEART_QUESTION_PROBABILITY:
        extras.append(Question(_pick(rng, _HEART_QUESTIONS), "yes" if "cardiomegaly" in present else "no", "closed"))
    for finding in case.findings:  # each names its finding, so the two findings' questions never clash
        noun = _noun(finding)
        if finding.finding in LATERALISED:
            extras.append(Question(_pick(rng, _SIDE_QUESTIONS).format(noun=noun), finding.side, "open"))
            extras.append(Question(_pick(rng, _SIZE_QUESTIONS).format(noun=noun), finding.size, "open"))
        if finding.finding in ZONED:
            extras.append(Question(_pick(rng, _ZONE_QUESTIONS).format(noun=noun), finding.zone, "open"))
    chosen = rng.permutation(len(extras))[: int(rng.integers(0, MAX_QUESTIONS - 1))]
    questions.extend(extras[i] for i in sorted(chosen))
    order = rng.permutation(len(questions))
    return [questions[i] for i in order]
