"""The headline metrics: the few numbers a researcher compares across experiments, in one small file that
`dvc exp show` and `dvc metrics diff` lead with. Everything else stays in the detailed metrics files.

{"pretrain_r5": mean of image->text and text->image R@5 on the held-out pairs,
 "attack_success": share of perturbed pairs whose own caption is no longer the surrogate's best match (null
                   when nothing was perturbed),
 "<method>": {"<task>": {"clean": accuracy on the whole test set,
                         "robust": PGD accuracy at the main ε (its large seeded subset),
                         "worst_case": accuracy under the worst of PGD and AutoAttack at the main ε, on the
                                       AutoAttack subset (the first items of that subset; fewer, so wider)}}}
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medvlm.io import DataError, read_json, write_json
from medvlm.tasks import TASKS, eps_key


def _get(tree: dict[str, Any], path: Sequence[str], source: Path) -> Any:
    value: Any = tree
    for key in path:
        if not isinstance(value, dict) or key not in value:
            raise DataError(f"{source}: lacks {'.'.join(path)}; re-run the stage that writes it")
        value = value[key]
    return value


def headline_metrics(*, methods: Sequence[str], main_eps_255: float, evaluate: Path, robustness: Path, pretrain: Path,
                     attack: Path) -> dict[str, Any]:
    clean, trained, noise = read_json(evaluate), read_json(pretrain), read_json(attack)
    recall = [_get(trained, ("retrieval", key), pretrain) for key in ("i2t_r5", "t2i_r5")]
    headline: dict[str, Any] = {"pretrain_r5": sum(recall) / len(recall),
                                "attack_success": _get(noise, ("success_rate",), attack)}
    for method in methods:
        robust_path = Path(robustness) / f"{method}.json"
        robust = read_json(robust_path)
        headline[method] = {
            task: {"clean": _get(clean, (method, task, "accuracy"), evaluate),
                   "robust": _get(robust, (task, eps_key(main_eps_255), "accuracy"), robust_path),
                   "worst_case": _get(robust, (task, "autoattack", "worst_case_accuracy"), robust_path)}
            for task in TASKS}
    return headline


def write_headline(*, out: Path, **sources: Any) -> dict[str, Any]:
    headline = headline_metrics(**sources)
    write_json(out, headline)
    return headline
