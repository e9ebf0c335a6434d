"""PNG figures that can be looked at without a network or a browser: confusion matrices, robust accuracy
against ε, training curves. Drawn with matplotlib's non-interactive Agg backend."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on CI machines or GPU nodes
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay  # noqa: E402

DPI = 110


def _save(figure: plt.Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)


def confusion_png(labels: np.ndarray, predictions: np.ndarray, class_names: Sequence[str], title: str,
                  path: Path) -> None:
    """Row-normalised confusion matrix (each true class sums to 1), with the class names on both axes."""
    figure, axes = plt.subplots(figsize=(1.0 + 0.75 * len(class_names), 0.6 + 0.7 * len(class_names)))
    ConfusionMatrixDisplay.from_predictions(labels, predictions, labels=list(range(len(class_names))),
                                            display_labels=list(class_names), normalize="true",
                                            values_format=".2f", cmap="Blues", colorbar=False, ax=axes,
                                            xticks_rotation=45)
    axes.set_title(title)
    _save(figure, path)


Curve = tuple[np.ndarray, np.ndarray, np.ndarray | None]
"""(x, y, optional 2×N interval [low; high] of y) of one line."""


def line_panels(panels: Mapping[str, Mapping[str, Curve]], *, xlabel: str, ylabel: str, path: Path,
                chance: Mapping[str, float] | None = None, xscale: str = "linear") -> None:
    """One subplot per panel (e.g. task), one line per series (e.g. method) with its interval as error bars;
    a dashed line marks the panel's chance level when given."""
    figure, axes_row = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for axes, (panel, series) in zip(axes_row[0], panels.items(), strict=True):
        for name, (x, y, interval) in series.items():
            error = None if interval is None else np.abs(np.asarray(interval) - np.asarray(y)[None, :])
            axes.errorbar(x, y, yerr=error, marker="o", markersize=4, capsize=3, label=name)
        if chance and panel in chance:
            axes.axhline(chance[panel], color="grey", linestyle="--", linewidth=1, label="chance")
        axes.set_xscale(xscale)
        axes.set_title(panel)
        axes.set_xlabel(xlabel)
        axes.set_ylabel(ylabel)
        axes.set_ylim(-0.02, 1.02)
        axes.grid(alpha=0.3)
    axes_row[0][-1].legend(fontsize="small")
    _save(figure, path)


def training_curves_png(live_dir: Path, title: str, path: Path) -> None:
    """Every DVCLive curve (`plots/metrics/**/*.tsv`) of one training run, one subplot each; the loss terms'
    shares of a folder (`share_<term>`) share one subplot, a line per term."""
    root = live_dir / "plots" / "metrics"
    curves = sorted(root.rglob("*.tsv"))
    if not curves:
        raise FileNotFoundError(f"{live_dir}: no DVCLive curves under plots/metrics")
    panels: dict[Path, list[Path]] = {}
    for tsv in curves:
        key = tsv.parent / "share_" if tsv.stem.startswith("share_") else tsv.with_suffix("")
        panels.setdefault(key, []).append(tsv)
    columns = min(4, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure, grid = plt.subplots(rows, columns, figsize=(3.4 * columns, 2.6 * rows), squeeze=False)
    for axes, (key, files) in zip(grid.flat, panels.items()):
        for tsv in files:
            frame = pd.read_csv(tsv, sep="\t")
            metric = frame.columns[-1]
            axes.plot(frame["step"], frame[metric], linewidth=1, label=metric.removeprefix("share_"))
        if len(files) > 1 or key.name == "share_":
            axes.legend(fontsize="x-small")
        name = str(key.relative_to(root))
        axes.set_title(name.removesuffix("share_") + "loss-term shares" if key.name == "share_" else name,
                       fontsize="small")
        axes.set_xlabel("step", fontsize="small")
        axes.grid(alpha=0.3)
    for axes in list(grid.flat)[len(panels):]:
        axes.axis("off")
    figure.suptitle(title)
    _save(figure, path)
