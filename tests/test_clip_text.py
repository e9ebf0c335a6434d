"""The text tower run from token embeddings (models/text_tower.py), which MedClip and the caption attack use,
cuts the context after the batch's last end-of-text token: its embeddings and gradients must equal open_clip's
full-context `encode_text`."""

from __future__ import annotations

import pytest
import torch

from medvlm.models.clip import create_clip
from medvlm.models.text_tower import used_context

CAPTIONS = ["Small left pleural effusion.", "No acute cardiopulmonary abnormality is seen on this view.",
            "Cardiomegaly."]


@pytest.mark.parametrize("model_name", ["medvlm-tiny-rn", "medvlm-tiny-vit"])
def test_trimmed_text_encoding_matches_open_clip_in_values_and_gradients(model_name):
    torch.manual_seed(0)
    clip = create_clip(model_name, image_size=32)
    tokens = clip.tokenize(CAPTIONS)
    used = int(tokens.argmax(dim=-1).max()) + 1
    assert used < tokens.shape[1]  # the test only means something when there is padding to cut

    def embeddings_and_gradients(encode):
        clip.zero_grad(set_to_none=True)
        embeddings = encode(tokens)
        # A loss that weights every embedding dimension differently, so each text parameter gets a gradient
        (embeddings * torch.linspace(-1, 1, embeddings.shape[1])).sum().backward()
        return embeddings.detach(), {name: None if p.grad is None else p.grad.clone()
                                     for name, p in clip.clip.named_parameters()}

    trimmed, trimmed_grads = embeddings_and_gradients(clip.encode_tokens)
    full, full_grads = embeddings_and_gradients(lambda t: clip.clip.encode_text(t, normalize=True))
    torch.testing.assert_close(trimmed, full, rtol=0, atol=1e-5)
    text_grads = [name for name in full_grads if not name.startswith("visual.") and full_grads[name] is not None]
    assert "positional_embedding" in text_grads and "token_embedding.weight" in text_grads
    for name in text_grads:  # equal up to float32 rounding, relative to each gradient's scale
        scale = float(full_grads[name].abs().max())
        assert float((trimmed_grads[name] - full_grads[name]).abs().max()) <= 1e-5 * scale, name
    # the positions after the last end-of-text token get no gradient either way
    assert full_grads["positional_embedding"][used:].abs().max() == 0


def test_a_text_tower_without_a_causal_mask_runs_the_whole_context():
    # Without the causal mask every position sees the padding, so cutting it would change the embedding.
    torch.manual_seed(0)
    clip = create_clip("medvlm-tiny-rn", image_size=32)
    clip.clip.attn_mask = None
    tokens = clip.tokenize(CAPTIONS)
    assert used_context(clip.clip, tokens) == tokens.shape[1]
    with torch.no_grad():
        assert torch.equal(clip.encode_tokens(tokens), clip.clip.encode_text(tokens, normalize=True))
