"""Bootstrap intervals, the fast resample metrics behind them, and the feature spectrum."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medvlm.eval.bootstrap import accuracy_interval, bootstrap_intervals
from medvlm.eval.evaluate import scored_classification, scored_vqa
from medvlm.eval.metrics import ResampledClassification, classification_metrics
from medvlm.eval.spectrum import feature_spectrum
from medvlm.params import BootstrapParams

BOOTSTRAP = BootstrapParams(samples=500)


def _classifier_output(n: int, n_classes: int, seed: int, skill: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    logits = rng.normal(size=(n, n_classes))
    logits[np.arange(n), labels] += skill
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return labels, probabilities


@pytest.mark.parametrize("seed", range(5))
def test_resampled_scores_equal_sklearn_metrics_on_the_resample_including_ties(seed):
    labels, probabilities = _classifier_output(200, 5, seed)
    if seed % 2:
        probabilities = np.round(probabilities, 1)  # many tied scores and tied argmaxes
    scores = ResampledClassification(labels, probabilities)
    rng = np.random.default_rng(seed)
    for index in [np.arange(200), *(rng.integers(0, 200, 200) for _ in range(5))]:
        reference = classification_metrics(labels[index], probabilities[index])
        assert scores(index) == pytest.approx(
            [reference["accuracy"], reference["macro_f1"], reference["macro_auroc"]], abs=1e-12)


def test_resampled_scores_skip_a_class_the_resample_did_not_draw():
    labels, probabilities = _classifier_output(120, 4, seed=7)
    index = np.flatnonzero(labels != 3).repeat(2)  # class 3 never drawn; its column still in the softmax
    reference = classification_metrics(labels[index], probabilities[index])
    assert ResampledClassification(labels, probabilities)(index)[2] == pytest.approx(reference["macro_auroc"],
                                                                                     abs=1e-12)


def test_resampled_scores_give_nan_auroc_with_one_class():
    labels, probabilities = np.array([2, 2, 0]), np.eye(3)[[2, 1, 0]]
    accuracy, _, auroc = ResampledClassification(labels, probabilities)(np.array([0, 1, 1]))
    assert accuracy == pytest.approx(1 / 3) and math.isnan(auroc)


@pytest.mark.parametrize("seed", range(3))
def test_bootstrap_intervals_contain_the_point_estimates(seed):
    labels, probabilities = _classifier_output(300, 6, seed)
    scored = scored_classification(labels, probabilities, BOOTSTRAP, seed=seed)
    for name in ("accuracy", "macro_f1", "macro_auroc"):
        low, high = scored["ci"][name]
        assert low <= scored[name] <= high and high - low > 0, name
    predictions = probabilities.argmax(axis=1)
    closed = np.arange(300) % 3 == 0
    vqa = scored_vqa(labels, predictions, closed, BOOTSTRAP, seed=seed)
    for name in ("accuracy", "closed_accuracy", "open_accuracy"):
        low, high = vqa["ci"][name]
        assert low <= vqa[name] <= high, name


def test_vqa_interval_is_absent_for_a_question_type_with_no_questions():
    labels = np.array([0, 1, 1, 0, 1])
    vqa = scored_vqa(labels, labels, np.zeros(5, dtype=bool), BOOTSTRAP, seed=0)
    assert vqa["closed_accuracy"] is None and "closed_accuracy" not in vqa["ci"]


def test_bootstrap_is_seeded_and_narrows_with_more_items():
    rng = np.random.default_rng(0)
    small, large = rng.random(100) < 0.7, rng.random(2000) < 0.7
    assert accuracy_interval(small, params=BOOTSTRAP, seed=1) == accuracy_interval(small, params=BOOTSTRAP, seed=1)
    width = lambda interval: interval[1] - interval[0]  # noqa: E731
    assert width(accuracy_interval(large, params=BOOTSTRAP, seed=1)) < width(accuracy_interval(small, params=BOOTSTRAP, seed=1)) / 2
    # A 95 % interval of a proportion is about ±1.96·sqrt(p(1-p)/n).
    half_width = 1.96 * math.sqrt(0.7 * 0.3 / 2000)
    assert width(accuracy_interval(large, params=BOOTSTRAP, seed=1)) == pytest.approx(2 * half_width, rel=0.2)


def test_metrics_undefined_on_some_resamples_use_the_defined_ones():
    values = np.arange(10, dtype=float)

    def statistic(index: np.ndarray) -> list[float]:
        return [values[index].mean(), np.nan if index[0] % 2 else values[index].max()]

    intervals = bootstrap_intervals(statistic, 10, ["mean", "sometimes"], params=BOOTSTRAP, seed=0)
    assert all(np.isfinite(intervals["sometimes"])) and intervals["sometimes"][1] <= 9
    with pytest.raises(ValueError, match="at least 2"):
        bootstrap_intervals(statistic, 1, ["mean", "sometimes"], params=BOOTSTRAP, seed=0)


def test_spectrum_matches_hand_computed_values():
    features = torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.0, 0.0]])  # singular values 3 and 1
    spectrum = feature_spectrum(features)
    assert spectrum["sv_entropy"] == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert spectrum["top_sv_ratio"] == pytest.approx(0.75)
    assert spectrum["sv_entropy_max"] == pytest.approx(math.log(2))
    assert (spectrum["n"], spectrum["dim"]) == (3, 2)
    # a rank-one feature matrix: all weight on one direction
    collapsed = feature_spectrum(torch.ones(5, 4))
    assert collapsed["sv_entropy"] == pytest.approx(0.0, abs=1e-6) and collapsed["top_sv_ratio"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="N×D"):
        feature_spectrum(torch.ones(1, 4))
