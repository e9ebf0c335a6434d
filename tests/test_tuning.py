"""Validation-split tuning (medvlm.tuning): the carve, the paired contrasts and a variant scored end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medvlm.methods import RanParams
from medvlm.models.clip import load_clip
from medvlm.params import Params, RobustnessParams
from medvlm.pipeline.features import features_stage
from medvlm.tuning import carve_validation, contrast_rows, load_task_data, mean_accuracy, score_variant
from test_features import build_raw_data


def test_the_validation_split_holds_whole_images_and_is_seeded():
    images = [f"img{i // 3}" for i in range(60)]  # three questions per image
    split = carve_validation(images, seed=0, task="vqa")
    fit, held = set(split.fit.tolist()), set(split.validation.tolist())
    assert fit.isdisjoint(held) and fit | held == set(range(60))
    assert {images[i] for i in fit}.isdisjoint({images[i] for i in held})  # no image on both sides
    assert len({images[i] for i in held}) == 5  # a quarter of the 20 images
    assert len(split.groups) == len(held) and len(set(split.groups.tolist())) == 5
    again = carve_validation(images, seed=0, task="vqa")
    assert torch.equal(again.validation, split.validation)
    assert not torch.equal(carve_validation(images, seed=1, task="vqa").validation, split.validation)


def test_too_few_images_for_a_validation_split_are_refused():
    with pytest.raises(ValueError, match="cls_id: 1 training image"):
        carve_validation(["a", "a"], seed=0, task="cls_id")


def _scores(shift: float, seeds: int = 3, n: int = 400) -> tuple[dict, dict]:
    rng = np.random.default_rng(0)
    scores, groups = {"base": {}, "better": {}, "same": {}}, {}
    for seed in range(seeds):
        groups[seed] = {}
        for variant in scores:
            scores[variant][seed] = {}
        for task in ("cls_id", "vqa"):
            base = (rng.random(n) < 0.5).astype(float)
            flip = rng.random(n) < shift  # 'better' fixes this share of the items base gets wrong
            scores["base"][seed][task] = {"clean": base, "robust": base}
            scores["better"][seed][task] = {"clean": base, "robust": np.where(flip, 1.0, base)}
            scores["same"][seed][task] = {"clean": base, "robust": base}
            groups[seed][task] = np.arange(n)
    return scores, groups


def test_a_real_gain_holds_and_no_change_is_not_detectable():
    scores, groups = _scores(shift=0.3)
    rows = {(row["variant"], row["metric"]): row for row in contrast_rows(scores=scores, reference="base", groups=groups)}
    gain = rows[("better", "robust")]
    assert gain["verdict"] == "holds" and gain["low"] > 0
    assert gain["estimate"] == pytest.approx(mean_accuracy(scores, "better", "robust")[0]
                                             - mean_accuracy(scores, "base", "robust")[0])
    assert rows[("same", "robust")]["verdict"] == "not detectable at this power"
    assert rows[("better", "clean")]["estimate"] == 0
    assert gain["p_holm"] >= gain["p"]  # Holm never lowers a p-value


def test_an_expected_loss_that_is_a_gain_is_contradicted():
    scores, groups = _scores(shift=0.3)
    rows = {(row["variant"], row["metric"]): row
            for row in contrast_rows(scores=scores, reference="base", groups=groups, sign=-1)}
    assert rows[("better", "robust")]["verdict"] == "contradicted"


def test_a_variant_is_scored_on_validation_items_only(tiny_clip_dir, tmp_path):
    raw = build_raw_data(tmp_path)
    params = Params.model_validate({"device": "cpu", "features": {"batch_size": 4}})
    features_stage(params=params, clip=tiny_clip_dir, data=raw, out=tmp_path / "features", data_root=tmp_path)
    device = torch.device("cpu")
    tasks = load_task_data(features=tmp_path / "features", data=raw, data_root=tmp_path, seed=0, device=device)
    assert [data.split.task for data in tasks] == ["cls_id", "vqa"]
    assert all(data.measured_adv_eps > 0 for data in tasks)  # read from the features' feature_shift.json
    clip = load_clip(tiny_clip_dir, device=device)
    robust = RobustnessParams(eps_255=[4], main_eps_255=4, steps=3)
    settings = RanParams(epochs=2, batch_size=2, adv_eps="measured")
    results = [score_variant(method="ran", settings=settings, clip=clip, task_data=data, robust=robust, seed=0,
                             device=device) for data in tasks]
    for data, result in zip(tasks, results, strict=True):
        assert len(result["clean"]) == len(result["robust"]) == len(data.split.validation) > 0
        assert (result["robust"] <= result["clean"]).all()  # an attack never fixes a wrong answer
    again = score_variant(method="ran", settings=settings, clip=clip, task_data=tasks[0], robust=robust, seed=0,
                          device=device)
    assert all(np.array_equal(again[key], results[0][key]) for key in ("clean", "robust"))
