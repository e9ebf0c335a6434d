"""DVC stage `evaluate`: clean test metrics of every method's heads with bootstrap intervals, chance
baselines, the feature spectrum, and the figures (confusion, robust accuracy vs ε, training curves)."""

from pathlib import Path

import typer

from medvlm.cli import run_stage
from medvlm.pipeline.evaluate import evaluate_stage


def main(
    params: Path = typer.Option(Path("params.yaml"), help="params file"),
    data: Path = typer.Option(Path("data/raw"), help="folder of the downstream manifests (test item ids)"),
    features: Path = typer.Option(Path("data/features"), help="folder of cached features"),
    heads: Path = typer.Option(Path("models/heads"), help="folder holding one sub-folder of heads per method"),
    robustness: Path = typer.Option(Path("metrics/robustness"), help="folder of the robustness stage's metrics"),
    live: Path = typer.Option(Path("dvclive"), help="DVCLive root of the training runs (for training curves)"),
    out: Path = typer.Option(Path("metrics/evaluate.json"), help="metrics JSON to write"),
    plots: Path = typer.Option(Path("evaluation"), help="folder of figures and plot data to write"),
    items: Path = typer.Option(Path("items/clean.parquet"), help="per-item results (parquet) to write"),
) -> None:
    run_stage(evaluate_stage, params_path=params, data=data, features=features, heads=heads,
              robustness=robustness, live=live, out=out, plots=plots, items=items)


if __name__ == "__main__":
    typer.run(main)
