"""The task registry is the one table of tasks: what derives from it, and the one place outside Python that
has to name the tasks (the robust-accuracy plot's columns in dvc.yaml) agrees with it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medvlm.data.cached_features import SPLITS, TRAINING_SPLITS
from medvlm.tasks import TASKS, Task, feature_splits, head_tasks, register_task

REPO = Path(__file__).resolve().parents[1]


def test_the_built_in_tasks_and_what_derives_from_them():
    assert list(TASKS) == ["cls_id", "cls_ood", "vqa"]
    assert head_tasks() == {"cls_id": "cls_id_train", "vqa": "vqa_train"}
    assert list(SPLITS) == ["cls_id_train", "cls_id_test", "cls_ood_test", "vqa_train", "vqa_test"]
    assert TRAINING_SPLITS == ("cls_id_train", "vqa_train")
    assert {name: (task.name, split) for name, (task, split) in feature_splits().items()}["cls_ood_test"] == (
        "cls_ood", "test")
    assert TASKS["cls_ood"].head == "cls_id" and TASKS["cls_ood"].train_split is None


def test_every_task_is_scored_by_a_head_that_trains():
    for task in TASKS.values():
        assert TASKS[task.head].trains_head, task.name


def test_a_task_scored_by_an_unknown_head_is_refused():
    with pytest.raises(ValueError, match="not registered"):
        register_task(Task("cls_other", "other", "classification", head="nowhere", classes="labels", chance="uniform"))
    with pytest.raises(ValueError, match="already registered"):
        register_task(Task("vqa", "VQA", "vqa", head="vqa", classes="answers", chance="majority"))


def test_the_robust_accuracy_plot_draws_every_task():
    plots = yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
    robustness = next(entry["evaluation/robustness"] for entry in plots
                      if isinstance(entry, dict) and "evaluation/robustness" in entry)
    assert robustness["y"] == list(TASKS)
