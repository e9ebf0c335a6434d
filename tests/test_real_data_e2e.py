"""End to end on real-data code paths: `dvc repro` with every task read from a generic CSV source (fixture
images outside the repo), through attack, pre-training, features and heads to metrics, in a temporary git
copy of the repository with the tiny params of the synthetic end-to-end test."""

from __future__ import annotations

import copy
import json

import pandas as pd
import pytest

import real_fixtures as fx
from e2e_repo import ALL_STAGES, TINY, merge, new_repo, run, stages_run

pytestmark = pytest.mark.e2e
ROWS = {"pretrain": 48, "cls_id": 40, "cls_ood": 40, "vqa": 32}


def test_dvc_repro_from_csv_sources(tmp_path):
    sources = {kind: {"source": "csv", "path": str(fx.csv_source(tmp_path / "csv-set", kind, rows))}
               for kind, rows in ROWS.items()}
    # One head keeps the test short; the synthetic end-to-end test covers every head.
    params = merge(copy.deepcopy(TINY), {"data": {**sources, "workers": 2}, "heads": {"methods": ["lp"]}})
    repo = new_repo(tmp_path / "repo", params)

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
