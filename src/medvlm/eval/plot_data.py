"""The evaluate stage's plots folder: data files for `dvc plots show/diff` and PNG figures for offline eyes.

    confusion/<method>_<task>.csv    actual, predicted (class names)  -> DVC's confusion template
    robustness/<method>.csv          eps_255, cls_id, cls_ood, vqa    -> robust accuracy vs ε (ε = 0: clean)
    figures/confusion_<method>_<task>.png, figures/robust_accuracy.png, figures/training_<run>.png
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medvlm.eval.figures import confusion_png, line_panels, training_curves_png
from medvlm.tasks import TASKS, eps_key
from medvlm.io import DataError, read_json
from medvlm.params import RobustnessParams

CONFUSION_TASKS = tuple(name for name, task in TASKS.items() if task.confusion)


def read_robustness(robustness: Path, method: str, robust: RobustnessParams) -> dict[str, Any]:
    """One method's robustness metrics, checked to hold every task and radius the params ask for."""
    path = robustness / f"{method}.json"
    results = read_json(path)
    for task in TASKS:
        missing = [key for key in ("clean", *map(eps_key, robust.eps_255)) if key not in results.get(task, {})]
        if missing:
            raise DataError(f"{path}: task {task!r} lacks {missing}; re-run the robustness stage")
    return results


def robustness_curves(results: Mapping[str, Any], robust: RobustnessParams) -> dict[str, tuple]:
    """Per task: (ε in 1/255 with 0 for clean, accuracy, 2×N interval)."""
    keys = ["clean", *map(eps_key, robust.eps_255)]
    radii = np.array([0.0, *robust.eps_255])
    return {task: (radii, np.array([results[task][key]["accuracy"] for key in keys]),
                   np.array([results[task][key]["ci"] for key in keys]).T)
            for task in TASKS}


def write_plot_data(plots_dir: Path, *, methods: Sequence[str], class_names: Sequence[str],
                    labels: Mapping[str, np.ndarray], predictions: Mapping[str, Mapping[str, np.ndarray]],
                    chance: Mapping[str, Any], robustness: Path, robust: RobustnessParams, live: Path) -> None:
    figures = plots_dir / "figures"
    names = np.asarray(class_names)
    for method in methods:
        for task in CONFUSION_TASKS:
            (plots_dir / "confusion").mkdir(parents=True, exist_ok=True)
            pd.DataFrame({"actual": names[labels[task]], "predicted": names[predictions[method][task]]}).to_csv(
                plots_dir / "confusion" / f"{method}_{task}.csv", index=False)
            confusion_png(labels[task], predictions[method][task], class_names, f"{method}: {task} (test)",
                          figures / f"confusion_{method}_{task}.png")

    curves = {method: robustness_curves(read_robustness(robustness, method, robust), robust) for method in methods}
    (plots_dir / "robustness").mkdir(parents=True, exist_ok=True)
    for method, per_task in curves.items():
        radii = next(iter(per_task.values()))[0]
        table = pd.DataFrame({"eps_255": radii, **{task: accuracy for task, (_, accuracy, _) in per_task.items()}})
        table.to_csv(plots_dir / "robustness" / f"{method}.csv", index=False)
    chance_levels = {name: chance[name][task.chance] for name, task in TASKS.items()}
    line_panels({task: {method: curves[method][task] for method in methods} for task in TASKS},
                xlabel=f"L∞ ε (/255), PGD-{robust.steps}; 0 = clean", ylabel="accuracy",
                chance={task: level for task, level in chance_levels.items() if level is not None},
                path=figures / "robust_accuracy.png")

    runs = {"surrogate": live / "surrogate", "pretrain": live / "pretrain",
            **{f"finetune_{method}": live / "finetune" / method for method in methods}}
    for run, directory in runs.items():
        if not directory.is_dir():
            raise DataError(f"{directory}: DVCLive folder of the {run} run not found")
        training_curves_png(directory, run, figures / f"training_{run}.png")
