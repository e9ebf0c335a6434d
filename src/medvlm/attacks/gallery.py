"""A PNG people can look at: a few perturbed pairs as clean | perturbed | amplified difference, with the
caption before and after.

Drawn with Pillow (already a dependency) rather than matplotlib, which the project does not depend on.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from medvlm.io import atomic_file

_TILE = 160  # pixels per image tile (nearest-neighbour upscaling keeps single-level changes visible)
_GAP = 8
_LABEL = 18
_TEXT_WIDTH = 420
_WRAP = 62  # characters per caption line at the default font size
_FONT_SIZE = 13


@dataclass(frozen=True)
class GalleryPair:
    clean: np.ndarray  # uint8 H×W
    perturbed: np.ndarray  # uint8 H×W, as stored
    caption_before: str
    caption_after: str


def amplified_difference(clean: np.ndarray, perturbed: np.ndarray) -> tuple[np.ndarray, int]:
    """The change as a grey image (128 = unchanged) stretched so the largest change is black or white."""
    difference = perturbed.astype(np.int32) - clean.astype(np.int32)
    largest = max(1, int(np.abs(difference).max()))
    gain = 127 // largest
    return (128 + gain * difference).clip(0, 255).astype(np.uint8), gain


def _tile(image: np.ndarray) -> Image.Image:
    return Image.fromarray(image, mode="L").resize((_TILE, _TILE), Image.Resampling.NEAREST)


def write_gallery(pairs: list[GalleryPair], path: Path, title: str) -> None:
    """Write the gallery PNG atomically (a one-line notice when there is nothing to show)."""
    font = ImageFont.load_default(size=_FONT_SIZE)
    row_height = _LABEL + _TILE + _GAP
    width = 3 * (_TILE + _GAP) + _TEXT_WIDTH + _GAP
    canvas = Image.new("L", (width, _LABEL + _GAP + max(1, len(pairs)) * row_height), color=255)
    draw = ImageDraw.Draw(canvas)
    draw.text((_GAP, 2), title if pairs else f"{title}: no pairs perturbed", fill=0, font=font)
    for row, pair in enumerate(pairs):
        top = _LABEL + _GAP + row * row_height
        difference, gain = amplified_difference(pair.clean, pair.perturbed)
        panels = (("clean", pair.clean), ("perturbed (stored)", pair.perturbed), (f"difference x{gain}", difference))
        for column, (label, image) in enumerate(panels):
            left = _GAP + column * (_TILE + _GAP)
            draw.text((left, top), label, fill=0, font=font)
            canvas.paste(_tile(image), (left, top + _LABEL))
        lines = ["caption before:", *textwrap.wrap(pair.caption_before, _WRAP), "",
                 "caption after:", *textwrap.wrap(pair.caption_after, _WRAP)]
        draw.multiline_text((3 * (_TILE + _GAP) + _GAP, top + _LABEL), "\n".join(lines), fill=0, font=font)
    with atomic_file(path) as tmp:
        canvas.save(tmp, format="PNG")
