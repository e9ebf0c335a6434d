"""The NMTune and RAN loss terms against values computed by hand on small matrices, weights of 0, and the
feature-space attack of RAN's adversarial variant."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from medvlm.losses import build_loss, nmtune, ran
from medvlm.losses.centroid_margin import centroid_separation, sample_margin
from medvlm.losses.feature_attack import feature_space_perturbation, kept_batchnorm_statistics
from medvlm.losses.regularizers import normalized_mse, off_diagonal_covariance, top_singular_value_share
from medvlm.models.heads import build_head
from medvlm.params import Params
from test_heads import toy_batch


def test_off_diagonal_covariance_by_hand():
    # N=3 > D=2. Centred rows [-1,0], [1,-2], [0,2]; C = Z^T Z / 2 = [[1,-1],[-1,4]]; 2·(-1)² / D = 1.
    assert off_diagonal_covariance(torch.tensor([[1.0, 2.0], [3.0, 0.0], [2.0, 4.0]])).item() == pytest.approx(1.0)
    # N=2 <= D=3 (the N×N Gram path). Centred rows ±[-1,-1,1]; C = 2·[[1,1,-1],[1,1,-1],[-1,-1,1]];
    # off-diagonal entries ±2, six of them: 6·4 / 3 = 8.
    assert off_diagonal_covariance(torch.tensor([[1.0, 0.0, 2.0], [3.0, 2.0, 0.0]])).item() == pytest.approx(8.0)


def test_off_diagonal_covariance_matches_torch_cov_either_way_round():
    generator = torch.Generator().manual_seed(0)
    for n, dim in ((5, 12), (12, 5)):
        features = torch.randn(n, dim, generator=generator, dtype=torch.float64)
        covariance = torch.cov(features.T)  # N−1 denominator
        expected = (covariance.square().sum() - covariance.diagonal().square().sum()) / dim
        torch.testing.assert_close(off_diagonal_covariance(features), expected)
    with pytest.raises(ValueError, match="two or more samples"):
        off_diagonal_covariance(torch.ones(1, 3))


def test_top_singular_value_share_by_hand_on_the_uncentred_batch():
    # Singular values 6,5,4,3,2,1 (sum 21): top-5 shares average (6+5+4+3+2)/21/5 = 4/21. The zero row makes
    # the batch mean non-zero, so a centred version would give other singular values.
    features = torch.cat([torch.diag(torch.tensor([6.0, 5.0, 4.0, 3.0, 2.0, 1.0])), torch.zeros(1, 6)])
    assert top_singular_value_share(features).item() == pytest.approx(4 / 21)
    centred = features - features.mean(dim=0)
    assert top_singular_value_share(centred).item() != pytest.approx(4 / 21, abs=1e-3)
    # Rank 2: σ = 4, 3, so the mean covers the two there are: (4/7 + 3/7) / 2.
    assert top_singular_value_share(torch.tensor([[0.0, 4.0], [3.0, 0.0], [0.0, 0.0]])).item() == pytest.approx(0.5)


def test_normalized_mse_by_hand_and_without_gradient_into_the_target():
    prediction = torch.tensor([[3.0, 4.0], [0.0, 2.0]], requires_grad=True)
    target = torch.tensor([[1.0, 0.0], [0.0, 5.0]], requires_grad=True)
    # row 0: [0.6, 0.8] vs [1, 0] -> 0.16 + 0.64; row 1: identical directions -> 0. Mean over 4 entries: 0.2.
    value = normalized_mse(prediction, target)
    assert value.item() == pytest.approx(0.2)
    value.backward()
    assert target.grad is None and prediction.grad.abs().sum() > 0


CENTROIDS = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0]])  # directions 0°, 90°, 180°; lengths do not matter


def test_sample_margin_by_hand():
    features = torch.tensor([[3.0, 3.0], [1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    # d = 2 − 2cos. Sample 0 (45°, class 0): own 2−√2, nearest other (class 1) 2−√2 -> [m + 0]_+ = m.
    # Sample 1 (0°, class 1): own 2, nearest other (class 0) 0 -> m + 2. Sample 2 (90°, class 1): own 0,
    # nearest other 2 -> [m − 2]_+ = 0.
    m = 0.2
    assert sample_margin(features, labels, CENTROIDS, m).item() == pytest.approx((m + (m + 2) + 0) / 3)
    assert sample_margin(features[2:], labels[2:], CENTROIDS, m).item() == 0.0


def test_centroid_separation_by_hand():
    # Pairwise d: (0,1) 2, (0,2) 4, (1,2) 2. With m_c = 3: [1, 0, 1] each twice over the 6 ordered pairs.
    assert centroid_separation(CENTROIDS, 3.0).item() == pytest.approx(4 / 6)
    assert centroid_separation(CENTROIDS, 2.0).item() == 0.0
    with pytest.raises(ValueError, match="two or more"):
        centroid_separation(CENTROIDS[:1], 1.0)


def _head_and_loss(method: str, **options: float):
    torch.manual_seed(0)
    head = build_head(method, in_dim=6, n_classes=4)
    settings = getattr(Params().heads, method).loss_options() | options
    return head, build_loss(method, **settings)


def test_nmtune_loss_is_its_terms_on_the_stacked_views():
    head, loss = _head_and_loss("nmtune", w_mse=0.5, w_cov=0.25, w_svd=2.0)
    batch = toy_batch()
    reference = copy.deepcopy(head)
    result = loss(head, batch)
    output = reference.outputs(torch.cat([batch["x_view1"], batch["x_view2"]]))
    z = output.transformed
    expected = {
        "ce": F.cross_entropy(output.logits, torch.cat([batch["y"], batch["y"]])),
        "mse": 0.5 * F.mse_loss(F.normalize(z[10:], dim=1), F.normalize(batch["x_view1"], dim=1)),
        "cov": 0.25 * off_diagonal_covariance(z),
        "svd": -2.0 * top_singular_value_share(z),
    }
    assert result.terms.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(result.terms[name], value, msg=name)
    assert result.logits.shape == (20, 4)


def test_ran_loss_is_its_terms_on_the_clean_batch():
    head, loss = _head_and_loss("ran", w_con=0.5, w_cov=0.25, w_adv=2.0, margin=0.3, centroid_margin=1.5)
    batch = toy_batch()
    reference = copy.deepcopy(head)
    result = loss(head, batch)
    output = reference.outputs(batch["x"])
    z = output.transformed
    expected = {
        "ce": F.cross_entropy(output.logits, batch["y"]),
        "con": 0.5 * normalized_mse(z, batch["x"]),
        "cov": 0.25 * off_diagonal_covariance(z),
        "adv": 2.0 * (sample_margin(z, batch["y"], reference.centroids, 0.3)
                      + centroid_separation(reference.centroids, 1.5)),
    }
    assert result.terms.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(result.terms[name], value, msg=name)


def test_ran_loss_needs_a_head_with_centroids():
    _, loss = _head_and_loss("ran")
    with pytest.raises(TypeError, match="RanHead"):
        loss(build_head("mlp", 6, 4), toy_batch())


# (method, weight, the module attribute(s) that compute the term)
ZERO_WEIGHT_CASES = [
    ("nmtune", "w_mse", ("normalized_mse",)),
    ("nmtune", "w_cov", ("off_diagonal_covariance",)),
    ("nmtune", "w_svd", ("top_singular_value_share",)),
    ("ran", "w_con", ("normalized_mse",)),
    ("ran", "w_cov", ("off_diagonal_covariance",)),
    ("ran", "w_adv", ("sample_margin", "centroid_separation", "feature_space_perturbation")),
]


@pytest.mark.parametrize(("method", "weight", "functions"), ZERO_WEIGHT_CASES, ids=[f"{c[0]}-{c[1]}" for c in ZERO_WEIGHT_CASES])
def test_a_zero_weight_removes_its_term_exactly(monkeypatch, method, weight, functions):
    term = weight.removeprefix("w_")
    options = {"adv_eps": 0.05, "adv_steps": 2} if method == "ran" else {}
    head, full_loss = _head_and_loss(method, **options)
    batch = toy_batch()
    without = copy.deepcopy(head)
    parameters = list(head.parameters())

    full = full_loss(head, batch)
    assert term in full.terms and full.terms[term] != 0
    rest = sum(value for name, value in full.terms.items() if name != term)
    expected_gradients = torch.autograd.grad(rest, parameters, allow_unused=True)

    module = {"nmtune": nmtune, "ran": ran}[method]
    for function in functions:  # a weight of 0 must not even compute the term
        monkeypatch.setattr(module, function, lambda *args, **kwargs: pytest.fail("computed a term of weight 0"))
    _, zero_loss = _head_and_loss(method, **options, **{weight: 0.0})
    result = zero_loss(without, batch)
    assert set(result.terms) == set(full.terms) - {term}
    total = sum(result.terms.values())
    assert torch.equal(total, rest)
    for parameter, expected, got in zip(parameters, expected_gradients,
                                        torch.autograd.grad(total, list(without.parameters()), allow_unused=True)):
        assert (expected is None) == (got is None)
        if expected is not None:
            assert torch.equal(expected, got)


def test_feature_space_perturbation_stays_in_its_ball_and_raises_the_loss():
    torch.manual_seed(0)
    head = build_head("ran", in_dim=6, n_classes=4)
    batch = toy_batch(n=16)
    features, labels = batch["x"], batch["y"]
    for eps_ratio, steps in ((0.1, 1), (0.1, 5), (0.5, 3)):
        statistics = {name: buffer.clone() for name, buffer in head.named_buffers()}
        delta = feature_space_perturbation(head, features, labels, eps_ratio=eps_ratio, steps=steps)
        # only input gradients, and BatchNorm's running statistics as they were
        assert all(parameter.grad is None for parameter in head.parameters())
        for name, buffer in head.named_buffers():
            assert torch.equal(buffer, statistics[name]), name
        eps = eps_ratio * features.std()
        assert delta.shape == features.shape and not delta.requires_grad
        assert delta.abs().max() <= eps * (1 + 1e-6)
        assert delta.abs().max() >= 0.99 * eps  # it uses its budget
        with torch.no_grad():
            assert F.cross_entropy(head(features + delta), labels) > F.cross_entropy(head(features), labels)
        if steps == 1:  # FGSM: every non-zero gradient coordinate sits on the boundary
            torch.testing.assert_close(delta.abs()[delta != 0], eps.expand(int((delta != 0).sum())))
    with pytest.raises(ValueError, match="eps_ratio > 0"):
        feature_space_perturbation(head, features, labels, eps_ratio=0.0, steps=1)


def test_feature_space_perturbation_attacks_the_head_in_eval_mode_as_the_test_time_attack_does():
    torch.manual_seed(0)
    head = build_head("ran", in_dim=6, n_classes=4).train()
    for norm in head.modules():  # running statistics far from the batch's, so the two modes' gradients differ
        if isinstance(norm, torch.nn.BatchNorm1d):
            norm.running_mean.fill_(2.0)
            norm.running_var.fill_(0.25)
    batch = toy_batch(n=16)
    features, labels = batch["x"], batch["y"]
    delta = feature_space_perturbation(head, features, labels, eps_ratio=0.5, steps=1)
    assert head.training  # the caller's mode comes back

    def fgsm(training: bool) -> torch.Tensor:
        head.train(training)
        start = features.clone().requires_grad_(True)
        (gradient,) = torch.autograd.grad(F.cross_entropy(head(start), labels), start)
        head.train()
        return 0.5 * features.std() * gradient.sign()

    assert torch.equal(delta, fgsm(training=False)) and not torch.equal(delta, fgsm(training=True))


def test_kept_batchnorm_statistics_restores_them_even_after_an_error():
    torch.manual_seed(0)
    head = build_head("mlp", in_dim=4, n_classes=2)
    before = {name: buffer.clone() for name, buffer in head.named_buffers()}
    with pytest.raises(RuntimeError, match="boom"), kept_batchnorm_statistics(head):
        head(torch.randn(8, 4))
        assert not torch.equal(head.mlp[1].running_mean, before["mlp.1.running_mean"])  # the copies moved
        raise RuntimeError("boom")
    for name, buffer in head.named_buffers():
        assert torch.equal(buffer, before[name]), name


def test_adversarial_ran_moves_the_margin_term_but_not_the_batchnorm_statistics():
    head_clean, clean_loss = _head_and_loss("ran")
    head_adv, adv_loss = _head_and_loss("ran", adv_eps=0.5, adv_steps=2)
    batch = toy_batch()
    clean, adversarial = clean_loss(head_clean, batch), adv_loss(head_adv, batch)
    for name in ("ce", "con", "cov"):
        torch.testing.assert_close(adversarial.terms[name], clean.terms[name])
    assert adversarial.terms["adv"] > clean.terms["adv"]  # harder inputs, larger margin violations
    # Only the clean pass updates the running statistics.
    for (name, buffer), (_, reference) in zip(head_adv.named_buffers(), head_clean.named_buffers()):
        assert torch.equal(buffer, reference), name
    assert math.isfinite(adversarial.terms["adv"].item())
    sum(adversarial.terms.values()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head_adv.parameters())
