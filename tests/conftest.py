"""Shared test set-up."""

from pathlib import Path

import pytest
import torch

from medvlm.models.clip import create_clip, save_clip

# The tests use tiny models whose ops are too small to split across threads; on a 2-core CI machine a second
# intra-op thread only adds spinning (measured 3-5x slower under load).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """A randomly initialised tiny CLIP (32 px) saved with save_clip, shared by the tests that only read it."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_clip")
    save_clip(create_clip("medvlm-tiny-vit", image_size=32), folder)
    return folder
