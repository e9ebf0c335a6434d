"""The attack stage with caption, image+caption and random noise: storage, selection, stats, gallery."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from attack_helpers import run_attack, tiny_params
from attack_helpers import surrogate  # noqa: F401  (module-scoped fixture)
from medvlm.attacks.gallery import amplified_difference
from medvlm.attacks.keywords import NEGATION_WORDS, words, words_changed
from medvlm.data.image_packs import read_pack
from medvlm.data.manifest import load_images, read_manifest


def outputs(data_root, name):
    clean = read_manifest(data_root / "raw", "pretrain", data_root)
    noisy = read_manifest(data_root / name, "pretrain", data_root)
    return clean, noisy


@pytest.mark.parametrize("kind", ["adversarial", "random"])
def test_caption_noise_changes_captions_only_within_budget(tmp_path, surrogate, kind):
    stats, data_root, _ = run_attack(tmp_path, surrogate, tiny_params(noise_type="caption", noise_kind=kind))
    clean, noisy = outputs(data_root, "noisy")
    perturbed = noisy["perturbed"] == 1
    assert (noisy["image"] == clean["image"]).all() and not (data_root / "noisy" / "images.safetensors").exists()
    assert (noisy.loc[~perturbed, "caption"] == clean.loc[~perturbed, "caption"]).all()
    changed = [words_changed(a, b) for a, b in zip(clean.loc[perturbed, "caption"], noisy.loc[perturbed, "caption"])]
    assert changed == [1] * 12  # max_words 1, and every caption has a keyword to change
    for before, after in zip(clean["caption"], noisy["caption"]):
        assert [w for w in words(before) if w in NEGATION_WORDS] == [w for w in words(after) if w in NEGATION_WORDS]
    assert stats["caption_pairs_perturbed"] == 12 and stats["image_pairs_perturbed"] == 0
    assert stats["words_changed_mean"] == 1.0 and stats["linf_255_mean"] == 0.0
    assert stats["similarity_after"] == pytest.approx(stats["caption_similarity_after"])
    assert stats["image_similarity_after"] == pytest.approx(stats["similarity_before"])
    assert "target_similarity_after" not in stats and stats["noise_kind"] == kind


def test_two_words_budget(tmp_path, surrogate):
    stats, data_root, _ = run_attack(tmp_path, surrogate, tiny_params(noise_type="caption", caption={"max_words": 2}))
    clean, noisy = outputs(data_root, "noisy")
    changed = [words_changed(a, b) for a, b in zip(clean["caption"], noisy["caption"])]
    assert max(changed) == 2 and stats["words_changed_mean"] == pytest.approx(sum(changed) / 12)


@pytest.mark.parametrize("objective", ["targeted", "untargeted"])
def test_both_perturbs_image_and_caption_of_the_same_pairs(tmp_path, surrogate, objective):
    params = tiny_params(noise_type="both", image={"objective": objective, "steps": 6})
    stats, data_root, _ = run_attack(tmp_path, surrogate, params)
    clean, noisy = outputs(data_root, "noisy")
    perturbed = noisy["perturbed"] == 1
    assert sorted(noisy.loc[perturbed, "image"]) == sorted(f"noisy/images.safetensors#{i}" for i in range(12))
    assert (noisy.loc[perturbed, "caption"] != clean.loc[perturbed, "caption"]).all()
    before = load_images(data_root, clean.loc[perturbed, "image"].tolist()).int()
    after = load_images(data_root, noisy.loc[perturbed, "image"].tolist()).int()
    assert (after - before).abs().max() <= 2
    assert stats["image_pairs_perturbed"] == stats["caption_pairs_perturbed"] == 12
    if objective == "untargeted":
        # Co-Attack order: the image was attacked against the perturbed caption, lowering that pair further.
        assert stats["similarity_after"] < stats["caption_similarity_after"] < stats["similarity_before"]
    else:
        assert stats["target_similarity_after"] > stats["target_similarity_before"]


@pytest.mark.parametrize("noise_type", ["image", "caption", "both"])
def test_random_and_adversarial_perturb_exactly_the_same_pairs(tmp_path, surrogate, noise_type):
    chosen = {}
    for kind in ("adversarial", "random"):
        params = tiny_params(noise_type=noise_type, noise_kind=kind, noise_ratio=0.25)
        _, data_root, _ = run_attack(tmp_path, surrogate, params, out_name=kind)
        chosen[kind] = set(read_manifest(data_root / kind, "pretrain", data_root).query("perturbed == 1")["id"])
    assert len(chosen["random"]) == 6 and chosen["random"] == chosen["adversarial"]


def test_random_images_are_stored_in_the_ball_on_the_grid(tmp_path, surrogate):
    stats, data_root, _ = run_attack(tmp_path, surrogate, tiny_params(noise_kind="random", image={"eps_255": 2.5}))
    clean, noisy = outputs(data_root, "noisy")
    perturbed = noisy["perturbed"] == 1
    before = load_images(data_root, clean.loc[perturbed, "image"].tolist()).int()
    after = load_images(data_root, noisy.loc[perturbed, "image"].tolist()).int()
    assert (after - before).abs().max() == 2 and stats["linf_255_mean"] == 2.0
    assert stats["image_pairs_perturbed"] == 12 and stats["caption_pairs_perturbed"] == 0


@pytest.mark.parametrize(("noise_type", "drop_key"), [("image", "image_similarity_after"),
                                                      ("caption", "caption_similarity_after")])
def test_adversarial_noise_lowers_similarity_far_more_than_random(tmp_path, surrogate, noise_type, drop_key):
    drops = {}
    for kind in ("adversarial", "random"):
        params = tiny_params(noise_type=noise_type, noise_kind=kind, image={"objective": "untargeted", "steps": 10})
        stats, _, _ = run_attack(tmp_path, surrogate, params, out_name=kind)
        drops[kind] = stats["similarity_before"] - stats[drop_key]
    assert drops["adversarial"] > 0 and drops["adversarial"] > 3 * abs(drops["random"])


@pytest.mark.parametrize("kind", ["adversarial", "random"])
def test_same_seed_same_multimodal_output(tmp_path, surrogate, kind):
    runs = [run_attack(tmp_path, surrogate, tiny_params(noise_type="both", noise_kind=kind), out_name=name)
            for name in ("a", "b")]
    reseeded, data_root, _ = run_attack(tmp_path, surrogate, tiny_params(noise_type="both", noise_kind=kind, seed=1),
                                        out_name="c")
    assert runs[0][0] == runs[1][0] and reseeded != runs[0][0]
    manifests = {name: read_manifest(data_root / name, "pretrain", data_root) for name in ("a", "b")}
    assert manifests["a"].drop(columns="image").equals(manifests["b"].drop(columns="image"))
    assert (manifests["a"]["image"].str.replace(r"^a/", "b/", regex=True) == manifests["b"]["image"]).all()
    images = {name: read_pack(data_root / name / "images.safetensors") for name in ("a", "b")}
    assert np.array_equal(images["a"], images["b"])
    assert (data_root / "a" / "gallery.png").read_bytes() == (data_root / "b" / "gallery.png").read_bytes()


def test_gallery_shows_the_first_pairs(tmp_path, surrogate):
    run_attack(tmp_path, surrogate, tiny_params(noise_type="both", attack={"gallery_pairs": 3}), out_name="three")
    _, data_root, _ = run_attack(tmp_path, surrogate, tiny_params(noise_ratio=0.0), out_name="none")
    with Image.open(data_root / "three" / "gallery.png") as three:
        assert three.format == "PNG" and three.height > 3 * 160
        grey = np.asarray(three.convert("L"))
    with Image.open(data_root / "none" / "gallery.png") as empty:
        assert empty.height < three.height / 2
    assert grey.min() < 50 and grey.max() == 255  # drawn on, not blank


def test_amplified_difference_maps_the_largest_change_to_the_range():
    clean = np.full((4, 4), 100, np.uint8)
    perturbed = clean.copy()
    perturbed[0, 0], perturbed[1, 1] = 102, 99
    image, gain = amplified_difference(clean, perturbed)
    assert gain == 63 and image[0, 0] == 254 and image[1, 1] == 65 and image[2, 2] == 128

