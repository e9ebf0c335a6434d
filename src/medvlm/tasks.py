"""The registry of downstream tasks: every test set the heads are scored on.

One `Task` says which head scores the task, where its images and cached features live, what its classes
are and which chance level its figures draw. Every table of tasks in the package (the cached-feature splits,
head training, evaluation, robustness, plot data and the report) is derived from `TASKS`, in its order;
adding a task is one `register_task` call plus the data to go with it. Kept free of torch, so that the
report, the plots and params validation import it cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class Task:
    name: str
    """Also the manifest kind (`data/raw/<name>.csv`) that holds its images."""
    title: str
    """How reports name it."""
    kind: Literal["classification", "vqa"]
    """Classification of an image, or an answer to a question about it (the question is part of the input)."""
    head: str
    """The task whose trained head scores it; a task with its own training split names itself."""
    classes: Literal["labels", "answers"]
    """Key of the features' meta.json listing its classes (the label set, or the train answer vocabulary)."""
    chance: Literal["uniform", "majority"]
    """Chance level drawn beside it in figures."""
    confusion: bool = True
    """Whether its confusion matrix is drawn (VQA mixes yes/no with open answers, so it says little)."""

    @property
    def trains_head(self) -> bool:
        return self.head == self.name

    @property
    def manifest(self) -> str:
        return self.name

    @property
    def test_split(self) -> str:
        """Cached-feature split of its test set (`data/features/<split>.safetensors`)."""
        return f"{self.name}_test"

    @property
    def train_split(self) -> str | None:
        """Cached-feature split its head trains on; None when another task's head scores it."""
        return f"{self.name}_train" if self.trains_head else None


TASKS: dict[str, Task] = {}
"""Every registered task by name, in registration order (the order of every table and loop)."""


def register_task(task: Task) -> Task:
    if task.name in TASKS:
        raise ValueError(f"task {task.name!r} is already registered")
    if not task.trains_head and task.head not in TASKS:
        raise ValueError(f"task {task.name!r} is scored by the head of {task.head!r}, which is not registered")
    TASKS[task.name] = task
    return task


register_task(Task("cls_id", "in-domain", "classification", head="cls_id", classes="labels", chance="uniform"))
# The out-of-domain set shares the in-domain label set and is scored with its head: shifted acquisition only.
register_task(Task("cls_ood", "out-of-domain", "classification", head="cls_id", classes="labels", chance="uniform"))
register_task(Task("vqa", "VQA", "vqa", head="vqa", classes="answers", chance="majority", confusion=False))


def head_tasks() -> dict[str, str]:
    """Task -> cached split its head trains on, for the tasks that train a head."""
    return {task.name: task.train_split for task in TASKS.values() if task.train_split is not None}


def feature_splits() -> dict[str, tuple[Task, str]]:
    """Every cached-feature split -> (its task, the manifest split it embeds), each task's train split first."""
    splits: dict[str, tuple[Task, str]] = {}
    for task in TASKS.values():
        if task.train_split is not None:
            splits[task.train_split] = (task, "train")
        splits[task.test_split] = (task, "test")
    return splits


def read_test_manifest(task_name: str, *, data: Path, data_root: Path, features: Path, n_rows: int) -> pd.DataFrame:
    """The manifest rows of a task's test split, checked to match its cached features row for row."""
    # Imported here: this module stays free of torch (which the manifest and io modules import) for the report.
    from medvlm.data.manifest import read_manifest  # noqa: PLC0415
    from medvlm.io import DataError  # noqa: PLC0415

    task = TASKS[task_name]
    frame = read_manifest(data, task.manifest, data_root, split="test")
    if len(frame) != n_rows:
        raise DataError(f"{data}: the {task.manifest} test split has {len(frame)} rows but {features}/"
                        f"{task.test_split}.safetensors has {n_rows}; re-run features after download")
    return frame


def eps_key(eps_255: float) -> str:
    """Metrics key of an attack radius: 'eps_2', 'eps_0p5' (no dots, which `dvc metrics show` reads as nesting)."""
    return "eps_" + f"{eps_255:g}".replace(".", "p")
