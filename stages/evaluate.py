"""DVC stage `evaluate`: clean test metrics of every method's heads, plus chance baselines."""

from pathlib import Path

import typer

from medvlm.cli import run_stage
from medvlm.eval.evaluate import evaluate_stage


def main(
    params: Path = typer.Option(Path("params.yaml"), help="params file"),
    features: Path = typer.Option(Path("data/features"), help="folder of cached features"),
    heads: Path = typer.Option(Path("models/heads"), help="folder holding one sub-folder of heads per method"),
    out: Path = typer.Option(Path("metrics/evaluate.json"), help="metrics JSON to write"),
) -> None:
    run_stage(evaluate_stage, params_path=params, features=features, heads=heads, out=out)


if __name__ == "__main__":
    typer.run(main)
