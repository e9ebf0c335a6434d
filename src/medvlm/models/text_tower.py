"""The CLIP text tower run from token embeddings instead of token ids.

The caption attack needs the gradient of the image–text similarity with respect to the input embeddings of
every token (HotFlip). open_clip's `CLIP.encode_text` only accepts token ids, so `encode_token_embeddings`
repeats its steps (positional embedding, transformer with the causal mask, final LayerNorm, pooling at the
end-of-text token, projection) on given embeddings; the tests check that it equals `encode_text` exactly
on unmodified tokens, which guards these steps against drifting from the pinned open_clip version.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from open_clip.transformer import text_global_pool

from medvlm.models.clip import MedClip


def _text_model(clip: MedClip) -> CLIP:
    model = clip.clip
    if not isinstance(model, CLIP):
        raise TypeError(f"the caption attack needs an open_clip CLIP with its own text transformer; "
                        f"{clip.model_name!r} builds a {type(model).__name__}")
    return model


def token_embeddings(clip: MedClip, tokens: torch.Tensor) -> torch.Tensor:
    """Input embeddings N×L×W of token ids N×L (the lookup `encode_text` starts with)."""
    model = _text_model(clip)
    return model.token_embedding(tokens).to(model.transformer.get_cast_dtype())


def token_embedding_table(clip: MedClip) -> torch.Tensor:
    """The vocabulary's input embeddings V×W (detached)."""
    return _text_model(clip).token_embedding.weight.detach()


def encode_token_embeddings(clip: MedClip, embeddings: torch.Tensor, tokens: torch.Tensor,
                            normalize: bool = True) -> torch.Tensor:
    """Text embeddings of input embeddings N×L×W; `tokens` (N×L ids) only locate the pooled token."""
    model = _text_model(clip)
    cast_dtype = model.transformer.get_cast_dtype()
    x = embeddings.to(cast_dtype) + model.positional_embedding.to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask)
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    projection = model.text_projection
    if projection is not None:
        x = projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection
    return F.normalize(x, dim=-1) if normalize else x
