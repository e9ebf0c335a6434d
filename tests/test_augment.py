"""The augmented training views: laterality kept (no flips), seeded per image, deterministic."""

from __future__ import annotations

import pytest
import torch

from medvlm.data.augment import ViewAugmentation
from medvlm.params import AugmentParams

SIZE = 32


def lateralised_blob(column: int) -> torch.Tensor:
    """1×1×H×W pixels in [0, 1]: dark background, a bright 6×6 blob centred on `column`."""
    image = torch.zeros(1, 1, SIZE, SIZE)
    image[..., SIZE // 2 - 3:SIZE // 2 + 3, column - 3:column + 3] = 1.0
    return image


def bright_column(pixels: torch.Tensor) -> float:
    """Mean column of the pixels brighter than half the maximum (the blob, whatever the contrast change)."""
    mask = (pixels[0] > 0.5 * pixels.max()).float()
    return float((mask * torch.arange(SIZE)).sum() / mask.sum())


STRONGER = AugmentParams(crop_scale_min=0.7, crop_ratio_max=1.2, degrees=15.0, brightness=0.5, contrast=0.5)


@pytest.mark.parametrize("settings", [AugmentParams(), STRONGER], ids=["defaults", "stronger"])
def test_a_lateralised_finding_stays_on_its_side(settings):
    for column, on_left in ((9, True), (SIZE - 9, False)):
        image = lateralised_blob(column)
        paths = [f"img{i}.png" for i in range(40)]
        for view in (1, 2):
            views = ViewAugmentation(settings, seed=0, view=view)(image.expand(40, -1, -1, -1), paths)
            columns = torch.tensor([bright_column(v) for v in views])
            if on_left:
                assert (columns < SIZE / 2 - 2).all(), columns
            else:
                assert (columns > SIZE / 2 + 2).all(), columns
            # ...and the views really are random: positions and intensities vary from image to image.
            assert columns.std() > 0.1 and views.amax(dim=(1, 2, 3)).std() > 0


def test_views_are_seeded_per_image_and_view():
    torch.manual_seed(0)
    pixels = torch.rand(6, 1, SIZE, SIZE)
    paths = [f"raw/images/{i}.png" for i in range(6)]
    first = ViewAugmentation(AugmentParams(), seed=3, view=1)
    views = first(pixels, paths)
    assert views.shape == pixels.shape and views.min() >= 0 and views.max() <= 1
    assert torch.equal(views, ViewAugmentation(AugmentParams(), seed=3, view=1)(pixels, paths))
    # Independent of batch composition and order: each image's draw depends on (seed, view, path) only.
    order = [4, 1, 5]
    torch.testing.assert_close(first(pixels[order], [paths[i] for i in order]), views[order], rtol=0, atol=0)
    for other in (ViewAugmentation(AugmentParams(), seed=3, view=2), ViewAugmentation(AugmentParams(), seed=4, view=1)):
        assert not torch.allclose(other(pixels, paths), views)
    assert not torch.allclose(views, pixels)


def test_augmenting_leaves_the_global_generator_alone():
    torch.manual_seed(0)
    pixels = torch.rand(2, 1, SIZE, SIZE)
    next_draw = torch.rand(3)
    torch.manual_seed(0)
    pixels = torch.rand(2, 1, SIZE, SIZE)
    ViewAugmentation(AugmentParams(), seed=0, view=1)(pixels, ["a", "b"])
    assert torch.equal(torch.rand(3), next_draw)


def test_augmentation_refuses_mismatched_inputs():
    with pytest.raises(ValueError, match="N×C×H×W pixels and N paths"):
        ViewAugmentation(AugmentParams(), seed=0, view=1)(torch.rand(2, 1, SIZE, SIZE), ["only one"])
