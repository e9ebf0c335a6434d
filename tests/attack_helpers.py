"""Shared set-up of the attack tests: a tiny pretrain set with keyword-rich captions and a tiny surrogate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medvlm.pipeline.attack import attack_stage
from medvlm.data.manifest import save_png, to_pixels, write_manifest
from medvlm.io import write_json
from medvlm.models.clip import load_clip
from medvlm.params import parse_params

SIZE = 32
FINDINGS = ("normal", "effusion", "nodule")
_TEMPLATES = {
    "normal": "The lungs are clear. No pleural effusion or pneumothorax. View {view}.",
    "effusion": "{size} {side} pleural effusion. No pneumothorax. View {view}.",
    "nodule": "A {size} nodule in the {side} upper zone. There is no pleural effusion. View {view}.",
}
NEGATIONS_IN_CAPTIONS = ("no", "clear")


def caption(finding: str, i: int) -> str:
    """A report-style caption whose side and size vary with `i` (captions repeat, as real ones do)."""
    size = ("Small", "Moderate", "Large")[i % 3] if finding == "effusion" else ("small", "large")[i % 2]
    return _TEMPLATES[finding].format(size=size, side=("left", "right")[(i // 3) % 2], view=i % 4)


def tiny_image(finding: str, rng: np.random.Generator) -> np.ndarray:
    """A 32-px grey image whose bright blob depends on the finding; corners saturate to test clamping."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    centre = {"normal": (16, 16), "effusion": (26, 8), "nodule": (8, 24)}[finding]
    blob = 120 * np.exp(-((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / 30.0)
    image = 60 + 2 * xx + blob + rng.normal(0, 8, (SIZE, SIZE))
    image[:3, :3], image[-3:, -3:] = 0, 255
    return np.clip(image, 0, 255).astype(np.uint8)


def build_raw(data_root: Path, *, n_train: int = 24, n_val: int = 6, with_finding: bool = True) -> Path:
    """A tiny `raw/` folder: pretrain manifest (train + val), PNGs and meta.json, as download writes it."""
    rng = np.random.default_rng(7)
    raw, rows = data_root / "raw", []
    for i in range(n_train + n_val):
        finding, image_id = FINDINGS[i % len(FINDINGS)], f"{i:06d}"
        save_png(tiny_image(finding, rng), raw / "images" / "pretrain" / f"{image_id}.png")
        rows.append({"id": image_id, "image": f"raw/images/pretrain/{image_id}.png", "caption": caption(finding, i),
                     "split": "train" if i < n_train else "val", "finding": finding})
    frame = pd.DataFrame(rows)
    write_manifest(frame if with_finding else frame.drop(columns="finding"), raw, "pretrain")
    write_json(raw / "meta.json", {"source": "test", "image_size": SIZE, "labels": list(FINDINGS)})
    return raw


def tiny_params(**overrides):
    """Tiny attack params; `image=` and `caption=` update those attack subsections, other keys the top level."""
    raw = {"seed": 0, "device": "cpu", "noise_ratio": 0.5, "data": {"image_size": SIZE},
           "attack": {"batch_size": 5, "success_candidates": 4, "image": {"steps": 4}, "caption": {}}}
    for key, value in overrides.items():
        if key in ("image", "caption"):
            raw["attack"][key].update(value)
        elif key == "attack":
            raw["attack"].update(value)
        else:
            raw[key] = value
    return parse_params(raw)


@pytest.fixture(scope="module")
def surrogate(tiny_clip_dir) -> Path:
    assert SIZE == 32  # the shared tiny CLIP's image size
    return tiny_clip_dir


@pytest.fixture(scope="module")
def clip(surrogate):
    return load_clip(surrogate)


def run_attack(tmp_path: Path, surrogate: Path, params, out_name: str = "noisy", **build) -> tuple[dict, Path, Path]:
    data_root = tmp_path / "data"
    raw = data_root / "raw" if (data_root / "raw").exists() else build_raw(data_root, **build)
    metrics = tmp_path / "metrics" / f"{out_name}.json"
    stats = attack_stage(params=params, surrogate=surrogate, data=raw, out=data_root / out_name, metrics=metrics,
                         data_root=data_root)
    return stats, data_root, metrics


def batch_of_images(n: int = 6) -> torch.Tensor:
    rng = np.random.default_rng(3)
    return to_pixels(torch.from_numpy(np.stack([tiny_image(FINDINGS[i % 3], rng) for i in range(n)])))
