"""The CLIP text tower run from token embeddings instead of token ids, on the used part of the context.

The caption attack needs the gradient of the image–text similarity with respect to the input embeddings of
every token (HotFlip). open_clip's `CLIP.encode_text` only accepts token ids, so `encode_token_embeddings`
repeats its steps (positional embedding, transformer with the causal mask, final LayerNorm, pooling at the
end-of-text token, projection) on given embeddings. It also cuts the context after the batch's last
end-of-text token, which `encode_text` never does: under the causal mask those positions cannot change
the pooled output, and cutting them saves about 30 % of the text compute on our captions. `MedClip`
encodes every caption through here. The tests check that it equals `encode_text` in values and gradients,
which guards these steps against drifting from the open_clip version installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from open_clip.transformer import text_global_pool

if TYPE_CHECKING:
    from medvlm.models.clip import MedClip


def runs_from_embeddings(clip: MedClip) -> bool:
    """True for open_clip's CLIP class (its own text transformer), the model these functions handle."""
    return isinstance(clip.clip, CLIP)


def _text_model(clip: MedClip) -> CLIP:
    if not runs_from_embeddings(clip):
        raise TypeError(f"the caption attack needs an open_clip CLIP with its own text transformer; "
                        f"{clip.model_name!r} builds a {type(clip.clip).__name__}")
    return clip.clip


def token_embeddings(clip: MedClip, tokens: torch.Tensor) -> torch.Tensor:
    """Input embeddings N×L×W of token ids N×L (the lookup `encode_text` starts with)."""
    model = _text_model(clip)
    return model.token_embedding(tokens).to(model.transformer.get_cast_dtype())


def token_embedding_table(clip: MedClip) -> torch.Tensor:
    """The vocabulary's input embeddings V×W (detached)."""
    return _text_model(clip).token_embedding.weight.detach()


def used_context(model: CLIP, tokens: torch.Tensor) -> int:
    """Positions that can change the pooled output: up to the batch's last end-of-text token when the mask is
    causal and the end-of-text token (the largest id) is pooled; otherwise the whole context."""
    if model.text_pool_type == "argmax" and model.attn_mask is not None:
        return int(tokens.argmax(dim=-1).max()) + 1
    return tokens.shape[1]


def encode_token_embeddings(clip: MedClip, embeddings: torch.Tensor, tokens: torch.Tensor,
                            normalize: bool = True) -> torch.Tensor:
    """Text embeddings of input embeddings N×L×W; `tokens` (N×L ids) only locate the pooled token."""
    model = _text_model(clip)
    length = used_context(model, tokens)
    embeddings, tokens = embeddings[:, :length], tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = embeddings.to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
    attn_mask = None if model.attn_mask is None else model.attn_mask[:length, :length]
    x = model.transformer(x, attn_mask=attn_mask)
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    projection = model.text_projection
    if projection is not None:
        x = projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection
    return F.normalize(x, dim=-1) if normalize else x
