"""Test-time robustness: PGD accuracy against an analytic worst case, inside its ε-ball, ε = 0 equal to
clean accuracy, and the robustness stage on a tiny CLIP, tiny manifests and cached features."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medvlm.data.cached_features import load_feature_split
from medvlm.pipeline.features import features_stage
from medvlm.eval.robustness import attack_subsets, encoder_head_classifier, robust_correct, strong_pgd_check
from medvlm.pipeline.robustness import robustness_stage
from medvlm.tasks import eps_key
from medvlm.io import DataError, read_items, read_json
from medvlm.data.manifest import load_images, read_manifest, to_pixels
from medvlm.models.clip import create_clip, load_clip, save_clip
from medvlm.models.heads import build_head, load_head, save_head
from medvlm.params import Params
from test_features import build_raw_data

EPS = 4 / 255
TEST_MANIFESTS = {"cls_id": "cls_id", "cls_ood": "cls_ood", "vqa": "vqa"}
SIZE = 8


def linear_classifier(weights: torch.Tensor):
    """Two classes: logit 1 - logit 0 = w·(x - 0.5) + b, with the offset b passed per image as context."""
    def classify(pixels: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        margin = (pixels - 0.5).flatten(1) @ weights + offsets
        return torch.stack([torch.zeros_like(margin), margin], dim=1)
    return classify


def test_pgd_accuracy_matches_the_analytic_worst_case_of_a_linear_classifier():
    # On mid-grey images the worst L∞ perturbation lowers the margin by exactly ε·‖w‖₁, so an image of class 1
    # is robust iff its offset b exceeds ε·‖w‖₁. PGD's sign steps reach that corner.
    weights = torch.randn(SIZE * SIZE, generator=torch.Generator().manual_seed(0))
    budget = EPS * weights.abs().sum()
    offsets = budget * torch.tensor([-0.5, 0.2, 0.6, 0.9, 1.1, 1.5, 3.0])
    pixels = torch.full((len(offsets), 1, SIZE, SIZE), 0.5)
    labels = torch.ones(len(offsets), dtype=torch.long)
    correct = robust_correct(linear_classifier(weights), pixels, labels, offsets, eps=EPS, step=EPS / 4, steps=10,
                             random_start=True, generator=torch.Generator().manual_seed(0))
    assert correct.tolist() == [False, False, False, False, True, True, True]


def test_eps_zero_is_exactly_clean_accuracy_and_robust_never_beats_clean():
    weights = torch.randn(SIZE * SIZE, generator=torch.Generator().manual_seed(1))
    offsets = torch.randn(64, generator=torch.Generator().manual_seed(2))
    pixels = torch.rand(64, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    labels = torch.randint(0, 2, (64,), generator=torch.Generator().manual_seed(4))
    classify = linear_classifier(weights)
    clean = classify(pixels, offsets).argmax(dim=1) == labels
    kwargs = dict(step=EPS / 4, steps=10, random_start=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(robust_correct(classify, pixels, labels, offsets, eps=0.0, **kwargs), clean)
    robust = robust_correct(classify, pixels, labels, offsets, eps=EPS, **kwargs)
    assert not (robust & ~clean).any()  # never right under attack where wrong on the clean image
    assert robust.sum() < clean.sum()


def test_every_iterate_stays_inside_the_eps_ball_and_the_pixel_range():
    pixels = torch.rand(16, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    pixels[:4] = 0.0  # at the edge of [0, 1]
    weights = torch.randn(SIZE * SIZE, generator=torch.Generator().manual_seed(6))
    seen = []

    def classify(batch: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        seen.append((batch.detach().clone(), rows.clone()))
        margin = (batch - 0.5).flatten(1) @ weights + 5.0  # robust images: the attack runs every step
        return torch.stack([torch.zeros_like(margin), margin], dim=1)

    robust_correct(classify, pixels, torch.ones(16, dtype=torch.long), torch.arange(16), eps=EPS, step=EPS / 2,
                   steps=5, random_start=True, generator=torch.Generator().manual_seed(0))
    assert len(seen) == 1 + 5 + 1  # clean pass, five steps, the last iterate's check
    for batch, rows in seen:
        assert (batch - pixels[rows]).abs().max() <= EPS + 1e-6
        assert batch.min() >= 0.0 and batch.max() <= 1.0


def test_the_convergence_check_attacks_only_the_survivors_and_never_raises_accuracy():
    # Class-1 images with offsets on both sides of the analytic threshold ε·‖w‖₁: the stronger PGD fools exactly
    # those below it, and the images the weak attack already fooled are neither attacked nor counted again.
    weights = torch.randn(SIZE * SIZE, generator=torch.Generator().manual_seed(7))
    budget = 2 * weights.abs().sum() / 255
    offsets = budget * torch.tensor([0.5, 0.9, 1.2, 2.0, 0.5, 3.0])
    weak = torch.tensor([True, True, True, True, False, False])  # as if PGD-steps had fooled the last two
    attacked_rows = []

    def classify(batch: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        attacked_rows.append(rows.tolist())
        return linear_classifier(weights)(batch, offsets[rows])

    robust = Params.model_validate({"evaluate": {"robust": {"eps_255": [2], "steps": 5, "check_steps": 20,
                                                            "main_eps_255": 2}}}).evaluate.robust
    strong = strong_pgd_check(classify, torch.full((6, 1, SIZE, SIZE), 0.5), torch.ones(6, dtype=torch.long),
                              torch.arange(6), weak, robust=robust, generator=torch.Generator().manual_seed(0))
    assert strong.tolist() == [False, False, True, True, False, False]
    assert attacked_rows[0] == [0, 1, 2, 3]  # the clean pass of the check sees only the survivors
    assert not (strong & ~weak).any()


def test_attacked_subsets_are_seeded_sorted_nested_and_distinct_per_task():
    main, small = attack_subsets(100, (20, 8), seed=0, task_index=0)
    again, _ = attack_subsets(100, (20, 8), seed=0, task_index=0)
    assert torch.equal(main, again)
    assert len(set(main.tolist())) == 20 and torch.equal(main, main.sort().values)
    assert len(small) == 8 and set(small.tolist()) < set(main.tolist())  # the other radii's items are main items
    assert not torch.equal(main, attack_subsets(100, (20,), seed=0, task_index=1)[0])
    assert not torch.equal(main, attack_subsets(100, (20,), seed=1, task_index=0)[0])
    assert torch.equal(attack_subsets(5, (20,), seed=0, task_index=0)[0], torch.arange(5))


def test_eps_keys_have_no_dots():
    assert [eps_key(e) for e in (1.0, 2, 0.5)] == ["eps_1", "eps_2", "eps_0p5"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_clip_dir) -> dict[str, Path]:
    """Raw data, cached features and random heads of every method, for the robustness stage."""
    root = tmp_path_factory.mktemp("robust")
    raw = build_raw_data(root)
    features = root / "features"
    features_stage(params=Params.model_validate({"device": "cpu", "features": {"batch_size": 4}}),
                   clip=tiny_clip_dir, data=raw, out=features, data_root=root)
    torch.manual_seed(0)
    for task, split in (("cls_id", "cls_id_train"), ("vqa", "vqa_train")):
        train = load_feature_split(features, split)
        for method in ("lp", "ran"):
            head = build_head(method, train["x"].shape[1], int(train["y"].max()) + 1).eval()
            save_head(head, root / "heads" / method, task)
    return {"root": root, "raw": raw, "features": features, "heads": root / "heads", "clip": tiny_clip_dir}


def _robust_params(**robust) -> Params:
    settings = {"eps_255": [2, 8], "steps": 3, "n_images": 2, "main_n_images": 3, "batch_size": 2,
                "check_steps": 6, "check_images": 2, "main_eps_255": 8,
                "autoattack": {"n_images": 2, "iterations": 4, "batch_size": 2},
                "masking": {"square_images": 2, "square_queries": 10, "large_eps_255": 32}} | robust
    return Params.model_validate({"device": "cpu", "evaluate": {"robust": settings, "bootstrap": {"samples": 100}}})


@pytest.mark.parametrize("method", ["lp", "ran"])
def test_robustness_stage_clean_row_equals_the_cached_feature_predictions(tiny_run, method, tmp_path):
    out, items_path = tmp_path / "robustness" / f"{method}.json", tmp_path / "items" / f"{method}.parquet"
    result = robustness_stage(params=_robust_params(), method=method, data=tiny_run["raw"],
                              features=tiny_run["features"], clip=tiny_run["clip"], heads=tiny_run["heads"], out=out,
                              items=items_path, data_root=tiny_run["root"])
    assert read_json(out) == result
    items = read_items(items_path)
    for task_index, (task, split, head_name) in enumerate((("cls_id", "cls_id_test", "cls_id"),
                                                           ("cls_ood", "cls_ood_test", "cls_id"),
                                                           ("vqa", "vqa_test", "vqa"))):
        cached = load_feature_split(tiny_run["features"], split)
        rows, small = attack_subsets(len(cached["y"]), (3, 2), seed=0, task_index=task_index)
        head = load_head(tiny_run["heads"] / method, head_name)
        with torch.no_grad():
            cached_correct = head(cached["x"][rows]).argmax(dim=1) == cached["y"][rows]
        entry = result[task]
        assert len(small) == 2 < len(rows) == 3  # the tiny test sets have 3-4 items
        assert (entry["n"], entry["n_main"], entry["eps_8"]["n"], entry["eps_2"]["n"]) == (2, len(rows), len(rows), 2)
        # ε = 0 is clean, exactly, on the main subset
        assert entry["clean"]["accuracy"] == pytest.approx(float(cached_correct.float().mean()), abs=0)
        for key in ("eps_2", "eps_8"):
            low, high = entry[key]["ci"]
            assert low <= entry[key]["accuracy"] <= high
        # Per item: the main subset's rows, in order, with the manifest's ids; the other radius only on the
        # nested subset (NA elsewhere); robust never beats clean on an item.
        table = items[items["task"] == task].reset_index(drop=True)
        frame = read_manifest(tiny_run["raw"], TEST_MANIFESTS[task], tiny_run["root"], split="test")
        assert list(table["item"]) == list(frame["id"].iloc[rows.numpy()])
        assert table["clean"].tolist() == cached_correct.tolist()
        assert table["eps_8"].notna().all() and table["eps_8"].mean() == pytest.approx(entry["eps_8"]["accuracy"])
        assert table["eps_2"].notna().tolist() == torch.isin(rows, small).tolist()
        attacked = table[table["eps_2"].notna()]
        assert not (attacked["eps_2"].astype(bool) & ~attacked["clean"].astype(bool)).any()
        assert not (table["eps_8"].astype(bool) & ~table["clean"].astype(bool)).any()
        check = entry["convergence"]
        assert (check["n"], check["steps"], check["strong_steps"], check["eps_255"]) == (2, 3, 6, 8)
        assert check["strong_accuracy"] <= check["accuracy"]  # the stronger PGD only re-attacks survivors
        # AutoAttack and the masking checks on the first items of the main subset, on what PGD left standing:
        # the worst case per item is never above PGD's figure, and never robust where clean is wrong.
        strong = entry["autoattack"]
        expected_attacks = ["apgd-ce", "apgd-t"] if head.n_classes >= 4 else ["apgd-ce"]
        assert (strong["n"], strong["eps_255"], strong["attacks"], strong["iterations"]) == (2, 8, expected_attacks, 4)
        assert strong["worst_case_accuracy"] <= strong["pgd3_accuracy"] <= strong["clean_accuracy"]
        first = table.iloc[:2]
        assert strong["pgd_survivors"] == int(first["eps_8"].sum())
        assert strong["fooled"] == strong["pgd_survivors"] - int(first["worst_case"].sum())
        assert (strong["gradient_images"] > 0) == (strong["pgd_survivors"] > 0)  # only PGD's survivors are attacked
        assert table["worst_case"].notna().tolist() == [True, True, False]
        assert not (first["worst_case"].astype(bool) & ~first["eps_8"].astype(bool)).any()
        square, large = entry["masking"]["square"], entry["masking"]["large_eps"]
        assert (square["n"], square["queries"], large["n"], large["eps_255"]) == (2, 10, 2, 32)
        assert square["worst_case_accuracy"] <= square["pgd3_accuracy"] and large["accuracy"] <= large["clean_accuracy"]


def test_robustness_classifier_agrees_with_the_features_stage(tiny_run):
    clip = load_clip(tiny_run["clip"])
    head = load_head(tiny_run["heads"] / "lp", "cls_id")
    cached = load_feature_split(tiny_run["features"], "cls_id_test")
    frame = read_manifest(tiny_run["raw"], "cls_id", tiny_run["root"], split="test")
    pixels = to_pixels(load_images(tiny_run["root"], list(frame["image"])))
    with torch.no_grad():
        logits = encoder_head_classifier(clip, head, vqa=False)(pixels, None)
        torch.testing.assert_close(logits, head(cached["x"]), atol=1e-5, rtol=1e-5)


def test_features_from_another_clip_are_refused_and_nothing_is_written(tiny_run, tmp_path):
    torch.manual_seed(123)
    other = tmp_path / "other_clip"
    save_clip(create_clip("medvlm-tiny-vit", image_size=32), other)
    out, items = tmp_path / "lp.json", tmp_path / "lp.parquet"
    with pytest.raises(DataError, match="not computed with this CLIP"):
        robustness_stage(params=_robust_params(), method="lp", data=tiny_run["raw"], features=tiny_run["features"],
                         clip=other, heads=tiny_run["heads"], out=out, items=items, data_root=tiny_run["root"])
    assert not out.exists() and not items.exists()
