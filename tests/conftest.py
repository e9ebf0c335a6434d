"""Shared test set-up."""

import torch

# The tests use tiny models whose ops are too small to split across threads; on a 2-core CI machine a second
# intra-op thread only adds spinning (measured 3-5x slower under load).
torch.set_num_threads(1)
