"""The upstream image attack: PGD invariants, nested selection, storage on the 1/255 grid, stage outputs."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from attack_helpers import FINDINGS, SIZE, batch_of_images, build_raw, caption, run_attack, tiny_params
from attack_helpers import clip, surrogate  # noqa: F401  (module-scoped fixtures, shared with test_multimodal_noise)
from medvlm.pipeline.attack import attack_stage
from medvlm.attacks.pgd import pgd_linf, quantize_to_ball, targeted_objective, untargeted_objective
from medvlm.attacks.selection import draw_candidates, draw_targets, select_perturbed
from medvlm.data.image_packs import read_pack
from medvlm.data.manifest import load_images, read_manifest
from medvlm.io import DataError, read_json
from stage_scripts import stage_app



# --- PGD ---------------------------------------------------------------------------------------------------

def test_pgd_keeps_every_iterate_in_the_unit_box_and_the_eps_ball(clip):
    images, eps = batch_of_images(), 4 / 255
    targets = clip.encode_pixels(images.flip(0)).detach()
    iterates = []

    def recording(pixels):
        iterates.append(pixels.detach().clone())
        return targeted_objective(clip.encode_pixels, targets)(pixels)

    final = pgd_linf(recording, images, eps=eps, step=2 / 255, steps=5, random_start=True,
                     generator=torch.Generator().manual_seed(0))
    assert len(iterates) == 5
    for x in [*iterates, final]:
        assert x.min() >= 0 and x.max() <= 1
        assert (x - images).abs().max() <= eps + 1e-6
    assert (final - images).abs().max() > eps / 2  # it did move, up to the budget


def test_pgd_touches_neither_weights_grads_nor_mode(clip):
    images = batch_of_images(4)
    weights = {name: p.detach().clone() for name, p in clip.named_parameters()}
    captions = clip.encode_texts([caption("nodule", i) for i in range(4)]).detach()
    for training in (False, True):
        clip.train(training)
        pgd_linf(untargeted_objective(clip.encode_pixels, captions), images, eps=2 / 255, step=1 / 255, steps=2,
                 random_start=True, generator=torch.Generator().manual_seed(1))
        assert all(module.training == training for module in clip.modules())
    clip.eval()
    for name, parameter in clip.named_parameters():
        assert parameter.grad is None, name
        assert torch.equal(parameter, weights[name]), name


def test_targeted_pgd_raises_the_similarity_to_the_target(clip):
    images = batch_of_images()
    targets = clip.encode_pixels(images.roll(1, 0)).detach()
    objective = targeted_objective(clip.encode_pixels, targets)
    adversarial = pgd_linf(objective, images, eps=2 / 255, step=0.5 / 255, steps=10, random_start=True,
                           generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (objective(adversarial) > objective(images)).all()


def test_untargeted_pgd_lowers_caption_similarity_far_more_than_random_noise(clip):
    images, eps = batch_of_images(), 2 / 255
    captions = clip.encode_texts([caption(FINDINGS[i % 3], i) for i in range(len(images))]).detach()
    adversarial = pgd_linf(untargeted_objective(clip.encode_pixels, captions), images, eps=eps, step=0.5 / 255,
                           steps=10, random_start=True, generator=torch.Generator().manual_seed(0))
    signs = torch.randint(0, 2, images.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    random_noise = (images + eps * signs).clamp(0, 1)  # same L∞ budget, every pixel at ±ε
    with torch.no_grad():
        def similarity(x):
            return (clip.encode_pixels(x) * captions).sum(-1).mean().item()
        clean = similarity(images)
        adversarial_drop, random_drop = clean - similarity(adversarial), clean - similarity(random_noise)
    assert adversarial_drop > 0
    assert adversarial_drop > 3 * abs(random_drop)


def test_bf16_pgd_stays_in_the_ball_and_on_the_grid_and_fools_more_than_random_noise(clip):
    images, eps = batch_of_images(), 2 / 255
    captions = clip.encode_texts([caption(FINDINGS[i % 3], i) for i in range(len(images))]).detach()
    objective = untargeted_objective(clip.encode_pixels, captions)
    iterates = []

    def recording(pixels):
        iterates.append(pixels.detach().clone())
        assert torch.is_autocast_enabled("cpu") and pixels.dtype == torch.float32  # the iterates stay float32
        return objective(pixels)

    adversarial = pgd_linf(recording, images, eps=eps, step=0.5 / 255, steps=10, random_start=True,
                           generator=torch.Generator().manual_seed(0), autocast_bf16=True)
    assert adversarial.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
    for x in [*iterates, adversarial]:
        assert x.min() >= 0 and x.max() <= 1
        assert (x - images).abs().max() <= eps + 1e-6
    original = (images.squeeze(1) * 255).round().to(torch.uint8)
    stored = quantize_to_ball(adversarial, original, eps_255=2.0)
    assert (stored.int() - original.int()).abs().max() <= 2 and (stored != original).any()
    signs = torch.randint(0, 2, images.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    random_noise = (images + eps * signs).clamp(0, 1)
    float32 = pgd_linf(objective, images, eps=eps, step=0.5 / 255, steps=10, random_start=True,
                       generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        clean = objective(images).mean().item()  # the objective is minus the caption similarity
        bf16_gain, float32_gain = objective(adversarial).mean().item() - clean, objective(float32).mean().item() - clean
        random_gain = objective(random_noise).mean().item() - clean
    assert bf16_gain > 3 * abs(random_gain)
    assert bf16_gain > 0.5 * float32_gain


def test_bf16_off_is_bit_identical_and_leaves_a_callers_autocast_alone(clip):
    images = batch_of_images(4)
    captions = clip.encode_texts([caption("nodule", i) for i in range(4)]).detach()
    seen = []

    def objective(pixels):
        seen.append(torch.is_autocast_enabled("cpu"))
        return untargeted_objective(clip.encode_pixels, captions)(pixels)

    def attack(**options):
        return pgd_linf(objective, images, eps=2 / 255, step=0.5 / 255, steps=3, random_start=True,
                        generator=torch.Generator().manual_seed(3), **options)

    assert torch.equal(attack(), attack(autocast_bf16=False)) and seen == [False] * 6
    with torch.autocast("cpu", dtype=torch.bfloat16):
        attack()
    assert seen[6:] == [True] * 3


def test_pgd_rejects_a_score_that_is_not_one_per_image():
    with pytest.raises(ValueError, match="one score per image"):
        pgd_linf(lambda x: x.sum(), torch.rand(3, 1, 8, 8), eps=0.1, step=0.05, steps=1, random_start=False)


# --- selection, targets, candidates, storage grid ----------------------------------------------------------

def test_selection_is_nested_across_ratios_and_floors_the_count():
    small, large = select_perturbed(200, 0.05, seed=3), select_perturbed(200, 0.10, seed=3)
    assert len(small) == 10 and len(large) == 20 and len(select_perturbed(30, 0.29, 3)) == 8
    assert np.array_equal(small, large[:10])
    assert len(set(large)) == 20 and large.max() < 200
    assert not np.array_equal(select_perturbed(200, 0.10, seed=4), large)
    assert len(select_perturbed(200, 0.0, seed=3)) == 0


def test_targets_come_from_a_different_finding_or_at_least_another_image():
    findings = np.array([FINDINGS[i % 3] for i in range(30)])
    rows = select_perturbed(30, 0.5, seed=0)
    targets = draw_targets(rows, 30, findings, seed=0)
    assert (findings[targets] != findings[rows]).all()
    assert np.array_equal(draw_targets(rows[:5], 30, findings, seed=0), targets[:5])
    anywhere = draw_targets(rows, 30, None, seed=0)
    assert (anywhere != rows).all() and anywhere.max() < 30
    with pytest.raises(DataError, match="another finding"):
        draw_targets(rows, 30, np.array(["normal"] * 30), seed=0)


def test_candidates_are_distinct_other_captions():
    own = np.array([0, 3, 9, 9])
    candidates = draw_candidates(own, n_captions=10, k=5, seed=0)
    assert candidates.shape == (4, 4)
    for row, mine in zip(candidates, own):
        assert mine not in row and len(set(row)) == 4 and row.max() < 10
    assert draw_candidates(own, n_captions=3, k=64, seed=0).shape == (4, 2)


def test_quantisation_stays_on_the_grid_inside_floor_eps_levels():
    original = torch.tensor([[[0, 10, 128, 255]]], dtype=torch.uint8)
    adversarial = torch.tensor([[[[0.02, 0.0, 0.6, 1.0]]]])  # wants +5, -10, +25 and 0 levels
    stored = quantize_to_ball(adversarial, original, eps_255=2.5)
    assert stored.dtype == torch.uint8
    assert stored.tolist() == [[[2, 8, 130, 255]]]


# --- the stage -----------------------------------------------------------------------------------------------

def test_stage_writes_the_noisy_set_on_the_grid_and_leaves_val_alone(tmp_path, surrogate):
    params = tiny_params(noise_ratio=0.5, image={"eps_255": 2.5})
    stats, data_root, metrics = run_attack(tmp_path, surrogate, params)
    clean = read_manifest(data_root / "raw", "pretrain", data_root)
    noisy = read_manifest(data_root / "noisy", "pretrain", data_root)
    assert list(noisy["id"]) == list(clean["id"]) and (noisy["caption"] == clean["caption"]).all()
    perturbed = noisy[noisy["perturbed"] == 1]
    assert len(perturbed) == 12 and (perturbed["split"] == "train").all()
    # One pack of the perturbed images, in the order the seeded permutation chose them.
    assert sorted(perturbed["image"]) == sorted(f"noisy/images.safetensors#{i}" for i in range(12))
    untouched = noisy["perturbed"] == 0
    assert (noisy.loc[untouched, "image"] == clean.loc[untouched, "image"]).all()
    assert (noisy.loc[noisy["split"] == "val", "perturbed"] == 0).all()
    before = load_images(data_root, clean.loc[perturbed.index, "image"].tolist()).int()
    after = load_images(data_root, perturbed["image"].tolist()).int()
    assert (after - before).abs().max() <= 2 and (after != before).any()
    assert read_json(data_root / "noisy" / "meta.json")["image_size"] == SIZE
    assert read_json(metrics) == stats
    assert stats["pairs_perturbed"] == 12 and stats["n_train"] == 24 and stats["objective"] == "targeted"
    assert 0 < stats["linf_255_mean"] <= 2 and 0 < stats["l2_mean"] <= 2 / 255 * SIZE
    assert stats["target_similarity_after"] > stats["target_similarity_before"]
    assert stats["similarity_drop"] == pytest.approx(stats["similarity_before"] - stats["similarity_after"])
    assert stats["success_rate"] == pytest.approx(1 - stats["top1_after"])
    assert len(read_pack(data_root / "noisy" / "images.safetensors")) == 12  # one pack of the perturbed images


def test_untargeted_stage_lowers_the_stored_caption_similarity(tmp_path, surrogate):
    stats, _, _ = run_attack(tmp_path, surrogate, tiny_params(image={"objective": "untargeted", "steps": 6}))
    assert stats["similarity_drop"] > 0
    assert "target_similarity_after" not in stats


def test_perturbed_sets_are_nested_across_noise_ratios(tmp_path, surrogate):
    run_attack(tmp_path, surrogate, tiny_params(noise_ratio=0.25), out_name="noisy_25")
    _, data_root, _ = run_attack(tmp_path, surrogate, tiny_params(noise_ratio=0.5), out_name="noisy_50")
    chosen = {name: set(read_manifest(data_root / name, "pretrain", data_root).query("perturbed == 1")["id"])
              for name in ("noisy_25", "noisy_50")}
    assert len(chosen["noisy_25"]) == 6 and chosen["noisy_25"] < chosen["noisy_50"]


def test_same_seed_gives_identical_images_and_stats(tmp_path, surrogate):
    runs = [run_attack(tmp_path, surrogate, tiny_params(), out_name=name) for name in ("run_a", "run_b")]
    reseeded, data_root, _ = run_attack(tmp_path, surrogate, tiny_params(seed=1), out_name="run_c")
    assert runs[0][0] == runs[1][0] and reseeded != runs[0][0]
    images = {name: torch.from_numpy(read_pack(data_root / name / "images.safetensors").copy())
              for name in ("run_a", "run_b")}
    assert torch.equal(images["run_a"], images["run_b"])


def test_zero_noise_ratio_writes_a_clean_copy(tmp_path, surrogate):
    stats, data_root, _ = run_attack(tmp_path, surrogate, tiny_params(noise_ratio=0.0))
    clean = read_manifest(data_root / "raw", "pretrain", data_root)
    noisy = read_manifest(data_root / "noisy", "pretrain", data_root)
    pd.testing.assert_frame_equal(noisy.drop(columns="perturbed"), clean)
    assert (noisy["perturbed"] == 0).all() and not (data_root / "noisy" / "images.safetensors").exists()
    assert stats["pairs_perturbed"] == 0 and stats["n_train"] == 24
    assert stats["similarity_after"] is None and stats["success_rate"] is None
    assert stats["target_similarity_after"] is None


def test_manifest_without_finding_column_still_runs_targeted(tmp_path, surrogate):
    stats, _, _ = run_attack(tmp_path, surrogate, tiny_params(), with_finding=False)
    assert stats["pairs_perturbed"] == 12 and stats["target_similarity_after"] > stats["target_similarity_before"]


def test_a_failure_mid_way_leaves_no_output(tmp_path, surrogate):
    data_root = tmp_path / "data"
    raw = build_raw(data_root)
    last_chosen = select_perturbed(24, 0.5, seed=0)[-1]  # in the last batch, after others were stored
    (data_root / read_manifest(raw, "pretrain", data_root)["image"][last_chosen]).write_bytes(b"not a png")
    with pytest.raises(DataError, match="unreadable"):
        run_attack(tmp_path, surrogate, tiny_params())
    assert sorted(p.name for p in data_root.iterdir()) == ["raw"]
    assert not (tmp_path / "metrics" / "noisy.json").exists()


def test_output_outside_the_data_root_is_refused(tmp_path, surrogate):
    raw = build_raw(tmp_path / "data")
    with pytest.raises(DataError, match="inside the data root"):
        attack_stage(params=tiny_params(), surrogate=surrogate, data=raw, out=tmp_path / "elsewhere",
                     metrics=tmp_path / "m.json", data_root=tmp_path / "data")


def test_stage_script_runs_and_reports_bad_input_with_exit_2(tmp_path, surrogate):
    data_root = tmp_path / "data"
    build_raw(data_root)
    params_file = tmp_path / "params.yaml"
    params_file.write_text("device: cpu\nnoise_ratio: 0.1\ndata: {image_size: 32}\n"
                           "attack: {batch_size: 8, success_candidates: 4, image: {steps: 2}}\n")
    common = ["--params", str(params_file), "--surrogate", str(surrogate), "--out", str(data_root / "noisy"),
              "--metrics", str(tmp_path / "attack.json"), "--data-root", str(data_root)]
    ok = CliRunner().invoke(stage_app("attack"), [*common, "--data", str(data_root / "raw")])
    assert ok.exit_code == 0, ok.output
    assert read_json(tmp_path / "attack.json")["pairs_perturbed"] == 2
    missing = CliRunner().invoke(stage_app("attack"), [*common, "--data", str(data_root / "absent")])
    assert missing.exit_code == 2 and "manifest not found" in missing.output
