"""The report's setup section: what every condition shares, and how many test items each number rests on."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from medvlm.params import Params
from medvlm.report.conditions import Condition, flatten, value_text
from medvlm.report.study import CLEAN, StudyRun
from medvlm.report.tables import TASK_TITLES, radius_title

SETUP_KEYS = ("model.name", "model.init", "data.pretrain.source", "data.cls_id.source", "data.cls_ood.source",
              "data.vqa.source", "data.image_size", "data.pretrain_train", "data.cls_train", "pretrain.epochs",
              "heads.methods", "evaluate.robust.steps", "evaluate.robust.eps_255")
SIZE_KEYS = ("data.cls_test", "data.ood_test", "data.vqa_test", "evaluate.robust.main_n_images",
             "evaluate.robust.n_images")
"""Params that set how many test items there are; compared with the default pipeline's (the params defaults)."""


def _against_defaults(flat: Sequence[Mapping]) -> tuple[list[str], list[str]]:
    """Size params where the default pipeline uses fewer / more items than every run of the study."""
    defaults = flatten(Params().model_dump())
    fewer, more = [], []
    for key in SIZE_KEYS:
        if key not in defaults:
            continue
        values = sorted({f.get(key, defaults[key]) for f in flat})
        text = f"`{key}` {defaults[key]} (here {'–'.join(map(str, values))})"
        if defaults[key] < values[0]:
            fewer.append(text)
        elif defaults[key] > values[-1]:
            more.append(text)
    return fewer, more


def setup_lines(*, runs: Sequence[StudyRun], conditions: Sequence[Condition],
                counts: Mapping[str, Mapping[str, str]], main: str, radii: Sequence[str]) -> list[str]:
    """Markdown bullets; `counts` is task -> metric -> items per seed, as read from the item tables."""
    flat = [flatten(run.params) for run in runs]
    shared = ", ".join(f"`{key}`={value_text(flat[0][key])}" for key in SETUP_KEYS
                       if key in flat[0] and all(f.get(key) == flat[0][key] for f in flat))
    varying = ", ".join(f"`{key}`" for key in conditions[0].varying) or "none (one condition)"
    lines = [f"- Parameters shared by every run: {shared or 'none of the listed ones'}.",
             f"- Parameters that vary across conditions: {varying}."]
    for task, by_metric in counts.items():
        text = f"{by_metric.get(CLEAN, '–')} clean, {by_metric.get(main, '–')} at the main radius "
        text += radius_title(main)
        text += "".join(f", {by_metric[r]} at {radius_title(r)}" for r in radii if r != main and r in by_metric)
        title = TASK_TITLES[task]
        lines.append(f"- {title[0].upper()}{title[1:]} test items per seed (from the item tables): {text}.")
    fewer, more = _against_defaults(flat)
    if fewer:
        lines.append(f"- The default pipeline (the params defaults) uses fewer items than this study: "
                     f"{', '.join(fewer)}.")
    if more:
        lines.append(f"- The default pipeline uses more items than this study: {', '.join(more)}.")
    return lines
