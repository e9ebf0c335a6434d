"""A bad params value stops the real `dvc repro` / `dvc exp run` at the `check_params` stage, before DVC has
deleted any other stage's outputs: on a repo with a full cache, every file under data/, models/ and metrics/
is unchanged afterwards, and the message names the key."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from e2e_repo import copy_of, edit_params, env, run, stages_run

pytestmark = pytest.mark.e2e

BAD = [  # (overrides, what the message must name)
    ({"noise_ratio": 1.5}, "noise_ratio: Input should be less than 1"),
    ({"noise_type": "audio"}, "noise_type: Input should be"),
    ({"seed": -1}, "seed: Input should be greater than or equal to 0"),
    ({"pretrain": {"epochs": "many"}}, "pretrain.epochs: Input should be a valid integer"),
    ({"data": {"image_size": 8}}, "data.image_size: Input should be greater than or equal to 16"),
    ({"model": {"name": "medvlm-huge"}}, "model.name: unknown open_clip model config 'medvlm-huge'"),
    ({"attack": {"image": {"steps": 0}}}, "attack.image.steps: Input should be greater than or equal to 1"),
    ({"features": {"batch_size": 0}}, "features.batch_size: Input should be greater than or equal to 1"),
    ({"heads": {"methods": ["lp", "svm"]}}, "heads.methods: unknown head method(s) ['svm']"),
    ({"heads": {"ran": {"w_adv": -1}}}, "heads.ran.w_adv: Input should be greater than or equal to 0"),
    ({"evaluate": {"robust": {"main_eps_255": 3}}}, "main_eps_255 must be one of eps_255"),
]
WATCHED = ("data", "models", "metrics")


def snapshot(repo: Path) -> dict[str, str]:
    return {str(path.relative_to(repo)): hashlib.md5(path.read_bytes()).hexdigest()
            for folder in WATCHED for path in sorted((repo / folder).rglob("*")) if path.is_file()}


def failed(repo: Path, *args: str) -> str:
    result = subprocess.run(args, cwd=repo, env=env(), capture_output=True, text=True)
    output = result.stdout + result.stderr
    assert result.returncode != 0, f"{' '.join(args)} succeeded:\n{output}"
    return output


def test_bad_params_stop_the_run_before_any_output_is_removed(pipeline_repo, tmp_path):
    repo = copy_of(pipeline_repo, tmp_path / "repo")
    before = snapshot(repo)
    assert {"data/raw/images/pretrain.safetensors", "data/noisy/images.safetensors",  # all there to lose
            "models/heads/lp/cls_id.safetensors", "data/features/cls_id_train.safetensors",
            "metrics/evaluate.json"} <= set(before)
    for overrides, message in BAD:
        run(repo, "git", "checkout", "-q", "--", "params.yaml")
        edit_params(repo, overrides)
        output = failed(repo, "dvc", "repro")
        assert message in output, output
        assert stages_run(output) == {"check_params"}, output
        assert snapshot(repo) == before, f"{overrides}: outputs changed"

    run(repo, "git", "checkout", "-q", "--", "params.yaml")
    output = failed(repo, "dvc", "exp", "run", "-S", "noise_ratio=1.5")
    assert "noise_ratio: Input should be less than 1" in output and snapshot(repo) == before

    # Back to good params: at most the check runs again (DVC may restore its marker from the run cache), and
    # the marker is the same bytes, so nothing else re-runs.
    run(repo, "git", "checkout", "-q", "--", "params.yaml")
    assert stages_run(run(repo, "dvc", "repro")) <= {"check_params"}
    assert (repo / "checks" / "params.ok").is_file() and snapshot(repo) == before
