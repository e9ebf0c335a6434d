"""Paired image-text retrieval recall: pair i's image and text are each other's only match.

torchmetrics' RetrievalRecall would need the full N×N score matrix in memory; this counts ranks chunk by
chunk instead, so 10k×10k pairs never materialise more than `chunk_size`×N scores at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

DEFAULT_KS = (1, 5)


def _recall_one_direction(
    queries: torch.Tensor, candidates: torch.Tensor, ks: Sequence[int], chunk_size: int
) -> dict[int, float]:
    """Expected fraction of queries whose own candidate (same row index) is among the k most similar."""
    n = queries.shape[0]
    hits = dict.fromkeys(ks, 0.0)
    for start in range(0, n, chunk_size):
        scores = queries[start:start + chunk_size] @ candidates.T
        rows = torch.arange(scores.shape[0])
        own = scores[rows, rows + start].unsqueeze(1)
        above = (scores > own).sum(dim=1)
        tied = (scores == own).sum(dim=1) - 1
        # Ties (duplicate captions, a collapsed model) are broken uniformly at random, in expectation:
        # the match lands in the top k with probability (k - above) / (tied + 1), clipped to [0, 1].
        # So identical embeddings score exactly chance, neither 0 nor a perfect recall.
        for k in ks:
            hits[k] += float(((k - above) / (tied + 1)).clamp(0, 1).sum())
    return {k: hits[k] / n for k in ks}


def retrieval_recall(
    image_embeddings: torch.Tensor,
    text_embeddings: torch.Tensor,
    ks: Sequence[int] = DEFAULT_KS,
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Image->text and text->image recall@k for L2-normalised N×D embeddings whose rows are paired.

    Returns {"i2t_r1": ..., "i2t_r5": ..., "t2i_r1": ..., "t2i_r5": ...} for the default ks.
    """
    if image_embeddings.ndim != 2 or image_embeddings.shape != text_embeddings.shape:
        raise ValueError(
            f"expected two N×D embedding matrices of equal shape, got {tuple(image_embeddings.shape)} "
            f"and {tuple(text_embeddings.shape)}"
        )
    if image_embeddings.shape[0] == 0:
        raise ValueError("no embeddings to rank")
    if any(k < 1 for k in ks) or chunk_size < 1:
        raise ValueError(f"ks and chunk_size must be positive, got ks={list(ks)}, chunk_size={chunk_size}")
    images = image_embeddings.detach().float().cpu()
    texts = text_embeddings.detach().float().cpu()
    i2t = _recall_one_direction(images, texts, ks, chunk_size)
    t2i = _recall_one_direction(texts, images, ks, chunk_size)
    return {**{f"i2t_r{k}": i2t[k] for k in ks}, **{f"t2i_r{k}": t2i[k] for k in ks}}


def chance_recall(n: int, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Recall@k of a random ranking of n candidates: k/n (capped at 1)."""
    if n < 1:
        raise ValueError(f"chance recall needs at least one candidate, got n={n}")
    return {f"r{k}": min(k / n, 1.0) for k in ks}
