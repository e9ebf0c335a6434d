"""What the end-to-end tests share: a temporary git + DVC copy of this repository with tiny params, the real
`dvc` commands run in it, and copies of a built repo so that no test changes what another one reads."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
# Two of the four methods keep every experiment short (each method adds a finetune and a robustness stage);
# the unit tests cover all four.
METHODS = ("lp", "ran")
TASK_NAMES = ("cls_id", "cls_ood", "vqa")
HEAD_STAGES = {f"finetune@{method}" for method in METHODS}
ROBUSTNESS_STAGES = {f"robustness@{method}" for method in METHODS}
# A changed param re-runs check_params first (it validates before DVC deletes any output), then its stages.
DOWNSTREAM = {"check_params", "attack", "pretrain", "features", *HEAD_STAGES, *ROBUSTNESS_STAGES, "evaluate", "headline"}
ALL_STAGES = {"download", "surrogate", *DOWNSTREAM}
TINY = {
    "noise_ratio": 0.25,
    "device": "cpu",
    "data": {"image_size": 32, "pretrain_train": 64, "pretrain_val": 16, "cls_train": 48, "cls_test": 24,
             "ood_test": 24, "vqa_train": 24, "vqa_test": 12},
    "surrogate": {"epochs": 1, "batch_size": 16, "warmup_steps": 1},
    "pretrain": {"epochs": 1, "batch_size": 16, "warmup_steps": 1},
    "attack": {"batch_size": 16, "success_candidates": 8, "image": {"steps": 2}},
    "features": {"shift_images": 4},
    "heads": {"methods": list(METHODS), **{method: {"epochs": 2, "batch_size": 16} for method in METHODS}},
    "evaluate": {"bootstrap": {"samples": 100},
                 "robust": {"eps_255": [2, 8], "steps": 2, "n_images": 4, "main_n_images": 6, "batch_size": 6,
                            "check_steps": 4, "check_images": 3, "main_eps_255": 8,
                            "autoattack": {"n_images": 3, "iterations": 5, "max_targets": 3},
                            "masking": {"square_images": 3, "square_queries": 20, "large_eps_255": 32}}},
}


def merge(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


def env() -> dict[str, str]:
    variables = dict(os.environ)
    variables["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{variables.get('PATH', '')}"
    variables["GIT_AUTHOR_NAME"] = variables["GIT_COMMITTER_NAME"] = "e2e test"
    variables["GIT_AUTHOR_EMAIL"] = variables["GIT_COMMITTER_EMAIL"] = "e2e@example.invalid"
    variables["DVC_NO_ANALYTICS"] = "1"
    return variables


def run(cwd: Path, *args: str) -> str:
    result = subprocess.run(args, cwd=cwd, env=env(), capture_output=True, text=True)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(args)} failed ({result.returncode}):\n{output}"
    return output


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def edit_params(repo: Path, overrides: dict) -> None:
    params = merge(yaml.safe_load((repo / "params.yaml").read_text()), overrides)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def new_repo(repo: Path, overrides: dict) -> Path:
    """This repository's tracked and untracked-but-not-ignored files, minus its outputs, as a fresh git repo
    with the default params merged with `overrides`, committed on `main`."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        source = REPO / name
        if source.is_file() and not name.startswith(("metrics/", "dvc.lock")):
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, repo / name)
    params = merge(yaml.safe_load((REPO / "params.yaml").read_text()), overrides)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(repo, "git", "init", "-q", "-b", "main")
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-q", "-m", "tiny pipeline")
    return repo


def copy_of(repo: Path, target: Path) -> Path:
    """A full copy (git history, DVC cache, experiments, outputs) a test may change freely."""
    shutil.copytree(repo, target, symlinks=True)
    return target
