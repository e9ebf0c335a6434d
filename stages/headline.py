"""DVC stage `headline`: the headline metrics (per method and task clean and robust accuracy, pre-training R@5,
attack success) that `dvc exp show` and `dvc metrics diff` lead with."""

from pathlib import Path

import typer

from medvlm.cli import run_stage
from medvlm.pipeline.headline import headline_stage


def main(
    params: Path = typer.Option(Path("params.yaml"), help="params file"),
    evaluate: Path = typer.Option(Path("metrics/evaluate.json"), help="the evaluate stage's metrics"),
    robustness: Path = typer.Option(Path("metrics/robustness"), help="folder of the robustness stage's metrics"),
    pretrain: Path = typer.Option(Path("metrics/pretrain.json"), help="the pretrain stage's metrics"),
    attack: Path = typer.Option(Path("metrics/attack.json"), help="the attack stage's metrics"),
    out: Path = typer.Option(Path("metrics/headline.json"), help="headline metrics JSON to write"),
) -> None:
    run_stage(headline_stage, params_path=params, evaluate=evaluate, robustness=robustness, pretrain=pretrain,
              attack=attack, out=out)


if __name__ == "__main__":
    typer.run(main)
