"""The adversarial caption attack: keyword substitutions chosen by the surrogate's own text tower.

HotFlip-style, per greedy round (at most `max_words` rounds, one word each):
1. one forward/backward pass of the whole batch gives g = ∂ cos(image, text) / ∂ e, the gradient with
   respect to every token's input embedding;
2. for every changeable keyword occurrence w (token span S) and every allowed substitute c, the first-order
   estimate of the similarity change is (ē_c − ē_w) · Σ_{t∈S} g_t, with ē the mean input embedding of a
   word's BPE tokens (exactly HotFlip for one-token words; a word-level estimate for longer ones);
3. the `candidates` lowest estimates per caption (over all its positions and substitutes) are written out
   as captions, re-tokenised (so BPE length changes are exact) and scored exactly in one batch;
4. the lowest-similarity candidate is kept, even if it is not lower than the current caption: the budget is
   always spent, as the paper's rewrites always change the keywords.
Words changed in an earlier round are not changed again. Only the string building loops over captions.
"""

from __future__ import annotations

import torch

from medvlm.attacks.keywords import Occurrence, SubstitutionVocabulary, occurrences, substitute
from medvlm.models.clip import MedClip
from medvlm.models.text_tower import encode_token_embeddings, token_embedding_table, token_embeddings

_TEXT_CHUNK = 512  # captions per exact-scoring forward pass


@torch.no_grad()
def word_embeddings(clip: MedClip, words: tuple[str, ...]) -> torch.Tensor:
    """Mean input embedding of each word's BPE tokens, len(words)×W."""
    table = token_embedding_table(clip)
    ids = [clip.tokenizer.encode(word) for word in words]
    width = max(len(row) for row in ids)
    padded = torch.tensor([row + [0] * (width - len(row)) for row in ids], device=table.device)
    present = torch.tensor([[1.0] * len(row) + [0.0] * (width - len(row)) for row in ids], device=table.device)
    return (table[padded] * present[..., None]).sum(1) / present.sum(1, keepdim=True)


def word_token_span(clip: MedClip, caption: str, occurrence: Occurrence) -> tuple[int, int]:
    """Token positions [start, end) of a word in the tokenised caption (position 0 is start-of-text).

    The CLIP tokenizer splits text into letter runs before BPE, so a prefix ending at a word boundary
    encodes to exactly the tokens that precede the word.
    """
    start = 1 + len(clip.tokenizer.encode(caption[: occurrence.start]))
    return start, start + len(clip.tokenizer.encode(caption[occurrence.start : occurrence.end]))


@torch.no_grad()
def _exact_similarity(clip: MedClip, texts: list[str], image_embeddings: torch.Tensor) -> torch.Tensor:
    embedded = torch.cat([clip.encode_texts(texts[i : i + _TEXT_CHUNK]) for i in range(0, len(texts), _TEXT_CHUNK)])
    return (embedded * image_embeddings).sum(dim=-1)


