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


@pytest.fixture(scope="session")
def pipeline_repo(tmp_path_factory) -> Path:
    """A temporary git+DVC copy of this repo with tiny params after one full `dvc repro`, committed on `main`.
    Shared by the end-to-end tests, which read it only: a test that changes anything works on `copy_of` it."""
    from e2e_repo import ALL_STAGES, TINY, new_repo, run, stages_run  # noqa: PLC0415

    repo = new_repo(tmp_path_factory.mktemp("e2e") / "repo", TINY)
    output = run(repo, "dvc", "repro")
    assert stages_run(output) == ALL_STAGES, output
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-q", "-m", "baseline run")
    return repo


EXPERIMENTS = {"ratio-half": "noise_ratio=0.5", "caption-noise": "noise_type=caption", "random-noise": "noise_kind=random"}
"""Experiments on top of the tiny baseline, by name: each changes one param."""


@pytest.fixture(scope="session")
def experiments_repo(pipeline_repo, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A copy of `pipeline_repo` with the EXPERIMENTS run by `dvc exp run`, and each run's output."""
    from e2e_repo import copy_of, run  # noqa: PLC0415

    repo = copy_of(pipeline_repo, tmp_path_factory.mktemp("experiments") / "repo")
    outputs = {}
    for name, setting in EXPERIMENTS.items():
        run(repo, "git", "checkout", "-q", "--", ".")  # each experiment starts from the committed params
        outputs[name] = run(repo, "dvc", "exp", "run", "-S", setting, "-n", name)
    return repo, outputs
