"""The three downstream test tasks every method is scored on, where their data and heads live, and the metrics
key of an attack radius. Kept free of torch and open_clip, so the report and the plots import it cheaply."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TestTask:
    split: str
    """Cached-feature split (`data/features/<split>.safetensors`)."""
    manifest: str
    """Manifest kind whose `test` split holds the same rows, in the same order (image paths)."""
    head: str
    """Head that scores it; the out-of-domain set is scored with the in-domain head (same label set)."""


TEST_TASKS = {
    "cls_id": TestTask(split="cls_id_test", manifest="cls_id", head="cls_id"),
    "cls_ood": TestTask(split="cls_ood_test", manifest="cls_ood", head="cls_id"),
    "vqa": TestTask(split="vqa_test", manifest="vqa", head="vqa"),
}


def eps_key(eps_255: float) -> str:
    """Metrics key of a radius: 'eps_2', 'eps_0p5' (no dots, which `dvc metrics show` reads as nesting)."""
    return "eps_" + f"{eps_255:g}".replace(".", "p")
