"""The measured feature shift (engine/feature_shift.py): PGD on the pixels that moves u farthest."""

from __future__ import annotations

import pytest
import torch

from medvlm.engine.feature_shift import displacement_pgd, measure_shift
from medvlm.methods import RanParams


def test_pgd_reaches_the_largest_shift_of_a_linear_feature():
    """u = W x: the farthest L2 move of u within an L-inf ball is not analytic, but for one output it is
    |w . delta| <= eps * ||w||_1, reached at delta = eps * sign(w) (pixels far from 0 and 1)."""
    torch.manual_seed(0)
    weights = torch.randn(1, 16)
    pixels = torch.full((3, 16), 0.5)
    eps = 0.01
    shift = displacement_pgd(lambda x: x @ weights.T, pixels, eps=eps, step=0.25 * eps, steps=10, random_start=True,
                             generator=torch.Generator().manual_seed(0))
    assert shift.abs().squeeze(1) == pytest.approx(torch.full((3,), eps * weights.abs().sum().item()), rel=1e-5)


def test_the_shift_stays_inside_the_pixel_ball():
    torch.manual_seed(0)
    weights = torch.randn(8, 16)
    pixels = torch.rand(5, 16)
    eps = 0.02
    shift = displacement_pgd(lambda x: x @ weights.T, pixels, eps=eps, step=0.25 * eps, steps=5, random_start=True,
                             generator=torch.Generator().manual_seed(1))
    # every Delta u = W delta with |delta| <= eps: each output moves by at most eps * sum_j |W_kj|
    assert (shift.abs() <= eps * weights.abs().sum(dim=1) + 1e-6).all()
    assert (shift.norm(dim=1) > 0).all()


def _measure(scale: float, n_images: int = 6) -> dict:
    torch.manual_seed(0)
    weights = torch.randn(4, 16)
    pixels = torch.rand(10, 16)
    features = scale * (pixels @ weights.T)
    return measure_shift(embed=lambda x, rows: scale * (x @ weights.T), load_pixels=lambda rows: pixels[rows],
                         n_items=10, features=features, n_images=n_images, eps_255=2.0, steps=5, step_fraction=0.25,
                         random_start=True, batch_size=4, seed=3, what="toy")


def test_the_shift_is_in_units_of_the_feature_scale():
    small, large = _measure(1.0), _measure(10.0)
    assert small["n"] == 6 and small["dims"] == 4
    assert large["adv_eps"] == pytest.approx(small["adv_eps"], rel=1e-4)
    assert large["std_u"] == pytest.approx(10 * small["std_u"], rel=1e-5)
    assert small["adv_eps"] == small["linf_ratio"]["median"]


def test_the_measured_subset_is_seeded():
    assert _measure(1.0) == _measure(1.0)
    assert _measure(1.0, n_images=50)["n"] == 10  # never more items than there are


def test_an_empty_training_split_is_refused():
    with pytest.raises(ValueError, match="no training items"):
        measure_shift(embed=lambda x, rows: x, load_pixels=lambda rows: torch.zeros(0, 4), n_items=0,
                      features=torch.zeros(0, 4), n_images=4, eps_255=1.0, steps=1, step_fraction=0.25,
                      random_start=False, batch_size=4, seed=0, what="empty")


def test_a_measured_budget_resolves_per_task():
    measured = RanParams(adv_eps="measured")
    assert measured.loss_options(measured_adv_eps=0.9)["adv_eps"] == 0.9
    with pytest.raises(ValueError, match="no measured feature shift"):
        measured.loss_options()
    assert RanParams(adv_eps=0.05).loss_options(measured_adv_eps=0.9)["adv_eps"] == 0.05
