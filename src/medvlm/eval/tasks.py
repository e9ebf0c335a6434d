"""The three downstream test tasks every method is scored on, and where their data and heads live."""

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
