"""Laterality-preserving augmentations for the augmented training views the features stage caches.

A view is a random resized crop (mild: most of the image kept, aspect ratio near 1), a small rotation
and a brightness/contrast change, with the ranges of params `features.augment`. There is no flip of
any kind: the side of a finding is part of the label, of the captions and of VQA answers, so a mirrored
radiograph would be a different case.

Each image's draw depends only on (seed, view, image path): it is seeded per image, so the views do not
change with the batch size, the order of the manifest or whatever else used the random generator.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import torch
from torchvision.transforms import v2

from medvlm.params import AugmentParams
from medvlm.runtime import single_intra_op_thread


class ViewAugmentation:
    """`augmentation(pixels, paths)`: view number `view` of each image (float N×C×H×W in [0, 1])."""

    def __init__(self, settings: AugmentParams, *, seed: int, view: int):
        self.settings, self.seed, self.view = settings, seed, view

    def _transform(self, size: tuple[int, int]) -> v2.Compose:
        s = self.settings
        return v2.Compose([
            v2.RandomResizedCrop(size, scale=(s.crop_scale_min, 1.0), ratio=(1 / s.crop_ratio_max, s.crop_ratio_max),
                                 antialias=True),
            v2.RandomRotation(s.degrees),
            v2.ColorJitter(brightness=s.brightness, contrast=s.contrast),
        ])

    def image_seed(self, path: str) -> int:
        return zlib.crc32(f"{self.seed}/view{self.view}/{path}".encode())

    def __call__(self, pixels: torch.Tensor, paths: Sequence[str]) -> torch.Tensor:
        if pixels.ndim != 4 or len(paths) != pixels.shape[0]:
            raise ValueError(f"expected N×C×H×W pixels and N paths, got {tuple(pixels.shape)} and {len(paths)}")
        transform = self._transform(tuple(pixels.shape[-2:]))
        views = []
        # torchvision draws from the global CPU generator: fork it so seeding per image leaves no trace outside.
        # Only that generator is seeded: torch.manual_seed would also queue a CUDA reseed (1.2 ms per image, most
        # of this loop's time, in a CUDA build) that the CPU-only fork would not undo.
        with torch.random.fork_rng(devices=[]), single_intra_op_thread():
            for image, path in zip(pixels, paths):
                torch.default_generator.manual_seed(self.image_seed(path))
                views.append(transform(image))
        return torch.stack(views)
