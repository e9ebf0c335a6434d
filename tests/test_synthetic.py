"""The synthetic radiograph generator: determinism, disjoint splits, text that matches the labels,
laterality, an out-of-domain acquisition shift, findings a linear classifier can learn, and the difficulty
settings of params.data.synthetic (defaults: the original bytes; each knob moves difficulty the right way)."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import replace

import numpy as np
import pytest
from open_clip.tokenizer import SimpleTokenizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from medvlm.pipeline.download import download_stage
from medvlm.data.manifest import read_manifest
from medvlm.data.synthetic import SplitSpec, generate_split, split_specs
from medvlm.data.synthetic_cases import LABELS, LATERALISED, ZONED, Case, sample_cases
from medvlm.data.synthetic_images import IN_DOMAIN, OUT_OF_DOMAIN, Appearance, render_images, shifted_acquisition
from medvlm.data.synthetic_text import write_caption, write_questions
from medvlm.params import DataParams, Params, SyntheticParams

CHANCE = 1 / len(LABELS)
ORIGINAL = SyntheticParams(lesion_contrast=1.0, lesion_size=1.0, effusion_height=1.0, pneumothorax_collapse=1.0,
                           heart_overlap=0.0, second_finding_rate=0.0, label_noise=0.0, shift=1.0)
"""The settings of the generator before it had difficulty params (easy findings, the far other hospital)."""


def tiny_data(synthetic: SyntheticParams = ORIGINAL, **sizes: int) -> DataParams:
    """DataParams with a handful of images per split (32 px unless given)."""
    defaults = dict(image_size=32, pretrain_train=24, pretrain_val=12, cls_train=12, cls_test=12, ood_test=12,
                    vqa_train=12, vqa_test=12)
    return DataParams(**{**defaults, **sizes}, synthetic=synthetic)


def spec_of(data: DataParams, kind: str, split: str) -> SplitSpec:
    return next(spec for spec in split_specs(data) if (spec.kind, spec.split) == (kind, split))


def split_arrays(spec: SplitSpec, seed: int, image_size: int):
    batches = list(generate_split(spec, seed, image_size))
    cases = [case for batch in batches for case in batch.cases]
    return cases, np.concatenate([batch.images for batch in batches]), batches


def many_cases(count: int = 600, seed: int = 0) -> list[Case]:
    return sample_cases(count, np.random.default_rng(seed))


# --- a small caption parser, written independently of the templates' internals ---------------------

SIZE_WORDS = {
    "small": "small", "mild": "small", "mildly": "small", "focal": "small",
    "moderate": "moderate", "moderately": "moderate", "moderate-sized": "moderate", "medium-sized": "moderate",
    "large": "large", "marked": "large", "markedly": "large", "severe": "large", "severely": "large",
    "extensive": "large",
}
FINDING_WORDS = {
    "effusion": "pleural effusion", "pneumothorax": "pneumothorax", "consolidation": "consolidation",
    "nodule": "nodule", "nodules": "nodule", "mass": "nodule", "masses": "nodule",
    "cardiomegaly": "cardiomegaly", "heart": "cardiomegaly", "cardiac": "cardiomegaly",
}
ZONE_WORDS = {"upper": "upper", "middle": "middle", "mid": "middle", "lower": "lower"}
NEGATION = re.compile(r"\b(no|without|normal|clear)\b")


def parse_caption(caption: str) -> tuple[Case, set[str]]:
    """(the case the caption states: its first stated finding, with a second stated one as `second`; the
    findings it negates)."""
    stated, negated = [], set()
    for sentence in re.split(r"(?<=\.)\s+", caption.lower()):
        words = re.findall(r"[a-z-]+", sentence)
        findings = {FINDING_WORDS[w] for w in words if w in FINDING_WORDS}
        if NEGATION.search(sentence):
            negated |= findings
        elif findings:
            assert len(findings) == 1, f"one finding per positive sentence: {sentence!r}"
            side = re.search(r"\b(left|right)\b", sentence)
            zones = [ZONE_WORDS[w] for w in words if w in ZONE_WORDS]
            sizes = [SIZE_WORDS[w] for w in words if w in SIZE_WORDS]
            stated.append(Case(findings.pop(), side=side.group(1) if side else None,
                               zone=zones[0] if zones else None, size=sizes[0] if sizes else None))
    if not stated:
        return Case("normal"), negated
    assert len(stated) <= 2, f"one or two stated findings: {caption!r}"
    return (stated[0] if len(stated) == 1 else replace(stated[0], second=stated[1])), negated


# --- determinism and splits ---------------------------------------------------------------------------


def test_same_seed_gives_identical_images_and_texts():
    spec = split_specs(tiny_data())[0]
    first_cases, first_images, first_batches = split_arrays(spec, seed=3, image_size=32)
    again_cases, again_images, again_batches = split_arrays(spec, seed=3, image_size=32)
    assert first_cases == again_cases
    assert first_images.tobytes() == again_images.tobytes()
    assert [b.captions for b in first_batches] == [b.captions for b in again_batches]


def test_different_seed_gives_different_images_and_captions():
    spec = split_specs(tiny_data())[0]
    _, images_a, batches_a = split_arrays(spec, seed=0, image_size=32)
    _, images_b, batches_b = split_arrays(spec, seed=1, image_size=32)
    assert not np.array_equal(images_a, images_b)
    assert batches_a[0].captions != batches_b[0].captions


def test_splits_never_share_an_image():
    owner: dict[bytes, str] = {}
    for spec in split_specs(tiny_data()):
        _, images, _ = split_arrays(spec, seed=0, image_size=32)
        assert images.shape == (spec.count, 32, 32) and images.dtype == np.uint8
        for image in images:
            digest = hashlib.sha256(image.tobytes()).digest()
            assert digest not in owner, f"{spec.kind}/{spec.split} repeats an image of {owner.get(digest)}"
            owner[digest] = f"{spec.kind}/{spec.split}"


def test_a_split_does_not_change_when_another_split_is_resized():
    small, large = split_specs(tiny_data(pretrain_train=12)), split_specs(tiny_data(pretrain_train=40))
    cls_test_small = next(s for s in small if (s.kind, s.split) == ("cls_id", "test"))
    cls_test_large = next(s for s in large if (s.kind, s.split) == ("cls_id", "test"))
    assert np.array_equal(split_arrays(cls_test_small, 0, 32)[1], split_arrays(cls_test_large, 0, 32)[1])


def test_images_come_out_at_exactly_the_requested_size():
    cases = many_cases(6)
    for size in (16, 48, 64):
        assert render_images(cases, IN_DOMAIN, size, np.random.default_rng(0)).shape == (6, size, size)


def test_classes_are_balanced_and_attributes_match_the_finding():
    cases = many_cases(601)
    counts = np.bincount([case.label for case in cases], minlength=len(LABELS))
    assert counts.max() - counts.min() <= 1
    for case in cases:
        assert (case.side is not None) == (case.finding in LATERALISED)
        assert (case.zone is not None) == (case.finding in ZONED)
    with pytest.raises(ValueError, match="side missing"):
        Case("pneumothorax", size="small")
    with pytest.raises(ValueError, match="zone not allowed"):
        Case("pleural effusion", side="left", zone="upper", size="small")


# --- captions ---------------------------------------------------------------------------------------


def test_every_caption_states_its_finding_with_side_zone_and_size():
    rng = np.random.default_rng(0)
    for case in many_cases():
        caption = write_caption(case, rng)
        parsed, negated = parse_caption(caption)
        assert parsed == case, f"{caption!r} parsed as {parsed}, truth {case}"
        assert case.finding not in negated, f"{caption!r} negates its own finding"
        assert negated, f"{caption!r} has no negated finding"


def test_captions_vary_and_fit_the_text_context():
    rng = np.random.default_rng(1)
    tokenizer = SimpleTokenizer()
    cases = many_cases()
    captions = [write_caption(case, rng) for case in cases]
    longest = max(len(tokenizer.encode(caption)) + 2 for caption in captions)  # + start/end tokens
    assert longest <= 40
    same_finding = [c for c, case in zip(captions, cases, strict=True) if case.finding == "pneumothorax"]
    first_sentences = {c.split(". ")[0] for c in same_finding}
    assert len(set(captions)) > 0.9 * len(captions)
    assert len(first_sentences) >= 10, "phrasing and order should vary within a finding"


# --- VQA --------------------------------------------------------------------------------------------


def asked_findings(question: str) -> set[str]:
    return {FINDING_WORDS[w] for w in re.findall(r"[a-z-]+", question) if w in FINDING_WORDS}


def assert_answers_are_true(case: Case, questions) -> list[str]:
    """Check every answer against what the image shows; return the presence answers."""
    shown = {finding.finding: finding for finding in case.findings if finding.finding != "normal"}
    presence_answers = []
    assert 2 <= len(questions) <= 4
    assert len({q.question for q in questions}) == len(questions)
    for q in questions:
        assert q.answer == q.answer.lower() and q.answer_type in {"closed", "open"}
        text = q.question
        if q.answer_type == "closed":
            assert q.answer in {"yes", "no"}
            if "enlarged" in text:
                assert (q.answer == "yes") == ("cardiomegaly" in shown)
                continue
            asked = asked_findings(text)
            assert len(asked) == 1, text
            presence_answers.append(q.answer)
            assert (q.answer == "yes") == (asked.pop() in shown), (text, q.answer, case)
            continue
        about = asked_findings(text)
        if about:  # side, zone or size of the finding the question names
            finding = shown[about.pop()]
            if "side" in text or "left or the right" in text:
                assert finding.finding in LATERALISED and q.answer == finding.side
            elif "zone" in text:
                assert finding.finding in ZONED and q.answer == finding.zone
            else:
                assert ("large" in text or "size" in text) and q.answer == finding.size, text
        else:  # the main abnormality: always the label's finding
            assert q.answer == (case.finding if case.finding != "normal" else "none"), (text, q.answer)
    return presence_answers


def test_vqa_answers_agree_with_the_case():
    rng = np.random.default_rng(2)
    presence_answers = []
    for case in many_cases():
        presence_answers += assert_answers_are_true(case, write_questions(case, rng))
    yes_share = presence_answers.count("yes") / len(presence_answers)
    assert 0.4 < yes_share < 0.6, f"presence questions should be balanced, got {yes_share:.2f} yes"


# --- images -----------------------------------------------------------------------------------------


def lower_half_side_difference(images: np.ndarray) -> np.ndarray:
    """Mean brightness of the lower-lateral viewer-right field minus the viewer-left one, per image."""
    size = images.shape[-1]
    rows = slice(size // 2, 3 * size // 4)
    left_field = images[:, rows, size // 8: 3 * size // 8].astype(float).mean(axis=(1, 2))
    right_field = images[:, rows, 5 * size // 8: 7 * size // 8].astype(float).mean(axis=(1, 2))
    return right_field - left_field


def test_patient_left_is_drawn_on_the_viewer_right():
    """A large LEFT effusion whitens the viewer's RIGHT lung base, and vice versa (radiological view)."""
    left = [Case("pleural effusion", side="left", size="large")] * 16
    right = [Case("pleural effusion", side="right", size="large")] * 16
    rng = np.random.default_rng(0)
    assert (lower_half_side_difference(render_images(left, IN_DOMAIN, 64, rng)) > 20).all()
    assert (lower_half_side_difference(render_images(right, IN_DOMAIN, 64, rng)) < -20).all()