def _similarity_gradient(clip: MedClip, captions: list[str], image_embeddings: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Input embeddings N×L×W of the captions and ∂ cos(image, text) / ∂ embeddings (model untouched)."""
    tokens = clip.tokenize(captions)
    embeddings = token_embeddings(clip, tokens).detach().requires_grad_(True)
    with torch.enable_grad():
        similarity = (encode_token_embeddings(clip, embeddings, tokens) * image_embeddings).sum(dim=-1)
        (gradient,) = torch.autograd.grad(similarity.sum(), embeddings)
    return embeddings.detach(), gradient


def hotflip_captions(clip: MedClip, captions: list[str], image_embeddings: torch.Tensor,
                     vocabulary: SubstitutionVocabulary, substitute_embeddings: torch.Tensor, *, max_words: int,
                     candidates: int) -> list[str]:
    """Captions with at most `max_words` keyword words substituted to lower their similarity to the images.

    `image_embeddings` (N×D, normalised) are the images each caption is paired with; `substitute_embeddings`
    is `word_embeddings(clip, vocabulary.substitutes)`.
    """
    captions = list(captions)
    image_embeddings = image_embeddings.detach()
    option_mask = torch.from_numpy(vocabulary.option_mask()).to(image_embeddings.device)
    limit = clip.context_length - 1  # the last position holds end-of-text when a caption is truncated
    changed: list[set[int]] = [set() for _ in captions]
    for _ in range(max_words):
        found: list[list[tuple[Occurrence, int, int]]] = []
        for caption, done in zip(captions, changed):
            spans = [(o, *word_token_span(clip, caption, o)) for o in occurrences(caption, vocabulary, exclude=done)]
            found.append([span for span in spans if span[2] <= limit])
        owner = [n for n, spans in enumerate(found) for _ in spans]
        if not owner:
            break
        flat = [span for spans in found for span in spans]
        slot = [k for spans in found for k in range(len(spans))]
        device = image_embeddings.device
        owner_t, slot_t = torch.tensor(owner, device=device), torch.tensor(slot, device=device)
        rows = torch.tensor([o.row for o, _, _ in flat], device=device)
        starts = torch.tensor([s for _, s, _ in flat], device=device)
        ends = torch.tensor([e for _, _, e in flat], device=device)

        embeddings, gradient = _similarity_gradient(clip, captions, image_embeddings)
        positions = torch.arange(embeddings.shape[1], device=device)
        span = ((positions >= starts[:, None]) & (positions < ends[:, None])).to(embeddings.dtype)  # J×L
        span_gradient = torch.einsum("jl,jlw->jw", span, gradient[owner_t])
        current = torch.einsum("jl,jlw->jw", span, embeddings[owner_t]) / span.sum(1, keepdim=True)
        estimate = span_gradient @ substitute_embeddings.T - (span_gradient * current).sum(-1, keepdim=True)
        estimate = estimate.masked_fill(~option_mask[rows], torch.inf)  # J×V

        # Best `candidates` per occurrence, then per caption over all its occurrences.
        per_word = min(candidates, estimate.shape[1])
        word_best, word_choice = estimate.topk(per_word, dim=1, largest=False)
        table = torch.full((len(captions), max(slot) + 1, per_word), torch.inf, device=device)
        table[owner_t, slot_t] = word_best
        flat_table = table.flatten(1)
        best, pick = flat_table.topk(min(candidates, flat_table.shape[1]), dim=1, largest=False)
        occurrence_index = torch.full((len(captions), max(slot) + 1), -1, dtype=torch.long, device=device)
        occurrence_index[owner_t, slot_t] = torch.arange(len(flat), device=device)
        chosen_occurrence = occurrence_index.gather(1, pick // per_word)
        chosen_substitute = word_choice[chosen_occurrence.clamp(min=0), pick % per_word].tolist()
        chosen_occurrence = chosen_occurrence.tolist()

        texts, text_owner, text_column, edits = [], [], [], []
        for n, column in torch.isfinite(best).nonzero().tolist():  # string building only
            occurrence = flat[chosen_occurrence[n][column]][0]
            replacement = vocabulary.substitutes[chosen_substitute[n][column]]
            texts.append(substitute(captions[n], occurrence, replacement))
            text_owner.append(n)
            text_column.append(column)
            edits.append(occurrence.ordinal)
        owners_t = torch.tensor(text_owner, device=device)
        exact = torch.full(best.shape, torch.inf, device=device)
        exact[owners_t, torch.tensor(text_column, device=device)] = _exact_similarity(clip, texts,
                                                                                    image_embeddings[owners_t])
        keep = exact.argmin(dim=1)
        lookup = {(n, c): k for k, (n, c) in enumerate(zip(text_owner, text_column))}
        for n in sorted(set(text_owner)):
            k = lookup[(n, int(keep[n]))]
            captions[n] = texts[k]
            changed[n].add(edits[k])
    return captions
