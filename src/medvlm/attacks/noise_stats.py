"""What the attack stage reports, measured on what it stored (reloaded PNGs, written captions).

Per perturbed pair: the image–caption cosine of the clean pair (`similarity_before`), of the stored pair
(`similarity_after`), of the stored image with the clean caption (`image_similarity_after`) and of the
clean image with the stored caption (`caption_similarity_after`); whether the own caption is the best
match among a fixed set of other captions, before and after (attack success = no longer the best);
L∞ and L2 of the image change; words changed in the caption.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from medvlm.attacks.noisy_set import NoiseSpec



def _scores(images: torch.Tensor, own: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine to the own caption, and whether it beats every candidate caption (top-1)."""
    own_similarity = (images * own).sum(dim=-1)
    best_other = torch.einsum("nd,nkd->nk", images, candidates).amax(dim=-1)
    return own_similarity, own_similarity > best_other


def measure_batch(*, clean_images: torch.Tensor, stored_images: torch.Tensor, original: torch.Tensor,
                  stored: torch.Tensor, clean_captions: torch.Tensor, stored_captions: torch.Tensor,
                  candidates: torch.Tensor, words_changed: torch.Tensor,
                  targets: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Per-pair statistics of one batch.

    `clean_images`/`stored_images` and `clean_captions`/`stored_captions` are normalised embeddings N×D;
    `original`/`stored` the uint8 pixels N×H×W; `candidates` the other captions' embeddings N×K×D.
    """
    difference = stored.to(torch.float32) - original.to(torch.float32)
    measured = dict(zip(("similarity_before", "top1_before"), _scores(clean_images, clean_captions, candidates)))
    measured.update(zip(("similarity_after", "top1_after"), _scores(stored_images, stored_captions, candidates)))
    measured["image_similarity_after"] = (stored_images * clean_captions).sum(dim=-1)
    measured["caption_similarity_after"] = (clean_images * stored_captions).sum(dim=-1)
    measured["linf_255"] = difference.abs().amax(dim=(1, 2))
    measured["l2"] = (difference / 255.0).flatten(1).norm(dim=1)
    measured["words_changed"] = words_changed
    if targets is not None:
        measured["target_similarity_before"] = (clean_images * targets).sum(dim=-1)
        measured["target_similarity_after"] = (stored_images * targets).sum(dim=-1)
    return {key: values.to(torch.float64).cpu() for key, values in measured.items()}  # float64: exact means


def summarise(measured: dict[str, torch.Tensor] | None, *, spec: NoiseSpec, n_train: int,
              pairs_perturbed: int, targeted: bool) -> dict[str, Any]:
    """The metrics JSON: counts always, means over perturbed pairs (null when nothing was perturbed)."""

    def mean(key: str) -> float | None:
        return None if measured is None else float(measured[key].mean())

    def count(key: str) -> int:
        return 0 if measured is None else int((measured[key] > 0).sum())

    before, after = mean("similarity_before"), mean("similarity_after")
    top1_after = mean("top1_after")
    summary: dict[str, Any] = {
        "noise_ratio": spec.noise_ratio,
        "noise_type": spec.noise_type,
        "noise_kind": spec.noise_kind,
        "n_train": n_train,
        "pairs_perturbed": pairs_perturbed,
        "image_pairs_perturbed": count("linf_255"),
        "caption_pairs_perturbed": count("words_changed"),
        "objective": spec.attack.image.objective,
        "eps_255": spec.attack.image.eps_255,
        "max_words": spec.attack.caption.max_words,
        "similarity_before": before,
        "similarity_after": after,
        "similarity_drop": None if measured is None else before - after,
        "image_similarity_after": mean("image_similarity_after"),
        "caption_similarity_after": mean("caption_similarity_after"),
        "top1_before": mean("top1_before"),
        "top1_after": top1_after,
        "success_rate": None if measured is None else 1.0 - top1_after,
        "linf_255_mean": mean("linf_255"),
        "l2_mean": mean("l2"),
        "words_changed_mean": mean("words_changed"),
    }
    if targeted:
        summary["target_similarity_before"] = mean("target_similarity_before")
        summary["target_similarity_after"] = mean("target_similarity_after")
    return summary