def noise_level(images: np.ndarray) -> float:
    """Median absolute difference between horizontal neighbours: a robust pixel-noise estimate."""
    return float(np.median(np.abs(np.diff(images.astype(float), axis=-1))))


def test_out_of_domain_acquisition_differs_but_labels_are_shared():
    data = tiny_data(image_size=64, cls_test=96, ood_test=96)
    specs = {(s.kind, s.split): s for s in split_specs(data)}
    id_cases, id_images, _ = split_arrays(specs["cls_id", "test"], 0, 64)
    ood_cases, ood_images, _ = split_arrays(specs["cls_ood", "test"], 0, 64)
    assert {c.finding for c in id_cases} == {c.finding for c in ood_cases} == set(LABELS)
    assert noise_level(ood_images) > 2 * noise_level(id_images)
    border = np.concatenate([ood_images[:, :2].ravel(), ood_images[:, -2:].ravel()]).mean()
    id_border = np.concatenate([id_images[:, :2].ravel(), id_images[:, -2:].ravel()]).mean()
    assert border > id_border + 100, "the other hospital's collimator shutters are bright"
    id_histogram = np.bincount(id_images.ravel(), minlength=256) / id_images.size
    ood_histogram = np.bincount(ood_images.ravel(), minlength=256) / ood_images.size
    assert 0.5 * np.abs(id_histogram - ood_histogram).sum() > 0.3  # total variation distance


