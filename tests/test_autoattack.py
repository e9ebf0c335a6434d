"""AutoAttack (pyautoattack) through a classifier with per-item context: the analytic worst case of a linear
classifier, each input's context found by its image, the black-box Square attack, NaN logits and a missing
package."""

from __future__ import annotations

import sys

import pytest
import torch

from medvlm.eval.autoattack import (
    ContextByImage,
    autoattack_correct,
    package_version,
    separable_rounds,
    square_plan,
    white_box_plan,
)
from medvlm.io import DataError
from test_robustness import EPS, SIZE, linear_classifier

PLAN = white_box_plan(2, iterations=20, restarts=1, max_targets=9)


def _linear_case(factors: list[float], seed: int = 0):
    weights = torch.randn(SIZE * SIZE, generator=torch.Generator().manual_seed(seed))
    budget = EPS * weights.abs().sum()
    offsets = budget * torch.tensor(factors)
    pixels = torch.full((len(offsets), 1, SIZE, SIZE), 0.5)
    return linear_classifier(weights), pixels, torch.ones(len(offsets), dtype=torch.long), offsets.unsqueeze(1)


def _offsets_as_context(classify):
    return lambda pixels, context: classify(pixels, context[:, 0])


def test_apgd_matches_the_analytic_worst_case_of_a_linear_classifier():
    # As for PGD (test_robustness): an image of class 1 on mid-grey is robust iff its offset exceeds ε·‖w‖₁.
    # Each image has its own offset, so each is its own context group and its own AutoAttack call.
    classify, pixels, labels, offsets = _linear_case([-0.5, 0.2, 0.6, 0.9, 1.1, 1.5, 3.0])
    outcome = autoattack_correct(_offsets_as_context(classify), pixels, labels, offsets, eps=EPS, plan=PLAN, seed=0,
                                 batch_size=4, where="test")
    assert outcome.correct.tolist() == [False, False, False, False, True, True, True]
    assert outcome.gradient_images > 0 and outcome.seconds > 0


def test_questions_on_one_image_keep_their_own_result():
    # One image, two questions (offsets): the first is fooled, the second provably robust; a third item on
    # another image shares the first round with the first.
    classify, pixels, labels, offsets = _linear_case([0.5, 2.0, 10.0])
    pixels[2] += 3 * EPS  # another image, more than 2ε away; its margin moves by at most 3ε·‖w‖₁: robust
    classify_with_offsets = _offsets_as_context(classify)
    assert [rows.tolist() for rows in separable_rounds(pixels, EPS)] == [[0, 2], [1]]
    outcome = autoattack_correct(classify_with_offsets, pixels, labels, offsets, eps=EPS, plan=PLAN, seed=0,
                                 batch_size=2, where="test")
    assert outcome.correct.tolist() == [False, True, True]


def test_rounds_keep_images_more_than_two_eps_apart_and_inputs_find_their_item():
    base = torch.full((1, SIZE, SIZE), 0.5)
    far, near = base.clone(), base.clone()
    far[0, 0, 0] += 3 * EPS
    near[0, 0, 1] += 1.5 * EPS
    pixels = torch.stack([base, far, base, near])
    assert [rows.tolist() for rows in separable_rounds(pixels, EPS)] == [[0, 1], [2], [3]]

    context = torch.tensor([[10.0], [20.0]])
    module = ContextByImage(lambda images, rows: rows.expand(-1, 2), pixels[:2], context, EPS)
    inputs = torch.stack([base + EPS * torch.sign(torch.randn_like(base)), far - EPS])
    assert module(inputs)[:, 0].tolist() == [10.0, 20.0]
    with pytest.raises(RuntimeError, match="beyond the ball"):
        module(torch.stack([base + 2 * EPS]))


def test_square_needs_no_gradient_and_never_fools_a_provably_robust_item():
    classify, pixels, labels, offsets = _linear_case([-0.5, 0.05, 1.2, 3.0])
    outcome = autoattack_correct(_offsets_as_context(classify), pixels, labels, offsets, eps=EPS,
                                 plan=square_plan(300), seed=0, batch_size=4, where="test")
    # wrong on the clean image; fooled by a random-search step (a margin of 5 % of the budget); provably robust
    assert outcome.correct.tolist() == [False, False, True, True]
    assert outcome.gradient_images == 0 and outcome.forward_images > 300


@pytest.mark.parametrize(("n_classes", "attacks", "targets"), [(2, ("apgd-ce",), 0), (3, ("apgd-ce",), 0),
                                                               (5, ("apgd-ce", "apgd-t"), 4),
                                                               (40, ("apgd-ce", "apgd-t"), 9)])
def test_white_box_plan_runs_apgd_t_only_with_four_classes_and_caps_its_targets(n_classes, attacks, targets):
    plan = white_box_plan(n_classes, iterations=100, restarts=1, max_targets=9)
    assert (plan.attacks, plan.targets) == (attacks, targets)
    described = plan.describe()
    assert described["package"] == package_version() and described["attacks"] == list(attacks)


def test_nan_logits_stop_the_attack_and_name_where():
    def broken(pixels, context):
        return torch.full((len(pixels), 2), float("nan"))

    with pytest.raises(DataError, match="robustness lp vqa AutoAttack eps 2/255: NaN or infinite logits"):
        autoattack_correct(broken, torch.rand(3, 1, SIZE, SIZE), torch.ones(3, dtype=torch.long), None, eps=EPS,
                           plan=PLAN, seed=0, batch_size=3, where="robustness lp vqa AutoAttack eps 2/255")


def test_a_missing_package_names_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyautoattack", None)  # `import pyautoattack` now raises ImportError
    with pytest.raises(DataError, match="pip install pyautoattack"):
        package_version()
