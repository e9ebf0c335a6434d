"""End to end on real-data code paths: `dvc repro` with every task read from a generic CSV source (fixture
images outside the repo), through attack, pre-training, features and heads to metrics, in a temporary git
copy of the repository with the tiny params of the synthetic end-to-end test."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

import real_fixtures as fx
from e2e_repo import ALL_STAGES, REPO, TINY, merge, run, stages_run

pytestmark = pytest.mark.e2e
ROWS = {"pretrain": 48, "cls_id": 40, "cls_ood": 40, "vqa": 32}


def test_dvc_repro_from_csv_sources(tmp_path):
    repo = tmp_path / "repo"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (REPO / name).is_file() and not name.startswith(("metrics/", "dvc.lock")):
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, repo / name)
    sources = {kind: {"source": "csv", "path": str(fx.csv_source(tmp_path / "csv-set", kind, rows))}
               for kind, rows in ROWS.items()}
    params = merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY)
    # One head keeps the test short; the synthetic end-to-end test covers every head.
    params = merge(params, {"data": {**sources, "workers": 2}, "heads": {"methods": ["lp"]}})
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(repo, "git", "init", "-q", "-b", "main")
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-q", "-m", "csv sources")

    other_heads = {f"{stage}@{method}" for stage in ("finetune", "robustness") for method in ("mlp", "nmtune", "ran")}
    assert stages_run(run(repo, "dvc", "repro")) == ALL_STAGES - other_heads
    meta = json.loads((repo / "data/raw/meta.json").read_text())
    assert meta["source"] == {kind: "csv" for kind in ROWS} and meta["labels"] == ["effusion", "normal"]
    assert meta["counts"]["pretrain"] == {"train": 24, "val": 24} and meta["counts"]["cls_ood"] == {"test": 20}
    evaluation = json.loads((repo / "metrics/evaluate.json").read_text())
    items = pd.read_parquet(repo / "items/clean.parquet")
    for method in params["heads"]["methods"]:
        for task in ("cls_id", "cls_ood", "vqa"):
            rows = items[(items["method"] == method) & (items["task"] == task)]
            assert len(rows) == evaluation[method][task]["n"] > 0
            assert rows["correct"].mean() == pytest.approx(evaluation[method][task]["accuracy"])
    attack = json.loads((repo / "metrics/attack.json").read_text())
    assert attack["pairs_perturbed"] == int(0.25 * 24)
    assert stages_run(run(repo, "dvc", "repro")) == set()  # nothing changed: nothing runs
    print("csv e2e metrics:", json.dumps({"evaluate": evaluation, "attack": attack,
                                          "pretrain": json.loads((repo / "metrics/pretrain.json").read_text())}))