def test_findings_are_learnable_by_a_linear_classifier_on_pixels():
    """At the default 64 px, a logistic regression on 4x4-pooled pixels trained on 480 images scores about
    0.83 on held-out in-domain images; assert 0.5, three times chance (1/6)."""
    def pooled(count: int, stream: int):
        spec = SplitSpec("cls_id", f"learnability-{stream}", count, IN_DOMAIN)
        cases, images, _ = split_arrays(spec, seed=0, image_size=64)
        features = images.reshape(count, 16, 4, 16, 4).mean(axis=(2, 4)).reshape(count, -1) / 255.0
        return features, np.array([case.label for case in cases])

    train_x, train_y = pooled(480, 0)
    test_x, test_y = pooled(180, 1)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000)).fit(train_x, train_y)
    accuracy = model.score(test_x, test_y)
    assert accuracy > 3 * CHANCE, f"held-out accuracy {accuracy:.3f} is too close to chance {CHANCE:.3f}"


# --- difficulty (params.data.synthetic) -------------------------------------------------------------

# Digests of the splits of tiny_data(ood_test=300) at seed 0, computed with the generator as it was before
# data.synthetic existed (x86-64, numpy 2.4, OpenBLAS 0.3.31): its defaults must reproduce those bytes.
ORIGINAL_TEXT_DIGEST = "ee4719d425813d2d"
ORIGINAL_DIGEST = "3cdcb571cef1f764"


