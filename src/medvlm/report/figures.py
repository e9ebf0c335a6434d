"""Accuracy against the noise ratio: one panel per task, one line per method (adversarial conditions, with
their matched noise-free baseline at 0), random-noise conditions as separate hollow markers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on CI machines or GPU nodes
import matplotlib.pyplot as plt  # noqa: E402

from medvlm.tasks import TASKS  # noqa: E402
from medvlm.report.conditions import RANDOM, Condition, Incomparable, baseline_of, series  # noqa: E402
from medvlm.report.tables import TASK_TITLES, Summaries  # noqa: E402

DPI = 110
LINE_STYLES = ("-", "--", ":", "-.")


def _errorbar(axes, conditions: Sequence[Condition], summaries: Summaries, key: tuple[str, str, str],
              shift: float = 0.0, **style) -> None:
    method, task, metric = key
    found = [(c.ratio, s) for c in conditions if (s := summaries.get((c, method, task, metric))) is not None]
    if not found:
        return
    x = [ratio + shift for ratio, _ in found]
    y = [s.mean for _, s in found]
    error = [[max(s.mean - (s.interval or (s.mean, s.mean))[0], 0) for _, s in found],
             [max((s.interval or (s.mean, s.mean))[1] - s.mean, 0) for _, s in found]]
    axes.errorbar(x, y, yerr=error, capsize=3, markersize=5, **style)


def accuracy_figure(*, conditions: Sequence[Condition], methods: Sequence[str], summaries: Summaries, metric: str,
                    ylabel: str, chance: Mapping[str, float], path: Path) -> None:
    lines = []
    for members in series(conditions=conditions):
        try:
            lines.append([baseline_of(condition=members[0], conditions=conditions), *members])
        except Incomparable:
            lines.append(members)  # no matched baseline: the noisy points alone
    randoms = [c for c in conditions if c.kind == RANDOM]
    figure, panels = plt.subplots(1, len(TASKS), figsize=(4.2 * len(TASKS), 3.6), squeeze=False)
    for axes, task in zip(panels[0], TASKS):
        for index, method in enumerate(methods):
            color = f"C{index % 10}"
            for number, line in enumerate(lines):
                rest = line[-1].describe(without=("noise_ratio", "noise_kind"))
                _errorbar(axes, line, summaries, (method, task, metric), color=color, marker="o",
                          linestyle=LINE_STYLES[number % len(LINE_STYLES)],
                          label=f"{method}{f' ({rest})' if rest and len(lines) > 1 else ''}")
            # Shifted right a little, so a random-noise marker does not hide the adversarial point at its ratio.
            _errorbar(axes, randoms, summaries, (method, task, metric), shift=0.006, color=color, marker="s",
                      linestyle="none", markerfacecolor="none", label=f"{method}, random noise")
        if task in chance:
            axes.axhline(chance[task], color="grey", linestyle="--", linewidth=1, label="chance")
        axes.set_title(TASK_TITLES[task])
        axes.set_xlabel("upstream noise ratio")
        axes.set_ylabel(ylabel)
        axes.set_ylim(-0.02, 1.02)
        axes.grid(alpha=0.3)
    panels[0][-1].legend(fontsize="x-small", loc="center left", bbox_to_anchor=(1.02, 0.5))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