def split_digests(data: DataParams) -> tuple[str, str]:
    """(digest of the cases and texts, digest of those and the images) of every split of `data`, seed 0."""
    texts, everything = hashlib.sha256(), hashlib.sha256()
    for spec in split_specs(data):
        for batch in generate_split(spec, 0, data.image_size):
            assert batch.labels == [case.finding for case in batch.cases]
            text = repr(([(c.finding, c.side, c.zone, c.size) for c in batch.cases], batch.captions,
                         batch.questions)).encode()
            texts.update(text)
            everything.update(batch.images.tobytes())
            everything.update(text)
    return texts.hexdigest()[:16], everything.hexdigest()[:16]


def test_the_original_settings_reproduce_the_original_generator():
    text_digest, digest = split_digests(tiny_data(ORIGINAL, ood_test=300))  # 300: two image chunks
    assert text_digest == ORIGINAL_TEXT_DIGEST, "cases, captions or questions changed at the original settings"
    assert digest == ORIGINAL_DIGEST, "images changed at the original settings (or this BLAS rounds differently)"


KNOB_FINDINGS = [
    (Appearance(lesion_contrast=0.5), {"pleural effusion", "nodule", "pneumothorax", "consolidation"}),
    (Appearance(lesion_size=0.7), {"nodule", "consolidation"}),
    (Appearance(effusion_height=0.5), {"pleural effusion"}),
    (Appearance(pneumothorax_collapse=1.5), {"pneumothorax"}),
]


@pytest.mark.parametrize(("appearance", "changed"), KNOB_FINDINGS, ids=["contrast", "size", "effusion", "collapse"])
def test_each_appearance_knob_changes_only_its_findings(appearance, changed):
    cases = many_cases(60)
    default = render_images(cases, IN_DOMAIN, 32, np.random.default_rng(0))
    images = render_images(cases, IN_DOMAIN, 32, np.random.default_rng(0), appearance)
    for case, before, after in zip(cases, default, images, strict=True):
        assert np.array_equal(before, after) != (case.finding in changed), case


def test_shift_interpolates_every_acquisition_range():
    assert shifted_acquisition(0.0) == IN_DOMAIN
    assert shifted_acquisition(1.0) == OUT_OF_DOMAIN
    halfway = shifted_acquisition(0.5)
    assert halfway.gamma == pytest.approx(tuple((a + b) / 2 for a, b in zip(IN_DOMAIN.gamma, OUT_OF_DOMAIN.gamma)))
    specs = split_specs(tiny_data(ORIGINAL.model_copy(update={"shift": 0.5})))
    assert {spec.acquisition for spec in specs if spec.kind != "cls_ood"} == {IN_DOMAIN}
    assert spec_of(tiny_data(ORIGINAL.model_copy(update={"shift": 0.5})), "cls_ood", "test").acquisition == halfway
    assert spec_of(tiny_data(ORIGINAL.model_copy(update={"shift": 0.0})), "cls_ood", "test").acquisition == IN_DOMAIN


def test_second_findings_are_drawn_described_and_answered():
    cases = sample_cases(600, np.random.default_rng(0), second_finding_rate=1.0)
    assert [replace(case, second=None) for case in cases] == many_cases(600), "primaries do not depend on the rate"
    rng = np.random.default_rng(1)
    asked_second = 0
    for case in cases:
        assert (case.second is None) == (case.finding == "normal")
        if case.second is None:
            continue
        assert case.second.finding not in ("normal", case.finding)
        assert parse_caption(write_caption(case, rng))[0] == case, "every finding is recoverable from its caption"
        questions = write_questions(case, rng)
        assert_answers_are_true(case, questions)
        for q in questions:
            if q.answer_type == "closed" and asked_findings(q.question) == {case.second.finding}:
                asked_second += 1
                assert q.answer == "yes"
    assert asked_second > 20
    half = sample_cases(600, np.random.default_rng(0), second_finding_rate=0.5)
    assert sum(case.second is not None for case in half) == 250  # half of the 500 abnormal cases
    # The second finding is drawn: a large left effusion whitens the viewer-right base of a cardiomegaly case.
    alone = [Case("cardiomegaly", size="small")] * 8
    both = [Case("cardiomegaly", size="small", second=Case("pleural effusion", side="left", size="large"))] * 8
    difference = (lower_half_side_difference(render_images(both, IN_DOMAIN, 64, np.random.default_rng(0)))
                  - lower_half_side_difference(render_images(alone, IN_DOMAIN, 64, np.random.default_rng(0))))
    assert (difference > 20).all()


def test_label_noise_flips_only_training_labels(tmp_path):
    sizes = dict(cls_train=600, cls_test=60, ood_test=60)
    noisy, clean = tiny_data(ORIGINAL.model_copy(update={"label_noise": 0.3}), **sizes), tiny_data(**sizes)
    for kind, split in (("cls_id", "train"), ("cls_id", "test"), ("cls_ood", "test")):
        cases, images, batches = split_arrays(spec_of(noisy, kind, split), 0, 32)
        labels = [label for batch in batches for label in batch.labels]
        assert set(labels) <= set(LABELS)
        assert np.mean([label != case.finding for label, case in zip(labels, cases, strict=True)]) == (
            0.3 if split == "train" else 0.0)
        clean_cases, clean_images, _ = split_arrays(spec_of(clean, kind, split), 0, 32)
        assert cases == clean_cases and np.array_equal(images, clean_images), "only the labels change"
    # The download stage writes the noisy labels and records the settings in meta.json.
    out, data = tmp_path / "data" / "raw", tiny_data(ORIGINAL.model_copy(update={"label_noise": 0.3}), cls_train=60)
    meta = download_stage(params=Params(data=data), out=out)
    assert meta["synthetic"]["label_noise"] == 0.3 and meta["synthetic"]["relabelled"] == {"cls_id/train": 18}
    assert json.loads((out / "meta.json").read_text()) == meta
    written = read_manifest(out, "cls_id", tmp_path / "data", split="train")["label"]
    truth = [case.finding for case in split_arrays(spec_of(data, "cls_id", "train"), 0, 32)[0]]
    assert int((written.to_numpy() != np.array(truth)).sum()) == 18
    assert download_stage(params=Params(data=tiny_data()), out=out)["synthetic"]["relabelled"] == {}


def pooled_pixels(count: int, name: str, acquisition=IN_DOMAIN, appearance: Appearance = Appearance()):
    """2x2-pooled 32 px images (256 features in [0, 1]) and labels of a fresh split."""
    spec = SplitSpec("cls_id", name, count, acquisition, appearance=appearance)
    cases, images, _ = split_arrays(spec, seed=0, image_size=32)
    features = images.reshape(count, 16, 2, 16, 2).mean(axis=(2, 4)).reshape(count, -1) / 255.0
    return features, np.array([case.label for case in cases])


def pixel_probe(appearance: Appearance = Appearance()):
    """Logistic regression on pooled pixels of 900 in-domain training images (150 per class)."""
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=500))
    features, labels = pooled_pixels(900, "probe-train", appearance=appearance)
    with threadpool_limits(1):  # BLAS threads spin on a busy machine: 6 s instead of 0.1 s on 2 loaded cores
        return model.fit(features, labels)


@pytest.fixture(scope="module")
def default_probe():
    return pixel_probe()


def test_harder_findings_lower_the_pixel_probe_accuracy(default_probe):
    """About 0.81 at the defaults and 0.47 with subtle, smaller lesions and overlapping heart sizes."""
    hard = Appearance(lesion_contrast=0.4, lesion_size=0.7, heart_overlap=1.0)
    default_accuracy = default_probe.score(*pooled_pixels(600, "probe-test"))
    hard_accuracy = pixel_probe(hard).score(*pooled_pixels(600, "probe-test", appearance=hard))
    assert hard_accuracy < default_accuracy - 0.15, (hard_accuracy, default_accuracy)


def test_a_larger_shift_lowers_out_of_domain_accuracy(default_probe):
    """The in-domain probe scores about 0.62 at shift 0.2 and 0.3 at shift 1 (chance 0.17)."""
    near, far = (default_probe.score(*pooled_pixels(600, "probe-ood", acquisition=shifted_acquisition(shift)))
                 for shift in (0.2, 1.0))
    assert far < near - 0.15, (far, near)
